"""The Envoy configuration in deploy/envoy: generated from the descriptor set (no drift), and
parsed by Envoy's own config protos (PyPI xds-protos, in an isolated environment)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mc_gateway.descriptors import load_api
from mc_gateway.envoy import EnvoyOptions, build_bootstrap, render

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy" / "envoy"
DESCRIPTOR_SET = ROOT / "libs" / "mc-protos" / "src" / "mc" / "descriptor_set.binpb"
XDS_PROTOS = "xds-protos==1.85.0"  # protobuf 7 inside; isolated from the workspace's 6


async def envoy_check(config: Path) -> tuple[int, str]:
    # scripts/uv finds uv (PATH, pip's user base) or installs it: CI's shell has no uv on PATH.
    uv = str(ROOT / "scripts" / "uv")
    proc = await asyncio.create_subprocess_exec(
        uv,
        "run",
        "--isolated",
        "--no-project",
        "--with",
        XDS_PROTOS,
        "python",
        str(ROOT / "scripts" / "check_envoy_config.py"),
        str(config),
        str(DESCRIPTOR_SET),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.parametrize(
    ("name", "mode"), [("envoy.json", "replace"), ("envoy-front.json", "front")]
)
def test_committed_config_is_the_generated_one(name: str, mode: str) -> None:
    fresh = render(options=EnvoyOptions(mode=mode))  # type: ignore[arg-type]
    assert (DEPLOY / name).read_text() == fresh, "run: uv run python scripts/gen_protos.py"


def test_one_route_per_service_and_mtls_to_each_upstream() -> None:
    config = build_bootstrap(load_api())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    typed = hcm["typed_config"]
    routes = typed["route_config"]["virtual_hosts"][0]["routes"]
    transcoder = next(f for f in typed["http_filters"] if f["name"].endswith("transcoder"))
    services = transcoder["typed_config"]["services"]
    assert [r["match"]["prefix"] for r in routes] == [f"/{s}/" for s in services]
    assert "mc.pql.v1.ProvenanceService" in services
    names = [f["name"].rsplit(".", 1)[-1] for f in typed["http_filters"]]
    assert names == ["header_mutation", "jwt_authn", "ratelimit", "grpc_json_transcoder", "router"]
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "oidc-jwks":
            continue
        tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        san = tls["validation_context"]["match_typed_subject_alt_names"][0]
        assert san["matcher"]["exact"].endswith(f"/sa/{cluster['name']}")
        assert tls["tls_certificates"][0]["certificate_chain"]["filename"].endswith("tls.crt")


@pytest.mark.parametrize("name", ["envoy.json", "envoy-front.json"])
async def test_envoy_parses_the_config(name: str) -> None:
    code, out = await envoy_check(DEPLOY / name)
    assert code == 0, out


async def test_the_check_refuses_a_field_envoy_does_not_know(tmp_path: Path) -> None:
    config = json.loads((DEPLOY / "envoy.json").read_text())
    config["static_resources"]["clusters"][0]["conect_timeout"] = "1s"  # a typo
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(config))
    code, out = await envoy_check(broken)
    assert code == 1 and "conect_timeout" in out
