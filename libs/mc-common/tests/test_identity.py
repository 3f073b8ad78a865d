"""Identity building blocks without a server: SPIFFE IDs, settings, SVID files, the dev CA."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mc_common.identity import (
    IdentityError,
    IdentitySettings,
    SvidMaterial,
    SvidSource,
    is_loopback,
    resolve_caller,
    server_name,
    workload_id,
)
from mc_common.identity.ca import TrustDomainCA, write_svid_files


@pytest.fixture(scope="module")
def ca() -> TrustDomainCA:
    return TrustDomainCA.generate("mc.unit")


def test_workload_ids_and_their_tls_names() -> None:
    spiffe_id = workload_id("mc.prod", "mc", "pql")
    assert spiffe_id == "spiffe://mc.prod/ns/mc/sa/pql"
    assert server_name(spiffe_id) == "pql.mc.svc"
    assert resolve_caller("gateway", "mc.prod", "mc") == "spiffe://mc.prod/ns/mc/sa/gateway"
    other = "spiffe://partner.example/ns/edge/sa/envoy"
    assert resolve_caller(other, "mc.prod", "mc") == other


@pytest.mark.parametrize(
    "bad", ["gateway/x", "Gateway", "spiffe://", "spiffe://td/ns/../sa/x", "https://td/x", ""]
)
def test_malformed_callers_are_refused(bad: str) -> None:
    with pytest.raises(IdentityError):
        resolve_caller(bad, "mc.prod", "mc") if bad else workload_id("mc.prod", "mc", bad)


@given(st.text(max_size=80))
def test_any_caller_text_resolves_or_fails_typed(entry: str) -> None:
    try:
        resolved = resolve_caller(entry, "mc.prod", "mc")
    except IdentityError:
        return
    assert resolved.startswith("spiffe://")


def test_settings_split_allow_lists_and_check_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_IDENTITY_TENANT_CALLERS", "gateway, billing")
    monkeypatch.setenv("MC_IDENTITY_TRUST_DOMAIN", "mc.prod")
    settings = IdentitySettings()
    assert settings.callers(settings.tenant_callers) == {
        "spiffe://mc.prod/ns/mc/sa/gateway",
        "spiffe://mc.prod/ns/mc/sa/billing",
    }
    monkeypatch.setenv("MC_IDENTITY_OPERATOR_CALLERS", "not a name")
    with pytest.raises(ValidationError):
        IdentitySettings()


def test_mtls_without_files_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="MC_IDENTITY_SVID_DIR"):
        IdentitySettings(mode="mtls", svid_dir=None).svid_paths()
    with pytest.raises(IdentityError, match="holds neither"):
        IdentitySettings(mode="mtls", svid_dir=tmp_path).svid_paths()


@pytest.mark.parametrize("layout", ["spiffe-helper", "kubernetes"])
def test_both_file_layouts_load(ca: TrustDomainCA, tmp_path: Path, layout: str) -> None:
    svid = ca.issue("pql")
    write_svid_files(tmp_path, svid, ca.bundle_pem, layout=layout)  # type: ignore[arg-type]
    settings = IdentitySettings(trust_domain="mc.unit", svid_dir=tmp_path)
    source = SvidSource(*settings.svid_paths(), "mc.unit")
    assert source.spiffe_id == "spiffe://mc.unit/ns/mc/sa/pql"


def test_sec1_keys_as_cert_manager_writes_them_load(ca: TrustDomainCA) -> None:
    svid = ca.issue("pql")
    key = serialization.load_pem_private_key(svid.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    material = SvidMaterial.parse(svid.chain_pem, sec1, ca.bundle_pem, "mc.unit")
    assert material.spiffe_id.endswith("/sa/pql")


def test_inconsistent_material_is_refused(ca: TrustDomainCA) -> None:
    one, two = ca.issue("pql"), ca.issue("limiter")
    with pytest.raises(IdentityError, match="does not belong"):
        SvidMaterial.parse(one.chain_pem, two.key_pem, ca.bundle_pem, "mc.unit")
    with pytest.raises(IdentityError, match="not in trust domain"):
        SvidMaterial.parse(one.chain_pem, one.key_pem, ca.bundle_pem, "mc.other")
    with pytest.raises(IdentityError):  # a CA certificate is no SVID
        SvidMaterial.parse(ca.bundle_pem, one.key_pem, ca.bundle_pem, "mc.unit")
    with pytest.raises(IdentityError):
        SvidMaterial.parse(one.chain_pem, one.key_pem, b"", "mc.unit")


def test_source_follows_files_and_keeps_the_old_set_while_they_are_torn(
    ca: TrustDomainCA, tmp_path: Path
) -> None:
    now = [0.0]
    paths = write_svid_files(tmp_path, ca.issue("pql"), ca.bundle_pem)
    source = SvidSource(*paths, "mc.unit", interval_s=1.0, clock=lambda: now[0])
    first = source.current
    # Half-written rotation: a new key beside the old certificate.
    (tmp_path / "svid_key.pem").write_bytes(ca.issue("pql").key_pem)
    now[0] += 1.0
    assert source.refresh() is False and source.current is first
    # Complete rotation: picked up at the next check, not before.
    write_svid_files(tmp_path, ca.issue("pql"), ca.bundle_pem)
    now[0] += 0.5
    assert source.refresh() is False
    now[0] += 0.5
    assert source.refresh() is True
    assert source.current is not first and source.generation == 1
    assert source.refresh(force=True) is False  # unchanged files: nothing to do


def test_dev_ca_persists_and_protects_its_key(tmp_path: Path) -> None:
    first = TrustDomainCA.load_or_create(tmp_path, "mc.dev")
    again = TrustDomainCA.load_or_create(tmp_path, "mc.dev")
    assert again.bundle_pem == first.bundle_pem
    assert (tmp_path / "ca_key.pem").stat().st_mode & 0o077 == 0
    other = TrustDomainCA.load_or_create(tmp_path, "mc.elsewhere")  # another trust domain
    assert other.bundle_pem != first.bundle_pem


def test_expired_svid_loads_but_is_reported(
    ca: TrustDomainCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    paths = write_svid_files(
        tmp_path, ca.issue("pql", not_before=past, lifetime=dt.timedelta(hours=1)), ca.bundle_pem
    )
    SvidSource(*paths, "mc.unit")
    assert "SVID has expired" in caplog.text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
