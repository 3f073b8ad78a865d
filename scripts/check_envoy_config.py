"""Parse generated Envoy bootstraps into Envoy's own config protos (PyPI `xds-protos`).

Runs in an isolated environment, because xds-protos ships top-level `envoy`, `validate` and
`google` packages that would shadow the workspace's own:

    uv run --isolated --no-project --with xds-protos==1.85.0 \
        python scripts/check_envoy_config.py deploy/envoy/envoy.json [descriptor_set.binpb]

Fails on any field Envoy does not know, any `typed_config` of an unknown type, a route to a
cluster that is not defined, or a transcoded service that the descriptor set lacks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2, json_format

# Every type a generated config may name in a typed_config (registers them for Any).
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2  # noqa: F401
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.request_id.uuid.v3 import uuid_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401


def check(path: Path, descriptor_set: Path | None) -> list[str]:
    bootstrap = bootstrap_pb2.Bootstrap()
    json_format.Parse(path.read_text(), bootstrap)  # unknown fields and types raise
    problems: list[str] = []
    clusters = {c.name for c in bootstrap.static_resources.clusters}
    services: set[str] = set()
    for listener in bootstrap.static_resources.listeners:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if not network_filter.typed_config.Unpack(hcm):
                    problems.append(f"{network_filter.name}: not an HttpConnectionManager")
                    continue
                for host in hcm.route_config.virtual_hosts:
                    for route in host.routes:
                        if route.route.cluster not in clusters:
                            problems.append(f"route {route.name}: no cluster {route.route.cluster}")
                for http_filter in hcm.http_filters:
                    transcoder = transcoder_pb2.GrpcJsonTranscoder()
                    if http_filter.typed_config.Unpack(transcoder):
                        services.update(transcoder.services)
                    limit = rate_limit_pb2.RateLimit()
                    if http_filter.typed_config.Unpack(limit):
                        rls = limit.rate_limit_service.grpc_service.envoy_grpc.cluster_name
                        if rls not in clusters:
                            problems.append(f"ratelimit: no cluster {rls}")
    if descriptor_set is not None and services:
        fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
        known = {f"{f.package}.{s.name}" for f in fds.file for s in f.service}
        problems.extend(f"transcoder: unknown service {s}" for s in sorted(services - known))
    return problems


def main() -> int:
    path = Path(sys.argv[1])
    descriptor_set = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    try:
        problems = check(path, descriptor_set)
    except (json_format.ParseError, json.JSONDecodeError) as exc:
        problems = [f"not a valid Envoy bootstrap: {exc}"]
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: a valid envoy.config.bootstrap.v3.Bootstrap")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
