"""The chart's Envoy front door (values `envoy.*`), rendered by real Helm (helm-python-sdk)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

CHART_DIR = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "maestro-conductor"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def envoy_objects(chart: helm.Chart, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    manifests = chart.render(values, name="mc", namespace="mc-system")
    found: dict[str, dict[str, Any]] = {}
    for path, text in manifests.items():
        if not path.endswith("envoy.yaml"):
            continue
        for document in re.split(r"^---\s*$", text, flags=re.MULTILINE):
            if document.strip() and (parsed := helm.values_from_yaml(document)):
                found[parsed["kind"]] = parsed
    return found


def test_envoy_is_off_by_default(chart: helm.Chart) -> None:
    assert envoy_objects(chart, {}) == {}


def test_envoy_in_front_forwards_with_the_front_config(chart: helm.Chart) -> None:
    objects = envoy_objects(chart, {"envoy": {"enabled": True}})
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["-c", "/etc/envoy/envoy-front.json"]
    assert [v["name"] for v in pod["volumes"]] == ["config"]
    assert objects["Service"]["spec"]["ports"][0]["port"] == 8080


def test_envoy_in_place_calls_the_fleet_with_the_gateways_svid(chart: helm.Chart) -> None:
    objects = envoy_objects(chart, {"envoy": {"enabled": True, "mode": "replace"}})
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["-c", "/etc/envoy/envoy.json"]
    svid = next(v for v in pod["volumes"] if v["name"] == "svid")
    assert svid["secret"]["secretName"] == "mc-maestro-conductor-gateway-svid"
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["svid"] == "/var/run/secrets/mc/svid"  # where envoy.json reads tls.crt/key/ca


def test_envoy_values_are_schema_checked(chart: helm.Chart) -> None:
    with pytest.raises(Exception, match="mode"):
        chart.render({"envoy": {"enabled": True, "mode": "sideways"}}, name="mc")
