"""C2SP signed notes and checkpoints against the reference example and sigstore's parser.

The PeterNeumann key and note are the example of golang.org/x/mod/sumdb/note (the reference
implementation of c2sp.org/signed-note). Ed25519 is deterministic, so signing the example text
with the example key must reproduce the example signature byte for byte.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sigstore._internal.rekor.checkpoint import LogCheckpoint
from sigstore._internal.rekor.checkpoint import SignedNote as SigstoreNote

from mc_common.receipts.note import (
    COSIGNATURE_V1,
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    SignedNote,
    open_checkpoint,
    sign_checkpoint,
)

VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqf"
    "qdngotpRZb6KE6RyyBwJnAM=\n"
)


def _example_signer(sig_type: int = 0x01) -> NoteSigner:
    seed = base64.b64decode(SKEY.split("+", 4)[4])[1:]
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed), sig_type)


def test_the_reference_example_verifies_and_is_reproduced() -> None:
    verifier = NoteVerifier.parse(VKEY)
    assert verifier.vkey() == VKEY
    assert verifier.key_id.hex() == "c74f20a3"
    note = SignedNote.parse(TEXT + "\n" + SIG)
    assert note.text == TEXT
    note.verify(verifier)
    signer = _example_signer()
    assert signer.verifier == verifier
    assert signer.signature_line(TEXT) == SIG


def test_mangled_verifier_keys_are_refused() -> None:
    for bad in (
        VKEY[:-1],
        VKEY.replace("c74f20a3", "c74f20a4"),
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
    ):
        with pytest.raises(NoteError):
            NoteVerifier.parse(bad)


def test_tampered_or_foreign_notes_are_refused() -> None:
    verifier = NoteVerifier.parse(VKEY)
    with pytest.raises(NoteError):
        SignedNote.parse(TEXT.replace("answer", "Answer") + "\n" + SIG).verify(verifier)
    other = NoteSigner("PeterNeumann", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError):  # same name, other key id: ignored, so nothing verifies
        SignedNote.parse(TEXT + "\n" + other.signature_line(TEXT)).verify(verifier)
    for malformed in (TEXT + SIG, TEXT + "\n", TEXT + "\n" + SIG[:-1], TEXT + "\x01\n" + SIG):
        with pytest.raises(NoteError):
            SignedNote.parse(malformed)


def test_checkpoints_round_trip_and_sigstore_reads_them() -> None:
    signer = NoteSigner("maestro.test/pql", Ed25519PrivateKey.generate())
    checkpoint = Checkpoint("maestro.test/pql/acme", 20852163, bytes(range(32)))
    note = sign_checkpoint(checkpoint, signer)
    parsed, signed = open_checkpoint(note, signer.verifier)
    assert parsed == checkpoint
    assert signed.render() == note
    # sigstore-python's signed-note and checkpoint parser (an independent implementation).
    theirs = SigstoreNote.from_text(note)
    assert theirs.note == checkpoint.text()
    [sig] = theirs.signatures
    assert sig.name == "maestro.test/pql"
    assert sig.sig_hash == signer.verifier.key_id
    body = LogCheckpoint.from_text(theirs.note)
    assert (body.origin, body.log_size, body.log_hash) == (
        "maestro.test/pql/acme",
        20852163,
        bytes(range(32)).hex(),  # sigstore decodes the base64 root to hex
    )
    for bad in ("o\n01\nAAAA\n", "o\n1\n" + "A" * 44 + "\n\n", "o\n1\n"):
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)


def test_cosignatures_bind_time_and_checkpoint() -> None:
    log = NoteSigner("maestro.test/pql", Ed25519PrivateKey.generate())
    witness = NoteSigner("witness.test/w1", Ed25519PrivateKey.generate(), COSIGNATURE_V1)
    assert base64.b64decode(witness.verifier.vkey().split("+", 2)[2])[0] == COSIGNATURE_V1
    note = SignedNote.parse(sign_checkpoint(Checkpoint("o/t", 3, bytes(32)), log))
    cosigned = note.with_signature(witness.cosignature_line(note.text, 1679315147))
    assert cosigned.verify(witness.verifier) == 1679315147
    cosigned.verify(log.verifier)
    again = SignedNote.parse(cosigned.render())
    assert again.verify(NoteVerifier.parse(witness.verifier.vkey())) == 1679315147
    forged = SignedNote(note.text.replace("\n3\n", "\n4\n"), cosigned.signatures)
    with pytest.raises(NoteError):
        forged.verify(witness.verifier)
