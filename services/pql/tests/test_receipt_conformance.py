"""Receipts read and written by independent implementations (issue 10 §1).

securesystemslib (the DSSE implementation of the in-toto/TUF projects) verifies the service's
envelopes with only the published keys, and signs caller envelopes the service accepts even
though its key ids are computed its own way; in-toto-attestation validates the statements.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from pql_support import OPERATOR, md, record
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import CryptoSigner, SSlibKey
from test_receipts import client_body

from mc.pql.v1 import provenance_service_pb2 as svc
from mc.pql.v1 import provenance_service_pb2_grpc as svc_grpc
from mc.pql.v1 import receipt_log_service_pb2 as log_pb
from mc.pql.v1 import receipt_log_service_pb2_grpc as log_grpc
from mc_common.server import RunningServer
from mc_common.testing.identity import TestTrustDomain
from mc_pql.app import PqlApp
from mc_pql.client_statement import client_statement_bytes

Stub = svc_grpc.ProvenanceServiceStub


@pytest.fixture
async def log_stub(
    pql_server: RunningServer, mc_trust_domain: TestTrustDomain
) -> AsyncIterator[log_grpc.ReceiptLogServiceStub]:
    async with mc_trust_domain.channel(pql_server.address) as channel:
        yield log_grpc.ReceiptLogServiceStub(channel)


def sslib_key(pem: str, key_id: str) -> SSlibKey:
    public = serialization.load_pem_public_key(pem.encode())
    return SSlibKey.from_crypto(public, keyid=key_id, scheme="ecdsa-sha2-nistp256")


async def test_securesystemslib_verifies_receipts_with_only_the_published_keys(
    stub: Stub, log_stub: log_grpc.ReceiptLogServiceStub
) -> None:
    receipt = (await stub.RecordReceipt(record("e1", 1), metadata=md("acme"))).receipt
    keys = await log_stub.GetVerificationKeys(
        log_pb.GetVerificationKeysRequest(), metadata=md("acme")
    )
    [current] = [k for k in keys.receipt_keys if k.current]
    assert current.algorithm == "ES256" and current.key_id == receipt.signer_key_id
    jwk = json.loads(current.jwk)
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["kid"]) == (
        "EC",
        "P-256",
        "ES256",
        current.key_id,
    )
    envelope = SslibEnvelope.from_dict(json.loads(receipt.envelope))
    verified = envelope.verify([sslib_key(current.public_key_pem, current.key_id)], 1)
    assert set(verified) == {current.key_id}
    statement = Statement.copy_from_pb(
        json_format.Parse(envelope.payload, statement_pb2.Statement())  # type: ignore[attr-defined]
    )
    statement.validate()
    assert statement.pb.predicate_type == "https://maestro-conductor.dev/receipt/v1"
    assert statement.pb.predicate["tenant"] == "acme"


async def test_envelopes_signed_by_securesystemslib_are_accepted_whatever_their_keyid(
    stub: Stub, pql_app: PqlApp
) -> None:
    signer = CryptoSigner.generate_ecdsa()
    pem = signer.public_key.keyval["public"]
    await stub.RegisterSigningKey(
        svc.RegisterSigningKeyRequest(tenant="acme", public_key_pem=pem), metadata=OPERATOR
    )
    envelope = SslibEnvelope(
        payload=client_statement_bytes(client_body("acme")),
        payload_type="application/vnd.in-toto+json",
        signatures={},
    )
    envelope.sign(signer)
    as_dict = envelope.to_dict()
    # securesystemslib names the key by its own key id, which no MC key id equals.
    assert as_dict["signatures"][0]["keyid"] == signer.public_key.keyid
    # DSSE allows either base64 alphabet: send the URL-safe, unpadded form.
    as_dict["payload"] = base64.urlsafe_b64encode(envelope.payload).rstrip(b"=").decode()
    request = svc.RecordReceiptRequest(signed_envelope=json.dumps(as_dict).encode())
    stored = (await stub.RecordReceipt(request, metadata=md("acme"))).receipt
    assert stored.verification.valid
    got = (
        await stub.GetReceipt(svc.GetReceiptRequest(digest=stored.digest), metadata=md("acme"))
    ).receipt
    assert got.verification.valid and got.client_key_id != signer.public_key.keyid
    # A receipt whose stored client envelope and key id were nulled no longer verifies.
    async with pql_app.pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE receipts SET client_envelope = NULL, client_key_id = NULL WHERE tenant = 'acme'"
        )
    nulled = (
        await stub.GetReceipt(svc.GetReceiptRequest(digest=stored.digest), metadata=md("acme"))
    ).receipt
    assert not nulled.verification.valid
    assert "CLIENT_ENVELOPE_MISSING" in {f.code for f in nulled.verification.failures}


async def test_an_unregistered_signer_is_still_refused(stub: Stub) -> None:
    signer = CryptoSigner.generate_ecdsa()
    envelope = SslibEnvelope(
        payload=client_statement_bytes(client_body("acme")),
        payload_type="application/vnd.in-toto+json",
        signatures={},
    )
    envelope.sign(signer)
    request = svc.RecordReceiptRequest(signed_envelope=json.dumps(envelope.to_dict()).encode())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RecordReceipt(request, metadata=md("acme"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
