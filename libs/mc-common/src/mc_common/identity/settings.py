"""Typed identity settings, read from `MC_IDENTITY_*` whatever the service's own prefix.

One workload has one identity, so these variables are the same for every MC process: the
SVID files (a directory in the layout spiffe-helper or cert-manager writes, or three paths),
the trust domain and namespace, and who may assert what. Every service's settings carry them
(`ServiceSettings.identity`); the gateway and the CLI build them on their own.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mc_common.identity.ids import IdentityError, resolve_callers, workload_id

Mode = Literal["mtls", "plaintext-dev"]
CallerList = Annotated[list[str], NoDecode]

# (certificate chain, private key, trust bundle) file names of the layouts we read.
SPIFFE_HELPER_FILES = ("svid.pem", "svid_key.pem", "svid_bundle.pem")
KUBERNETES_TLS_FILES = ("tls.crt", "tls.key", "ca.crt")  # cert-manager, csi-driver-spiffe


class IdentitySettings(BaseSettings):
    """Where this workload's SVID is and whose assertions it believes."""

    model_config = SettingsConfigDict(env_prefix="MC_IDENTITY_", extra="ignore", frozen=True)

    mode: Mode = Field(
        "mtls",
        description="`mtls` (always, outside a developer's machine) or `plaintext-dev`: no TLS, "
        "loopback addresses only, every caller taken to be `plaintext_peer`.",
    )
    trust_domain: str = Field("mc.local", min_length=1, description="This fleet's trust domain.")
    namespace: str = Field("mc", min_length=1, description="Namespace of MC's workloads.")
    svid_dir: Path | None = Field(
        None,
        description="Directory holding svid.pem, svid_key.pem and svid_bundle.pem "
        "(spiffe-helper) or tls.crt, tls.key and ca.crt (cert-manager, SPIFFE CSI driver).",
    )
    cert_file: Path | None = Field(None, description="SVID chain (PEM, leaf first).")
    key_file: Path | None = Field(None, description="SVID private key (PEM).")
    bundle_file: Path | None = Field(None, description="Trust bundle: the CA certificates.")
    tenant_callers: CallerList = Field(
        default_factory=lambda: ["gateway"],
        description="Peers believed when they send x-mc-tenant or a non-operator x-mc-principal: "
        "comma-separated service names (this namespace) or SPIFFE IDs.",
    )
    operator_callers: CallerList = Field(
        default_factory=lambda: ["gateway"],
        description="Peers believed when they send an operator x-mc-principal.",
    )
    front_door: CallerList = Field(
        default_factory=lambda: ["gateway"],
        description="The front door's IDs (gateway, Envoy): the only callers of front-door RPCs "
        "such as Envoy's rate limit service.",
    )
    plaintext_peer: str = Field(
        "gateway", description="In plaintext-dev mode, who every (loopback) caller is taken to be."
    )
    reload_interval_s: float = Field(
        1.0, gt=0, le=300, description="How often, at most, the SVID files are checked for change."
    )

    @field_validator("tenant_callers", "operator_callers", "front_door", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> IdentitySettings:
        try:
            workload_id(self.trust_domain, self.namespace, "x")
            for entries in (self.tenant_callers, self.operator_callers, self.front_door):
                resolve_callers(entries, self.trust_domain, self.namespace)
            resolve_callers([self.plaintext_peer], self.trust_domain, self.namespace)
        except IdentityError as error:
            raise ValueError(str(error)) from error
        return self

    def svid_paths(self) -> tuple[Path, Path, Path]:
        """(chain, key, bundle) paths: explicit files, else the layout found in `svid_dir`."""
        explicit = (self.cert_file, self.key_file, self.bundle_file)
        if all(explicit):
            return explicit  # type: ignore[return-value]
        if self.svid_dir is not None:
            for layout in (SPIFFE_HELPER_FILES, KUBERNETES_TLS_FILES):
                paths = tuple(self.svid_dir / name for name in layout)
                if paths[0].exists():
                    chosen = [e or p for e, p in zip(explicit, paths, strict=True)]
                    return chosen[0], chosen[1], chosen[2]
            raise IdentityError(
                f"{self.svid_dir} holds neither {'/'.join(SPIFFE_HELPER_FILES)} nor "
                f"{'/'.join(KUBERNETES_TLS_FILES)}"
            )
        raise IdentityError(
            "mTLS needs an SVID: set MC_IDENTITY_SVID_DIR (or MC_IDENTITY_CERT_FILE, "
            "MC_IDENTITY_KEY_FILE and MC_IDENTITY_BUNDLE_FILE); on a developer machine "
            "MC_IDENTITY_MODE=plaintext-dev serves plaintext on loopback"
        )

    def callers(self, entries: list[str]) -> frozenset[str]:
        """An allow list as full SPIFFE IDs."""
        return resolve_callers(entries, self.trust_domain, self.namespace)

    def id_of(self, service: str) -> str:
        """The SPIFFE ID of `service` in this trust domain and namespace."""
        return workload_id(self.trust_domain, self.namespace, service)


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback-only (`localhost`, 127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
