"""Path templates and request building as properties (hypothesis): what a template produces it
matches back; nothing a client sends makes request building fail other than InvalidArgument."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mc_common.errors import InvalidArgument
from mc_gateway import transcode
from mc_gateway.descriptors import load_api
from mc_gateway.templates import PathTemplate, TemplateError

LITERAL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8)
# "%" excluded: a literal "%2F" in a value is indistinguishable from an encoded slash.
VALUE = st.text(min_size=1, max_size=20).filter(lambda v: "%" not in v)
API = load_api()


@given(
    prefix=st.lists(LITERAL, min_size=1, max_size=3),
    collection=LITERAL,
    values=st.tuples(VALUE, VALUE),
    verb=st.none() | LITERAL,
)
def test_a_resource_name_template_matches_what_it_describes(
    prefix: list[str], collection: str, values: tuple[str, str], verb: str | None
) -> None:
    source = "/" + "/".join(prefix) + f"/{{name=tenants/*/{collection}/*}}"
    source += f":{verb}" if verb else ""
    template = PathTemplate.parse(source)
    tenant, item = (quote(v, safe="") for v in values)
    path = "/" + "/".join(prefix) + f"/tenants/{tenant}/{collection}/{item}"
    path += f":{verb}" if verb else ""
    found = template.match(path)
    assert found is not None
    # A multi-segment variable is decoded except for encoded slashes, which stay %2F.
    v0, v1 = (v.replace("/", "%2F") for v in values)
    assert found["name"] == f"tenants/{v0}/{collection}/{v1}"
    single = PathTemplate.parse("/" + "/".join(prefix) + "/{id}")
    assert single.match("/" + "/".join(prefix) + f"/{tenant}") == {"id": values[0]}


@given(st.text(max_size=60))
def test_template_parsing_refuses_or_accepts_never_crashes(source: str) -> None:
    try:
        PathTemplate.parse(source)
    except TemplateError:
        pass


@given(st.text(max_size=80))
def test_matching_any_path_returns_a_match_or_none(path: str) -> None:
    for binding in API.bindings:
        binding.template.match(path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize("rpc", ["RecordReceipt", "PutRule", "Check", "ListReceipts"])
@settings(max_examples=60, deadline=None)
@given(body=JSON, query=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=3))
def test_any_body_or_query_is_a_request_or_invalid_argument(
    rpc: str, body: object, query: list[tuple[str, str]]
) -> None:
    import json

    binding = next(b for b in API.bindings if b.rpc.name == rpc)
    path_vars = {v.field_path: "x" for v in binding.template.variables}
    raw = json.dumps(body).encode() if binding.body else b""
    try:
        transcode.build_request(binding, path_vars, query, raw)
    except InvalidArgument:
        pass
