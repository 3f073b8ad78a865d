"""The gateway's declaration (entry point `mc.services: gateway`); see docs/adding-a-service.md."""

from __future__ import annotations

import json
from collections.abc import Mapping

from mc_common.manifest import DevContext, Infra, ServiceManifest
from mc_gateway.settings import GatewaySettings

HTTP_PORT = 8080
# The fleet's gRPC packages the gateway exposes, and the service (workload) serving each.
UPSTREAM_SERVICES = {"mc.pql.v1": "pql", "mc.limiter.v1": "limiter", "mc.policy.v1": "edge-policy"}


def dev_env(context: DevContext) -> Mapping[str, str]:
    """The dev database for API keys, REST on 8080, and the fleet's services as upstreams at
    their declared ports (what `maestro dev up` uses when those ports are free)."""
    from mc_common.manifest import load_services

    ports = {m.name: m.grpc_port for m in load_services()}
    upstreams: dict[str, str] = {}
    servers: dict[str, str] = {}
    for package, service in UPSTREAM_SERVICES.items():
        if service in ports:
            upstreams[package] = f"127.0.0.1:{ports[service]}"
            servers[package] = service
    env = {
        "POSTGRES_DSN": context.postgres_dsn,
        "HTTP_PORT": str(_port_or_free(HTTP_PORT)),
        "UPSTREAMS": json.dumps(upstreams),
        "UPSTREAM_SERVERS": json.dumps(servers),
    }
    if "limiter" in ports:
        env["LIMITER_ADDRESS"] = f"127.0.0.1:{ports['limiter']}"
    return env


def _port_or_free(preferred: int) -> int:
    """`preferred` when nothing listens there, else any free port (several fleets may run on
    one machine; the chosen port is in the gateway's log line `serving`)."""
    import socket

    from mc_common import devinfra

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return devinfra.free_port()
    return preferred


MANIFEST = ServiceManifest(
    name="gateway",
    module="mc_gateway.main",
    command="mc-gateway",
    settings=GatewaySettings,
    grpc_port=7310,
    metrics_port=9310,
    api="REST/JSON front door (`/api/...`, `/openapi.json`); `mc.gateway.v1.ApiKeyService`",
    needs=frozenset({Infra.POSTGRES}),
    dev_env=dev_env,
)
