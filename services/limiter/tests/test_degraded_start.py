"""A limiter whose config Redis is unreachable at start-up starts anyway, serving the last good
configuration it saved (degraded), and reloads from the store once it answers. It used to
exit, a crash loop under Kubernetes. Real redis-server processes, killed and restarted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from limiter_support import gcra

from mc_limiter.app import LimiterApp
from mc_limiter.errors import NoMatchingRuleError
from mc_limiter.settings import LimiterSettings

SHARED = "redis://127.0.0.1:6379/0"


async def eventually(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait for ``condition`` (the limiter's refresh loop reloads about every second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met before the deadline")


async def test_starts_from_the_saved_configuration_and_recovers(
    redis_servers: Callable[[], Any], prefix: str, shared_redis: Any, tmp_path: Path
) -> None:
    config = redis_servers()
    settings = LimiterSettings(
        redis_urls=[SHARED],
        config_redis_url=config.url,
        key_prefix=prefix,
        fairshare_key_prefix=f"{prefix}fs",
        config_snapshot_path=str(tmp_path / "limiter-config.json"),
    )
    first = await LimiterApp.create(settings)
    try:
        await first.limiter.put_rule(
            {"id": "r", "scope": "key", "limits": [gcra("g", 2)]}, actor="ops"
        )
        await first.limiter.set_throttle("slow", "moderate", actor="ops")
    finally:
        await first.close()
    config.kill()

    app = await LimiterApp.create(settings)  # used to raise Unavailable
    try:
        assert app.limiter.admin.stale
        assert app.registry.get_sample_value("mc_rl_config_stale") == 1
        decisions = [await app.limiter.check("acme", "", "k") for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert app.limiter.throttle_level("slow") == "moderate"

        config.start()  # back, empty: the store is the truth again once it answers
        await eventually(lambda: not app.limiter.admin.stale)
        assert app.registry.get_sample_value("mc_rl_config_stale") == 0
        with pytest.raises(NoMatchingRuleError):
            await app.limiter.check("acme", "", "k")
    finally:
        await app.close()


async def test_starts_with_no_rules_when_nothing_was_saved(
    redis_servers: Callable[[], Any], prefix: str, shared_redis: Any
) -> None:
    config = redis_servers()
    config.kill()
    settings = LimiterSettings(
        redis_urls=[SHARED],
        config_redis_url=config.url,
        key_prefix=prefix,
        fairshare_key_prefix=f"{prefix}fs",
        unmatched="allow",
    )
    app = await LimiterApp.create(settings)
    try:
        assert app.limiter.admin.stale
        assert (await app.limiter.check("acme", "", "k")).allowed
    finally:
        await app.close()


async def test_an_unreadable_snapshot_is_ignored(
    redis_servers: Callable[[], Any], prefix: str, shared_redis: Any, tmp_path: Path
) -> None:
    config = redis_servers()
    config.kill()
    saved = tmp_path / "limiter-config.json"
    saved.write_bytes(b"\x00 not json")
    settings = LimiterSettings(
        redis_urls=[SHARED],
        config_redis_url=config.url,
        key_prefix=prefix,
        fairshare_key_prefix=f"{prefix}fs",
        config_snapshot_path=str(saved),
    )
    app = await LimiterApp.create(settings)
    try:
        assert app.limiter.admin.stale
        with pytest.raises(NoMatchingRuleError):
            await app.limiter.check("acme", "", "k")
    finally:
        await app.close()
