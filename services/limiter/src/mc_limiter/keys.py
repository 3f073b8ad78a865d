"""Names of the counter keys in Redis, shared by the limiter and the region sync.

``<prefix>:c:{<tag>}:<rule>:<limit>:<algo><window_ms>[x<sub_windows>]:<subject>``. The hash
tag is ``t:<tenant>`` for tenant-level scopes and ``g:<rule>`` for global pools. The algorithm
and window are part of the name, so editing a limit's shape starts a fresh counter instead of
misreading the old one. User-supplied parts are escaped so ``:`` and braces cannot collide.
"""

from __future__ import annotations

_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})


def escape(part: str) -> str:
    return part.translate(_ESCAPES)


def counter_key(prefix: str, tag: str, suffix: str) -> str:
    return f"{prefix}:c:{{{tag}}}:{suffix}"


def remote_key(prefix: str, tag: str, suffix: str, region: str) -> str:
    """Where ``region`` publishes its own counts of this counter in a peer's Redis."""
    return f"{prefix}:c:{{{tag}}}:{suffix}:rm:{escape(region)}"
