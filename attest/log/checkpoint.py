"""C2SP tlog-checkpoint note bodies (c2sp.org/tlog-checkpoint), signed as C2SP notes.

A checkpoint is the one thing a log signs: origin line, tree size in decimal, base64 root
hash, optional extension lines. Everything else an auditor believes about the log follows from
a checkpoint whose signature verified plus Merkle proofs against its root, so the parser is
exact: no leading zeros in the size (two spellings of one size would be two signed texts for
one statement), canonical base64 of exactly 32 bytes, no empty lines, nothing after the last
newline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from attest.errors import InputError, ParseError
from attest.log.merkle import HASH_SIZE, MAX_TREE_SIZE
from attest.log.note import (
    NoteVerificationError,
    NoteVerifier,
    VerifiedNote,
    b64decode_strict,
    b64encode,
    check_text,
    verify_note,
)

#: Longest origin line in bytes (origins are schema-less URLs such as ``example.com/log``).
MAX_ORIGIN_BYTES = 256
#: Most extension lines kept. The spec discourages them; we write none.
MAX_EXTENSION_LINES = 16
#: Longest extension line in bytes.
MAX_EXTENSION_BYTES = 1024
#: Longest checkpoint body: origin + 20-digit size + 44-char root + extensions, with margin.
MAX_CHECKPOINT_BYTES = MAX_ORIGIN_BYTES + 32 + 48 + MAX_EXTENSION_LINES * (MAX_EXTENSION_BYTES + 1)

_SIZE_RE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


class CheckpointError(ParseError):
    """A checkpoint body that does not follow c2sp.org/tlog-checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint body. ``text`` is the exact signed note text it came from."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...]
    text: bytes


def parse_checkpoint(text: bytes) -> Checkpoint:
    """Parse a checkpoint body (the note text, ending in a newline)."""
    if len(text) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint larger than {MAX_CHECKPOINT_BYTES} bytes")
    try:
        check_text(text)
    except ParseError as exc:
        raise CheckpointError(f"checkpoint body: {exc}") from exc
    lines = text[:-1].decode().split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint has fewer than three lines")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise CheckpointError("origin line is empty", field="origin")
    if len(origin.encode()) > MAX_ORIGIN_BYTES:
        raise CheckpointError(f"origin longer than {MAX_ORIGIN_BYTES} bytes", field="origin")
    if not _SIZE_RE.match(size_line):
        raise CheckpointError("tree size is not a decimal without leading zeros", field="size")
    size = int(size_line)
    if size > MAX_TREE_SIZE:
        raise CheckpointError("tree size does not fit in 64 bits", field="size")
    root = b64decode_strict(root_line, field="root hash")
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"root hash is {len(root)} bytes, not {HASH_SIZE}", field="root hash")
    if len(extensions) > MAX_EXTENSION_LINES:
        raise CheckpointError(f"more than {MAX_EXTENSION_LINES} extension lines")
    for i, ext in enumerate(extensions):
        if not ext:
            raise CheckpointError("extension lines must not be empty", field=f"extension {i}")
        if len(ext.encode()) > MAX_EXTENSION_BYTES:
            raise CheckpointError(
                f"extension line longer than {MAX_EXTENSION_BYTES}", field=f"extension {i}"
            )
    return Checkpoint(origin, size, root, tuple(extensions), text)


def format_checkpoint(
    origin: str, size: int, root_hash: bytes, extensions: Sequence[str] = ()
) -> Checkpoint:
    """Build a checkpoint body; the result re-parses to the same values."""
    if len(root_hash) != HASH_SIZE:
        raise InputError(f"root hash must be {HASH_SIZE} bytes")
    if not 0 <= size <= MAX_TREE_SIZE:
        raise InputError("tree size must fit in 64 bits")
    lines = [origin, str(size), b64encode(root_hash), *extensions]
    text = ("\n".join(lines) + "\n").encode()
    cp = parse_checkpoint(text)
    if cp.origin != origin or tuple(extensions) != cp.extensions:
        raise InputError("origin or extension lines contain newlines")
    return cp


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose log signature verified, plus whatever else verified on it."""

    checkpoint: Checkpoint
    note: VerifiedNote

    @property
    def raw(self) -> bytes:
        return self.note.note.raw

    def cosigners(self) -> tuple[str, ...]:
        """Names of the witnesses whose cosignatures verified."""
        return tuple(v.name for v in self.note.verified if v.kind.startswith("cosignature"))


def verify_checkpoint(
    note: bytes,
    log_key: NoteVerifier,
    *,
    witnesses: Sequence[NoteVerifier] = (),
    min_witnesses: int = 0,
    expected_origin: str | None = None,
) -> SignedCheckpoint:
    """Verify a signed checkpoint: the log's own signature is required.

    ``witnesses`` are cosigner keys; signatures from them are verified when present and at
    least ``min_witnesses`` must verify. A valid signature from a witness alone never stands
    in for the log's. ``expected_origin`` pins the origin line (the log's key name need not
    equal the origin: sum.golang.org signs ``go.sum database tree``).
    """
    if log_key.kind.startswith("cosignature"):
        raise InputError("a witness cosigning key cannot stand in for the log's key")
    verified = verify_note(note, [log_key, *witnesses])
    if not any(v.name == log_key.name and v.key_id == log_key.key_id for v in verified.verified):
        raise NoteVerificationError(
            f"checkpoint is not signed by the log key {log_key.name}",
            reason="no_trusted_signature",
        )
    cp = parse_checkpoint(verified.text)
    if expected_origin is not None and cp.origin != expected_origin:
        raise NoteVerificationError(
            f"checkpoint origin {cp.origin!r} is not {expected_origin!r}", reason="origin_mismatch"
        )
    witness_ids = {(w.name, bytes(w.key_id)) for w in witnesses}
    got = sum(1 for v in verified.verified if (v.name, v.key_id) in witness_ids)
    if got < min_witnesses:
        raise NoteVerificationError(
            f"{got} witness cosignature(s) verified, {min_witnesses} required",
            reason="witness_quorum",
        )
    return SignedCheckpoint(cp, verified)
