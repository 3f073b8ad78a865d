"""SPIFFE IDs of MC workloads, `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.

Allow lists name callers either by a full SPIFFE ID or by a bare service name, which means that
service in this workload's own trust domain and namespace. A workload's TLS server name (the DNS
SAN clients verify, see ADR 0041) is derived from its ID: `<service>.<namespace>.svc`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from spiffe import SpiffeId

SCHEME = "spiffe://"
_WORKLOAD_PATH = re.compile(r"^/ns/(?P<ns>[a-z0-9][a-z0-9.-]*)/sa/(?P<sa>[a-z0-9][a-z0-9.-]*)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class IdentityError(ValueError):
    """An identity setting, SVID, key or trust bundle is unusable; the message says why."""


def parse_id(value: str) -> SpiffeId:
    """`value` as a SPIFFE ID (spec-checked by the `spiffe` package); IdentityError if not one."""
    if not value.startswith(SCHEME):
        raise IdentityError(f"{value!r} is not a SPIFFE ID (spiffe://<trust-domain>/<path>)")
    try:
        return SpiffeId(value)
    except Exception as error:  # the package raises its own ArgumentError family
        raise IdentityError(f"{value!r} is not a valid SPIFFE ID: {error}") from error


def workload_id(trust_domain: str, namespace: str, service: str) -> str:
    """The SPIFFE ID of `service` in `namespace` of `trust_domain`."""
    if not _NAME.match(service) or not _NAME.match(namespace):
        raise IdentityError(
            f"service and namespace names are DNS labels (got {service!r} in {namespace!r})"
        )
    return str(parse_id(f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service}"))


def resolve_caller(entry: str, trust_domain: str, namespace: str) -> str:
    """An allow-list entry as a full SPIFFE ID: full IDs as given, bare names in our namespace."""
    entry = entry.strip()
    if entry.startswith(SCHEME):
        return str(parse_id(entry))
    return workload_id(trust_domain, namespace, entry)


def resolve_callers(entries: Iterable[str], trust_domain: str, namespace: str) -> frozenset[str]:
    """Every entry of an allow list resolved with `resolve_caller`."""
    return frozenset(resolve_caller(e, trust_domain, namespace) for e in entries if e.strip())


def server_name(spiffe_id: str) -> str:
    """The TLS server name of a workload: `<service>.<namespace>.svc` from its SPIFFE ID."""
    parsed = parse_id(spiffe_id)
    match = _WORKLOAD_PATH.match(parsed.path)
    if match is None:
        raise IdentityError(f"{spiffe_id} is not of the form spiffe://<td>/ns/<ns>/sa/<service>")
    return f"{match['sa']}.{match['ns']}.svc"


def trust_domain_of(spiffe_id: str) -> str:
    """The trust domain part of `spiffe_id`."""
    return str(parse_id(spiffe_id).trust_domain)
