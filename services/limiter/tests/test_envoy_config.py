"""Declarative rules in envoyproxy/ratelimit's format: reading, validation and matching.

Inputs are envoyproxy/ratelimit's own configuration files (tests/data/envoy_ratelimit, see
its README for attribution) and, for invalid files, the structure of its config tests; the
expected lookups follow its config_test.go.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mc_limiter.decisions import CheckRequest
from mc_limiter.descriptors import Invalid
from mc_limiter.envoy_config import (
    ConfigError,
    DomainConfig,
    Fixed,
    load_config,
    load_file,
    load_paths,
    resolve_request,
)
from mc_limiter.rules import Algorithm, Mode

DATA = Path(__file__).parent / "data" / "envoy_ratelimit"


def limit_of(config: DomainConfig, *entries: tuple[str, str]) -> tuple[int, int] | None:
    match = config.resolve(list(entries))
    if match is None or match.node.rate_limit is None:
        return None
    rl = match.node.rate_limit
    return rl.requests_per_unit, rl.window_ms


def errors(source: str, name: str = "f.yaml") -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(source, name)
    return [(v.field, v.description) for v in info.value.violations]


def test_basic_config_lookups_follow_envoyproxy_ratelimit() -> None:
    config = load_file(DATA / "basic_config.yaml")
    assert config.domain == "test-domain"
    # The key alone is the default of its level; a value overrides it.
    assert limit_of(config, ("key1", "value1"), ("subkey1", "x")) == (5, 1_000)
    assert limit_of(config, ("key1", "value1"), ("subkey1", "subvalue1")) == (10, 1_000)
    assert limit_of(config, ("key2", "anything")) == (20, 60_000)
    assert limit_of(config, ("key2", "value2")) == (30, 60_000)
    assert limit_of(config, ("key2", "value3")) is None  # no rate_limit: whitelisted
    # A limit applies only at the node the last entry reaches.
    assert limit_of(config, ("key1", "value1")) is None
    assert limit_of(config, ("key2", "value2"), ("extra", "x")) is None
    assert limit_of(config, ("key5", "value5")) == (15, 86_400_000)
    assert limit_of(config, ("key5", "value5"), ("subkey5", "subvalue5")) == (25, 86_400_000)
    assert limit_of(config, ("nokey", "x")) is None
    unlimited = config.resolve([("key6", "x")])
    assert unlimited is not None and unlimited.node.rate_limit is not None
    assert unlimited.node.rate_limit.unlimited
    named = config.resolve([("key4", "x")])
    assert named is not None and named.node.rate_limit is not None
    assert named.node.rate_limit.name == "key4_rate_limit"


def test_wildcards_match_in_file_order_and_count_each_value() -> None:
    config = load_file(DATA / "wildcard.yaml")
    assert limit_of(config, ("wild", "foo1")) == (20, 60_000)
    assert limit_of(config, ("wild", "bar")) is None
    assert limit_of(config, ("noWild", "foo1")) is None  # no wildcard: exact only
    assert limit_of(config, ("midWild", "barb")) is not None  # * matches the empty string
    assert limit_of(config, ("midWild", "bar123b")) is not None
    assert limit_of(config, ("midWild", "xbarb")) is None
    assert limit_of(config, ("multiWild", "foo123bar456baz")) == (10, 60_000)
    assert limit_of(config, ("multiWild", "foo123baz")) is None
    assert limit_of(config, ("nestedWild", "val1"), ("wild", "goo2")) == (20, 60_000)
    # Counters: the key alone and wildcards count each value separately.
    one, two = config.resolve([("wild", "foo1")]), config.resolve([("wild", "foo2")])
    assert one is not None and two is not None and one.node is two.node and one.key != two.key
    a, b = config.resolve([("noVal", "a")]), config.resolve([("noVal", "b")])
    assert a is not None and b is not None and a.key != b.key


def test_first_wildcard_in_file_order_wins_over_later_ones_and_the_key_alone() -> None:
    config = load_config(
        """
domain: d
descriptors:
  - key: path
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: /api/*
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: /api/v1/*
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: path
    value: /api/v1/jobs
    rate_limit: {unit: second, requests_per_unit: 4}
"""
    )
    assert limit_of(config, ("path", "/api/v1/jobs")) == (4, 1_000)  # exact first
    assert limit_of(config, ("path", "/api/v1/x")) == (2, 1_000)  # first wildcard in file
    assert limit_of(config, ("path", "/other")) == (1, 1_000)  # then the key alone


def test_share_threshold_makes_wildcard_values_share_a_counter() -> None:
    config = load_config(
        """
domain: d
descriptors:
  - key: files
    value: docs/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 10}
"""
    )
    one, two = config.resolve([("files", "docs/a")]), config.resolve([("files", "docs/b")])
    assert one is not None and two is not None and one.key == two.key


def test_shadow_mode_and_mc_extensions_become_rule_settings() -> None:
    config = load_file(DATA / "shadowmode_config.yaml")
    modes = {r.description: r.mode for r in config.rules()}
    assert modes["test-domain: key2"] is Mode.SHADOW
    assert modes["test-domain: key2=value2"] is Mode.ENFORCE
    extended = load_config(
        """
domain: d
descriptors:
  - key: tenant
    rate_limit:
      unit: second
      requests_per_unit: 10
      mc: {algorithm: gcra, burst: 20, failure_mode: fail_closed, local_fallback: false}
  - key: region
    rate_limit:
      unit: minute
      requests_per_unit: 600
      mc: {sub_windows: 6, multi_region: true}
"""
    )
    gcra, sliding = extended.rules()
    assert gcra.limits[0].algorithm is Algorithm.GCRA and gcra.limits[0].burst == 20
    assert not gcra.local_fallback
    assert sliding.multi_region and sliding.limits[0].sub_windows == 6
    # Ids are stable across loads, distinct per node.
    again = load_config(extended.source)
    assert [r.id for r in again.rules()] == [r.id for r in extended.rules()]
    assert len({r.id for r in extended.rules()}) == 2


def test_the_upstream_example_is_read_except_quota_mode() -> None:
    with pytest.raises(ConfigError) as info:
        load_file(DATA / "example.yaml")
    found = [(v.field.rsplit(":", 1)[1], v.description) for v in info.value.violations]
    assert found == [
        ("89", "quota_mode is not supported by MC (ADR 0017)"),
        ("98", "quota_mode is not supported by MC (ADR 0017)"),
    ]
    source = (DATA / "example.yaml").read_text()
    without_quota = source.replace("    quota_mode: true\n", "")
    config = load_config(without_quota, "example.yaml")
    assert limit_of(config, ("foo", "x"), ("bar", "bkthomps")) == (1, 60_000)
    assert limit_of(config, ("foo", "x"), ("bar", "banned")) == (0, 60_000)
    assert limit_of(config, ("source_cluster", "proxy"), ("destination_cluster", "mock")) == (
        1,
        60_000,
    )


def test_replaces_unlimited_and_banned_across_a_requests_descriptors() -> None:
    config = load_config((DATA / "example.yaml").read_text().replace("    quota_mode: true\n", ""))
    entries = [
        [("foo", "x"), ("bar", "bkthomps")],  # name bkthomps: replaced by the next one
        [("source_cluster", "proxy"), ("destination_cluster", "bkthomps")],  # replaces it
        [("foo", "x"), ("bar", "banned")],  # 0 per unit, but replaced by "override"
        [("source_cluster", "proxy"), ("destination_cluster", "override")],
        [("qux", "x")],  # unlimited
        [("nothing", "here")],  # no limit
        [("foo", "x"), ("baz", "shady")],  # shadow mode: counted, never denies
    ]
    mapped: list[CheckRequest | Invalid] = [
        CheckRequest("envoy.rl", "", f"rl:{i}", 1) for i in range(len(entries))
    ]
    out = resolve_request(config, entries, mapped)
    assert isinstance(out[0], Fixed) and not out[0].over_limit
    assert isinstance(out[1], CheckRequest) and out[1].key.startswith(":envoy.rl.")
    assert isinstance(out[2], Fixed) and not out[2].over_limit
    assert isinstance(out[3], CheckRequest)
    assert isinstance(out[4], Fixed) and not out[4].over_limit
    assert isinstance(out[5], Fixed) and not out[5].over_limit
    assert isinstance(out[6], CheckRequest)
    banned = resolve_request(config, [[("foo", "x"), ("bar", "banned")]], mapped[:1])
    assert banned == [Fixed(True, config.resolve([("foo", "x"), ("bar", "banned")]).node)]  # type: ignore[union-attr]
    invalid = resolve_request(config, [[("qux", "x")]], [Invalid("bad")])
    assert invalid == [Invalid("bad")]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (  # upstream bad_limit_unit
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: foo\n"
            "      requests_per_unit: 5\n",
            [("f.yaml:5", "invalid rate limit unit 'foo'")],
        ),
        (  # upstream misspelled_key
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n    ratelimit:\n      unit: day\n",
            [("f.yaml:5", "unknown key 'ratelimit' in a descriptor")],
        ),
        (  # misplaced: a rate_limit field at descriptor level
            "domain: d\ndescriptors:\n  - key: k\n    unit: second\n",
            [("f.yaml:4", "'unit' does not belong in a descriptor (it belongs in rate_limit)")],
        ),
        (  # upstream duplicate_key
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
            [("f.yaml:5", "duplicate descriptor composite key 'd.k_v'")],
        ),
        (  # upstream non_map_list
            "domain: d\ndescriptors:\n  - a\n",
            [("f.yaml:3", "a descriptor must be a mapping")],
        ),
        (  # upstream unlimited_with_unit
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n"
            "      unit: day\n",
            [("f.yaml:6", "should not specify rate limit unit when unlimited")],
        ),
        (  # upstream replaces_self
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: self\n"
            "      unit: second\n      replaces:\n        - name: self\n",
            [("f.yaml:8", "replaces should not contain name of same descriptor")],
        ),
        (  # upstream empty_key
            "domain: d\ndescriptors:\n  - value: v\n",
            [("f.yaml:3", "descriptor has empty key")],
        ),
        ("descriptors: []\n", [("f.yaml:1", "domain is required")]),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n"
            "      mc: {algorithm: gcra, multi_region: true}\n",
            [("f.yaml:6", "multi_region needs the sliding_window algorithm")],
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    share_threshold: true\n",
            [("f.yaml:4", "share_threshold needs a wildcard value")],
        ),
    ],
)
def test_invalid_files_name_the_file_line_and_reason(
    source: str, expected: list[tuple[str, str]]
) -> None:
    assert errors(source) == expected


def test_yaml_syntax_errors_name_the_line() -> None:
    [(where, reason)] = errors("domain: d\ndescriptors: [\n")
    assert where == "f.yaml:3" and reason.startswith("not valid YAML: ")


def test_load_paths_reads_directories_and_refuses_a_domain_twice(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("domain: a\n")
    (tmp_path / "b.yml").write_text("domain: b\n")
    (tmp_path / "notes.txt").write_text("not a rules file")
    assert [c.domain for c in load_paths([tmp_path])] == ["a", "b"]
    (tmp_path / "c.yaml").write_text("domain: a\n")
    with pytest.raises(ConfigError):
        load_paths([tmp_path])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_a_config_error(source: str) -> None:
    try:
        load_config(source, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.violations and all(v.field.startswith("fuzz.yaml:") for v in exc.violations)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["domain", "descriptors", "key", "value", "rate_limit", "unit", "x", "mc"]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_any_yaml_structure_is_a_config_or_a_config_error(data: object) -> None:
    import yaml

    try:
        load_config(yaml.safe_dump(data), "fuzz.yaml")
    except ConfigError as exc:
        assert exc.violations


def test_the_last_good_configuration_keeps_declarative_domains() -> None:
    from mc_limiter.config_cache import decode, encode
    from mc_limiter.store import ConfigSnapshot, StoredDomain

    snapshot = ConfigSnapshot()
    config = load_file(DATA / "basic_config.yaml")
    snapshot.set_domain(config.domain, StoredDomain(config, 3, 1, "ops"))
    restored = decode(encode(snapshot))
    assert restored.domains["test-domain"].revision == 3
    assert sorted(restored.rules) == sorted(snapshot.rules) == sorted(r.id for r in config.rules())
    assert restored.rules_for("envoy.test-domain", "", f":{config.rules()[0].id}:k=v")


def test_a_descriptors_own_limit_comes_before_the_tree() -> None:
    from mc_limiter.rules import Limit

    config = load_file(DATA / "basic_config.yaml")
    own = Limit(name="override", limit=3, window_ms=1_000, algorithm=Algorithm.SLIDING_WINDOW)
    check = CheckRequest("envoy.test-domain", "", "test-domain:key2=value2", 1, own)
    assert resolve_request(config, [[("key2", "value2")]], [check]) == [check]


def test_dev_up_applies_the_rules_directory_when_there_is_one(tmp_path: Path) -> None:
    from mc_common.manifest import DevContext
    from mc_limiter.manifest import DEV_RULES_DIR, dev_env

    context = DevContext("postgresql://x", "redis://x", "kafka:9092", tmp_path)
    assert "RULE_FILES" not in dev_env(context)
    (tmp_path / DEV_RULES_DIR).mkdir()
    assert dev_env(context)["RULE_FILES"] == str(tmp_path / DEV_RULES_DIR)


def test_hostile_files_cost_bounded_work() -> None:
    from mc_limiter.envoy_config import MAX_ERRORS

    unknown = "domain: d\n" + "".join(f"k{i}: 1\n" for i in range(1_000))
    assert len(errors(unknown)) == MAX_ERRORS
    names = "".join(f"  - {{name: n{i}}}\n" for i in range(10_000))
    aliased = f"domain: d\nx: &names\n{names}descriptors:\n" + "".join(
        f"  - key: k{i}\n    rate_limit: {{unit: second, replaces: *names}}\n" for i in range(2_000)
    )
    found = errors(aliased)
    assert found[0] == ("f.yaml:2", "unknown key 'x' in the file")
    assert all("replaces lists at most" in reason for _, reason in found[1:])
