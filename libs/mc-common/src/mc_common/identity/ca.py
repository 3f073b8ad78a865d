"""A small certificate authority for one trust domain: `maestro dev up` and tests issue SVIDs.

Production SVIDs come from cert-manager or SPIRE; this CA exists so that a developer's fleet
and the test suite run the same mTLS as production. The CA key lives in a directory
(`ca.pem`, `ca_key.pem`, mode 0600); SVIDs are written in spiffe-helper's layout
(`svid.pem`, `svid_key.pem`, `svid_bundle.pem`) or cert-manager's (`tls.crt`, `tls.key`,
`ca.crt`), each file replaced atomically.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mc_common.identity.ids import server_name, workload_id
from mc_common.identity.settings import KUBERNETES_TLS_FILES, SPIFFE_HELPER_FILES

Layout = Literal["spiffe-helper", "kubernetes"]
_LAYOUTS = {"spiffe-helper": SPIFFE_HELPER_FILES, "kubernetes": KUBERNETES_TLS_FILES}


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedSvid:
    """An SVID just issued: its ID, chain and key (PEM)."""

    spiffe_id: str
    chain_pem: bytes
    key_pem: bytes


class TrustDomainCA:
    """The root CA of one trust domain (self-signed, ECDSA P-256)."""

    def __init__(
        self, trust_domain: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.trust_domain = trust_domain
        self.cert = cert
        self.key = key

    @classmethod
    def generate(
        cls, trust_domain: str, *, lifetime: dt.timedelta = dt.timedelta(days=365)
    ) -> TrustDomainCA:
        """A new CA for `trust_domain`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} dev CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain, cert, key)

    @classmethod
    def load_or_create(cls, directory: Path, trust_domain: str) -> TrustDomainCA:
        """The CA kept in `directory`, created there on first use."""
        cert_path, key_path = directory / "ca.pem", directory / "ca_key.pem"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC key")
            ca = cls(trust_domain, cert, key)
            if ca.spiffe_id_matches():
                return ca
        ca = cls.generate(trust_domain)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(key_path, _key_pem(ca.key), mode=0o600)
        write_atomically(cert_path, ca.bundle_pem)
        return ca

    def spiffe_id_matches(self) -> bool:
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return False
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        return uris == [f"spiffe://{self.trust_domain}"]

    @property
    def bundle_pem(self) -> bytes:
        """The trust bundle of this trust domain: the CA certificate."""
        return _cert_pem(self.cert)

    def issue(
        self,
        service: str,
        *,
        namespace: str = "mc",
        lifetime: dt.timedelta = dt.timedelta(hours=24),
        not_before: dt.datetime | None = None,
        spiffe_id: str | None = None,
        dns_names: Sequence[str] | None = None,
    ) -> IssuedSvid:
        """An X.509-SVID for `service` (URI SAN: its SPIFFE ID; DNS SAN: its TLS name)."""
        spiffe_id = spiffe_id or workload_id(self.trust_domain, namespace, service)
        names = list(dns_names) if dns_names is not None else [server_name(spiffe_id)]
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        sans += [x509.DNSName(n) for n in names]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return IssuedSvid(spiffe_id, _cert_pem(cert), _key_pem(key))

    def write_svid(
        self,
        directory: Path,
        service: str,
        *,
        layout: Layout = "spiffe-helper",
        bundle: Sequence[bytes] = (),
        **issue: object,
    ) -> IssuedSvid:
        """Issue an SVID for `service` and write it with the trust bundle (this CA, plus any
        extra `bundle` certificates, e.g. during a CA rollover) into `directory`."""
        svid = self.issue(service, **issue)  # type: ignore[arg-type]
        write_svid_files(directory, svid, self.bundle_pem + b"".join(bundle), layout=layout)
        return svid


def write_svid_files(
    directory: Path, svid: IssuedSvid, bundle_pem: bytes, *, layout: Layout = "spiffe-helper"
) -> tuple[Path, Path, Path]:
    """Write chain, key and bundle into `directory` (key first, then chain, then bundle, each
    replaced atomically, as spiffe-helper does); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    chain_name, key_name, bundle_name = _LAYOUTS[layout]
    write_atomically(directory / key_name, svid.key_pem, mode=0o600)
    write_atomically(directory / chain_name, svid.chain_pem)
    write_atomically(directory / bundle_name, bundle_pem)
    return directory / chain_name, directory / key_name, directory / bundle_name


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` in one rename (readers see the old or the new file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
