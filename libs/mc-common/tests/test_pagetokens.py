"""Page tokens are opaque, authenticated, and bound to tenant, listing and filter."""

from __future__ import annotations

import base64

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mc_common.pagetokens import PageTokenError, PageTokens

KEY = b"k" * 32
tokens = PageTokens([KEY])


def test_round_trip_and_first_page() -> None:
    token = tokens.issue(["2026-01-01T00:00:00+00:00", "e1"], tenant="acme", listing="x")
    assert tokens.open(token, tenant="acme", listing="x") == ["2026-01-01T00:00:00+00:00", "e1"]
    assert tokens.open("", tenant="acme", listing="x") is None
    assert len(tokens.issue([2**62, "z" * 180], tenant="t", listing="l")) <= 512


@pytest.mark.parametrize(
    "binding",
    [
        {"tenant": "globex", "listing": "x", "filters": {"execution_id": "e"}},
        {"tenant": "acme", "listing": "y", "filters": {"execution_id": "e"}},
        {"tenant": "acme", "listing": "x", "filters": {"execution_id": "f"}},
        {"tenant": "acme", "listing": "x", "filters": {}},
    ],
)
def test_a_token_only_opens_its_own_binding(binding: dict[str, object]) -> None:
    token = tokens.issue([7], tenant="acme", listing="x", filters={"execution_id": "e"})
    with pytest.raises(PageTokenError) as err:
        tokens.open(token, **binding)  # type: ignore[arg-type]
    assert err.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.violations[0].field == "page_token"


def test_rotation_old_keys_verify_new_key_signs() -> None:
    old = PageTokens([b"o" * 32])
    rotated = PageTokens([b"n" * 32, b"o" * 32])
    token = old.issue([1], tenant="t", listing="l")
    assert rotated.open(token, tenant="t", listing="l") == [1]
    with pytest.raises(PageTokenError):
        old.open(rotated.issue([1], tenant="t", listing="l"), tenant="t", listing="l")


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        PageTokens([b"short"])
    with pytest.raises(ValueError):
        PageTokens([])


@given(st.text(max_size=200))
def test_any_string_is_a_typed_error_or_a_position(text: str) -> None:
    try:
        tokens.open(text, tenant="t", listing="l")
    except PageTokenError:
        pass


@given(st.binary(max_size=120))
def test_forged_bytes_never_open(raw: bytes) -> None:
    forged = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(PageTokenError):
        tokens.open(forged or "A", tenant="t", listing="l")
