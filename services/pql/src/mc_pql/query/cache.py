"""An LRU result cache with a TTL, keyed by the tenant's data version.

Entries are keyed by (tenant, the tenant's write version, query text, parameters, row cap);
every receipt, decision or execution a tenant writes bumps its version (a database trigger),
so a result is never served after that tenant's data changed, on any replica. The TTL bounds
how far the window's start (SINCE is relative to when a result was computed) can drift.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter

V = TypeVar("V")


class ResultCache(Generic[V]):
    """Least-recently-used cache of at most `max_entries`, each valid for `ttl_s` seconds."""

    def __init__(
        self,
        max_entries: int = 1024,
        ttl_s: float = 300.0,
        *,
        max_weight: int | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[Hashable, tuple[float, V, int]] = OrderedDict()
        self._max = max_entries
        self._max_weight = max_weight
        self._weight = 0
        self._ttl = ttl_s
        self._clock = clock
        self.hits = 0
        self.misses = 0
        self._requests = Counter(
            "mc_pql_query_cache_requests",
            "PQL result cache lookups by result (hit or miss); hit rate = hit / all.",
            ["result"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < self._ttl:
            self._entries.move_to_end(key)
            self.hits += 1
            self._requests.labels("hit").inc()
            return entry[1]
        if entry is not None:
            del self._entries[key]
            self._weight -= entry[2]
        self.misses += 1
        self._requests.labels("miss").inc()
        return None

    def put(self, key: Hashable, value: V, weight: int = 1) -> None:
        """Store `value`; `weight` (e.g. its row count) counts against `max_weight`."""
        if self._max_weight is not None and weight > self._max_weight:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._weight -= old[2]
        self._entries[key] = (self._clock(), value, weight)
        self._weight += weight
        while len(self._entries) > self._max or (
            self._max_weight is not None and self._weight > self._max_weight
        ):
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self._weight -= dropped

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._entries)
