"""Runs a bundle's policy tests in a child process, so an evaluator crash fails the build.

rego-cpp is native code; a policy that crashes it (rego-cpp 1.5.2 segfaults on a builtin call
in a rule head evaluated under `with`) must quarantine the bundle, not kill the builder or the
PDP. The child reads the bundle's files as JSON on stdin and writes the report on stdout.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Mapping

from mc_edge_policy.bundle import Manifest
from mc_edge_policy.compiler import PolicyCompileError, TestReport, run_policy_tests

TIMEOUT_S = 120.0


def run_isolated(files: Mapping[str, bytes], manifest: Manifest) -> TestReport:
    """`run_policy_tests` in a child process; a crash or timeout is a failed report."""
    request = json.dumps(
        {
            "files": {k: base64.b64encode(v).decode() for k, v in files.items()},
            "manifest": manifest.to_json(),
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mc_edge_policy.policy_check"],
            input=request.encode(),
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return TestReport((), (f"policy tests did not finish within {TIMEOUT_S:.0f} s",))
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return TestReport(
            (), (f"policy tests crashed the evaluator (exit {done.returncode}) {detail[0][:300]}",)
        )
    report = json.loads(done.stdout)
    if "error" in report:
        raise PolicyCompileError(report["error"], report.get("issues", []))
    return TestReport(tuple(report["passed"]), tuple(report["failed"]))


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    files = {k: base64.b64decode(v) for k, v in request["files"].items()}
    manifest = Manifest.from_json(request["manifest"])
    try:
        report = run_policy_tests(files, manifest)
        out: dict[str, object] = {"passed": report.passed, "failed": report.failed}
    except PolicyCompileError as exc:
        out = {"error": str(exc), "issues": exc.issues}
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
