"""The fleet's Helm chart (deploy/helm/maestro-conductor), rendered and linted by real Helm.

helm-python-sdk (`helm_python`) binds Helm v4's Go SDK through libhelm_c, so `Chart.render`,
`Chart.validate_schema` and `lint` below are what `helm template` / `helm lint` do, offline and
without a helm binary. Rendered YAML is parsed with Helm's own parser (`values_from_yaml`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from mc_common.manifest import load_services

CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "maestro-conductor"
RELEASE = "mc"
WARNING = 2  # lint severities: 1 info, 2 warning, 3 error


@dataclass(frozen=True)
class Expected:
    """What the chart must render for one service by default."""

    env_prefix: str
    command: list[str]
    grpc_port: int
    metrics_port: int


# Derived from the services' declarations (mc_common.manifest), never listed here by hand.
SERVICES = {
    m.name: Expected(m.env_prefix, [m.command], m.grpc_port, m.metrics_port)
    for m in load_services()
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders with `values` (NOTES.txt left out)."""
    manifests = chart.render(values, name=RELEASE, namespace="mc-system")
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml"):
            continue
        for document in re.split(r"^---\s*$", text, flags=re.MULTILINE):
            if document.strip() and (parsed := helm.values_from_yaml(document)):
                objects.append(parsed)
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind, keyed by the component they belong to."""
    found = {}
    for obj in objects:
        if obj["kind"] == kind:
            component = obj["metadata"]["labels"].get("app.kubernetes.io/component")
            assert component not in found, f"two {kind}s for {component}"
            found[component] = obj
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """Environment of the container: plain values as str, secret references as their dict."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def test_lint_passes_strict() -> None:
    report = helm.lint(CHART_DIR, strict=True, kube_version="v1.30.0")

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


def test_default_render_has_a_deployment_and_service_per_component(chart: helm.Chart) -> None:
    objects = render(chart)

    assert set(of_kind(objects, "Deployment")) == set(SERVICES)
    assert set(of_kind(objects, "Service")) == set(SERVICES)
    assert set(of_kind(objects, "PodDisruptionBudget")) == set(SERVICES)
    assert of_kind(objects, "ServiceMonitor") == {}
    names = [o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"]
    assert sorted(names) == [f"mc-maestro-conductor-{name}" for name in sorted(SERVICES)]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_component_container_matches_its_service(chart: helm.Chart, name: str) -> None:
    expected = SERVICES[name]
    objects = render(chart)
    deployment = of_kind(objects, "Deployment")[name]
    main = container(deployment)

    assert main["command"] == expected.command
    assert main["image"] == f"maestro-conductor:{chart.metadata['appVersion']}"
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    # Components may add ports of their own (the gateway's http); these two are declared.
    assert {k: ports[k] for k in ("grpc", "metrics")} == {
        "grpc": expected.grpc_port,
        "metrics": expected.metrics_port,
    }
    # Probes go to the plaintext health port: the grpc port requires a client certificate.
    health = expected.grpc_port + 100
    assert ports["health"] == health
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["grpc"] == {"port": health}, probe

    env = env_of(deployment)
    prefix = expected.env_prefix
    assert env[f"{prefix}GRPC_HOST"] == "0.0.0.0"
    assert env[f"{prefix}GRPC_PORT"] == str(expected.grpc_port)
    assert env[f"{prefix}METRICS_HOST"] == "0.0.0.0"
    assert env[f"{prefix}METRICS_PORT"] == str(expected.metrics_port)
    assert env[f"{prefix}LOG_LEVEL"] == "INFO"
    assert env[f"{prefix}HEALTH_PORT"] == str(health)
    assert all(key.startswith((prefix, "MC_IDENTITY_")) for key in env), env
    # Empty defaults are not rendered, so the service's own default applies.
    assert f"{prefix}KAFKA_BOOTSTRAP" not in env

    service = of_kind(objects, "Service")[name]
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert {k: service_ports[k] for k in ("grpc", "metrics")} == {
        "grpc": expected.grpc_port,
        "metrics": expected.metrics_port,
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(expected.metrics_port)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_component_runs_non_root_read_only_and_stops_gracefully(
    chart: helm.Chart, name: str
) -> None:
    deployment = of_kind(render(chart), "Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    security = container(deployment)["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(deployment)["volumeMounts"]

    grace = float(env_of(deployment)[f"{SERVICES[name].env_prefix}SHUTDOWN_GRACE_S"])
    pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace


def test_secrets_are_referenced_never_inlined(chart: helm.Chart) -> None:
    deployments = of_kind(render(chart), "Deployment")
    pql_env = env_of(deployments["pql"])
    limiter_env = env_of(deployments["limiter"])

    assert pql_env["MC_PQL_POSTGRES_DSN"] == {
        "secretKeyRef": {"name": "mc-pql-postgres", "key": "dsn"}
    }
    assert limiter_env["MC_LIMITER_REDIS_URLS"] == {
        "secretKeyRef": {"name": "mc-limiter-redis", "key": "urls"}
    }
    key_path = Path(pql_env["MC_PQL_SIGNING_KEY_PATH"])
    mounts = {m["name"]: m for m in container(deployments["pql"])["volumeMounts"]}
    assert mounts["signing-key"]["readOnly"] is True
    assert key_path.parent == Path(mounts["signing-key"]["mountPath"])
    volumes = {v["name"]: v for v in deployments["pql"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["signing-key"]["secret"]["secretName"] == "mc-pql-signing-key"


def test_disabling_a_component_removes_all_its_objects(chart: helm.Chart) -> None:
    disabled = {"limiter": {"enabled": False}, "edge-policy": {"enabled": False}}
    objects = render(chart, {"components": disabled, "serviceMonitor": {"enabled": True}})

    components = {o["metadata"]["labels"].get("app.kubernetes.io/component") for o in objects}
    enabled = set(SERVICES) - set(disabled)
    assert components == {*enabled, None}  # None: the shared ServiceAccount
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"):
        assert set(of_kind(objects, kind)) == enabled, kind


def test_replicas_override_one_component_only(chart: helm.Chart) -> None:
    deployments = of_kind(render(chart, {"components": {"pql": {"replicas": 5}}}), "Deployment")

    assert deployments["pql"]["spec"]["replicas"] == 5
    assert deployments["limiter"]["spec"]["replicas"] == 2


def test_service_monitor_only_when_enabled(chart: helm.Chart) -> None:
    assert of_kind(render(chart), "ServiceMonitor") == {}

    enabled = {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}
    monitors = of_kind(render(chart, enabled), "ServiceMonitor")

    assert set(monitors) == set(SERVICES)
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "prom"
        assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == name
        assert monitor["spec"]["endpoints"] == [
            {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
        ]


def test_component_false_overrides_a_default_true(chart: helm.Chart) -> None:
    values = {"components": {"limiter": {"podDisruptionBudget": {"enabled": False}}}}

    assert set(of_kind(render(chart, values), "PodDisruptionBudget")) == set(SERVICES) - {"limiter"}


@pytest.mark.parametrize("removed", [None, ""], ids=["null", "empty"])
def test_default_env_is_prefixed_per_component_and_components_can_drop_it(
    chart: helm.Chart, removed: str | None
) -> None:
    values = {
        "default": {"env": {"KAFKA_BOOTSTRAP": "kafka.kafka:9092", "REGION": "eu1"}},
        "components": {"limiter": {"env": {"REGION": removed}}},
    }
    deployments = of_kind(render(chart, values), "Deployment")
    pql_env = env_of(deployments["pql"])
    limiter_env = env_of(deployments["limiter"])

    assert pql_env["MC_PQL_KAFKA_BOOTSTRAP"] == "kafka.kafka:9092"
    assert limiter_env["MC_LIMITER_KAFKA_BOOTSTRAP"] == "kafka.kafka:9092"
    assert pql_env["MC_PQL_REGION"] == "eu1"
    assert "MC_LIMITER_REGION" not in limiter_env


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"components": {"pql": {"replcas": 3}}}, "additional properties 'replcas'"),
        ({"default": {"imag": {"tag": "x"}}}, "additional properties 'imag'"),
        ({"servicemonitor": {"enabled": True}}, "additional properties 'servicemonitor'"),
        (
            {"default": {"probes": {"liveness": {"periodSecond": 3}}}},
            "additional properties 'periodSecond'",
        ),
        (
            {"default": {"secretEnv": {"TOKEN": {"secretNam": "x", "key": "k"}}}},
            "additional properties 'secretNam'",
        ),
        ({"default": {"env": {"log_level": "DEBUG"}}}, "'log_level'"),
        ({"components": {"pql": {"env": {"GRPC_PORT": "1"}}}}, "'GRPC_PORT'"),
        ({"components": {"limitr": {"replicas": 3}}}, "missing properties 'envPrefix'"),
    ],
    ids=["component", "default", "top-level", "probe", "secret-ref", "env-name", "derived", "name"],
)
def test_values_typo_is_rejected_by_the_schema(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        chart.render(values, name=RELEASE)

    report = helm.lint(CHART_DIR, values)
    assert any(message in error for error in report["errors"]), report


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"default": {"terminationGracePeriodSeconds": 20}},
            "terminationGracePeriodSeconds (20) must exceed",
        ),
        (
            {"components": {"limiter": {"env": {"REDIS_URLS": "redis://r:6379"}}}},
            "MC_LIMITER_REDIS_URLS is set both in env and in secretEnv",
        ),
    ],
    ids=["grace", "env-and-secret"],
)
def test_inconsistent_values_fail_the_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    # NOTE: `helm lint` cannot catch these: in lint mode Helm turns `fail` into a log line.
    chart.validate_schema(values)
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE)


def test_moving_a_secret_env_to_plain_env_works_once_the_secret_is_nulled(
    chart: helm.Chart,
) -> None:
    values = {
        "components": {
            "limiter": {"env": {"REDIS_URLS": "redis://r:6379"}, "secretEnv": {"REDIS_URLS": None}}
        }
    }

    limiter_env = env_of(of_kind(render(chart, values), "Deployment")["limiter"])

    assert limiter_env["MC_LIMITER_REDIS_URLS"] == "redis://r:6379"


# --- workload identity (ADR 0044) ----------------------------------------------------------


def volumes_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}


def mounts_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container(deployment)["volumeMounts"]}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_component_gets_its_svid_from_cert_manager_by_default(
    chart: helm.Chart, name: str
) -> None:
    objects = render(chart)
    deployment = of_kind(objects, "Deployment")[name]
    env = env_of(deployment)
    assert env["MC_IDENTITY_TRUST_DOMAIN"] == "mc.local"
    assert env["MC_IDENTITY_NAMESPACE"] == "mc-system"
    assert env["MC_IDENTITY_SVID_DIR"] == "/var/run/secrets/mc-identity"
    assert env["MC_IDENTITY_TENANT_CALLERS"] == "gateway,edge-policy"
    assert env["MC_IDENTITY_OPERATOR_CALLERS"] == "gateway"
    assert env["MC_IDENTITY_FRONT_DOOR"] == "gateway"
    assert "MC_IDENTITY_MODE" not in env  # mTLS, the services' default

    certificate = of_kind(objects, "Certificate")[name]
    spec = certificate["spec"]
    assert spec["uris"] == [f"spiffe://mc.local/ns/mc-system/sa/{name}"]
    assert spec["dnsNames"] == [f"{name}.mc-system.svc"]  # the TLS name clients verify
    assert set(spec["usages"]) == {"digital signature", "server auth", "client auth"}
    assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    assert spec["issuerRef"]["name"] == "mc-spiffe-ca"
    assert volumes_of(deployment)["mc-identity"]["secret"]["secretName"] == spec["secretName"]
    mount = mounts_of(deployment)["mc-identity"]
    assert mount == {
        "name": "mc-identity",
        "mountPath": "/var/run/secrets/mc-identity",
        "readOnly": True,
    }


def test_identity_values_reach_every_component(chart: helm.Chart) -> None:
    values = {
        "identity": {
            "trustDomain": "prod.example",
            "namespace": "conductor",
            "tenantCallers": ["gateway", "billing"],
            "frontDoor": ["gateway", "spiffe://edge.example/ns/envoy/sa/front"],
            "certManager": {
                "issuerRef": {"name": "spire-ca", "kind": "Issuer"},
                "duration": "1h",
                "renewBefore": "20m",
            },
            "trustBundle": {"configMap": "mc-bundle", "key": "bundle.pem"},
        }
    }
    objects = render(chart, values)
    for name, deployment in of_kind(objects, "Deployment").items():
        env = env_of(deployment)
        assert env["MC_IDENTITY_TRUST_DOMAIN"] == "prod.example"
        assert env["MC_IDENTITY_TENANT_CALLERS"] == "gateway,billing"
        assert env["MC_IDENTITY_FRONT_DOOR"] == "gateway,spiffe://edge.example/ns/envoy/sa/front"
        assert env["MC_IDENTITY_BUNDLE_FILE"] == "/var/run/secrets/mc-trust-bundle/bundle.pem"
        assert volumes_of(deployment)["mc-trust-bundle"]["configMap"]["name"] == "mc-bundle"
        spec = of_kind(objects, "Certificate")[name]["spec"]
        assert spec["uris"] == [f"spiffe://prod.example/ns/conductor/sa/{name}"]
        assert (spec["duration"], spec["renewBefore"]) == ("1h", "20m")
        assert spec["issuerRef"] == {
            "name": "spire-ca",
            "kind": "Issuer",
            "group": "cert-manager.io",
        }


def test_csi_provider_issues_per_pod_without_certificates(chart: helm.Chart) -> None:
    objects = render(chart, {"identity": {"provider": "csi"}})
    assert of_kind(objects, "Certificate") == {}
    for name, deployment in of_kind(objects, "Deployment").items():
        csi = volumes_of(deployment)["mc-identity"]["csi"]
        assert csi["driver"] == "csi.cert-manager.io" and csi["readOnly"] is True
        attributes = csi["volumeAttributes"]
        assert attributes["csi.cert-manager.io/uri-sans"] == (
            f"spiffe://mc.local/ns/mc-system/sa/{name}"
        )
        assert attributes["csi.cert-manager.io/dns-names"] == f"{name}.mc-system.svc"
        assert "mc-identity" in mounts_of(deployment)


def test_spire_provider_runs_spiffe_helper_beside_each_component(chart: helm.Chart) -> None:
    objects = render(chart, {"identity": {"provider": "spire"}})
    assert of_kind(objects, "Certificate") == {}
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    conf = config["data"]["helper.conf"]
    assert 'cert_dir = "/var/run/secrets/mc-identity"' in conf
    assert 'svid_bundle_file_name = "svid_bundle.pem"' in conf
    (entry,) = [o for o in objects if o["kind"] == "ClusterSPIFFEID"]
    assert entry["spec"]["spiffeIDTemplate"].startswith(
        "spiffe://{{ .TrustDomain }}/ns/mc-system/sa/"
    )
    for deployment in of_kind(objects, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        (helper,) = pod["initContainers"]
        assert helper["restartPolicy"] == "Always"  # a native sidecar
        volumes = volumes_of(deployment)
        assert volumes["spiffe-workload-api"]["csi"]["driver"] == "csi.spiffe.io"
        assert volumes["mc-identity"]["emptyDir"]["medium"] == "Memory"
        assert mounts_of(deployment)["mc-identity"]["readOnly"] is True
    no_entry = render(
        chart, {"identity": {"provider": "spire", "spire": {"clusterSPIFFEID": {"create": False}}}}
    )
    assert not [o for o in no_entry if o["kind"] == "ClusterSPIFFEID"]


def test_provider_none_mounts_nothing_but_still_configures(chart: helm.Chart) -> None:
    objects = render(chart, {"identity": {"provider": "none"}})
    assert of_kind(objects, "Certificate") == {}
    for deployment in of_kind(objects, "Deployment").values():
        assert "mc-identity" not in volumes_of(deployment)
        assert env_of(deployment)["MC_IDENTITY_SVID_DIR"] == "/var/run/secrets/mc-identity"


@pytest.mark.parametrize(
    "identity",
    [
        {"provider": "vault"},
        {"tenantCallers": ["Not A Name"]},
        {"certManager": {"issuerRef": {"name": "x", "kind": "Secret"}}},
        {"mountPath": "relative/path"},
    ],
)
def test_identity_typos_are_rejected_by_the_schema(
    chart: helm.Chart, identity: dict[str, Any]
) -> None:
    with pytest.raises(helm.HelmValuesError, match="identity"):
        chart.validate_schema({"identity": identity})


@pytest.mark.parametrize("provider", ["cert-manager", "csi", "spire", "none"])
def test_lint_passes_strict_for_every_identity_provider(provider: str) -> None:
    values = {"identity": {"provider": provider}}
    report = helm.lint(CHART_DIR, values, strict=True, kube_version="v1.30.0")

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


def ingress_sources(policy: dict[str, Any], port: str | int) -> list[Any] | None:
    """The `from` list of the rule admitting `port` (None: from anywhere); KeyError if none."""
    for rule in policy["spec"]["ingress"]:
        if any(p["port"] == port for p in rule["ports"]):
            return rule.get("from")
    raise KeyError(port)


def test_ingress_is_denied_by_default_and_admits_only_the_front_door_and_peers(
    chart: helm.Chart,
) -> None:
    objects = render(chart)
    policies = of_kind(objects, "NetworkPolicy")
    deny = policies.pop(None)  # the release-wide default deny
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    assert deny["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert set(policies) == set(SERVICES)

    def callers(name: str) -> set[str]:
        sources = ingress_sources(policies[name], "grpc")
        assert sources is not None, f"{name}'s grpc port is open to anyone"
        return {s["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for s in sources}

    assert callers("pql") == {"gateway"}
    assert callers("limiter") == {"gateway", "edge-policy"}
    # The front door itself takes its grpc and http ports from anywhere by default.
    assert ingress_sources(policies["gateway"], "grpc") is None
    assert ingress_sources(policies["gateway"], "http") is None
    for name in SERVICES:
        assert ingress_sources(policies[name], "metrics") is None


def test_front_door_sources_and_disabling_policies(chart: helm.Chart) -> None:
    ingress = [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}]
    policies = of_kind(
        render(chart, {"networkPolicy": {"frontDoorFrom": ingress}}), "NetworkPolicy"
    )
    assert ingress_sources(policies["gateway"], "http") == ingress

    assert of_kind(render(chart, {"networkPolicy": {"enabled": False}}), "NetworkPolicy") == {}


def test_autoscaling_adds_an_hpa_and_leaves_replicas_to_it(chart: helm.Chart) -> None:
    assert of_kind(render(chart), "HorizontalPodAutoscaler") == {}
    values = {"components": {"pql": {"autoscaling": {"enabled": True, "maxReplicas": 6}}}}
    objects = render(chart, values)

    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mc-maestro-conductor-pql"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    deployments = of_kind(objects, "Deployment")
    assert "replicas" not in deployments["pql"]["spec"]
    assert deployments["limiter"]["spec"]["replicas"] == 2


def test_declarative_limiter_rules_come_from_a_config_map(chart: helm.Chart) -> None:
    assert of_kind(render(chart), "ConfigMap").get("limiter") is None
    rules = (
        "domain: edge\ndescriptors:\n  - key: ip\n"
        "    rate_limit: {unit: second, requests_per_unit: 5}\n"
    )
    values = {"components": {"limiter": {"configFiles": {"files": {"edge.yaml": rules}}}}}
    objects = render(chart, values)

    config = of_kind(objects, "ConfigMap")["limiter"]
    assert config["data"] == {"edge.yaml": rules}
    deployment = of_kind(objects, "Deployment")["limiter"]
    assert env_of(deployment)["MC_LIMITER_RULE_FILES"] == "/etc/mc-limiter/rules"
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    assert mounts["config-files"] == {
        "name": "config-files",
        "mountPath": "/etc/mc-limiter/rules",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config-files"]["configMap"]["name"] == config["metadata"]["name"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"networkPolicy": {"frontdoor": ["gateway"]}}, "additional properties 'frontdoor'"),
        ({"default": {"autoscaling": {"maxReplica": 3}}}, "additional properties 'maxReplica'"),
        ({"components": {"pql": {"configFiles": {"file": {}}}}}, "additional properties 'file'"),
    ],
    ids=["network-policy", "autoscaling", "config-files"],
)
def test_new_sections_reject_unknown_keys(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        chart.validate_schema(values)
