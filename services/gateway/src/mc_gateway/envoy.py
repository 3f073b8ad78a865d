"""Envoy configuration generated from the same descriptor set the Python gateway serves.

`python -m mc_gateway.envoy [--out deploy/envoy/envoy.json]` writes an Envoy bootstrap (JSON,
which Envoy reads as it reads YAML) with one listener and, in order, these HTTP filters:

1. `header_mutation`: drops client-sent `x-mc-tenant` / `x-mc-principal` (identity comes from
   credentials only);
2. `jwt_authn`: OIDC bearer tokens against the issuer's JWKS (iss, aud, exp/nbf, pinned by the
   JWKS keys), the tenant claim copied into `x-mc-tenant` and the subject into `x-mc-principal`;
3. `ratelimit`: the limiter's Envoy RLS endpoint, per tenant, domain `mc-gateway`;
4. `grpc_json_transcoder`: REST/JSON to gRPC from the descriptor set, for every service with
   `google.api.http` bindings;
5. `router`: one route per gRPC service to its cluster, mTLS to the upstream with the
   gateway's SVID, the upstream's SPIFFE ID checked.

API keys and operator roles are not understood by Envoy: in front of the Python gateway Envoy
forwards to it (`--mode front`); in its place (`--mode replace`) only OIDC callers get in and
operator RPCs stay with the Python gateway and the CLI. docs/gateway.md has the details.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mc_gateway.descriptors import Api, load_api

T = "type.googleapis.com/"
DEFAULT_OUT = Path("deploy/envoy/envoy.json")
FRONT_OUT = Path("deploy/envoy/envoy-front.json")


@dataclass(frozen=True)
class EnvoyOptions:
    """What the generated config points at; the defaults suit the Helm chart (release `mc`)."""

    mode: Literal["replace", "front"] = "replace"
    listen_port: int = 8080
    descriptor_path: str = "/etc/envoy/descriptor_set.binpb"
    trust_domain: str = "cluster.local"
    namespace: str = "mc"
    svid_dir: str = "/var/run/secrets/mc/svid"  # tls.crt, tls.key, ca.crt (cert-manager)
    # gRPC service (or package) -> (cluster name, host, port)
    upstreams: dict[str, tuple[str, str, int]] = field(
        default_factory=lambda: {
            "mc.pql.v1": ("pql", "mc-maestro-conductor-pql", 7301),
            "mc.limiter.v1": ("limiter", "mc-maestro-conductor-limiter", 7302),
            "mc.policy.v1": ("edge-policy", "mc-maestro-conductor-edge-policy", 7304),
            "mc.gateway.v1": ("gateway", "mc-maestro-conductor-gateway", 7310),
        }
    )
    gateway_http: tuple[str, int] = ("mc-maestro-conductor-gateway", 8080)
    limiter_cluster: str = "limiter"
    rate_limit_domain: str = "mc-gateway"
    oidc_issuer: str = "https://issuer.example.com/"
    oidc_audience: str = "maestro-conductor"
    oidc_jwks_uri: str = "https://issuer.example.com/.well-known/jwks.json"
    oidc_tenant_claim: str = "mc_tenant"


def _cluster_for(service: str, options: EnvoyOptions) -> tuple[str, str, int] | None:
    best: str | None = None
    for prefix in options.upstreams:
        covers = service == prefix or service.startswith(prefix + ".")
        if covers and (best is None or len(prefix) > len(best)):
            best = prefix
    return options.upstreams[best] if best else None


def _upstream_tls(name: str, host: str, options: EnvoyOptions) -> dict[str, Any]:
    spiffe_id = f"spiffe://{options.trust_domain}/ns/{options.namespace}/sa/{name}"
    svid = options.svid_dir
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": f"{name}.{options.namespace}.svc",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": f"{svid}/tls.crt"},
                        "private_key": {"filename": f"{svid}/tls.key"},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": f"{svid}/ca.crt"},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": spiffe_id}}
                    ],
                },
            },
        },
    }


def _cluster(
    name: str, host: str, port: int, options: EnvoyOptions, *, grpc: bool = True, tls: bool = True
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if grpc:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if tls:
        cluster["transport_socket"] = _upstream_tls(name, host, options)
    return cluster


def build_bootstrap(api: Api, options: EnvoyOptions | None = None) -> dict[str, Any]:
    """The Envoy bootstrap for `api` (only services with HTTP bindings and an upstream)."""
    options = options or EnvoyOptions()
    bound = sorted({b.rpc.service for b in api.bindings})
    services = [s for s in bound if _cluster_for(s, options) is not None]
    clusters: dict[str, dict[str, Any]] = {}
    routes: list[dict[str, Any]] = []
    for service in services:
        name, host, port = _cluster_for(service, options)  # type: ignore[misc]
        clusters.setdefault(name, _cluster(name, host, port, options))
        route: dict[str, Any] = {
            "name": service,
            "match": {"prefix": f"/{service}/"},
            "route": {"cluster": name, "timeout": "60s"},
        }
        if options.mode == "front":
            gw_host, gw_port = options.gateway_http
            clusters.setdefault(
                "gateway-http",
                _cluster("gateway-http", gw_host, gw_port, options, grpc=False, tls=False),
            )
        routes.append(route)
    if options.mode == "front":
        # In front of the Python gateway: Envoy terminates TLS/HTTP for clients and forwards
        # REST as is; the gateway authenticates (API keys and OIDC) and transcodes.
        routes = [
            {"name": "gateway", "match": {"prefix": "/"}, "route": {"cluster": "gateway-http"}}
        ]
        filters = [_header_mutation(), _router()]
        clusters = {"gateway-http": clusters["gateway-http"]}
    else:
        limiter = _cluster_for("mc.limiter.v1", options)
        if limiter is not None:
            clusters.setdefault(limiter[0], _cluster(*limiter, options))
        for route in routes:
            route["route"]["rate_limits"] = [
                {
                    "actions": [
                        {
                            "generic_key": {
                                "descriptor_value": "gateway:requests",
                                "descriptor_key": "key",
                            }
                        },
                        {
                            "request_headers": {
                                "header_name": "x-mc-tenant",
                                "descriptor_key": "tenant",
                            }
                        },
                    ]
                }
            ]
        filters = [
            _header_mutation(),
            _jwt_authn(options),
            _ratelimit(options),
            _transcoder(services, options),
            _router(),
        ]
        clusters.setdefault(
            "oidc-jwks",
            {
                "name": "oidc-jwks",
                "type": "LOGICAL_DNS",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": "oidc-jwks",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": _host_of(options.oidc_jwks_uri),
                                                "port_value": 443,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": _host_of(options.oidc_jwks_uri),
                    },
                },
            },
        )
    hcm = {
        "@type": T
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "mc_gateway",
        "codec_type": "AUTO",
        "request_id_extension": {
            "typed_config": {"@type": T + "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"}
        },
        "route_config": {
            "name": "mc",
            "virtual_hosts": [{"name": "mc", "domains": ["*"], "routes": routes}],
        },
        "http_filters": filters,
    }
    return {
        "node": {"id": "mc-gateway-envoy", "cluster": "mc-gateway"},
        "static_resources": {
            "listeners": [
                {
                    "name": "rest",
                    "address": {
                        "socket_address": {"address": "0.0.0.0", "port_value": options.listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [clusters[k] for k in sorted(clusters)],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {}}]},
    }


def _host_of(uri: str) -> str:
    return uri.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]


def _header_mutation() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": T + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [
                    {"remove": "x-mc-tenant"},
                    {"remove": "x-mc-principal"},
                ]
            },
        },
    }


def _jwt_authn(options: EnvoyOptions) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": T + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "oidc": {
                    "issuer": options.oidc_issuer,
                    "audiences": [options.oidc_audience],
                    "remote_jwks": {
                        "http_uri": {
                            "uri": options.oidc_jwks_uri,
                            "cluster": "oidc-jwks",
                            "timeout": "5s",
                        },
                        "cache_duration": "300s",
                    },
                    "clock_skew_seconds": 30,
                    "claim_to_headers": [
                        {"header_name": "x-mc-tenant", "claim_name": options.oidc_tenant_claim},
                        {"header_name": "x-mc-principal", "claim_name": "sub"},
                    ],
                }
            },
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "oidc"}}],
        },
    }


def _ratelimit(options: EnvoyOptions) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": T + "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": options.rate_limit_domain,
            "failure_mode_deny": False,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": options.limiter_cluster}},
                "transport_api_version": "V3",
            },
        },
    }


def _transcoder(services: list[str], options: EnvoyOptions) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": T + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": options.descriptor_path,
            "services": services,
            "convert_grpc_status": True,
            "print_options": {"add_whitespace": False, "always_print_enums_as_ints": False},
            "request_validation_options": {
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
            },
        },
    }


def _router() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
    }


def render(api: Api | None = None, options: EnvoyOptions | None = None) -> str:
    return json.dumps(build_bootstrap(api or load_api(), options), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the Envoy gateway config.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--mode", choices=["replace", "front"], default="replace")
    parser.add_argument("--check", action="store_true", help="fail if --out is stale")
    args = parser.parse_args(argv)
    text = render(options=EnvoyOptions(mode=args.mode))
    if args.out == DEFAULT_OUT and args.mode == "front":
        args.out = FRONT_OUT
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is stale: run python -m mc_gateway.envoy", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
