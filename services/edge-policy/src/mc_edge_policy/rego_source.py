"""What we read from Rego source text without an evaluator: packages, rule heads, METADATA
annotations, v0-style rules, and the builtins a module calls.

rego-cpp parses only Rego v1, and parses some v0 rules (`deny[msg] { ... }`) into something
else without complaint, so a v0 rule would silently never fire. The lint here catches those
heads before a bundle is built. It works on source with comments and strings blanked out and
looks only at top level (brace depth 0), where rule heads live.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PACKAGE = re.compile(rf"^\s*package\s+({IDENT}(?:\.{IDENT})*)\s*$", re.M)
_HEAD = re.compile(rf"^({IDENT})\b(.*)$")
_CALL = re.compile(rf"(?<![\w.\]])((?:{IDENT}\.)*{IDENT})\s*\(")
KEYWORDS = frozenset(
    {
        "not",
        "some",
        "every",
        "in",
        "if",
        "contains",
        "else",
        "with",
        "as",
        "default",
        "import",
        "package",
        "true",
        "false",
        "null",
    }
)
_V0_HINT = "Rego v1 needs `if` before a rule body and `contains` for multi-value rules"


@dataclass(frozen=True, slots=True)
class LintIssue:
    """One problem in one module: file, 1-based line, message."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """A top-level rule head: its name, line, whether it is a function, and its annotation."""

    name: str
    line: int
    is_function: bool
    annotation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """A module's package, rules and the dotted names it calls."""

    file: str
    package: str
    rules: tuple[RuleInfo, ...]
    calls: frozenset[str]
    is_test: bool

    @property
    def package_path(self) -> str:
        """The package as an entrypoint path prefix: `mc.limits` -> `mc/limits`."""
        return self.package.replace(".", "/")

    def rule_names(self) -> set[str]:
        return {r.name for r in self.rules}


def blank_comments_and_strings(source: str) -> str:
    """`source` with comments and string contents replaced by spaces (lines kept)."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "#":
            end = source.find("\n", i)
            end = n if end == -1 else end
            out.append(" " * (end - i))
            i = end
        elif ch == '"':
            j = i + 1
            while j < n and source[j] != '"' and source[j] != "\n":
                j += 2 if source[j] == "\\" else 1
            out.append('"' + " " * (min(j, n) - i - 1) + ('"' if j < n else ""))
            i = j + 1
        elif ch == "`":
            j = source.find("`", i + 1)
            j = n - 1 if j == -1 else j
            out.append("`" + "".join("\n" if c == "\n" else " " for c in source[i + 1 : j]) + "`")
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _top_level_lines(blank: str) -> list[tuple[int, str]]:
    """(line number, text) of lines that start at brace/bracket depth 0."""
    lines: list[tuple[int, str]] = []
    depth = 0
    for number, line in enumerate(blank.split("\n"), start=1):
        if depth == 0 and line.strip():
            lines.append((number, line))
        for ch in line:
            if ch in "{[(":
                depth += 1
            elif ch in "}])":
                depth = max(0, depth - 1)
    return lines


def _annotations(source: str) -> dict[int, dict[str, Any]]:
    """METADATA blocks by the line number of the rule that follows each."""
    found: dict[int, dict[str, Any]] = {}
    lines = source.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "# METADATA":
            block: list[str] = []
            i += 1
            while i < len(lines) and lines[i].lstrip().startswith("#"):
                block.append(lines[i].lstrip()[1:].removeprefix(" "))
                i += 1
            try:
                parsed = yaml.safe_load("\n".join(block)) or {}
            except yaml.YAMLError:
                parsed = {"invalid": True}
            if isinstance(parsed, dict):
                found[i + 1] = parsed
        else:
            i += 1
    return found


def parse_module(file: str, source: str) -> ModuleInfo:
    """Read `source` (named `file`); raises ValueError when it has no package."""
    blank = blank_comments_and_strings(source)
    package = _PACKAGE.search(blank)
    if package is None:
        raise ValueError(f"{file}: no package declaration")
    annotations = _annotations(source)
    rules: list[RuleInfo] = []
    for number, line in _top_level_lines(blank):
        match = _HEAD.match(line)
        if match is None or match.group(1) in ("package", "import"):
            continue
        name, rest = match.group(1), match.group(2).lstrip()
        if name == "default":
            inner = _HEAD.match(rest)
            if inner is None:
                continue
            name, rest = inner.group(1), inner.group(2).lstrip()
        rules.append(RuleInfo(name, number, rest.startswith("("), annotations.get(number, {})))
    calls = frozenset(m.group(1) for m in _CALL.finditer(blank))
    return ModuleInfo(file, package.group(1), tuple(rules), calls, file.endswith("_test.rego"))


def lint_v1(file: str, source: str) -> list[LintIssue]:
    """v0-style rule heads in a module the manifest declares as Rego v1."""
    issues: list[LintIssue] = []
    blank = blank_comments_and_strings(source)
    for number, line in _top_level_lines(blank):
        match = _HEAD.match(line)
        if match is None or match.group(1) in ("package", "import", "default"):
            continue
        name, rest = match.group(1), match.group(2).strip()
        head = rest
        # Strip a `[key]` or `(args)` suffix of the rule name, then look at what follows.
        if head.startswith(("[", "(")):
            closing = _matching(head)
            if closing < 0:
                continue
            suffix, head = head[: closing + 1], head[closing + 1 :].strip()
        else:
            suffix = ""
        if head.startswith("{"):
            issues.append(LintIssue(file, number, f"v0 rule body `{name}{suffix} {{`: {_V0_HINT}"))
        elif suffix.startswith("[") and (head.startswith("if") or head == ""):
            issues.append(
                LintIssue(
                    file,
                    number,
                    f"v0 partial set `{name}{suffix}`: write `{name} contains ... if`",
                )
            )
        elif re.match(r"^(:?=)\s*[^{]*\{\s*$", head) and not re.search(r"\bif\b", head):
            # `x = y {` / `x := y {`: v0 body after a value, unless the brace opens a literal
            # (which then continues on the next lines with `"key": ...`).
            value = re.sub(r"^(:?=)\s*", "", head)
            if value.rstrip("{").strip():
                issues.append(LintIssue(file, number, f"v0 rule body after `{name} {head}`"))
    return issues


_WITH_WHOLE_INPUT = re.compile(r"\bwith\s+input\s+as\b")


def lint_evaluator(file: str, source: str) -> list[LintIssue]:
    """Constructs that valid Rego allows but our evaluator (rego-cpp 1.5.2) cannot run.

    `with input as <value>` replacing the whole input crashes rego-cpp as soon as the policy
    applies an operator or builtin to input; overriding paths (`with input.tenant as ...`) works.
    """
    blank = blank_comments_and_strings(source)
    return [
        LintIssue(
            file,
            blank.count("\n", 0, match.start()) + 1,
            "`with input as` crashes the evaluator; override paths (`with input.tenant as ...`)",
        )
        for match in _WITH_WHOLE_INPUT.finditer(blank)
    ]


def _matching(text: str) -> int:
    pairs = {"[": "]", "(": ")"}
    opener, depth = text[0], 0
    for index, ch in enumerate(text):
        if ch == opener:
            depth += 1
        elif ch == pairs[opener]:
            depth -= 1
            if depth == 0:
                return index
    return -1
