"""Declarative limiter rules in envoyproxy/ratelimit's configuration format (ADR 0017).

A file is one domain's descriptor tree, exactly as envoyproxy/ratelimit reads it::

    domain: edge
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 10}
      - key: path
        value: /api/*
        rate_limit: {unit: minute, requests_per_unit: 100, name: api}
        shadow_mode: true

``load_config`` parses and validates it (YAML with line numbers: every error names the file,
the line and the reason; unknown and misplaced keys are errors). ``DomainConfig.resolve``
matches a descriptor with envoyproxy/ratelimit's semantics: at each level the exact
``key``/``value``, else the first wildcard value in file order, else the key without a value;
a limit applies at the node matched by the descriptor's last entry. Each node with a limit
becomes one MC rule (``rules()``), checked under a key only the resolver produces
(``:<rule id>:<entries>``), so the MC machinery (algorithms, shadow mode, throttles, regions,
degraded mode, metrics per rule) applies unchanged. ``resolve_request`` applies ``replaces``
across a request's descriptors.

MC's additions live in an ``mc`` block under ``rate_limit`` (``algorithm``, ``sub_windows``,
``burst``, ``multi_region``, ``failure_mode``, ``local_fallback``), which envoyproxy/ratelimit
would reject, so a file without them means the same to both.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mc_common.errors import FieldViolation, InvalidArgument
from mc_limiter.decisions import CheckRequest
from mc_limiter.descriptors import Invalid, encode_entry
from mc_limiter.rules import (
    MAX_LIMIT,
    MAX_SUB_WINDOWS,
    Algorithm,
    FailureMode,
    Limit,
    Matcher,
    Mode,
    Rule,
    Scope,
)

MAX_SOURCE_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_NODES = 10_000
MAX_REPLACES = 64
MAX_ERRORS = 50  # reported per file; past this the file is not read further
RULE_ID_PREFIX = "envoy."
DEFAULT_LIMIT_NAME = "limit"

# envoyproxy/ratelimit's units (a month is 30 days, a year 365, as its dividers).
UNITS_MS = {
    "second": 1_000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    "week": 7 * 86_400_000,
    "month": 30 * 86_400_000,
    "year": 365 * 86_400_000,
}

_ROOT_KEYS = {"domain", "descriptors"}
_DESCRIPTOR_KEYS = {
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "shadow_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
    "quota_mode",
}
_RATE_LIMIT_KEYS = {"unit", "requests_per_unit", "unlimited", "name", "replaces", "mc"}
_MC_KEYS = {
    "algorithm",
    "sub_windows",
    "burst",
    "multi_region",
    "failure_mode",
    "local_fallback",
}
# libyaml's composer when PyYAML has it (about 10x faster), else the pure-Python one.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class ConfigError(InvalidArgument):
    """An invalid rules file; each violation's field is ``<file>:<line>``."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_unit: int
    window_ms: int
    unlimited: bool
    name: str
    replaces: tuple[str, ...]
    algorithm: Algorithm = Algorithm.SLIDING_WINDOW
    sub_windows: int = 1
    burst: int | None = None
    multi_region: bool = False
    failure_mode: FailureMode = FailureMode.FAIL_OPEN
    local_fallback: bool = True


@dataclass(slots=True)
class Node:
    """One descriptor of the tree; ``path`` is ``(key, value)`` from the root ("" = none)."""

    key: str
    value: str
    path: tuple[tuple[str, str], ...]
    line: int
    rate_limit: RateLimit | None = None
    shadow_mode: bool = False
    share_threshold: bool = False
    exact: dict[tuple[str, str], Node] = field(default_factory=dict)
    wildcards: list[Node] = field(default_factory=list)  # file order
    key_only: dict[str, Node] = field(default_factory=dict)
    parts: tuple[str, ...] = ()  # the value split on "*" (wildcard values)
    rule_id: str = ""

    @property
    def children(self) -> Iterable[Node]:
        yield from self.exact.values()
        yield from self.wildcards
        yield from self.key_only.values()

    def child_for(self, key: str, value: str) -> Node | None:
        node = self.exact.get((key, value))
        if node is not None:
            return node
        for wild in self.wildcards:
            if wild.key == key and _wildcard_match(wild.parts, value):
                return wild
        return self.key_only.get(key)


@dataclass(frozen=True, slots=True)
class Match:
    """A descriptor's limit: its node and the counter key of this descriptor's values."""

    node: Node
    key: str


@dataclass(slots=True)
class DomainConfig:
    domain: str
    root: Node
    source: str = ""
    file_name: str = ""
    nodes: list[Node] = field(default_factory=list)  # with a rate_limit, in file order

    def resolve(self, entries: Sequence[tuple[str, str]]) -> Match | None:
        """envoyproxy/ratelimit's lookup: the node reached by the last entry, if it has a
        limit (``None``: no limit applies)."""
        node = self.root
        parts: list[str] = []
        for i, (key, value) in enumerate(entries):
            found = node.child_for(key, value)
            if found is None:
                return None
            shown = found.value if found.share_threshold and found.parts else value
            parts.append(f"{encode_entry(key)}={encode_entry(shown)}")
            if i == len(entries) - 1:
                if found.rate_limit is None:
                    return None
                return Match(found, f":{found.rule_id}:{'/'.join(parts)}")
            if not any(True for _ in found.children):
                return None  # the descriptor goes deeper than the tree
            node = found
        return None

    def rules(self) -> list[Rule]:
        """One MC rule per node with a (limited, non-zero) rate limit."""
        out = []
        for node in self.nodes:
            rl = node.rate_limit
            assert rl is not None
            if rl.unlimited or rl.requests_per_unit == 0:
                continue  # decided by the resolver without counting
            out.append(
                Rule(
                    id=node.rule_id,
                    description=_describe(self.domain, node)[:1024],
                    scope=Scope.KEY,
                    match=Matcher(key=f":{node.rule_id}:*"),
                    limits=[
                        Limit(
                            name=rl.name if _NAME.match(rl.name) else DEFAULT_LIMIT_NAME,
                            algorithm=rl.algorithm,
                            limit=rl.requests_per_unit,
                            window_ms=rl.window_ms,
                            burst=rl.burst,
                            sub_windows=rl.sub_windows,
                        )
                    ],
                    mode=Mode.SHADOW if node.shadow_mode else Mode.ENFORCE,
                    failure_mode=rl.failure_mode,
                    local_fallback=rl.local_fallback,
                    multi_region=rl.multi_region,
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class Fixed:
    """A descriptor decided without a check: ``over_limit`` or OK."""

    over_limit: bool
    node: Node | None = None


def resolve_request(
    config: DomainConfig,
    entries: Sequence[Sequence[tuple[str, str]]],
    mapped: Sequence[CheckRequest | Invalid],
) -> list[CheckRequest | Invalid | Fixed]:
    """Each descriptor of a request in a declarative domain: the check of its limit (the
    mapped check with the resolver's key), ``Fixed`` when it is decided without one (no
    limit, ``unlimited``, replaced by another descriptor's limit, or ``requests_per_unit: 0``
    which is always over the limit), or its ``Invalid`` as mapped. A descriptor carrying its
    own limit (Envoy's per-descriptor override) keeps it, before the tree, as upstream."""
    matches = [
        config.resolve(e) if isinstance(m, CheckRequest) and m.override is None else None
        for e, m in zip(entries, mapped, strict=True)
    ]
    replacing = {
        name
        for m in matches
        if m is not None and m.node.rate_limit is not None
        for name in m.node.rate_limit.replaces
    }
    out: list[CheckRequest | Invalid | Fixed] = []
    for match, check in zip(matches, mapped, strict=True):
        if isinstance(check, Invalid) or check.override is not None:
            out.append(check)  # as upstream, a descriptor's own limit comes before the tree
            continue
        rl = match.node.rate_limit if match is not None else None
        if match is None or rl is None or rl.unlimited or (rl.name and rl.name in replacing):
            out.append(Fixed(False, match.node if match else None))
        elif rl.requests_per_unit == 0:
            out.append(Fixed(not match.node.shadow_mode, match.node))
        else:
            out.append(replace(check, key=match.key, override=None))
    return out


def is_declarative(rule_id: str) -> bool:
    return rule_id.startswith(RULE_ID_PREFIX)


def load_file(path: str | Path) -> DomainConfig:
    """Read and validate one rules file (the loader `dev up` and the chart's ConfigMap use)."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(str(path), 0, f"cannot read the file: {exc}") from None
    return load_config(source, str(path))


def load_paths(paths: Iterable[str | Path]) -> list[DomainConfig]:
    """Every rules file named by ``paths`` (files, or directories whose ``*.yaml``/``*.yml``
    files are read in name order, as a mounted ConfigMap holds them), validated; one domain
    per file, each at most once."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            files.append(path)
    configs = [load_file(f) for f in files]
    seen: dict[str, str] = {}
    for config in configs:
        if config.domain in seen:
            raise _error(
                config.file_name, 1, f"domain {config.domain!r} is also in {seen[config.domain]}"
            )
        seen[config.domain] = config.file_name
    return configs


def load_config(source: str, file_name: str = "<rules>") -> DomainConfig:
    """Parse and validate one domain's file; ``ConfigError`` names the file, line and reason."""
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise _error(file_name, 0, f"larger than {MAX_SOURCE_BYTES} bytes")
    try:
        document = yaml.compose(source, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 0
        reason = getattr(exc, "problem", None) or str(exc)
        raise _error(file_name, line, f"not valid YAML: {reason}") from None
    if document is None:
        raise _error(file_name, 1, "empty file: a domain and descriptors are required")
    loader = _Loader(file_name)
    try:
        config = loader.root(document)
    except _TooManyErrors:
        pass
    if loader.errors:
        raise ConfigError(
            "; ".join(f"{v.field}: {v.description}" for v in loader.errors), loader.errors
        )
    config.source = source
    config.file_name = file_name
    return config


class _TooManyErrors(Exception):
    """Stops reading a file with ``MAX_ERRORS`` errors already (hostile or not ours)."""


def rule_id_for(domain: str, path: Sequence[tuple[str, str]]) -> str:
    """A stable id per (domain, node path): readable prefix, injective hash."""
    digest = hashlib.sha256(repr((domain, tuple(path))).encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", domain)[:40] or "_"
    return f"{RULE_ID_PREFIX}{readable}.{digest}"


def _describe(domain: str, node: Node) -> str:
    steps = [f"{k}={v}" if v else k for k, v in node.path]
    return f"{domain}: {' > '.join(steps)}"


def _wildcard_match(parts: tuple[str, ...], value: str) -> bool:
    """``*`` matches any run (envoyproxy/ratelimit's wildcard values)."""
    first, last = parts[0], parts[-1]
    if not value.startswith(first) or not value.endswith(last):
        return False
    if len(value) < sum(len(p) for p in parts):
        return False
    rest = value[len(first) : len(value) - len(last)]
    for middle in parts[1:-1]:
        at = rest.find(middle)
        if at < 0:
            return False
        rest = rest[at + len(middle) :]
    return True


def _error(file_name: str, line: int, reason: str) -> ConfigError:
    where = f"{file_name}:{line}"
    return ConfigError(f"{where}: {reason}", [FieldViolation(where, reason)])


class _Loader:
    """Walks the composed YAML, collecting every error with its line."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self.errors: list[FieldViolation] = []
        self.count = 0
        self.domain = ""

    def fail(self, node: yaml.Node, reason: str) -> None:
        self.errors.append(FieldViolation(f"{self.file_name}:{node.start_mark.line + 1}", reason))
        if len(self.errors) >= MAX_ERRORS:
            raise _TooManyErrors

    def mapping(self, node: yaml.Node, allowed: set[str], where: str) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{where} must be a mapping")
            return {}
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                self.fail(key_node, f"keys of {where} must be strings")
            elif key in out:
                self.fail(key_node, f"duplicate key {key!r} in {where}")
            elif key not in allowed:
                self.fail(key_node, _unknown(key, where))
            else:
                out[key] = value_node
        return out

    def scalar(self, node: yaml.Node, kind: str, where: str) -> Any:
        tags = {
            "str": ("tag:yaml.org,2002:str",),
            "int": ("tag:yaml.org,2002:int",),
            "bool": ("tag:yaml.org,2002:bool",),
        }[kind]
        if not isinstance(node, yaml.ScalarNode) or node.tag not in tags:
            if (
                kind == "str"
                and isinstance(node, yaml.ScalarNode)
                and node.tag != "tag:yaml.org,2002:null"
            ):
                return node.value  # YAML 1.1 reads 1 or true as non-strings; keep the text
            self.fail(node, f"{where} must be a {_KIND_NAMES[kind]}")
            return None
        if kind == "int":
            return int(node.value.replace("_", ""), 0)
        if kind == "bool":
            return node.value.lower() in ("true", "yes", "on", "y")
        return node.value

    def root(self, document: yaml.Node) -> DomainConfig:
        fields = self.mapping(document, _ROOT_KEYS, "the file")
        root = Node("", "", (), 1)
        domain = ""
        if "domain" not in fields:
            self.fail(document, "domain is required")
        else:
            domain = self.scalar(fields["domain"], "str", "domain") or ""
            if not domain:
                self.fail(fields["domain"], "domain must not be empty")
            elif len(domain) > 128:
                self.fail(fields["domain"], "domain must be at most 128 characters")
        self.domain = domain
        config = DomainConfig(domain, root)
        if "descriptors" in fields:
            self.descriptors(fields["descriptors"], root, config, 1)
        return config

    def descriptors(self, node: yaml.Node, parent: Node, config: DomainConfig, depth: int) -> None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, "descriptors must be a list")
            return
        if depth > MAX_DEPTH:
            self.fail(node, f"descriptors nest deeper than {MAX_DEPTH} levels")
            return
        for item in node.value:
            self.count += 1
            if self.count > MAX_NODES:
                self.fail(item, f"more than {MAX_NODES} descriptors")
                return
            self.descriptor(item, parent, config, depth)

    def descriptor(self, item: yaml.Node, parent: Node, config: DomainConfig, depth: int) -> None:
        fields = self.mapping(item, _DESCRIPTOR_KEYS, "a descriptor")
        if not isinstance(item, yaml.MappingNode):
            return
        key = self.scalar(fields["key"], "str", "key") if "key" in fields else None
        if not key:
            self.fail(item, "descriptor has empty key")
            return
        value = self.scalar(fields["value"], "str", "value") if "value" in fields else ""
        value = value or ""
        line = item.start_mark.line + 1
        node = Node(key, value, (*parent.path, (key, value)), line)
        node.rule_id = rule_id_for(config.domain, node.path)
        flags = {
            name: bool(self.scalar(fields[name], "bool", name))
            for name in (
                "shadow_mode",
                "detailed_metric",
                "value_to_metric",
                "share_threshold",
                "quota_mode",
            )
            if name in fields
        }
        node.shadow_mode = flags.get("shadow_mode", False)
        node.share_threshold = flags.get("share_threshold", False)
        if flags.get("quota_mode"):
            self.fail(fields["quota_mode"], "quota_mode is not supported by MC (ADR 0017)")
        if node.share_threshold and "*" not in value:
            self.fail(fields["share_threshold"], "share_threshold needs a wildcard value")
        if "metadata" in fields and not isinstance(fields["metadata"], yaml.MappingNode):
            self.fail(fields["metadata"], "metadata must be a mapping")
        if "*" in value:
            node.parts = tuple(value.split("*"))
            slot_taken = any(w.key == key and w.value == value for w in parent.wildcards)
        elif value:
            slot_taken = (key, value) in parent.exact
        else:
            slot_taken = key in parent.key_only
        if slot_taken:
            composite = ".".join(f"{k}_{v}" if v else k for k, v in node.path)
            self.fail(item, f"duplicate descriptor composite key '{config.domain}.{composite}'")
            return
        if "*" in value:
            parent.wildcards.append(node)
        elif value:
            parent.exact[(key, value)] = node
        else:
            parent.key_only[key] = node
        if "rate_limit" in fields:
            node.rate_limit = self.rate_limit(fields["rate_limit"])
            if node.rate_limit is not None:
                config.nodes.append(node)
        if "descriptors" in fields:
            self.descriptors(fields["descriptors"], node, config, depth + 1)

    def rate_limit(self, node: yaml.Node) -> RateLimit | None:
        fields = self.mapping(node, _RATE_LIMIT_KEYS, "rate_limit")
        if not isinstance(node, yaml.MappingNode):
            return None
        unlimited = (
            bool(self.scalar(fields["unlimited"], "bool", "unlimited"))
            if "unlimited" in fields
            else False
        )
        unit = self.scalar(fields["unit"], "str", "unit") if "unit" in fields else None
        window_ms = UNITS_MS.get(unit.lower()) if isinstance(unit, str) else None
        if unlimited and window_ms is not None:
            self.fail(fields["unit"], "should not specify rate limit unit when unlimited")
        elif not unlimited and window_ms is None:
            where = fields.get("unit", node)
            self.fail(where, f"invalid rate limit unit '{unit or ''}'")
        rpu = 0
        if "requests_per_unit" in fields:
            parsed = self.scalar(fields["requests_per_unit"], "int", "requests_per_unit")
            if parsed is not None:
                if not 0 <= parsed <= MAX_LIMIT:
                    self.fail(
                        fields["requests_per_unit"],
                        f"requests_per_unit must be in [0, {MAX_LIMIT}] in MC",
                    )
                else:
                    rpu = parsed
        name = ""
        if "name" in fields:
            name = self.scalar(fields["name"], "str", "name") or ""
        replaces: list[str] = []
        if "replaces" in fields:
            replaces = self.replaces(fields["replaces"], name)
        rl = RateLimit(rpu, window_ms or 1_000, unlimited, name, tuple(replaces))
        if "mc" in fields:
            rl = self.extension(fields["mc"], rl)
        return rl

    def replaces(self, node: yaml.Node, own: str) -> list[str]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, "replaces must be a list")
            return []
        if len(node.value) > MAX_REPLACES:
            self.fail(node, f"replaces lists at most {MAX_REPLACES} names in MC")
            return []
        names = []
        for item in node.value:
            fields = self.mapping(item, {"name"}, "a replaces entry")
            name = self.scalar(fields["name"], "str", "name") if "name" in fields else None
            if not name:
                self.fail(item, "should not have an empty replaces entry")
            elif name == own:
                self.fail(item, "replaces should not contain name of same descriptor")
            else:
                names.append(name)
        return names

    def extension(self, node: yaml.Node, rl: RateLimit) -> RateLimit:
        fields = self.mapping(node, _MC_KEYS, "the mc block")
        changes: dict[str, Any] = {}
        if "algorithm" in fields:
            algorithm = self.scalar(fields["algorithm"], "str", "algorithm")
            try:
                changes["algorithm"] = Algorithm(algorithm)
            except ValueError:
                allowed = ", ".join(a.value for a in Algorithm)
                self.fail(fields["algorithm"], f"algorithm must be one of {allowed}")
        if "failure_mode" in fields:
            mode = self.scalar(fields["failure_mode"], "str", "failure_mode")
            try:
                changes["failure_mode"] = FailureMode(mode)
            except ValueError:
                allowed = ", ".join(m.value for m in FailureMode)
                self.fail(fields["failure_mode"], f"failure_mode must be one of {allowed}")
        for name in ("multi_region", "local_fallback"):
            if name in fields:
                changes[name] = bool(self.scalar(fields[name], "bool", name))
        for name, top in (("sub_windows", MAX_SUB_WINDOWS), ("burst", MAX_LIMIT)):
            if name in fields:
                value = self.scalar(fields[name], "int", name)
                if value is not None and not 1 <= value <= top:
                    self.fail(fields[name], f"{name} must be in [1, {top}]")
                elif value is not None:
                    changes[name] = value
        rl = replace(rl, **changes)
        algorithm = rl.algorithm
        if algorithm is Algorithm.GCRA and "sub_windows" in changes:
            self.fail(fields["sub_windows"], "sub_windows applies to sliding_window only")
        if algorithm is Algorithm.SLIDING_WINDOW and "burst" in changes:
            self.fail(fields["burst"], "burst applies to gcra only")
        if rl.multi_region and algorithm is not Algorithm.SLIDING_WINDOW:
            self.fail(fields["multi_region"], "multi_region needs the sliding_window algorithm")
        if rl.window_ms < rl.sub_windows:
            self.fail(fields["sub_windows"], "the window must be at least 1 ms per sub-window")
        return rl


_KIND_NAMES = {"str": "string", "int": "integer", "bool": "boolean"}
_PLACES = {
    "the file": _ROOT_KEYS,
    "a descriptor": _DESCRIPTOR_KEYS,
    "rate_limit": _RATE_LIMIT_KEYS,
    "the mc block": _MC_KEYS,
}


def _unknown(key: str, where: str) -> str:
    for place, keys in _PLACES.items():
        if key in keys and place != where:
            return f"'{key}' does not belong in {where} (it belongs in {place})"
    return f"unknown key '{key}' in {where}"
