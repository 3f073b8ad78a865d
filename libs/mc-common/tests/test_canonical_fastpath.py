"""The fast path of `canonicalize` (pydantic-core's JSON writer) gives exactly the general
RFC 8785 writer's bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mc_common.receipts.canonical import MAX_SAFE_INTEGER, _write, canonicalize

keys = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=30,
)


def slow(value: object) -> bytes:
    parts: list[str] = []
    _write(value, parts, "$")
    return "".join(parts).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fast_path_matches_general_writer(value: object) -> None:
    assert canonicalize(value) == slow(value)


def test_keys_that_sort_differently_in_utf16_use_the_general_writer() -> None:
    value = {"\U0001f600": 1, "\ufb01": 2}  # code-point order and UTF-16 order disagree
    assert canonicalize(value) == slow(value)
    assert canonicalize(value).index("\ufb01".encode()) > canonicalize(value).index(
        "\U0001f600".encode()
    )


def test_string_escapes_are_ecmascript_ones() -> None:
    text = "".join(map(chr, range(0x20))) + '"\\/\x7f\x80\u2028\u2029\U0001f600'
    value = {"k": [text], text: text}
    assert canonicalize(value) == slow(value)
    assert b"\\u001f" in canonicalize(value) and b"\\n" in canonicalize(value)
