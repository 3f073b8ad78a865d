"""Every error a service raises says its proximate cause (AIP-193): raise sites of errors whose
default reason would only repeat the status code pass a specific `mc.common.v1.ErrorReason`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# InvalidArgument defaults to ERROR_REASON_FIELD_VIOLATION (BadRequest names the field),
# ResourceExhausted to ERROR_REASON_RATE_LIMITED, Internal is a bug by definition.
NEEDS_REASON = {
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "FailedPrecondition",
    "Unavailable",
}


def test_raise_sites_name_a_specific_reason() -> None:
    sources = [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/mc-common/src/**/*.py")]
    assert sources
    missing = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in NEEDS_REASON
                and not any(k.arg in ("reason", None) for k in node.keywords)
            ):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}")
    assert missing == [], "raise sites without a specific reason:\n" + "\n".join(missing)
