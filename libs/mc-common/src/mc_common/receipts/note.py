"""C2SP signed notes, tlog checkpoints and Ed25519 cosignatures.

- signed-note (c2sp.org/signed-note): text ending in a newline, a blank line, then lines
  "— <key name> base64(4-byte key id || signature)". Ed25519 keys (type 0x01) have key id
  SHA-256(name || "\\n" || 0x01 || public key)[:4] and are published as verifier keys
  "<name>+<hex key id>+base64(0x01 || public key)".
- tlog-checkpoint (c2sp.org/tlog-checkpoint): the note text "<origin>\\n<size>\\n<base64 root>\\n"
  plus optional extension lines.
- tlog-cosignature (c2sp.org/tlog-cosignature), Ed25519 (type 0x04): a witness signs
  "cosignature/v1\\ntime <t>\\n" + the checkpoint text; the signature is 8-byte big-endian t ||
  the 64-byte Ed25519 signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20
_NAME = re.compile(r"^[^\s+]+$")
_SIG_LINE = re.compile(r"^\u2014 (\S+) (\S+)$")


class NoteError(ValueError):
    """A malformed note, checkpoint or key, or a signature that does not verify."""


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise NoteError("not standard base64") from exc


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise NoteError(f"key name {name!r} is empty or has spaces or '+'")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || "\\n" || type || public key)[:4], the signed-note key id."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted note key: name, signature type (0x01 or 0x04) and Ed25519 public key."""

    name: str
    sig_type: int
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.sig_type, self.public_key)

    def vkey(self) -> str:
        """The C2SP verifier key string: name+hex key id+base64(type || public key)."""
        material = base64.b64encode(bytes([self.sig_type]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """Read a C2SP verifier key; the key id must match the key."""
        parts = vkey.strip().split("+", 2)  # the base64 key may contain "+"
        if len(parts) != 3:
            raise NoteError("a verifier key is name+keyid+key")
        name, hex_id, material = parts
        _check_name(name)
        raw = _b64decode(material)
        if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise NoteError("only Ed25519 (0x01) and cosignature/v1 (0x04) keys are supported")
        verifier = cls(name, raw[0], raw[1:])
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id) or verifier.key_id.hex() != hex_id:
            raise NoteError("the verifier key's id does not match its key")
        return verifier

    def _verify(self, message: bytes, signature: bytes) -> None:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError) as exc:
            raise NoteError(f"signature by {self.name} does not verify") from exc


class NoteSigner:
    """Signs notes with an Ed25519 key under a key name (type 0x01, or 0x04 for cosigning)."""

    def __init__(self, name: str, key: Ed25519PrivateKey, sig_type: int = ED25519) -> None:
        _check_name(name)
        if sig_type not in (ED25519, COSIGNATURE_V1):
            raise NoteError("signature type must be 0x01 or 0x04")
        self.name = name
        self._key = key
        self.verifier = NoteVerifier(name, sig_type, _raw(key.public_key()))
        self._prefix = self.verifier.key_id

    @classmethod
    def from_pem(
        cls, name: str, pem: bytes, password: bytes | None = None, sig_type: int = ED25519
    ) -> NoteSigner:
        key = serialization.load_pem_private_key(pem, password)
        if not isinstance(key, Ed25519PrivateKey):
            raise NoteError("the checkpoint key must be an Ed25519 private key")
        return cls(name, key, sig_type)

    def public_key_pem(self) -> str:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        return self._key.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()

    def signature_line(self, text: str) -> str:
        """The signature line of an Ed25519 (0x01) note signature over `text`."""
        sig = self._key.sign(text.encode())
        return f"\u2014 {self.name} {base64.b64encode(self._prefix + sig).decode()}\n"

    def cosignature_line(self, text: str, timestamp: int) -> str:
        """The line of a tlog-cosignature/v1 (0x04) over checkpoint `text` at `timestamp`."""
        if not 0 <= timestamp < 1 << 63:
            raise NoteError("timestamp out of range")
        message = f"cosignature/v1\ntime {timestamp}\n{text}".encode()
        blob = self._prefix + struct.pack(">Q", timestamp) + self._key.sign(message)
        return f"\u2014 {self.name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"\u2014 {self.name} {blob}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed signed note: its text (with the final newline) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    @classmethod
    def parse(cls, note: str | bytes) -> SignedNote:
        if isinstance(note, bytes):
            if len(note) > MAX_NOTE_BYTES:
                raise NoteError("note too large")
            try:
                note = note.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NoteError("a note is UTF-8") from exc
        if len(note) > MAX_NOTE_BYTES:
            raise NoteError("note too large")
        if any(ord(c) < 0x20 and c != "\n" for c in note):
            raise NoteError("a note has no control characters but newline")
        split = note.rfind("\n\n")
        if split < 0 or not note.endswith("\n"):
            raise NoteError("a note is text, a blank line and signature lines")
        text, block = note[: split + 1], note[split + 2 :]
        signatures = []
        for line in block[:-1].split("\n"):
            match = _SIG_LINE.match(line)
            if not match:
                raise NoteError("malformed signature line")
            name, blob = match.groups()
            raw = _b64decode(blob)
            if len(raw) < 5:
                raise NoteError("signature too short")
            signatures.append(NoteSignature(name, raw[:4], raw[4:]))
        if not signatures or len(signatures) > MAX_SIGNATURES:
            raise NoteError("a note has 1 to 100 signatures")
        return cls(text, tuple(signatures))

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signature(self, line: str) -> SignedNote:
        """This note with one more signature line (e.g. a witness cosignature)."""
        added = SignedNote.parse(self.text + "\n" + line).signatures
        return SignedNote(self.text, (*self.signatures, *added))

    def verify(self, verifier: NoteVerifier) -> int | None:
        """Check the signature by `verifier`; raise `NoteError` unless one is present and valid.

        Signatures of other keys (another name or key id) are ignored, as the spec requires.
        Returns the cosignature's timestamp for a 0x04 key, else None.
        """
        kid = verifier.key_id
        found = [s for s in self.signatures if s.name == verifier.name and s.key_id == kid]
        if not found:
            raise NoteError(f"no signature by {verifier.name}")
        stamp = None
        for sig in found:
            if verifier.sig_type == COSIGNATURE_V1:
                if len(sig.signature) != 72:
                    raise NoteError("a cosignature is 8 + 64 bytes")
                (stamp,) = struct.unpack(">Q", sig.signature[:8])
                message = f"cosignature/v1\ntime {stamp}\n{self.text}".encode()
                verifier._verify(message, sig.signature[8:])
            else:
                verifier._verify(self.text.encode(), sig.signature)
        return stamp


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tlog checkpoint body: origin, tree size, root hash and extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        root = base64.b64encode(self.root).decode()
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint is origin, size and root hash lines")
        origin, size, root, *extensions = lines[:-1]
        if not origin or not re.fullmatch(r"[1-9][0-9]{0,19}|0", size):
            raise NoteError("malformed checkpoint origin or size")
        value = int(size)
        if value >= 1 << 64:
            raise NoteError("tree size out of range")
        raw = _b64decode(root)
        if len(raw) != 32:
            raise NoteError("the root hash is 32 bytes")
        if any(not line for line in extensions):
            raise NoteError("empty checkpoint extension line")
        return cls(origin, value, raw, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """The signed note of `checkpoint`."""
    text = checkpoint.text()
    return text + "\n" + signer.signature_line(text)


def open_checkpoint(note: str | bytes, verifier: NoteVerifier) -> tuple[Checkpoint, SignedNote]:
    """Parse a signed checkpoint and check `verifier`'s signature on it; the origin must be
    the verifier's name or start with it followed by '/'."""
    signed = SignedNote.parse(note)
    signed.verify(verifier)
    checkpoint = Checkpoint.parse(signed.text)
    return checkpoint, signed
