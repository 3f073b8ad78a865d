"""Rules indexed by their glob patterns, so finding the rules of a check does not grow with the
number of rules (see docs/adr/0015-rule-index.md).

A rule matches ``(tenant, token, key)`` when its three globs do. ``RuleIndex`` nests one
``GlobIndex`` per dimension (tenant, then key, then token), the way envoyproxy/ratelimit nests
descriptor entries in a tree, and each ``GlobIndex`` files a pattern under an anchor chosen
once, when the pattern is added:

* ``*``: always a candidate;
* no wildcard: a dict lookup of the value;
* a literal prefix (``/v1/jobs/*``): looked up with the value's prefixes of the lengths that
  occur among the anchors;
* else a literal suffix (``*.json``): likewise with the value's suffixes;
* else its longest literal run of 3 or more characters, at most 8 of them (``*/admin/*``):
  looked up with the value's substrings of those lengths;
* else (``?``, ``*a*``, ``[ab]*``): a short residual list, tried one by one.

A candidate is confirmed with the pattern's regular expression, compiled when it was added
(none is needed when the anchor alone decides, as for ``abc*``), so there is no cache of
compiled patterns to overflow. The cost of a lookup is bounded by the value's length (at most
1,024 characters) and the patterns it actually matches; only residual patterns are tried
linearly. Adding and removing a rule touch only the nodes on its path.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import translate
from typing import Any, Generic, TypeVar

from mc_limiter.rules import Rule

_V = TypeVar("_V")

MIN_NGRAM = 3
MAX_NGRAM = 8

# Token kinds of a parsed glob.
_LIT, _ANY, _ONE, _CLASS = 0, 1, 2, 3


def parse_glob(pattern: str) -> list[tuple[int, str]]:
    """``pattern`` as fnmatch reads it: literal runs, ``*``, ``?`` and ``[...]`` classes (an
    unclosed ``[`` is a literal, as in ``fnmatch.translate``)."""
    out: list[tuple[int, str]] = []
    literal: list[str] = []
    i, n = 0, len(pattern)

    def flush() -> None:
        if literal:
            out.append((_LIT, "".join(literal)))
            literal.clear()

    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            flush()
            if not out or out[-1][0] != _ANY:
                out.append((_ANY, "*"))
        elif c == "?":
            flush()
            out.append((_ONE, "?"))
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                literal.append("[")
            else:
                flush()
                out.append((_CLASS, pattern[i - 1 : j + 1]))
                i = j + 1
        else:
            literal.append(c)
    flush()
    return out


@dataclass(slots=True)
class _Entry(Generic[_V]):
    pattern: str
    regex: re.Pattern[str] | None  # None: the anchor alone decides
    value: _V
    bucket: str  # "exact", "star", "prefix", "suffix", "ngram", "residual"
    anchor: str


class _Anchored(Generic[_V]):
    """Entries filed under literal anchors of a few lengths; ``lengths`` is kept sorted."""

    __slots__ = ("by_anchor", "counts", "lengths")

    def __init__(self) -> None:
        self.by_anchor: dict[str, list[_Entry[_V]]] = {}
        self.counts: Counter[int] = Counter()
        self.lengths: tuple[int, ...] = ()

    def add(self, entry: _Entry[_V]) -> None:
        self.by_anchor.setdefault(entry.anchor, []).append(entry)
        self.counts[len(entry.anchor)] += 1
        if self.counts[len(entry.anchor)] == 1:
            self.lengths = tuple(sorted(self.counts))

    def remove(self, entry: _Entry[_V]) -> None:
        bucket = self.by_anchor[entry.anchor]
        _remove_identical(bucket, entry)
        if not bucket:
            del self.by_anchor[entry.anchor]
        size = len(entry.anchor)
        self.counts[size] -= 1
        if not self.counts[size]:
            del self.counts[size]
            self.lengths = tuple(sorted(self.counts))


class GlobIndex(Generic[_V]):
    """Values filed under glob patterns; ``matching(value)`` yields those whose pattern
    matches, each once. ``make()`` builds the value of a new pattern."""

    __slots__ = (
        "_entries",
        "_exact",
        "_make",
        "_ngram",
        "_prefix",
        "_residual",
        "_star",
        "_suffix",
    )

    def __init__(self, make: Callable[[], _V]) -> None:
        self._make = make
        self._entries: dict[str, _Entry[_V]] = {}
        # Lists: distinct patterns can file under one anchor ("*" and "**").
        self._exact: dict[str, list[_V]] = {}
        self._star: list[_V] = []
        self._prefix: _Anchored[_V] = _Anchored()
        self._suffix: _Anchored[_V] = _Anchored()
        self._ngram: _Anchored[_V] = _Anchored()
        self._residual: list[_Entry[_V]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, pattern: str) -> _V | None:
        entry = self._entries.get(pattern)
        return entry.value if entry else None

    def setdefault(self, pattern: str) -> _V:
        """The value filed under ``pattern``, made and filed if there is none."""
        entry = self._entries.get(pattern)
        if entry is None:
            entry = _file(pattern, self._make())
            self._entries[pattern] = entry
            self._place(entry)
        return entry.value

    def remove(self, pattern: str) -> None:
        entry = self._entries.pop(pattern)
        if entry.bucket == "exact":
            values = self._exact[entry.anchor]
            _remove_identical(values, entry.value)
            if not values:
                del self._exact[entry.anchor]
        elif entry.bucket == "star":
            _remove_identical(self._star, entry.value)
        elif entry.bucket == "prefix":
            self._prefix.remove(entry)
        elif entry.bucket == "suffix":
            self._suffix.remove(entry)
        elif entry.bucket == "ngram":
            self._ngram.remove(entry)
        else:
            _remove_identical(self._residual, entry)

    def _place(self, entry: _Entry[_V]) -> None:
        if entry.bucket == "exact":
            self._exact.setdefault(entry.anchor, []).append(entry.value)
        elif entry.bucket == "star":
            self._star.append(entry.value)
        elif entry.bucket == "prefix":
            self._prefix.add(entry)
        elif entry.bucket == "suffix":
            self._suffix.add(entry)
        elif entry.bucket == "ngram":
            self._ngram.add(entry)
        else:
            self._residual.append(entry)

    def matching(self, value: str) -> Iterator[_V]:
        yield from self._star
        exact = self._exact.get(value)
        if exact is not None:
            yield from exact
        size = len(value)
        prefix = self._prefix
        for n in prefix.lengths:
            if n > size:
                break
            for entry in prefix.by_anchor.get(value[:n], ()):
                if entry.regex is None or entry.regex.match(value):
                    yield entry.value
        suffix = self._suffix
        for n in suffix.lengths:
            if n > size:
                break
            for entry in suffix.by_anchor.get(value[size - n :], ()):
                if entry.regex is None or entry.regex.match(value):
                    yield entry.value
        ngram = self._ngram
        if ngram.lengths:
            seen: set[str] = set()
            for n in ngram.lengths:
                if n > size:
                    break
                for at in range(size - n + 1):
                    for entry in ngram.by_anchor.get(value[at : at + n], ()):
                        if entry.pattern not in seen:
                            seen.add(entry.pattern)
                            if entry.regex is not None and entry.regex.match(value):
                                yield entry.value
        for entry in self._residual:
            if entry.regex is not None and entry.regex.match(value):
                yield entry.value


def _remove_identical(items: list[Any], item: object) -> None:
    """Remove ``item`` itself (not an equal one: empty leaves compare equal)."""
    for at, candidate in enumerate(items):
        if candidate is item:
            del items[at]
            return
    raise ValueError("not in the index")


def _file(pattern: str, value: _V) -> _Entry[_V]:
    """Choose ``pattern``'s anchor (see the module docstring)."""
    tokens = parse_glob(pattern)
    if all(kind == _LIT for kind, _ in tokens):
        return _Entry(pattern, None, value, "exact", "".join(t for _, t in tokens))
    if all(kind == _ANY for kind, _ in tokens):
        return _Entry(pattern, None, value, "star", "")
    regex = re.compile(translate(pattern))
    if tokens[0][0] == _LIT:
        rest_is_any = len(tokens) == 2 and tokens[1][0] == _ANY
        return _Entry(pattern, None if rest_is_any else regex, value, "prefix", tokens[0][1])
    if tokens[-1][0] == _LIT:
        head_is_any = len(tokens) == 2 and tokens[0][0] == _ANY
        return _Entry(pattern, None if head_is_any else regex, value, "suffix", tokens[-1][1])
    runs = [text for kind, text in tokens if kind == _LIT and len(text) >= MIN_NGRAM]
    if runs:
        longest = max(runs, key=len)
        return _Entry(pattern, regex, value, "ngram", longest[:MAX_NGRAM])
    return _Entry(pattern, regex, value, "residual", "")


def _by_id() -> dict[str, Rule]:
    return {}


def _tokens() -> GlobIndex[dict[str, Rule]]:
    return GlobIndex(_by_id)


def _keys() -> GlobIndex[GlobIndex[dict[str, Rule]]]:
    return GlobIndex(_tokens)


class RuleIndex:
    """Rules by (tenant, key, token) pattern; ``match`` returns the matching rules by id."""

    def __init__(self) -> None:
        self._tenants: GlobIndex[GlobIndex[GlobIndex[dict[str, Rule]]]] = GlobIndex(_keys)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, rule: Rule) -> None:
        m = rule.match
        leaf = self._tenants.setdefault(m.tenant).setdefault(m.key).setdefault(m.token)
        if rule.id not in leaf:
            self._size += 1
        leaf[rule.id] = rule

    def remove(self, rule: Rule) -> None:
        """Remove ``rule`` (found by its id under its own patterns), pruning empty nodes."""
        m = rule.match
        keys = self._tenants.get(m.tenant)
        tokens = keys.get(m.key) if keys is not None else None
        leaf = tokens.get(m.token) if tokens is not None else None
        if leaf is None or leaf.pop(rule.id, None) is None:
            return
        self._size -= 1
        assert keys is not None and tokens is not None
        if not leaf:
            tokens.remove(m.token)
            if not len(tokens):
                keys.remove(m.key)
                if not len(keys):
                    self._tenants.remove(m.tenant)

    def match(self, tenant: str, token: str, key: str) -> list[Rule]:
        found: list[Rule] = []
        for keys in self._tenants.matching(tenant):
            for tokens in keys.matching(key):
                for leaf in tokens.matching(token):
                    found.extend(leaf.values())
        if len(found) > 1:
            found.sort(key=_rule_id)
        return found


def _rule_id(rule: Rule) -> str:
    return rule.id
