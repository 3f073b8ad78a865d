"""Compile a bundle's policies once into prebuilt regopy entrypoints, and run its own tests.

For every decision package the compiler adds one generated rule, `data.mc_pdp.<package>.decision`,
that gathers the package's `allow`, `deny`, `violation`, `throttle` and `advice` into one object,
so a decision is one prebuilt-entrypoint query. The generated module lives only in the compiled
form; the signed OPA bundle is unchanged. A builtin the evaluator lacks fails the compile, so it
can never evaluate to undefined (which a policy would read as "no deny").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from regopy import Bundle, Interpreter, RegoError

from mc_edge_policy.bundle import Manifest, data_documents, policy_files
from mc_edge_policy.rego_source import (
    KEYWORDS,
    LintIssue,
    ModuleInfo,
    lint_evaluator,
    lint_v1,
    parse_module,
)

DECISION_RULES = ("allow", "deny", "violation", "throttle", "advice")
GENERATED_PREFIX = "mc_pdp"
MAX_TESTS = 2000


class PolicyCompileError(ValueError):
    """The bundle's policies do not lint, compile or pass their tests; `issues` say where."""

    def __init__(self, message: str, issues: Sequence[str] = ()) -> None:
        super().__init__(message if not issues else f"{message}: " + "; ".join(issues[:10]))
        self.issues = list(issues)


@dataclass(frozen=True, slots=True)
class PackagePolicy:
    """A decision package: its dotted name, the decision rules it defines, and annotations."""

    package: str
    rules: tuple[str, ...]
    annotations: dict[str, dict[str, Any]] = field(default_factory=dict)  # by custom.id or rule

    @property
    def entrypoint(self) -> str:
        return f"{GENERATED_PREFIX}/{self.package.replace('.', '/')}/decision"


@dataclass(slots=True)
class CompiledPolicies:
    """The prebuilt regopy bundle and what each package exposes."""

    bundle: Bundle
    packages: dict[str, PackagePolicy]  # by package path `mc/limits`
    modules: list[ModuleInfo]


def analyze(files: Mapping[str, bytes], manifest: Manifest) -> list[ModuleInfo]:
    """Parse and lint every module; raises PolicyCompileError listing every problem."""
    issues: list[LintIssue | str] = []
    modules: list[ModuleInfo] = []
    for name, source in sorted(policy_files(files).items()):
        try:
            modules.append(parse_module(name, source))
        except ValueError as exc:
            issues.append(str(exc))
            continue
        if manifest.rego_version == 1:
            issues.extend(lint_v1(name, source))
            issues.extend(lint_evaluator(name, source))
    if issues:
        raise PolicyCompileError("policy lint failed", [str(i) for i in issues])
    return modules


def _unknown_builtins(modules: Sequence[ModuleInfo], interpreter: Interpreter) -> list[str]:
    defined = {r.name for m in modules for r in m.rules if r.is_function}
    unknown: list[str] = []
    for module in modules:
        for call in sorted(module.calls):
            last = call.rsplit(".", 1)[-1]
            if call in KEYWORDS or last in defined or interpreter.is_builtin(call):
                continue
            unknown.append(f"{module.file}: builtin {call} is not available in the evaluator")
    return unknown


def _interpreter(
    files: Mapping[str, bytes], modules: Sequence[ModuleInfo], *, tests: bool
) -> Interpreter:
    interpreter = Interpreter()
    interpreter.strict_built_in_errors = True
    sources = policy_files(files)
    try:
        for module in modules:
            if module.is_test and not tests:
                continue
            interpreter.add_module(module.file, sources[module.file])
        for path, value in data_documents(files):
            document: Any = value
            for part in reversed(path):
                document = {part: document}
            interpreter.add_data(document)
    except RegoError as exc:
        raise PolicyCompileError("policy does not parse", [str(exc)[:2000]]) from exc
    return interpreter


def _generated_module(policy: PackagePolicy) -> str:
    target = "data." + policy.package
    name = f"{GENERATED_PREFIX}.{policy.package}"
    lines = [f"package {name}", "", "import rego.v1", ""]
    fields = []
    for rule in policy.rules:
        empty = "null" if rule == "allow" else "set()"
        lines += [f"default {rule}_value := {empty}", f"{rule}_value := {target}.{rule}", ""]
        fields.append(f'"{rule}": {rule}_value')
    lines.append("decision := {" + ", ".join(fields) + "}")
    return "\n".join(lines) + "\n"


def decision_packages(modules: Sequence[ModuleInfo]) -> dict[str, PackagePolicy]:
    """The packages that define at least one decision rule, by path."""
    rules: dict[str, set[str]] = {}
    annotations: dict[str, dict[str, dict[str, Any]]] = {}
    for module in modules:
        if module.is_test:
            continue
        found = module.rule_names() & set(DECISION_RULES)
        if found:
            rules.setdefault(module.package, set()).update(found)
        for rule in module.rules:
            if rule.annotation:
                custom = rule.annotation.get("custom")
                key = custom.get("id") if isinstance(custom, dict) else None
                annotations.setdefault(module.package, {})[str(key or rule.name)] = rule.annotation
    return {
        package.replace(".", "/"): PackagePolicy(
            package,
            tuple(r for r in DECISION_RULES if r in names),
            annotations.get(package, {}),
        )
        for package, names in rules.items()
    }


def compile_policies(files: Mapping[str, bytes], manifest: Manifest) -> CompiledPolicies:
    """Lint, check builtins and build the prebuilt entrypoints of a bundle's policies."""
    if manifest.rego_version != 1:
        raise PolicyCompileError(
            "the evaluator runs Rego v1 only; a rego_version 0 bundle serves real OPAs but not "
            "this PDP"
        )
    modules = analyze(files, manifest)
    interpreter = _interpreter(files, modules, tests=False)
    unknown = _unknown_builtins([m for m in modules if not m.is_test], interpreter)
    if unknown:
        raise PolicyCompileError("policy calls builtins the evaluator lacks", unknown)
    packages = decision_packages(modules)
    if not packages:
        raise PolicyCompileError("bundle has no decision package (allow/deny/violation rules)")
    try:
        for policy in packages.values():
            interpreter.add_module(f"{policy.entrypoint}.rego", _generated_module(policy))
        bundle = interpreter.build(None, [p.entrypoint for p in packages.values()])
    except RegoError as exc:
        raise PolicyCompileError("policy does not compile", [str(exc)[:2000]]) from exc
    if not bundle.ok():
        raise PolicyCompileError("policy does not compile", [str(bundle.node())[:2000]])
    return CompiledPolicies(bundle, packages, modules)


@dataclass(frozen=True, slots=True)
class TestReport:
    """The outcome of a bundle's `*_test.rego` tests."""

    passed: tuple[str, ...]
    failed: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.passed)


def run_policy_tests(files: Mapping[str, bytes], manifest: Manifest) -> TestReport:
    """Run every `test_*` rule of the bundle's `*_test.rego` modules (as `opa test` does)."""
    modules = analyze(files, manifest)
    tests = [
        (m, r.name) for m in modules if m.is_test for r in m.rules if r.name.startswith("test_")
    ]
    if len(tests) > MAX_TESTS:
        raise PolicyCompileError(f"more than {MAX_TESTS} policy tests")
    interpreter = _interpreter(files, modules, tests=True)
    passed: list[str] = []
    failed: list[str] = []
    for module, name in tests:
        label = f"data.{module.package}.{name}"
        try:
            output = interpreter.query(label)
            result = output.results[0].expressions if output.ok() and len(output) else None
        except (RegoError, ValueError) as exc:
            failed.append(f"{label}: error {str(exc)[:200]}")
            continue
        (passed if result == [True] else failed).append(label)
    return TestReport(tuple(passed), tuple(failed))
