"""`manifest.yaml` of a workflow package: a strict schema (unknown keys are errors)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from mc_common.errors import FieldViolation, InvalidArgument

SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
NAME = r"^[a-z0-9][a-z0-9-]{0,62}(/[a-z0-9][a-z0-9-]{0,62})?$"
PERMISSIONS = frozenset(
    {
        "receipts:write", "receipts:read", "decisions:read", "limits:check", "secrets:read",
        "network:egress", "storage:read", "storage:write", "policy:evaluate",
    }
)  # fmt: skip

Text = Annotated[str, StringConstraints(max_length=2000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Entrypoint(_Strict):
    """A runnable workflow of the package: its name and the file that defines it."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    file: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    description: Text = ""


class Input(_Strict):
    """A parameter the workflow takes."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    type: Literal["string", "integer", "number", "boolean", "object", "array"]
    required: bool = False
    description: Text = ""
    default: str | int | float | bool | None = None


class Manifest(_Strict):
    """What a package is: name, version, what it runs, what it takes, what it may do."""

    api_version: Literal["mc.marketplace/v1"] = Field(alias="apiVersion")
    name: Annotated[str, StringConstraints(pattern=NAME)]
    version: Annotated[str, StringConstraints(pattern=SEMVER)]
    description: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    entrypoints: list[Entrypoint] = Field(min_length=1, max_length=32)
    inputs: list[Input] = Field(default_factory=list, max_length=64)
    permissions: list[str] = Field(default_factory=list, max_length=32)
    min_platform_version: Annotated[str, StringConstraints(pattern=SEMVER)] = Field(
        alias="minPlatformVersion"
    )
    tags: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]] = Field(
        default_factory=list, max_length=16
    )
    license: Annotated[str, StringConstraints(max_length=64)] = ""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    @property
    def archive_name(self) -> str:
        """`NAME-VERSION.mwpkg.tgz` (a `/` in a scoped name becomes `__`)."""
        return f"{self.name.replace('/', '__')}-{self.version}.mwpkg.tgz"


def parse_manifest(data: bytes) -> Manifest:
    """Parse and check `manifest.yaml`; INVALID_ARGUMENT names every violation."""
    try:
        document = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidArgument.field("manifest.yaml", f"not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument.field("manifest.yaml", "must be a mapping")
    try:
        manifest = Manifest.model_validate(document)
    except ValidationError as exc:
        violations = [
            FieldViolation("manifest." + ".".join(str(p) for p in error["loc"]), error["msg"])
            for error in exc.errors()
        ]
        raise InvalidArgument(
            "manifest.yaml does not follow the package schema: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations,
        ) from None
    unknown = sorted(set(manifest.permissions) - PERMISSIONS)
    if unknown:
        raise InvalidArgument.field(
            "manifest.permissions",
            f"unknown permission(s) {', '.join(unknown)}; known: {', '.join(sorted(PERMISSIONS))}",
        )
    names = [e.name for e in manifest.entrypoints]
    if len(set(names)) != len(names):
        raise InvalidArgument.field("manifest.entrypoints", "entrypoint names must be unique")
    if not re.fullmatch(SEMVER, manifest.version):  # pragma: no cover - pattern above
        raise InvalidArgument.field("manifest.version", "not semver")
    return manifest
