"""Tests for building per-tenant receipt hash chains and detecting every way they can break."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from mc_common.receipts import (
    ChainCheck,
    ChainLink,
    ChainLinkError,
    ReceiptBody,
    ReceiptCheck,
    ReceiptPredicate,
    ReceiptStatement,
    SignedReceipt,
    build_receipt,
    canonicalize,
    issue_receipt,
    sign_receipt,
    verify_chain,
)
from mc_common.signing import IN_TOTO_PAYLOAD_TYPE, Envelope, KeyRing, PemSigner

ReceiptBodyFactory = Callable[..., ReceiptBody]


def _chain(
    make_receipt_body: ReceiptBodyFactory, signer: PemSigner, length: int, tenant: str = "tenant-a"
) -> list[SignedReceipt]:
    receipts: list[SignedReceipt] = []
    previous: ChainLink | None = None
    for n in range(1, length + 1):
        body = make_receipt_body(tenant=tenant, execution_id=f"exec-{n:04d}")
        signed = issue_receipt(body, previous, signer)
        receipts.append(signed)
        previous = signed.link
    return receipts


def _envelopes(receipts: list[SignedReceipt]) -> list[Envelope]:
    return [r.envelope for r in receipts]


@pytest.fixture
def chain_of_five(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner
) -> list[SignedReceipt]:
    """Five correctly linked, signed receipts of tenant-a (sequences 1..5)."""
    return _chain(make_receipt_body, receipt_signer, 5)


def test_building_links_sequence_and_previous_digest(chain_of_five: list[SignedReceipt]) -> None:
    assert [r.link.sequence for r in chain_of_five] == [1, 2, 3, 4, 5]
    assert chain_of_five[0].statement.predicate.previous_digest == ""
    for previous, current in pairwise(chain_of_five):
        assert current.statement.predicate.previous_digest == previous.digest
        assert current.link.tenant == "tenant-a"


def test_intact_chain_verifies(
    chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing
) -> None:
    report = verify_chain(_envelopes(chain_of_five), receipt_keyring)
    assert report.ok, report.problems
    assert report.first_broken_sequence is None
    assert report.verified_through == chain_of_five[-1].link
    assert all(r.ok for r in report.receipts)


def test_rows_as_json_text_verify(
    chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing
) -> None:
    rows = [r.envelope.to_json() for r in chain_of_five]
    assert verify_chain(rows, receipt_keyring, expected_tenant="tenant-a").ok


def test_empty_chain_is_trivially_valid(receipt_keyring: KeyRing) -> None:
    report = verify_chain([], receipt_keyring)
    assert report.ok
    assert report.verified_through is None


def test_build_refuses_another_tenants_predecessor(
    make_receipt_body: ReceiptBodyFactory, chain_of_five: list[SignedReceipt]
) -> None:
    with pytest.raises(ChainLinkError) as excinfo:
        build_receipt(make_receipt_body(tenant="tenant-b"), chain_of_five[-1].link)
    assert excinfo.value.code == "CHAIN_LINK_INVALID"


def test_chain_link_validation() -> None:
    with pytest.raises(ChainLinkError):
        ChainLink(tenant="t", sequence=0, digest="00" * 32)
    with pytest.raises(ChainLinkError):
        ChainLink(tenant="t", sequence=1, digest="XYZ")
    with pytest.raises(ChainLinkError):
        ChainLink(tenant="", sequence=1, digest="00" * 32)


def test_removed_middle_link(chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing) -> None:
    envelopes = _envelopes(chain_of_five)
    del envelopes[2]  # sequence 3
    report = verify_chain(envelopes, receipt_keyring)
    assert report.codes == {ChainCheck.SEQUENCE_GAP}
    assert report.first_broken_sequence == 3
    assert report.problems[0].index == 2
    assert "sequence 3 missing between 2 and 4" in report.problems[0].message
    assert report.verified_through == chain_of_five[1].link


def test_swapped_receipts(chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing) -> None:
    envelopes = _envelopes(chain_of_five)
    envelopes[1], envelopes[2] = envelopes[2], envelopes[1]  # 1,3,2,4,5
    report = verify_chain(envelopes, receipt_keyring)
    assert ChainCheck.SEQUENCE_OUT_OF_ORDER in report.codes
    assert ChainCheck.SEQUENCE_GAP in report.codes
    assert report.first_broken_sequence == 2
    assert report.verified_through == chain_of_five[0].link


def test_edited_receipt_keeping_signature(
    chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing
) -> None:
    envelopes = _envelopes(chain_of_five)
    obj = json.loads(envelopes[2].payload)
    obj["predicate"]["region"] = "us-east-1"
    envelopes[2] = Envelope(canonicalize(obj), IN_TOTO_PAYLOAD_TYPE, envelopes[2].signatures)
    report = verify_chain(envelopes, receipt_keyring)
    assert [(p.code, p.sequence) for p in report.problems] == [
        (ChainCheck.RECEIPT_INVALID, 3),
        (ChainCheck.PREVIOUS_DIGEST_MISMATCH, 4),
    ]
    assert {f.code for f in report.problems[0].receipt_failures} == {ReceiptCheck.SIGNATURE_INVALID}
    assert report.first_broken_sequence == 3


def test_rewritten_and_resigned_receipt_breaks_the_next_link(
    make_receipt_body: ReceiptBodyFactory,
    chain_of_five: list[SignedReceipt],
    receipt_signer: PemSigner,
    receipt_keyring: KeyRing,
) -> None:
    # Even someone holding the signing key cannot rewrite history without breaking a link.
    forged = issue_receipt(
        make_receipt_body(execution_id="forged"), chain_of_five[1].link, receipt_signer
    )
    envelopes = _envelopes(chain_of_five)
    envelopes[2] = forged.envelope
    report = verify_chain(envelopes, receipt_keyring)
    assert [(p.code, p.index, p.sequence) for p in report.problems] == [
        (ChainCheck.PREVIOUS_DIGEST_MISMATCH, 3, 4)
    ]


def test_duplicate_sequence(
    make_receipt_body: ReceiptBodyFactory,
    chain_of_five: list[SignedReceipt],
    receipt_signer: PemSigner,
    receipt_keyring: KeyRing,
) -> None:
    fork = issue_receipt(
        make_receipt_body(execution_id="fork"), chain_of_five[1].link, receipt_signer
    )
    envelopes = _envelopes(chain_of_five)
    envelopes.insert(3, fork.envelope)  # 1,2,3,3',4,5
    report = verify_chain(envelopes, receipt_keyring)
    assert ChainCheck.SEQUENCE_DUPLICATE in report.codes
    assert report.first_broken_sequence == 3
    exact_copy = _envelopes(chain_of_five)
    exact_copy.insert(1, exact_copy[1])
    assert verify_chain(exact_copy, receipt_keyring).codes == {ChainCheck.SEQUENCE_DUPLICATE}


def test_chain_not_starting_at_genesis(
    chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing
) -> None:
    report = verify_chain(_envelopes(chain_of_five)[1:], receipt_keyring)
    assert report.codes == {ChainCheck.CHAIN_START_MISSING}
    assert report.first_broken_sequence == 1
    assert report.verified_through is None


def test_window_after_a_trusted_anchor(
    chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing
) -> None:
    window = _envelopes(chain_of_five)[2:]
    assert verify_chain(window, receipt_keyring, after=chain_of_five[1].link).ok
    wrong_anchor = ChainLink(tenant="tenant-a", sequence=2, digest="00" * 32)
    report = verify_chain(window, receipt_keyring, after=wrong_anchor)
    assert report.codes == {ChainCheck.PREVIOUS_DIGEST_MISMATCH}
    assert report.verified_through == wrong_anchor
    gap = verify_chain(window, receipt_keyring, after=chain_of_five[0].link)
    assert gap.codes == {ChainCheck.SEQUENCE_GAP}
    assert gap.first_broken_sequence == 2


def test_genesis_with_non_empty_previous_digest(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    body = make_receipt_body()
    fields: dict[str, Any] = {name: getattr(body, name) for name in ReceiptBody.model_fields}
    predicate = ReceiptPredicate(**fields, sequence=1, previous_digest="ee" * 32)
    good = build_receipt(body, None)
    statement = ReceiptStatement(subject=good.subject, predicate=predicate)
    signed = sign_receipt(statement, receipt_signer)
    report = verify_chain([signed.envelope], receipt_keyring)
    assert report.codes == {ChainCheck.GENESIS_PREVIOUS_NOT_EMPTY}
    assert report.first_broken_sequence == 1


def test_other_tenants_receipt_in_chain(
    make_receipt_body: ReceiptBodyFactory,
    chain_of_five: list[SignedReceipt],
    receipt_signer: PemSigner,
    receipt_keyring: KeyRing,
) -> None:
    other = _chain(make_receipt_body, receipt_signer, 5, tenant="tenant-b")
    envelopes = _envelopes(chain_of_five)
    envelopes[3] = other[3].envelope
    report = verify_chain(envelopes, receipt_keyring)
    invalid = [p for p in report.problems if p.code is ChainCheck.RECEIPT_INVALID]
    assert [p.sequence for p in invalid] == [4]
    assert {f.code for f in invalid[0].receipt_failures} == {ReceiptCheck.TENANT_MISMATCH}
    assert ChainCheck.PREVIOUS_DIGEST_MISMATCH in report.codes
    assert report.first_broken_sequence == 4


def test_expected_tenant_applies_to_every_receipt(
    chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing
) -> None:
    report = verify_chain(_envelopes(chain_of_five), receipt_keyring, expected_tenant="tenant-b")
    assert report.codes == {ChainCheck.RECEIPT_INVALID}
    assert len(report.problems) == 5
    assert report.first_broken_sequence == 1


def test_unparseable_receipt_in_chain(
    chain_of_five: list[SignedReceipt], receipt_keyring: KeyRing
) -> None:
    rows: list[Envelope | str] = [*_envelopes(chain_of_five)]
    rows[2] = "{not json"
    report = verify_chain(rows, receipt_keyring)
    assert [(p.code, p.index, p.sequence) for p in report.problems] == [
        (ChainCheck.RECEIPT_INVALID, 2, 3)
    ]
    assert report.problems[0].receipt_failures[0].code is ReceiptCheck.ENVELOPE_MALFORMED
    assert report.verified_through == chain_of_five[1].link


def test_unknown_signing_key_in_chain(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner
) -> None:
    receipts = _chain(make_receipt_body, receipt_signer, 3)
    report = verify_chain(_envelopes(receipts), KeyRing([PemSigner.generate().public_key]))
    assert report.codes == {ChainCheck.RECEIPT_INVALID}
    assert all(r.codes == {ReceiptCheck.UNKNOWN_KEY} for r in report.receipts)
