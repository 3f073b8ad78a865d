"""Region-aware global limits: each region decides locally and shares its usage with its peers.

A region is one limiter deployment with its own Redis shards. For a ``multi_region`` rule
(sliding window) every region counts its own admissions in its own counter key, and a
background loop (every ``interval_ms``, ~100-200 ms) copies the per-slot counts of every
recently used counter into each peer's Redis under ``<counter key>:rm:<this region>``
(replaced atomically with MULTI, TTL one window plus one slot), together with the read time
``at`` and this region's average rate over the live slots. The Lua check adds the remote slots
to the local ones, plus the peer's use since ``at``, taken as the larger of
- its average rate times the time since ``at`` (at most one window), and
- what this region used meanwhile: counted exactly from when the check first saw the
  publication (it marks its own slot and count then in the remote hash, ``s0``/``b0``), and
  from ``at`` with the older part of ``at``'s slot pro rata.
The second term assumes each peer spends freed capacity as fast as this region does. With
several sub-windows freed capacity arrives in bursts (one window after the bursts that used
it), which the average rate misses: every region then spent the same burst, and the excess fed
itself window after window (up to 1.4x the limit measured with 4-24 sub-windows). Mirroring
caps each region at its share of what frees up; an idle peer costs the others at most half of
the capacity freed during one sync interval, returned at the next sync. See ADR 0022.

Accuracy: two regions hammered concurrently (2 s window, 100 ms sync) admit per fixed window
within 0-2% of the limit at steady state for 1 to 24 sub-windows (the test asserts 5%). Known
limits (the cold-start allowance): before a region has seen a peer's first publication of a
counter, and during a partition longer than the TTL, each region decides alone and may admit
up to the full limit (R x limit in total). The copy is idempotent (absolute counts), so lost or
repeated syncs never double count. Slot numbers come from each region's Redis ``TIME``: region
clocks are assumed NTP-synchronised.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from mc_common.periodic import Periodic
from mc_limiter.keys import counter_key, remote_key
from mc_limiter.sharding import SHARD_UNAVAILABLE_ERRORS, Shard, ShardRouter, trip_unless_slow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegionPeer:
    """Another region: its name, how to reach its shards, and its key prefix."""

    name: str
    router: ShardRouter
    key_prefix: str


@dataclass(frozen=True, slots=True)
class _Counter:
    tag: str
    suffix: str


@dataclass(frozen=True, slots=True)
class _Shape:
    window_us: int
    sub_windows: int
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class _Published:
    counter: _Counter
    shape: _Shape
    fields: dict[Any, Any]  # slot -> count, plus "at" (us) and "rate" (units per us)


class RegionSync:
    """Publishes this region's counts of multi-region counters to every peer."""

    def __init__(
        self,
        region: str,
        router: ShardRouter,
        key_prefix: str,
        peers: list[RegionPeer],
        interval_ms: int = 150,
    ) -> None:
        self.region = region
        self._router = router
        self._prefix = key_prefix
        self._peers = peers
        self._interval = interval_ms / 1000
        # counter -> (forget after, in loop time; its shape)
        self._dirty: dict[_Counter, tuple[float, _Shape]] = {}
        self._loop = Periodic(f"region-sync-{region}", interval_ms / 1000, self.sync_once)
        self.syncs = 0

    @property
    def peer_names(self) -> list[str]:
        return [p.name for p in self._peers]

    def touch(self, tag: str, suffix: str, window_ms: int, sub_windows: int) -> None:
        """Note that this region consumed from a multi-region counter."""
        slot_ms = math.ceil(window_ms / sub_windows)
        ttl_ms = window_ms + slot_ms + 1000
        forget_at = asyncio.get_running_loop().time() + ttl_ms / 1000
        self._dirty[_Counter(tag, suffix)] = (
            forget_at,
            _Shape(window_ms * 1000, sub_windows, ttl_ms),
        )

    async def sync_once(self) -> None:
        if not self._peers or not self._dirty:
            return
        now = asyncio.get_running_loop().time()
        for counter in [c for c, (until, _) in self._dirty.items() if until < now]:
            del self._dirty[counter]
        by_shard: dict[str, list[tuple[_Counter, _Shape]]] = defaultdict(list)
        shards: dict[str, Shard] = {}
        for counter, (_, shape) in self._dirty.items():
            shard = self._router.shard_for(counter.tag)
            if shard.up:
                shards[shard.name] = shard
                by_shard[shard.name].append((counter, shape))
        reads = await asyncio.gather(
            *(self._read(shards[name], entries) for name, entries in by_shard.items())
        )
        snapshot = [entry for entries in reads for entry in entries]
        if snapshot:
            await asyncio.gather(*(self._publish(peer, snapshot) for peer in self._peers))
        self.syncs += 1

    async def _read(self, shard: Shard, entries: list[tuple[_Counter, _Shape]]) -> list[_Published]:
        try:
            async with shard.client.pipeline(transaction=False) as pipe:
                pipe.time()
                for counter, _ in entries:
                    pipe.hgetall(counter_key(self._prefix, counter.tag, counter.suffix))
                replies: list[Any] = await pipe.execute()
        except SHARD_UNAVAILABLE_ERRORS as exc:
            trip_unless_slow(shard, exc)
            return []
        seconds, micros = replies[0]
        at = int(seconds) * 1_000_000 + int(micros)
        published = []
        for (counter, shape), raw in zip(entries, replies[1:], strict=True):
            slots = {int(k): int(v) for k, v in raw.items()}
            published.append(_Published(counter, shape, _fields(slots, shape, at)))
        return published

    async def _publish(self, peer: RegionPeer, snapshot: list[_Published]) -> None:
        by_shard: dict[str, list[_Published]] = defaultdict(list)
        shards: dict[str, Shard] = {}
        for entry in snapshot:
            shard = peer.router.shard_for(entry.counter.tag)
            shards[shard.name] = shard
            by_shard[shard.name].append(entry)

        async def write(shard: Shard, entries: list[_Published]) -> None:
            try:
                async with shard.client.pipeline(transaction=True) as pipe:
                    for entry in entries:
                        c = entry.counter
                        key = remote_key(peer.key_prefix, c.tag, c.suffix, self.region)
                        pipe.delete(key)
                        if entry.fields:
                            pipe.hset(key, mapping=entry.fields)
                            pipe.pexpire(key, entry.shape.ttl_ms)
                    await pipe.execute()
            except SHARD_UNAVAILABLE_ERRORS as exc:
                log.debug("region sync to %s/%s failed: %r", peer.name, shard.name, exc)

        await asyncio.gather(*(write(shards[name], e) for name, e in by_shard.items()))

    def start(self) -> None:
        if self._peers:
            self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()


def _fields(slots: dict[int, int], shape: _Shape, at: int) -> dict[str, str]:
    """The published hash: live slot counts, the read time and this region's average rate
    over the live slots (units per us; about one window), which peers use to extrapolate
    between syncs. (A rate over the last sync interval alone proved too noisy.)"""
    sw = shape.window_us / shape.sub_windows
    idx = math.floor(at / sw)
    live = {slot: n for slot, n in slots.items() if idx - shape.sub_windows <= slot <= idx}
    if not live:
        return {}
    covered = at - (idx - shape.sub_windows) * sw
    rate = sum(live.values()) / covered if covered > 0 else 0.0
    fields = {str(slot): str(n) for slot, n in live.items()}
    fields["at"] = str(at)
    fields["rate"] = repr(rate)
    return fields
