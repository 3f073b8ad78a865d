"""Rule matching through the index, incremental configuration changes, paginated listing.

The index is checked against the matchers' own glob semantics (hypothesis); replication,
targeted plan invalidation and paging run against the real Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from mc_common.errors import InvalidArgument
from mc_limiter.limiter import Limiter
from mc_limiter.rule_index import GlobIndex, RuleIndex, parse_glob
from mc_limiter.rules import Matcher, Rule, parse_rule
from mc_limiter.store import RuleStore
from mc_limiter.throttle import ThrottleLevel

MakeLimiter = Callable[..., Awaitable[Limiter]]

# Small alphabets so that generated patterns and values actually meet.
_CHARS = "ab/."
_pattern = st.lists(
    st.sampled_from(["a", "b", "/", ".", "ab", "ab/", "*", "?", "[ab]", "[!a]", "["]),
    min_size=1,
    max_size=6,
).map("".join)
_value = st.text(alphabet=_CHARS, max_size=8)


def _rule(i: int, tenant: str = "*", token: str = "*", key: str = "*", **extra: Any) -> Rule:
    return parse_rule(
        {
            "id": f"r{i:05d}",
            "scope": "key",
            "match": {"tenant": tenant, "token": token, "key": key},
            "limits": [{"name": "l", "limit": 5, "window_ms": 60_000}],
            **extra,
        }
    )


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(_pattern, min_size=1, max_size=12), values=st.lists(_value, max_size=8))
def test_glob_index_agrees_with_fnmatch(patterns: list[str], values: list[str]) -> None:
    index: GlobIndex[object] = GlobIndex(object)  # a distinct value per pattern
    for pattern in patterns:
        index.setdefault(pattern)
    by_value = {id(index.get(p)): p for p in patterns}
    for value in values:
        found = [by_value[id(v)] for v in index.matching(value)]
        expected = {p for p in patterns if Matcher(key=p).matches("t", "", value)}
        assert sorted(found) == sorted(expected), (value, patterns)  # each match once


@settings(max_examples=200, deadline=None)
@given(
    triples=st.lists(st.tuples(_pattern, _pattern, _pattern), min_size=1, max_size=15),
    removed=st.sets(st.integers(min_value=0, max_value=14)),
    request=st.tuples(_value, _value, _value),
)
def test_rule_index_matches_exactly_the_matching_rules(
    triples: list[tuple[str, str, str]], removed: set[int], request: tuple[str, str, str]
) -> None:
    index = RuleIndex()
    rules = [_rule(i, t, o, k) for i, (t, o, k) in enumerate(triples)]
    for rule in rules:
        index.add(rule)
    for i in removed:
        if i < len(rules):
            index.remove(rules[i])
    kept = [r for i, r in enumerate(rules) if i not in removed]
    assert len(index) == len(kept)
    expected = [r.id for r in kept if r.match.matches(*request)]
    assert [r.id for r in index.match(*request)] == expected


def test_parse_glob_follows_fnmatch_classes() -> None:
    assert parse_glob("a[bc]*") == [(0, "a"), (3, "[bc]"), (1, "*")]
    assert parse_glob("a[b") == [(0, "a[b")]  # unclosed: literal
    assert parse_glob("[]a]x") == [(3, "[]a]"), (0, "x")]
    assert parse_glob("**?") == [(1, "*"), (2, "?")]


async def test_a_write_is_applied_incrementally_on_every_replica(
    make_limiter: MakeLimiter,
) -> None:
    writer = await make_limiter()
    reader = await make_limiter(options={"config_refresh_ms": 3_600_000})
    snapshot = reader.planner.snapshot
    await writer.put_rule(_rule(1, key="/v1/*").model_dump(mode="json"), actor="ops")
    await reader.admin.catch_up()
    assert reader.planner.snapshot is snapshot  # changed in place, not reloaded
    assert [r.id for r in snapshot.rules_for("acme", "", "/v1/x")] == ["r00001"]
    await writer.delete_rule("r00001", actor="ops")
    await writer.set_throttle("acme", ThrottleLevel.HARD, actor="ops")
    await reader.admin.catch_up()
    assert reader.planner.snapshot is snapshot
    assert snapshot.rules_for("acme", "", "/v1/x") == []
    assert reader.throttle_level("acme") is ThrottleLevel.HARD
    assert snapshot.version == await writer.store.version()


async def test_a_replica_behind_the_changelog_reloads_everything(
    make_limiter: MakeLimiter, shared_redis: Redis, prefix: str
) -> None:
    reader = await make_limiter(options={"config_refresh_ms": 3_600_000})
    before = reader.planner.snapshot
    short = RuleStore(shared_redis, prefix, changelog_max=2)
    for i in range(5):
        await short.put_rule(_rule(i, key=f"/k{i}"), "ops")
    await reader.admin.catch_up()
    assert reader.planner.snapshot is not before  # the changelog no longer reached back
    assert sorted(reader.planner.snapshot.rules) == [f"r{i:05d}" for i in range(5)]
    assert reader.planner.snapshot.version == await short.version()


async def test_a_rule_write_forgets_only_the_plans_it_affects(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    await limiter.put_rule(_rule(1, key="/a/*"), actor="ops")
    await limiter.put_rule(_rule(2, key="/b/*"), actor="ops")
    await limiter.check("acme", "", "/a/1")
    await limiter.check("acme", "", "/b/1")
    await limiter.check("other", "", "/b/1")
    kept = limiter.planner.cached("acme", "", "/b/1")
    assert kept is not None and limiter.planner.cached("acme", "", "/a/1") is not None
    await limiter.put_rule(_rule(3, tenant="acme", key="/a/1"), actor="ops")
    assert limiter.planner.cached("acme", "", "/a/1") is None  # the new rule matches it
    assert limiter.planner.cached("acme", "", "/b/1") is kept
    decision = await limiter.check("acme", "", "/a/1")
    assert [r.rule_id for r in decision.results] == ["r00001", "r00003"]
    other = limiter.planner.cached("other", "", "/b/1")
    await limiter.set_throttle("acme", ThrottleLevel.HARD, actor="ops")
    assert limiter.planner.cached("acme", "", "/b/1") is None
    assert limiter.planner.cached("other", "", "/b/1") is other


async def test_list_rules_pages_through_everything(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    for i in range(25):
        tenant = "acme" if i % 3 == 0 else ("*" if i % 3 == 1 else "other")
        await limiter.put_rule(_rule(i, tenant=tenant), actor="ops")

    async def walk(tenant: str | None) -> list[str]:
        ids: list[str] = []
        token = ""
        while True:
            page = await limiter.list_rules(tenant, page_size=4, page_token=token)
            assert len(page.rules) <= 4
            ids += [s.rule.id for s in page.rules]
            token = page.next_page_token
            if not token:
                return ids

    assert await walk(None) == [f"r{i:05d}" for i in range(25)]
    assert await walk("acme") == [f"r{i:05d}" for i in range(25) if i % 3 != 2]
    first = await limiter.list_rules("acme", page_size=4)
    with pytest.raises(InvalidArgument):
        await limiter.list_rules("other", page_size=4, page_token=first.next_page_token)
    with pytest.raises(InvalidArgument):
        await limiter.list_rules(None, page_token="not a token")
    with pytest.raises(InvalidArgument):
        await limiter.list_rules(None, page_size=-1)
