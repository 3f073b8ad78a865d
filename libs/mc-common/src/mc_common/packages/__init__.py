"""Signed workflow packages (`NAME-VERSION.mwpkg.tgz`): the format, deterministic packing,
safe unpacking, signing and verification, shared by the `maestro pkg` CLI and the marketplace.

See docs/services/marketplace.md for the format and the trust model.
"""

from mc_common.packages.archive import (
    MAX_ARCHIVE_BYTES,
    MAX_FILE_BYTES,
    MAX_FILES,
    PackageFormatError,
    content_digest,
    digest_document,
    pack_directory,
    pack_files,
    read_package,
)
from mc_common.packages.manifest import Manifest, parse_manifest
from mc_common.packages.signing import (
    PACKAGE_PREDICATE_TYPE,
    SLSA_PROVENANCE_V1,
    PackageVerification,
    sign_package,
    verify_package,
)

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "PACKAGE_PREDICATE_TYPE",
    "SLSA_PROVENANCE_V1",
    "Manifest",
    "PackageFormatError",
    "PackageVerification",
    "content_digest",
    "digest_document",
    "pack_directory",
    "pack_files",
    "parse_manifest",
    "read_package",
    "sign_package",
    "verify_package",
]
