"""OPA bundle archives: the `.tar.gz` layout, the manifest, and bounded, safe reading.

A bundle is a gzipped tarball of `/.manifest`, `/data.json`, `*.rego` files and
`/.signatures.json`, exactly as `opa build` writes it, so a real OPA loads ours. Reading bounds
every dimension (compressed and expanded size, file count, path depth) and refuses anything but
regular files with clean relative paths, because a bundle arrives from an untrusted mirror.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mc_edge_policy.opa_hash import CanonicalJsonError, JsonNumber, parse_json

MANIFEST = ".manifest"
DATA = "data.json"
SIGNATURES = ".signatures.json"
MAX_ARCHIVE_BYTES = 8 * 1024 * 1024
MAX_EXPANDED_BYTES = 32 * 1024 * 1024
MAX_FILES = 2048
MAX_PATH_LENGTH = 512


class BundleFormatError(ValueError):
    """The bytes are not a well-formed bundle archive."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """The bundle's `.manifest`: OPA's fields plus our signed metadata (version, expiry...)."""

    revision: str
    roots: tuple[str, ...] = ("",)
    rego_version: int = 1
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "roots": list(self.roots),
            "rego_version": self.rego_version,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, value: Any) -> Manifest:
        if not isinstance(value, dict):
            raise BundleFormatError(".manifest is not a JSON object")
        revision = value.get("revision", "")
        roots = value.get("roots", [""])
        rego_version = value.get("rego_version", 1)
        metadata = value.get("metadata", {})
        if not isinstance(revision, str):
            raise BundleFormatError(".manifest revision must be a string")
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise BundleFormatError(".manifest roots must be a list of strings")
        if isinstance(rego_version, JsonNumber) and str.__str__(rego_version) in ("0", "1"):
            rego_version = int(str.__str__(rego_version))
        if rego_version not in (0, 1):
            raise BundleFormatError(".manifest rego_version must be 0 or 1")
        if not isinstance(metadata, dict):
            raise BundleFormatError(".manifest metadata must be an object")
        return cls(revision, tuple(roots), rego_version, plain_json(metadata))


def plain_json(value: Any) -> Any:
    """`value` with JsonNumber literals turned back into Python ints and floats."""
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    if isinstance(value, JsonNumber):
        literal = str.__str__(value)
        try:
            return int(literal)
        except ValueError:
            return float(literal)
    return value


def normalize_name(name: str) -> str:
    """A bundle path without its leading slash; raises on anything that could escape."""
    clean = name.lstrip("/")
    if not clean or len(clean) > MAX_PATH_LENGTH or "\\" in clean or "\x00" in clean:
        raise BundleFormatError(f"bad file name {name!r}")
    if posixpath.normpath(clean) != clean or clean.startswith("../") or clean == "..":
        raise BundleFormatError(f"bad file name {name!r}")
    return clean


def write_archive(files: Mapping[str, bytes]) -> bytes:
    """A deterministic `.tar.gz` of `files` (names without leading slash, written with one).

    Entries are sorted, with zero mtimes and owners, so the same content gives the same bytes
    (and so the same TUF target hash) on every build.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo("/" + normalize_name(name))
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def read_archive(archive: bytes) -> dict[str, bytes]:
    """The files of a bundle archive, by normalized name; BundleFormatError when malformed."""
    if len(archive) > MAX_ARCHIVE_BYTES:
        raise BundleFormatError(f"archive larger than {MAX_ARCHIVE_BYTES} bytes")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(archive)) as gz:
            expanded = gz.read(MAX_EXPANDED_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise BundleFormatError(f"not a gzip archive: {exc}") from exc
    if len(expanded) > MAX_EXPANDED_BYTES:
        raise BundleFormatError(f"archive expands beyond {MAX_EXPANDED_BYTES} bytes")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(expanded), mode="r:") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BundleFormatError(f"{member.name!r} is not a regular file")
                name = normalize_name(member.name)
                if name in files:
                    raise BundleFormatError(f"duplicate file {name!r}")
                if len(files) >= MAX_FILES:
                    raise BundleFormatError(f"more than {MAX_FILES} files")
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise BundleFormatError(f"cannot read {name!r}")
                files[name] = extracted.read()
    except tarfile.TarError as exc:
        raise BundleFormatError(f"not a tar archive: {exc}") from exc
    return files


def read_manifest(files: Mapping[str, bytes]) -> Manifest:
    """The manifest of a bundle's files (an absent manifest is OPA's default one)."""
    raw = files.get(MANIFEST)
    if raw is None:
        return Manifest(revision="")
    try:
        return Manifest.from_json(parse_json(raw))
    except CanonicalJsonError as exc:
        raise BundleFormatError(f".manifest: {exc}") from exc


def policy_files(files: Mapping[str, bytes]) -> dict[str, str]:
    """The Rego sources of a bundle, by name (UTF-8 decoded)."""
    out: dict[str, str] = {}
    for name, content in files.items():
        if name.endswith(".rego"):
            try:
                out[name] = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BundleFormatError(f"{name} is not UTF-8") from exc
    return out


def data_documents(files: Mapping[str, bytes]) -> list[tuple[Sequence[str], Any]]:
    """Each data file's parsed value and the path it is mounted at (its directory)."""
    out: list[tuple[Sequence[str], Any]] = []
    for name, content in sorted(files.items()):
        if posixpath.basename(name) != DATA:
            continue
        try:
            value = plain_json(parse_json(content))
        except CanonicalJsonError as exc:
            raise BundleFormatError(f"{name}: {exc}") from exc
        directory = posixpath.dirname(name)
        out.append((tuple(p for p in directory.split("/") if p), value))
    return out
