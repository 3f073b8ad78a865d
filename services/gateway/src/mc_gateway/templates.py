"""`google.api.http` path templates: parse once, match request paths, extract variables.

Grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

A single-segment match (`*`) is percent-decoded in full; a multi-segment one (`**`, or a
variable spanning several segments) keeps `%2F` encoded, as the spec asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"[^/{}*:=]+")


class TemplateError(ValueError):
    """A path template that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Variable:
    """A `{field.path=segments}` variable: its field path and its segment pattern."""

    field_path: str
    segments: tuple[str, ...]  # literals, "*" or "**"

    @property
    def multi_segment(self) -> bool:
        return len(self.segments) > 1 or "**" in self.segments


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed template; `match` returns the variables' values, or None."""

    source: str
    segments: tuple[str | Variable, ...]
    verb: str | None
    _regex: re.Pattern[str]

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        if not template.startswith("/"):
            raise TemplateError(f"{template!r}: a template starts with '/'")
        body, verb = _split_verb(template[1:])
        segments = tuple(_parse_segments(body, template))
        pattern = "^/" + "/".join(_segment_regex(s, i) for i, s in enumerate(segments))
        if verb is not None:
            pattern += ":" + re.escape(verb)
        return cls(template, segments, verb, re.compile(pattern + "$"))

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(s for s in self.segments if isinstance(s, Variable))

    @property
    def literal_weight(self) -> int:
        """How specific the template is (more literal segments win when two templates match)."""
        return sum(1 for s in self.segments if isinstance(s, str) and s not in ("*", "**"))

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The variables of `raw_path` (still percent-encoded as received), or None."""
        found = self._regex.match(raw_path)
        if found is None:
            return None
        out: dict[str, str] = {}
        for i, segment in enumerate(self.segments):
            if isinstance(segment, Variable):
                raw = found.group(f"v{i}")
                out[segment.field_path] = (
                    _unquote_keep_slashes(raw) if segment.multi_segment else unquote(raw)
                )
        return out

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: each variable becomes `{field.path}`."""
        parts = [f"{{{s.field_path}}}" if isinstance(s, Variable) else s for s in self.segments]
        path = "/" + "/".join(parts)
        return path + (f":{self.verb}" if self.verb else "")


def _split_verb(body: str) -> tuple[str, str | None]:
    # The verb is a ':' after the last '/' that is outside braces.
    depth = 0
    last_colon = -1
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "/" and depth == 0:
            last_colon = -1
        elif ch == ":" and depth == 0:
            last_colon = i
    if last_colon < 0:
        return body, None
    verb = body[last_colon + 1 :]
    if not _LITERAL.fullmatch(verb):
        raise TemplateError(f"bad verb {verb!r}")
    return body[:last_colon], verb


def _parse_segments(body: str, template: str) -> list[str | Variable]:
    out: list[str | Variable] = []
    i = 0
    while i <= len(body):
        if body.startswith("{", i):
            end = body.find("}", i)
            if end < 0:
                raise TemplateError(f"{template!r}: unclosed variable")
            out.append(_parse_variable(body[i + 1 : end], template))
            i = end + 1
        else:
            end = body.find("/", i)
            end = len(body) if end < 0 else end
            segment = body[i:end]
            if segment not in ("*", "**") and not _LITERAL.fullmatch(segment):
                raise TemplateError(f"{template!r}: bad segment {segment!r}")
            out.append(segment)
            i = end
        if i < len(body) and body[i] != "/":
            raise TemplateError(f"{template!r}: expected '/' at {i + 1}")
        i += 1
    if "**" in out[:-1]:
        raise TemplateError(f"{template!r}: '**' must be the last segment")
    return out


def _parse_variable(inner: str, template: str) -> Variable:
    field, sep, pattern = inner.partition("=")
    if not _IDENT.fullmatch(field):
        raise TemplateError(f"{template!r}: bad field path {field!r}")
    if not sep:
        return Variable(field, ("*",))
    segments = tuple(pattern.split("/"))
    for s in segments:
        if s not in ("*", "**") and not _LITERAL.fullmatch(s):
            raise TemplateError(f"{template!r}: bad variable segment {s!r}")
    return Variable(field, segments)


def _segment_regex(segment: str | Variable, index: int) -> str:
    if isinstance(segment, Variable):
        inner = "/".join(_plain_regex(s) for s in segment.segments)
        return f"(?P<v{index}>{inner})"
    return _plain_regex(segment)


def _plain_regex(segment: str) -> str:
    if segment == "*":
        return "[^/]+"
    if segment == "**":
        return ".+"
    return re.escape(segment)


def _unquote_keep_slashes(raw: str) -> str:
    return "%2F".join(unquote(part) for part in re.split("%2[Ff]", raw))
