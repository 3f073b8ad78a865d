"""Each service is declared once (`mc.services` entry point); everything else must agree.

The dev fleet reads the declarations directly; these tests hold the places that cannot (the
workspace's pyproject files, the Helm values, the type-check list, the README) to them.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from mc_common.manifest import ManifestError, ServiceManifest, load_services, services_table

ROOT = Path(__file__).resolve().parents[2]
SERVICES = load_services()
BY_NAME = {m.name: m for m in SERVICES}


def pyproject(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def service_projects() -> dict[str, dict[str, Any]]:
    """`{service dir name: its pyproject}` for every directory under services/."""
    return {p.parent.name: pyproject(p) for p in sorted(ROOT.glob("services/*/pyproject.toml"))}


def test_every_service_directory_declares_exactly_one_service() -> None:
    declared = []
    for directory, project in service_projects().items():
        entries = project["project"].get("entry-points", {}).get("mc.services", {})
        assert len(entries) == 1, f"services/{directory} must declare one mc.services entry point"
        declared.extend(entries)
    assert sorted(declared) == sorted(BY_NAME)


def test_each_declared_command_runs_the_declared_module() -> None:
    for project in service_projects().values():
        (name,) = project["project"]["entry-points"]["mc.services"]
        manifest = BY_NAME[name]
        scripts = project["project"].get("scripts", {})
        assert scripts.get(manifest.command) == f"{manifest.module}:main", name


def test_the_workspace_root_installs_every_service() -> None:
    root = pyproject(ROOT / "pyproject.toml")
    distributions = {p["project"]["name"] for p in service_projects().values()}
    dependencies = set(root["project"]["dependencies"])
    assert distributions <= dependencies, "add the service to the root pyproject dependencies"
    assert distributions <= set(root["tool"]["uv"]["sources"])


def test_settings_prefixes_and_ports_are_distinct() -> None:
    prefixes = [m.env_prefix for m in SERVICES]
    ports = [p for m in SERVICES for p in (m.grpc_port, m.metrics_port)]
    assert len(set(prefixes)) == len(prefixes)
    assert len(set(ports)) == len(ports)


def test_every_service_has_its_docs_page() -> None:
    for manifest in SERVICES:
        assert (ROOT / "docs" / "services" / f"{manifest.name}.md").is_file(), manifest.name


def test_readme_services_table_is_the_derived_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert services_table(SERVICES) in readme, (
        "README services table is stale: uv run python scripts/services.py table --write"
    )


def test_type_check_list_is_derived_not_written_by_hand() -> None:
    check = (ROOT / "scripts" / "check.sh").read_text()
    mypy_lines = [line for line in check.splitlines() if " mypy " in line]
    assert mypy_lines == [
        "scripts/uv run mypy libs/mc-common/src libs/maestro-cli/src "
        "$(scripts/uv run python scripts/services.py src-dirs)"
    ]
    for manifest in SERVICES:
        assert manifest.source_dir().is_relative_to(ROOT / "services")


def test_helm_components_are_the_declared_services() -> None:
    values = helm.values_from_yaml(
        (ROOT / "deploy" / "helm" / "maestro-conductor" / "values.yaml").read_text()
    )
    components = values["components"]
    assert sorted(components) == sorted(BY_NAME)
    for name, component in components.items():
        manifest = BY_NAME[name]
        assert component["envPrefix"] == manifest.env_prefix, name
        assert component["command"] == [manifest.command], name
        # Components may add ports of their own (the gateway's http); these two are declared.
        assert {k: component["ports"][k] for k in ("grpc", "metrics")} == {
            "grpc": manifest.grpc_port,
            "metrics": manifest.metrics_port,
        }, name


def fake_entry_points(*entries: importlib.metadata.EntryPoint) -> Any:
    return lambda group: [e for e in entries if e.group == group]


def test_a_service_that_fails_to_import_is_an_error_not_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = importlib.metadata.EntryPoint("ghost", "mc_ghost.manifest:MANIFEST", "mc.services")
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(broken))

    with pytest.raises(ManifestError, match=r"service 'ghost' .* failed to load"):
        load_services()


def test_a_declaration_under_another_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    renamed = importlib.metadata.EntryPoint("other", "mc_pql.manifest:MANIFEST", "mc.services")
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(renamed))

    with pytest.raises(ManifestError, match="declares a service named 'pql'"):
        load_services()


def test_two_services_on_one_port_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pql = importlib.metadata.EntryPoint("pql", "mc_pql.manifest:MANIFEST", "mc.services")
    twin = importlib.metadata.EntryPoint("twin", "tests_twin:MANIFEST", "mc.services")
    import sys
    import types

    module = types.ModuleType("tests_twin")
    module.MANIFEST = ServiceManifest(  # type: ignore[attr-defined]
        name="twin",
        module="mc_pql.main",
        command="mc-twin",
        settings=BY_NAME["limiter"].settings,
        grpc_port=BY_NAME["pql"].grpc_port,
        metrics_port=1,
        api="",
    )
    monkeypatch.setitem(sys.modules, "tests_twin", module)
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(pql, twin))

    with pytest.raises(ManifestError, match="share the port 7301"):
        load_services()
