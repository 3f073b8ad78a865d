"""A key ring mapping key ids to public keys, used to verify envelopes signed by registered keys."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mc_common.signing.errors import KeyConflictError, UnknownKeyError
from mc_common.signing.keys import PublicKey


class KeyRing:
    """An explicit ``key_id -> PublicKey`` map (for example a tenant's registered keys).

    Keys are registered under their fingerprint id unless an explicit id is given (to mirror
    a ``Signer`` whose id is assigned elsewhere, such as a KMS key name). Re-adding the same
    key under the same id is a no-op; binding an id to a different key raises
    ``KeyConflictError``, so a key ring can never silently swap a trusted key.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def from_pems(cls, pems: Iterable[bytes | str]) -> KeyRing:
        """Build a key ring from PEM public keys, each under its fingerprint id."""
        return cls(PublicKey.from_pem(pem) for pem in pems)

    def add(self, key: PublicKey, *, key_id: str | None = None) -> str:
        """Register ``key`` (under ``key_id`` or its fingerprint) and return the id used."""
        kid = key.key_id if key_id is None else key_id
        if not kid:
            raise KeyConflictError("a key id must be a non-empty string")
        existing = self._keys.get(kid)
        if existing is not None and existing != key:
            raise KeyConflictError(f"key id {kid} is already bound to a different public key")
        self._keys[kid] = key
        return kid

    def add_pem(self, pem: bytes | str, *, key_id: str | None = None) -> str:
        """Parse a PEM public key and register it; return the id used."""
        return self.add(PublicKey.from_pem(pem), key_id=key_id)

    def get(self, key_id: str) -> PublicKey:
        """Return the key registered under ``key_id``; raise ``UnknownKeyError`` if none."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyError(f"no public key registered under key id {key_id!r}") from None

    def find(self, key_id: str) -> PublicKey | None:
        """Return the key registered under ``key_id``, or None."""
        return self._keys.get(key_id)

    def remove(self, key_id: str) -> None:
        """Forget ``key_id`` (key revocation); raise ``UnknownKeyError`` if it is not present."""
        if self._keys.pop(key_id, None) is None:
            raise UnknownKeyError(f"no public key registered under key id {key_id!r}")

    def key_ids(self) -> tuple[str, ...]:
        """All registered key ids, sorted."""
        return tuple(sorted(self._keys))

    def items(self) -> Iterator[tuple[str, PublicKey]]:
        """Iterate ``(key_id, key)`` pairs in id order."""
        for kid in sorted(self._keys):
            yield kid, self._keys[kid]

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self.key_ids())!r})"
