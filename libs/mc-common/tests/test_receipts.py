"""Tests for receipt canonicalization, the strict receipt model, and single-receipt verification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mc_common.receipts import (
    MAX_SAFE_INTEGER,
    CanonicalizationError,
    Cost,
    FloatNotAllowedError,
    JsonFormatError,
    PackageRef,
    ReceiptBody,
    ReceiptCheck,
    ReceiptStatement,
    ReceiptVerificationError,
    Step,
    Timing,
    build_receipt,
    canonical_digest,
    canonicalize,
    is_canonical,
    issue_receipt,
    parse_json_strict,
    rfc3339_sort_key,
    utc_timestamp,
    utc_timestamp_at,
    verify_receipt,
)
from mc_common.signing import (
    IN_TOTO_PAYLOAD_TYPE,
    Envelope,
    KeyRing,
    PemSigner,
    Signature,
    sign_envelope,
)

ReceiptBodyFactory = Callable[..., ReceiptBody]

# --- canonical JSON (RFC 8785) ------------------------------------------------------------


def test_keys_sorted_and_no_whitespace() -> None:
    assert canonicalize({"b": 1, "a": [True, None, "x"], "c": {"z": 0, "y": -3}}) == (
        b'{"a":[true,null,"x"],"b":1,"c":{"y":-3,"z":0}}'
    )


def test_nested_objects_sorted_at_every_level() -> None:
    assert canonicalize({"outer": {"b": {"d": 1, "c": 2}, "a": []}}) == (
        b'{"outer":{"a":[],"b":{"c":2,"d":1}}}'
    )


def test_rfc8785_utf16_key_ordering() -> None:
    # RFC 8785 section 3.2.3: members are sorted by UTF-16 code units, so U+1F600 (a
    # surrogate pair starting 0xD83D) sorts before U+FB33, unlike code-point order.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    order = list(json.loads(canonicalize(value)).values())
    assert order == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


def test_string_escaping_matches_ecmascript() -> None:
    text = "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/\u2028\u007f\u00e9"
    assert canonicalize(text) == (
        '"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/\u2028\u007f\u00e9"'.encode()
    )
    assert canonicalize("\b\f\t\r\u0001") == b'"\\b\\f\\t\\r\\u0001"'


def test_non_ascii_written_as_raw_utf8() -> None:
    assert canonicalize({"t\u00e9nant": "\u5317\u4eac \U0001f680"}) == (
        '{"t\u00e9nant":"\u5317\u4eac \U0001f680"}'.encode()
    )


@pytest.mark.parametrize("value", [1.0, {"a": [0.5]}, {"cost": float("nan")}, [1e100]])
def test_floats_rejected(value: object) -> None:
    with pytest.raises(FloatNotAllowedError) as excinfo:
        canonicalize(value)
    assert excinfo.value.code == "FLOAT_NOT_ALLOWED"


@pytest.mark.parametrize(
    "value",
    [MAX_SAFE_INTEGER + 1, {"a": -(2**60)}, {1: "int key"}, "\ud800", {"\udfff": 1}, b"bytes"],
)
def test_non_canonicalizable_values_rejected(value: object) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize(value)


def test_integers_and_booleans() -> None:
    assert canonicalize([0, -1, MAX_SAFE_INTEGER, True, False]) == (
        b"[0,-1,9007199254740991,true,false]"
    )


@pytest.mark.parametrize(
    ("document", "error"),
    [
        (b'{"a":1.0}', FloatNotAllowedError),
        (b'{"a":1e2}', FloatNotAllowedError),
        (b'{"a":NaN}', JsonFormatError),
        (b'{"a":Infinity}', JsonFormatError),
        (b'{"a":1,"a":2}', JsonFormatError),
        (b"\xef\xbb\xbf{}", JsonFormatError),
        (b'{"a":"\xff"}', JsonFormatError),
        (b"{", JsonFormatError),
        (b'{"a":99999999999999999999}', JsonFormatError),
    ],
)
def test_strict_parser_rejects(document: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_json_strict(document)


def test_is_canonical() -> None:
    assert is_canonical(b'{"a":1,"b":[2]}')
    assert not is_canonical(b'{"b":[2],"a":1}')
    assert not is_canonical(b'{"a": 1}')
    assert not is_canonical(b'{"a":-0}')
    assert not is_canonical(b'{"a":"\\u0041"}')
    assert not is_canonical(b'{"a":"\\ud800"}')
    assert canonical_digest({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()


# --- model -------------------------------------------------------------------------------


def test_timestamps() -> None:
    moment = datetime(2025, 1, 31, 13, 0, 0, 250000, tzinfo=timezone(timedelta(hours=1)))
    assert utc_timestamp(moment) == "2025-01-31T12:00:00.250000Z"
    assert utc_timestamp(moment.replace(microsecond=0)) == "2025-01-31T12:00:00Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        utc_timestamp(datetime(2025, 1, 1))
    assert rfc3339_sort_key("2025-01-01T00:00:00.5Z") > rfc3339_sort_key("2025-01-01T00:00:00Z")


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 1), timezones=st.just(UTC)))
def test_timestamp_from_epoch_seconds_is_the_same_text(moment: datetime) -> None:
    since = moment - datetime(1970, 1, 1, tzinfo=UTC)
    seconds = since.days * 86_400 + since.seconds
    assert utc_timestamp_at(seconds, since.microseconds) == utc_timestamp(moment)


@pytest.mark.parametrize(
    "stamp",
    ["2025-01-31T12:00:00+00:00", "2025-01-31 12:00:00Z", "2025-13-01T00:00:00Z", "yesterday"],
)
def test_timestamps_must_be_rfc3339_utc(stamp: str) -> None:
    with pytest.raises(ValidationError):
        Timing(started_at=stamp, finished_at="2026-01-01T00:00:00Z")


def test_finished_before_started_rejected() -> None:
    with pytest.raises(ValidationError, match="before started_at"):
        Timing(started_at="2025-01-31T12:00:01Z", finished_at="2025-01-31T12:00:00.999Z")
    with pytest.raises(ValidationError, match="step s"):
        Step(
            name="s",
            status="succeeded",
            started_at="2025-01-31T12:00:01Z",
            finished_at="2025-01-31T12:00:00Z",
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"currency": "USD", "amount_micros": 1.5},
        {"currency": "USD", "amount_micros": "100"},
        {"currency": "USD", "amount_micros": -1},
        {"currency": "USD", "amount_micros": True},
        {"currency": "usd", "amount_micros": 1},
        {"currency": "USD", "amount_micros": 1, "amount": 1},
    ],
)
def test_cost_is_strict_integer_micros(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Cost(**kwargs)


def test_model_rejects_bad_fields(make_receipt_body: ReceiptBodyFactory) -> None:
    with pytest.raises(ValidationError):
        PackageRef(name="p", version="1", digest="AB" * 32)
    with pytest.raises(ValidationError):
        make_receipt_body(tenant="")
    with pytest.raises(ValidationError):
        make_receipt_body(unexpected="field")
    with pytest.raises(ValidationError):
        Step(
            name="s",
            status="exploded",  # type: ignore[arg-type]
            started_at="2025-01-31T12:00:00Z",
            finished_at="2025-01-31T12:00:00Z",
        )


# --- signed receipts -----------------------------------------------------------------------


def _statement(make_receipt_body: ReceiptBodyFactory, **overrides: Any) -> ReceiptStatement:
    return build_receipt(make_receipt_body(**overrides), None)


def test_statement_shape(make_receipt_body: ReceiptBodyFactory) -> None:
    obj = json.loads(_statement(make_receipt_body).canonical_bytes())
    assert obj["_type"] == "https://in-toto.io/Statement/v1"
    assert obj["predicateType"] == "https://maestro-conductor.dev/receipt/v1"
    assert obj["subject"] == [
        {"name": "etl/daily@1.4.2", "digest": {"sha256": "ab" * 32}},
        {"name": "extract/rows.parquet", "digest": {"sha256": "cd" * 32}},
    ]
    predicate = obj["predicate"]
    assert predicate["sequence"] == 1
    assert predicate["previous_digest"] == ""
    assert predicate["cost"] == {"currency": "USD", "amount_micros": 12_500_000}
    assert predicate["steps"][1]["outputs"] == []


def test_round_trip(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    signed = issue_receipt(make_receipt_body(), None, receipt_signer)
    assert signed.envelope.payload_type == IN_TOTO_PAYLOAD_TYPE
    assert signed.envelope.payload == signed.statement.canonical_bytes()
    assert signed.digest == hashlib.sha256(signed.envelope.payload).hexdigest()
    assert signed.digest == signed.statement.digest()
    for form in (signed.envelope, signed.envelope.to_json(), signed.envelope.to_json().encode()):
        report = verify_receipt(
            form, receipt_keyring, expected_tenant="tenant-a", expected_digest=signed.digest
        )
        assert report.ok, report.failures
        assert report.codes == frozenset()
        assert report.statement == signed.statement
        assert report.key_ids == (receipt_signer.key_id,)
        assert report.raise_if_invalid() == signed.statement


def _codes(envelope: Envelope | str, keyring: KeyRing, **kwargs: Any) -> frozenset[ReceiptCheck]:
    return verify_receipt(envelope, keyring, **kwargs).codes


def test_flipped_signature_byte(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    env = issue_receipt(make_receipt_body(), None, receipt_signer).envelope
    sig = bytearray(env.signatures[0].sig)
    sig[10] ^= 0x80
    bad = Envelope(env.payload, env.payload_type, (Signature(env.signatures[0].keyid, bytes(sig)),))
    assert _codes(bad, receipt_keyring) == {ReceiptCheck.SIGNATURE_INVALID}


def test_edited_predicate_with_original_signature(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    signed = issue_receipt(make_receipt_body(), None, receipt_signer)
    obj = json.loads(signed.envelope.payload)
    obj["predicate"]["cost"]["amount_micros"] = 1
    edited = Envelope(canonicalize(obj), IN_TOTO_PAYLOAD_TYPE, signed.envelope.signatures)
    report = verify_receipt(edited, receipt_keyring, expected_digest=signed.digest)
    assert report.codes == {ReceiptCheck.SIGNATURE_INVALID, ReceiptCheck.DIGEST_MISMATCH}
    assert report.statement is None
    assert report.parsed_statement is not None
    with pytest.raises(ReceiptVerificationError) as excinfo:
        report.raise_if_invalid()
    assert excinfo.value.code == "SIGNATURE_INVALID"
    assert set(excinfo.value.failed_codes) == {"SIGNATURE_INVALID", "DIGEST_MISMATCH"}


def test_wrong_tenant(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    env = issue_receipt(make_receipt_body(), None, receipt_signer).envelope
    report = verify_receipt(env, receipt_keyring, expected_tenant="tenant-b")
    assert report.codes == {ReceiptCheck.TENANT_MISMATCH}
    assert "tenant-a" in report.failures[0].message


def test_unknown_key(make_receipt_body: ReceiptBodyFactory, receipt_keyring: KeyRing) -> None:
    env = issue_receipt(make_receipt_body(), None, PemSigner.generate()).envelope
    assert _codes(env, receipt_keyring) == {ReceiptCheck.UNKNOWN_KEY}


def test_no_signatures(make_receipt_body: ReceiptBodyFactory, receipt_keyring: KeyRing) -> None:
    payload = _statement(make_receipt_body).canonical_bytes()
    env = Envelope(payload, IN_TOTO_PAYLOAD_TYPE, ())
    assert _codes(env, receipt_keyring) == {ReceiptCheck.NO_SIGNATURES}


def test_expected_digest_mismatch(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    env = issue_receipt(make_receipt_body(), None, receipt_signer).envelope
    assert _codes(env, receipt_keyring, expected_digest="00" * 32) == {ReceiptCheck.DIGEST_MISMATCH}


def test_validly_signed_but_not_canonical(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    obj = _statement(make_receipt_body).to_json_obj()
    pretty = json.dumps(obj, indent=2).encode()
    env = sign_envelope(pretty, IN_TOTO_PAYLOAD_TYPE, receipt_signer)
    assert _codes(env, receipt_keyring) == {ReceiptCheck.PAYLOAD_NOT_CANONICAL}


def test_validly_signed_float_payload(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    text = _statement(make_receipt_body).canonical_bytes().replace(b"12500000", b"12.5")
    env = sign_envelope(text, IN_TOTO_PAYLOAD_TYPE, receipt_signer)
    report = verify_receipt(env, receipt_keyring)
    assert report.codes == {ReceiptCheck.PAYLOAD_MALFORMED}
    assert "12.5" in report.failures[0].message


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("predicateType", "https://slsa.dev/provenance/v1", ReceiptCheck.WRONG_PREDICATE_TYPE),
        ("_type", "https://in-toto.io/Statement/v0.1", ReceiptCheck.WRONG_STATEMENT_TYPE),
        ("subject", [], ReceiptCheck.PAYLOAD_MALFORMED),
        ("extra", "field", ReceiptCheck.PAYLOAD_MALFORMED),
    ],
)
def test_validly_signed_wrong_statement(
    make_receipt_body: ReceiptBodyFactory,
    receipt_signer: PemSigner,
    receipt_keyring: KeyRing,
    field: str,
    value: object,
    code: ReceiptCheck,
) -> None:
    obj = _statement(make_receipt_body).to_json_obj()
    obj[field] = value
    env = sign_envelope(canonicalize(obj), IN_TOTO_PAYLOAD_TYPE, receipt_signer)
    assert _codes(env, receipt_keyring) == {code}


def test_validly_signed_predicate_missing_field(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    obj = _statement(make_receipt_body).to_json_obj()
    predicate = obj["predicate"]
    assert isinstance(predicate, dict)
    del predicate["region"]
    env = sign_envelope(canonicalize(obj), IN_TOTO_PAYLOAD_TYPE, receipt_signer)
    report = verify_receipt(env, receipt_keyring)
    assert report.codes == {ReceiptCheck.PAYLOAD_MALFORMED}
    assert "predicate.region" in report.failures[0].message


def test_wrong_payload_type(
    make_receipt_body: ReceiptBodyFactory, receipt_signer: PemSigner, receipt_keyring: KeyRing
) -> None:
    payload = _statement(make_receipt_body).canonical_bytes()
    env = sign_envelope(payload, "application/json", receipt_signer)
    assert _codes(env, receipt_keyring) == {ReceiptCheck.WRONG_PAYLOAD_TYPE}


@pytest.mark.parametrize("document", ["", "{}", '{"payload":"!!","payloadType":"t"}', "[1]"])
def test_malformed_envelope(document: str, receipt_keyring: KeyRing) -> None:
    report = verify_receipt(document, receipt_keyring)
    assert report.codes == {ReceiptCheck.ENVELOPE_MALFORMED}
    assert report.digest is None
    with pytest.raises(ReceiptVerificationError) as excinfo:
        report.raise_if_invalid()
    assert excinfo.value.code == "ENVELOPE_MALFORMED"


def test_payload_not_json(receipt_signer: PemSigner, receipt_keyring: KeyRing) -> None:
    env = sign_envelope(b"\xff not json", IN_TOTO_PAYLOAD_TYPE, receipt_signer)
    assert _codes(env, receipt_keyring) == {ReceiptCheck.PAYLOAD_MALFORMED}
    env = sign_envelope(b"[]", IN_TOTO_PAYLOAD_TYPE, receipt_signer)
    assert _codes(env, receipt_keyring) == {ReceiptCheck.PAYLOAD_MALFORMED}


def test_several_failures_reported_together(
    make_receipt_body: ReceiptBodyFactory, receipt_keyring: KeyRing
) -> None:
    obj = _statement(make_receipt_body).to_json_obj()
    obj["predicateType"] = "other"
    env = sign_envelope(json.dumps(obj).encode(), "text/plain", PemSigner.generate())
    assert _codes(env, receipt_keyring, expected_tenant="x", expected_digest="0" * 64) == {
        ReceiptCheck.UNKNOWN_KEY,
        ReceiptCheck.WRONG_PAYLOAD_TYPE,
        ReceiptCheck.DIGEST_MISMATCH,
        ReceiptCheck.PAYLOAD_NOT_CANONICAL,
        ReceiptCheck.WRONG_PREDICATE_TYPE,
    }
