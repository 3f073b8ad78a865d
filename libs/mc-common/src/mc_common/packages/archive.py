"""The package archive: deterministic packing, bounded and safe unpacking, the content digest.

An archive is a gzip'd tar of regular files only, sorted by path, with every owner, time and
mode normalized (same inputs, same bytes). The **content digest** is the SHA-256 of the digest
document: one line `<sha256 hex>  <path>\\n` per file outside `signatures/`, sorted by path (the
`sha256sum` format), so the signatures, which live in the archive, never sign themselves.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from mc.common.v1.error_reason_pb2 import ErrorReason
from mc_common.errors import FieldViolation, InvalidArgument

MAX_ARCHIVE_BYTES: Final = 32 * 1024 * 1024
MAX_UNPACKED_BYTES: Final = 64 * 1024 * 1024
MAX_FILE_BYTES: Final = 16 * 1024 * 1024
MAX_FILES: Final = 1000
SIGNATURES_DIR: Final = "signatures/"
REQUIRED: Final = ("manifest.yaml", "README.md")


class PackageFormatError(InvalidArgument):
    """The archive is not a well-formed workflow package."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            [FieldViolation("package", message)],
            reason=ErrorReason.ERROR_REASON_PACKAGE_INVALID,
        )


def _check_path(name: str) -> str:
    if not name or "\x00" in name or "\\" in name:
        raise PackageFormatError(f"entry {name!r}: not a valid path")
    if name.startswith("/") or posixpath.isabs(name):
        raise PackageFormatError(f"entry {name!r}: absolute paths are not allowed")
    normalized = posixpath.normpath(name)
    if normalized != name.rstrip("/") or normalized.startswith("..") or "/../" in f"/{name}/":
        raise PackageFormatError(f"entry {name!r}: path traversal or a non-normal path")
    if len(name) > 255:
        raise PackageFormatError(f"entry {name[:40]!r}...: path longer than 255 characters")
    return normalized


def pack_files(files: Mapping[str, bytes]) -> bytes:
    """A deterministic archive of `files` (path -> bytes)."""
    paths = sorted(_check_path(p) for p in files)
    if len(paths) != len(set(paths)):
        raise PackageFormatError("duplicate paths")
    if len(paths) > MAX_FILES:
        raise PackageFormatError(f"more than {MAX_FILES} files")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            data = files[path]
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def pack_directory(directory: Path) -> bytes:
    """Pack every regular file under `directory` (symlinks are refused, dotfiles skipped)."""
    files: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if path.is_symlink():
            raise PackageFormatError(f"{relative}: symbolic links are not allowed")
        if path.is_file():
            files[relative] = path.read_bytes()
    return pack_files(files)


def read_package(archive: bytes) -> dict[str, bytes]:
    """The files of `archive`, checked: size bounds (compressed, unpacked, per file, count),
    regular files only, no absolute or traversing paths, no duplicates, the required files
    present. Raises `PackageFormatError` (INVALID_ARGUMENT) and reads nothing else."""
    if len(archive) > MAX_ARCHIVE_BYTES:
        raise PackageFormatError(f"archive larger than {MAX_ARCHIVE_BYTES} bytes")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(archive)) as gz:
            raw = gz.read(MAX_UNPACKED_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise PackageFormatError(f"not a gzip archive: {exc}") from None
    if len(raw) > MAX_UNPACKED_BYTES:
        raise PackageFormatError(f"unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_FILES:
                    raise PackageFormatError(f"more than {MAX_FILES} entries")
                if member.isdir():
                    _check_path(member.name)
                    continue
                if not member.isreg():
                    raise PackageFormatError(
                        f"entry {member.name!r}: only regular files are allowed (links, devices "
                        "and fifos are refused)"
                    )
                path = _check_path(member.name)
                if path in files:
                    raise PackageFormatError(f"entry {path!r} appears twice")
                if member.size > MAX_FILE_BYTES:
                    raise PackageFormatError(f"entry {path!r} larger than {MAX_FILE_BYTES} bytes")
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - regular files always have data
                    raise PackageFormatError(f"entry {path!r} has no data")
                files[path] = handle.read()
    except tarfile.TarError as exc:
        raise PackageFormatError(f"not a tar archive: {exc}") from None
    for required in REQUIRED:
        if required not in files:
            raise PackageFormatError(f"{required} is missing")
    return files


def digest_document(files: Mapping[str, bytes]) -> bytes:
    """`<sha256>  <path>` lines for every file outside `signatures/`, sorted by path."""
    lines = [
        f"{hashlib.sha256(data).hexdigest()}  {path}\n"
        for path, data in sorted(files.items())
        if not path.startswith(SIGNATURES_DIR)
    ]
    return "".join(lines).encode()


def content_digest(files: Mapping[str, bytes]) -> str:
    """Hex SHA-256 of the digest document: what a package signature covers."""
    return hashlib.sha256(digest_document(files)).hexdigest()
