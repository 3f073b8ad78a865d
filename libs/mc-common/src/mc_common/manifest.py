"""The one declaration of each service: `ServiceManifest`, registered as an entry point.

Every service declares itself once, in `<package>/manifest.py`, and registers that object in its
`pyproject.toml` under the `mc.services` entry-point group. Everything that used to list the
services by hand is derived from these declarations: `maestro dev up` (what to start and how to
build its environment), the Helm values check, the type-check list in `scripts/check.sh` and
the services table in the README. See docs/adding-a-service.md.

A declared service that cannot be loaded is an error, never skipped.
"""

from __future__ import annotations

import enum
import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mc_common.config import ServiceSettings

ENTRY_POINT_GROUP = "mc.services"

_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")


class Infra(enum.StrEnum):
    """Backing infrastructure a service needs; `maestro dev up` starts only what is needed."""

    POSTGRES = "postgres"
    REDIS = "redis"
    KAFKA = "kafka"


@dataclass(frozen=True)
class DevContext:
    """What `maestro dev up` hands a service's `dev_env` to build its environment from."""

    postgres_dsn: str
    redis_url: str
    kafka_bootstrap: str
    data_dir: Path


DevEnv = Callable[[DevContext], Mapping[str, str]]
"""Builds a service's dev settings: names WITHOUT the env prefix (`POSTGRES_DSN`, not
`MC_PQL_POSTGRES_DSN`). The fleet prefixes them and adds GRPC_PORT and METRICS_PORT."""


def _no_dev_env(context: DevContext) -> Mapping[str, str]:
    return {}


class ManifestError(RuntimeError):
    """A service declaration is missing, fails to load, or contradicts another one."""


@dataclass(frozen=True)
class ServiceManifest:
    """Everything the rest of the repository needs to know about one service.

    Attributes:
        name: component name (lower-case, dashes): the `dev up` name, the Helm component key,
            the docs page `docs/services/<name>.md`.
        module: the module run as `python -m <module>` (it calls its `main()`).
        command: the console script installed for `module:main` (the container command).
        settings: the service's settings class; its `env_prefix` is the service's prefix.
        grpc_port: default gRPC port (dev fleet and chart).
        metrics_port: default Prometheus side port (dev fleet and chart).
        needs: infrastructure the service needs in the dev fleet.
        api: one line for the services table (which gRPC services it serves).
        dev_env: builds the service's dev environment from the fleet's infrastructure.
    """

    name: str
    module: str
    command: str
    settings: type[ServiceSettings]
    grpc_port: int
    metrics_port: int
    api: str
    needs: frozenset[Infra] = frozenset()
    dev_env: DevEnv = field(default=_no_dev_env)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ManifestError(f"service name {self.name!r}: use [a-z][a-z0-9-]*")
        if not self.env_prefix.startswith("MC_") or not self.env_prefix.endswith("_"):
            raise ManifestError(
                f"{self.name}: settings env_prefix {self.env_prefix!r} must look like MC_<NAME>_"
            )

    @property
    def env_prefix(self) -> str:
        """The prefix of every environment variable the service reads (from its settings)."""
        return str(self.settings.model_config.get("env_prefix", ""))

    @property
    def package(self) -> str:
        """The top-level Python package of the service (`mc_pql`)."""
        return self.module.partition(".")[0]

    def source_dir(self) -> Path:
        """The directory holding the service's package (the `src/` dir, for type checking)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ManifestError(f"{self.name}: package {self.package} is not importable")
        return Path(next(iter(spec.submodule_search_locations))).parent

    def env(self, context: DevContext, grpc_port: int, metrics_port: int) -> dict[str, str]:
        """The service's full dev environment: its `dev_env`, prefixed, plus its ports."""
        values = {**self.dev_env(context), "GRPC_PORT": str(grpc_port)}
        values["METRICS_PORT"] = str(metrics_port)
        return {f"{self.env_prefix}{key}": value for key, value in values.items()}


def load_services() -> tuple[ServiceManifest, ...]:
    """Every declared service, in name order.

    Raises:
        ManifestError: an entry point fails to import, is not a `ServiceManifest`, is registered
            under another name than its manifest's, or two services share a name or a port.
    """
    found: list[ServiceManifest] = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            manifest = entry.load()
        except Exception as exc:
            raise ManifestError(
                f"service {entry.name!r} ({entry.value}) failed to load: {exc!r}"
            ) from exc
        if not isinstance(manifest, ServiceManifest):
            raise ManifestError(f"{entry.value} is not a ServiceManifest")
        if manifest.name != entry.name:
            raise ManifestError(
                f"entry point {entry.name!r} declares a service named {manifest.name!r}"
            )
        found.append(manifest)
    _check_distinct(found)
    return tuple(sorted(found, key=lambda m: m.name))


def _check_distinct(manifests: list[ServiceManifest]) -> None:
    seen: dict[object, str] = {}
    for manifest in manifests:
        for what, value in (
            ("name", manifest.name),
            ("port", manifest.grpc_port),
            ("port", manifest.metrics_port),
            ("env prefix", manifest.env_prefix),
        ):
            key = (what, value)
            if key in seen:
                raise ManifestError(f"{manifest.name} and {seen[key]} share the {what} {value}")
            seen[key] = manifest.name


def services_table(manifests: tuple[ServiceManifest, ...]) -> str:
    """The README's services table (markdown), derived from the declarations."""
    rows = ["| service | API | docs |", "|---|---|---|"]
    for manifest in manifests:
        page = f"docs/services/{manifest.name}.md"
        rows.append(f"| {manifest.name} | {manifest.api} | [{page}]({page}) |")
    return "\n".join(rows)
