"""Tests for DSSE pre-authentication encoding, envelope JSON and envelope verification."""

from __future__ import annotations

import base64
import json

import pytest

from mc_common.signing import (
    IN_TOTO_PAYLOAD_TYPE,
    Envelope,
    EnvelopeFormatError,
    InvalidSignatureError,
    KeyRing,
    NoSignaturesError,
    PayloadTypeError,
    PemSigner,
    Signature,
    UnknownKeyError,
    add_signature,
    pae,
    sign_envelope,
    verify_envelope,
    verify_envelope_detailed,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_pae_matches_spec_example() -> None:
    # protocol.md: PAE("http://example.com/HelloWorld", "hello world")
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_lengths_are_byte_lengths() -> None:
    assert pae("t\u00e9", b"") == b"DSSEv1 3 t\xc3\xa9 0 "
    assert pae("a", b"x y") == b"DSSEv1 1 a 3 x y"


def test_sign_and_verify_round_trip(receipt_signer: PemSigner, receipt_keyring: KeyRing) -> None:
    env = sign_envelope(b'{"a":1}', IN_TOTO_PAYLOAD_TYPE, receipt_signer)
    assert env.signatures[0].keyid == receipt_signer.key_id
    receipt_signer.public_key.verify(env.pae(), env.signatures[0].sig)
    assert verify_envelope(env, receipt_keyring) == b'{"a":1}'
    verified = verify_envelope_detailed(env, receipt_keyring, payload_type=IN_TOTO_PAYLOAD_TYPE)
    assert verified.key_ids == (receipt_signer.key_id,)


def test_json_round_trip_and_shape(receipt_signer: PemSigner) -> None:
    env = sign_envelope(b"payload \xff bytes", "text/plain", receipt_signer)
    obj = json.loads(env.to_json())
    assert obj == {
        "payload": _b64(b"payload \xff bytes"),
        "payloadType": "text/plain",
        "signatures": [{"keyid": receipt_signer.key_id, "sig": _b64(env.signatures[0].sig)}],
    }
    assert Envelope.from_json(env.to_json()) == env
    assert Envelope.from_json(env.to_json().encode()) == env


def test_no_signatures(receipt_keyring: KeyRing) -> None:
    env = Envelope(payload=b"x", payload_type="t", signatures=())
    with pytest.raises(NoSignaturesError) as excinfo:
        verify_envelope(env, receipt_keyring)
    assert excinfo.value.code == "NO_SIGNATURES"


def test_unknown_keyid(receipt_keyring: KeyRing) -> None:
    stranger = PemSigner.generate()
    env = sign_envelope(b"x", "t", stranger)
    with pytest.raises(UnknownKeyError, match=stranger.key_id) as excinfo:
        verify_envelope(env, receipt_keyring)
    assert excinfo.value.code == "UNKNOWN_KEY"


def test_flipped_signature_byte(receipt_signer: PemSigner, receipt_keyring: KeyRing) -> None:
    env = sign_envelope(b"x", "t", receipt_signer)
    sig = bytearray(env.signatures[0].sig)
    sig[len(sig) // 2] ^= 0x01
    bad = Envelope(env.payload, env.payload_type, (Signature(env.signatures[0].keyid, bytes(sig)),))
    with pytest.raises(InvalidSignatureError) as excinfo:
        verify_envelope(bad, receipt_keyring)
    assert excinfo.value.code == "SIGNATURE_INVALID"


def test_changed_payload_or_type_breaks_signature(
    receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    env = sign_envelope(b"payload", "type/a", receipt_signer)
    with pytest.raises(InvalidSignatureError):
        verify_envelope(Envelope(b"payloaD", env.payload_type, env.signatures), receipt_keyring)
    with pytest.raises(InvalidSignatureError):
        verify_envelope(Envelope(env.payload, "type/b", env.signatures), receipt_keyring)


def test_expected_payload_type(receipt_signer: PemSigner, receipt_keyring: KeyRing) -> None:
    env = sign_envelope(b"x", "text/plain", receipt_signer)
    with pytest.raises(PayloadTypeError) as excinfo:
        verify_envelope(env, receipt_keyring, payload_type=IN_TOTO_PAYLOAD_TYPE)
    assert excinfo.value.code == "WRONG_PAYLOAD_TYPE"


def test_unknown_cosigner_is_ignored_but_bad_known_signature_is_not(
    receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    stranger = PemSigner.generate()
    env = add_signature(sign_envelope(b"x", "t", stranger), receipt_signer)
    assert verify_envelope_detailed(env, receipt_keyring).key_ids == (receipt_signer.key_id,)
    forged = Envelope(
        env.payload,
        env.payload_type,
        (*env.signatures, Signature(receipt_signer.key_id, stranger.sign(env.pae()))),
    )
    with pytest.raises(InvalidSignatureError, match="signature 2"):
        verify_envelope(forged, receipt_keyring)


def test_empty_keyid_is_tried_against_every_key(
    receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    env = sign_envelope(b"x", "t", receipt_signer)
    anonymous = Envelope(env.payload, env.payload_type, (Signature("", env.signatures[0].sig),))
    assert verify_envelope_detailed(anonymous, receipt_keyring).key_ids == (receipt_signer.key_id,)
    with pytest.raises(UnknownKeyError):
        verify_envelope(anonymous, KeyRing())
    other_ring = KeyRing([PemSigner.generate().public_key])
    with pytest.raises(InvalidSignatureError):
        verify_envelope(anonymous, other_ring)


def test_missing_keyid_parses_as_empty() -> None:
    text = json.dumps({"payload": _b64(b"x"), "payloadType": "t", "signatures": [{"sig": "AA=="}]})
    assert Envelope.from_json(text).signatures == (Signature("", b"\x00"),)


def test_url_safe_base64_is_accepted() -> None:
    raw = b"\xfb\xff\xfe"
    text = json.dumps(
        {
            "payload": base64.urlsafe_b64encode(raw).decode(),
            "payloadType": "t",
            "signatures": [{"keyid": "k", "sig": "AA=="}],
        }
    )
    assert Envelope.from_json(text).payload == raw


VALID = {"payload": "eA==", "payloadType": "t", "signatures": [{"keyid": "k", "sig": "AA=="}]}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        ("[]", "envelope must be a JSON object"),
        (json.dumps({**VALID, "extra": 1}), "unknown field(s): extra"),
        (json.dumps({"payload": "eA==", "signatures": []}), "missing field(s): payloadType"),
        (json.dumps({**VALID, "payload": "e A=="}), "envelope.payload is not valid base64"),
        (json.dumps({**VALID, "payload": "eA="}), "envelope.payload is not valid base64"),
        (json.dumps({**VALID, "payload": "+-=="}), "mixes standard and URL-safe"),
        (json.dumps({**VALID, "payload": 5}), "envelope.payload must be a base64 string"),
        (json.dumps({**VALID, "payloadType": ""}), "payloadType must be a non-empty string"),
        (json.dumps({**VALID, "signatures": {}}), "signatures must be an array"),
        (json.dumps({**VALID, "signatures": ["AA=="]}), "signatures[0] must be a JSON object"),
        (json.dumps({**VALID, "signatures": [{"keyid": "k"}]}), "missing field(s): sig"),
        (
            json.dumps({**VALID, "signatures": [{"sig": "AA==", "cert": "x"}]}),
            "signatures[0] has unknown field(s): cert",
        ),
        (json.dumps({**VALID, "signatures": [{"keyid": 1, "sig": "AA=="}]}), "keyid must be"),
        (json.dumps({**VALID, "signatures": [{"sig": ""}]}), "signatures[0].sig is empty"),
        ('{"payload":"eA==","payload":"eA==","payloadType":"t","signatures":[]}', "duplicate"),
    ],
)
def test_malformed_envelopes_are_rejected(document: str | bytes, message: str) -> None:
    with pytest.raises(EnvelopeFormatError) as excinfo:
        Envelope.from_json(document)
    assert message in str(excinfo.value)
    assert excinfo.value.code == "ENVELOPE_MALFORMED"


def test_valid_minimal_document_parses() -> None:
    env = Envelope.from_json(json.dumps(VALID))
    assert env == Envelope(b"x", "t", (Signature("k", b"\x00"),))


def test_a_keyid_naming_no_key_is_a_hint_tried_against_the_ring(
    receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    env = sign_envelope(b"x", "t", receipt_signer)
    renamed = Envelope(
        env.payload, env.payload_type, (Signature("sslib-style-id", env.signatures[0].sig),)
    )
    assert verify_envelope_detailed(renamed, receipt_keyring).key_ids == (receipt_signer.key_id,)
    with pytest.raises(UnknownKeyError):  # and verifying with no key of the ring is refused
        verify_envelope(renamed, KeyRing([PemSigner.generate().public_key]))


def test_unpadded_base64_and_p1363_signatures_are_accepted(
    receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    env = sign_envelope(b"some payload", "t", receipt_signer)
    r, s = decode_dss_signature(env.signatures[0].sig)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    document = {
        "payload": base64.urlsafe_b64encode(env.payload).decode().rstrip("="),
        "payloadType": "t",
        "signatures": [{"keyid": "", "sig": base64.b64encode(raw).decode().rstrip("=")}],
    }
    parsed = Envelope.from_json(json.dumps(document))
    assert parsed.payload == b"some payload"
    assert verify_envelope_detailed(parsed, receipt_keyring).key_ids == (receipt_signer.key_id,)
