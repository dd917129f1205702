"""One log entry with its proof of inclusion: what a key bundle carries as its ``log_proof``.

Why: a client that pins only the log's verification key (a C2SP signed-note vkey, as ``lessee
audit verify --log-key`` takes) must be able to check, offline and in one message, that the
attestation result it is about to trust was *logged*: a broker that hands an enclave a result
it never logged would otherwise escape every audit. So the proof carries the entry itself (its
canonical bytes are the Merkle leaf, and they contain the result), where it sits in the tree,
the RFC 9162 inclusion proof and the signed checkpoint whose root the proof leads to. The
checks that compare the entry with a bundle belong to the caller (``agent.client``); this
module decodes strictly and proves "these entry bytes are leaf ``index`` of the tree that
``log_key`` signed".

Wire format (integers big-endian; ``docs/formats/token-stream.md``, "Log proof")::

    magic "LSLP" | version u8 (1) | index u64 | tree_size u64 | hash_count u8
    | hashes [32 * hash_count] | entry_len u32 | entry [entry_len]
    | checkpoint_len u32 | checkpoint [checkpoint_len]

Strict: ``index < tree_size``, ``hash_count`` exactly the inclusion-proof length that
``index`` and ``tree_size`` imply (RFC 9162 §2.1.3), both byte strings non-empty and bounded,
nothing after the checkpoint. One proof has one encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from attest.errors import ParseError, VerificationError
from attest.log.checkpoint import MAX_CHECKPOINT_BYTES, SignedCheckpoint, verify_checkpoint
from attest.log.entry import LogEntry, decode_entry
from attest.log.merkle import (
    HASH_SIZE,
    MAX_TREE_SIZE,
    ProofError,
    inclusion_proof_length,
    leaf_hash,
    verify_inclusion,
)
from attest.log.note import NoteVerificationError, NoteVerifier

MAGIC = b"LSLP"
VERSION = 1
#: A tree of < 2**64 leaves has depth <= 64, so no inclusion proof is longer.
MAX_HASHES = 64
#: Largest entry carried. The result in it must equal the bundle's, which the bundle bounds at
#: 64 KiB; the rest of an attest entry is its blob references (an HGX appraisal references some
#: tens of blobs, ~200 bytes each), so 128 KiB leaves the references as much room as the result.
MAX_ENTRY_LEN = 128 * 1024
#: Largest signed checkpoint: the body's own bound plus 32 KiB of signature lines (a signature
#: line is ~100 bytes: the log's and a few hundred witnesses' cosignatures).
MAX_CHECKPOINT_LEN = MAX_CHECKPOINT_BYTES + 32 * 1024
_HEADER = struct.Struct(">4sBQQB")
#: The largest encoding (``sealing.stream.bundle.MAX_LOG_PROOF_LEN`` must admit it; tested).
MAX_ENCODED_LEN = _HEADER.size + MAX_HASHES * HASH_SIZE + 4 + MAX_ENTRY_LEN + 4 + MAX_CHECKPOINT_LEN


class EntryProofError(ParseError):
    """Bytes that are not the one canonical encoding of a well-formed entry proof."""


@dataclass(frozen=True)
class EntryProof:
    """Log entry bytes, their leaf index and tree size, the inclusion proof and the signed
    checkpoint note. Construction checks the shape; :meth:`verify` checks the log's word."""

    index: int
    tree_size: int
    hashes: tuple[bytes, ...]
    entry: bytes
    checkpoint: bytes

    def __post_init__(self) -> None:
        if not 0 < self.tree_size <= MAX_TREE_SIZE:
            raise EntryProofError("tree_size must be in [1, 2**64)", field="tree_size")
        if not 0 <= self.index < self.tree_size:
            raise EntryProofError("index must be below tree_size", field="index")
        want = inclusion_proof_length(self.index, self.tree_size)
        if len(self.hashes) != want:
            raise EntryProofError(
                f"{len(self.hashes)} proof hashes, index {self.index} of {self.tree_size} "
                f"needs {want}",
                field="hash_count",
            )
        if any(len(h) != HASH_SIZE for h in self.hashes):
            raise EntryProofError(f"proof hashes are {HASH_SIZE} bytes each", field="hashes")
        if not 0 < len(self.entry) <= MAX_ENTRY_LEN:
            raise EntryProofError(f"entry must be 1..{MAX_ENTRY_LEN} bytes", field="entry")
        if not 0 < len(self.checkpoint) <= MAX_CHECKPOINT_LEN:
            raise EntryProofError(
                f"checkpoint must be 1..{MAX_CHECKPOINT_LEN} bytes", field="checkpoint"
            )

    def encode(self) -> bytes:
        return b"".join(
            [
                _HEADER.pack(MAGIC, VERSION, self.index, self.tree_size, len(self.hashes)),
                *self.hashes,
                struct.pack(">I", len(self.entry)),
                self.entry,
                struct.pack(">I", len(self.checkpoint)),
                self.checkpoint,
            ]
        )

    def verify(self, log_key: NoteVerifier, *, expected_origin: str | None = None) -> LogEntry:
        """The decoded entry, once the checkpoint verified under ``log_key`` (and names
        ``expected_origin``), its size is ``tree_size``, and the proof leads from the entry's
        leaf hash at ``index`` to its root; else a :class:`VerificationError` whose ``reason``
        names the step (``log_checkpoint_malformed``, ``log_checkpoint_signature``,
        ``log_origin_mismatch``, ``log_proof_size``, ``log_inclusion``,
        ``log_entry_malformed``)."""
        try:
            verify_entry_inclusion(
                self.entry,
                self.index,
                self.tree_size,
                self.hashes,
                self.checkpoint,
                log_key=log_key,
                expected_origin=expected_origin,
            )
        except NoteVerificationError as exc:
            reason = "log_origin_mismatch" if exc.reason == "origin_mismatch" else None
            raise VerificationError(
                f"the log proof's checkpoint does not verify: {exc}",
                reason=reason or "log_checkpoint_signature",
            ) from exc
        except ProofError as exc:
            raise VerificationError(
                f"the log proof does not lead to the checkpoint's root ({exc.reason})",
                reason="log_inclusion",
            ) from exc
        except ParseError as exc:
            raise VerificationError(
                f"the log proof's checkpoint is malformed: {exc}", reason="log_checkpoint_malformed"
            ) from exc
        try:
            return decode_entry(self.entry)
        except ParseError as exc:
            raise VerificationError(
                f"the logged entry does not decode: {exc}", reason="log_entry_malformed"
            ) from exc


def decode_entry_proof(data: bytes) -> EntryProof:
    """Decode strictly (see the module docstring); every failure is an :class:`EntryProofError`
    naming the field."""
    data = bytes(data)
    if len(data) > MAX_ENCODED_LEN:
        raise EntryProofError(f"log proof exceeds {MAX_ENCODED_LEN} bytes", offset=0)
    if len(data) < _HEADER.size:
        raise EntryProofError("log proof truncated", offset=len(data), field="header")
    magic, version, index, tree_size, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise EntryProofError("bad magic", offset=0, field="magic")
    if version != VERSION:
        raise EntryProofError(f"unsupported log proof version {version}", offset=4, field="version")
    if not 0 < tree_size <= MAX_TREE_SIZE:
        raise EntryProofError("tree_size must be in [1, 2**64)", offset=13, field="tree_size")
    if index >= tree_size:
        raise EntryProofError("index must be below tree_size", offset=5, field="index")
    if count != inclusion_proof_length(index, tree_size):
        # Checked before the hashes are read: the count is implied, so any other is framing.
        raise EntryProofError(
            f"{count} proof hashes, index {index} of {tree_size} needs "
            f"{inclusion_proof_length(index, tree_size)}",
            offset=21,
            field="hash_count",
        )
    off = _HEADER.size
    blob = _take(data, off, count * HASH_SIZE, "hashes")
    hashes = tuple(blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE))
    off += len(blob)
    entry = _take_sized(data, off, MAX_ENTRY_LEN, "entry")
    off += 4 + len(entry)
    checkpoint = _take_sized(data, off, MAX_CHECKPOINT_LEN, "checkpoint")
    off += 4 + len(checkpoint)
    if off != len(data):
        raise EntryProofError("trailing bytes after the log proof", offset=off, field="checkpoint")
    return EntryProof(index, tree_size, hashes, entry, checkpoint)


def verify_entry_inclusion(
    entry: bytes,
    index: int,
    tree_size: int,
    hashes: Sequence[bytes],
    checkpoint: bytes,
    *,
    log_key: NoteVerifier,
    expected_origin: str | None = None,
) -> SignedCheckpoint:
    """Check that ``entry`` is leaf ``index`` of the tree of ``tree_size`` leaves whose signed
    ``checkpoint`` verifies under ``log_key``; raise the log modules' own errors otherwise
    (``NoteVerificationError``, ``ParseError`` of a malformed note, ``ProofError``, and a
    ``VerificationError`` with reason ``log_proof_size``). The agent checks an Attest reply's
    proof with this, and :meth:`EntryProof.verify` a bundle's."""
    signed = verify_checkpoint(checkpoint, log_key, expected_origin=expected_origin)
    if signed.checkpoint.size != tree_size:
        raise VerificationError(
            "log proof's tree size differs from its checkpoint", reason="log_proof_size"
        )
    verify_inclusion(index, tree_size, leaf_hash(entry), hashes, signed.checkpoint.root_hash)
    return signed


def _take(data: bytes, off: int, n: int, name: str) -> bytes:
    if off + n > len(data):
        raise EntryProofError(f"{name} truncated", offset=len(data), field=name)
    return data[off : off + n]


def _take_sized(data: bytes, off: int, limit: int, name: str) -> bytes:
    (n,) = struct.unpack(">I", _take(data, off, 4, f"{name}_len"))
    if not 0 < n <= limit:
        raise EntryProofError(f"{name}_len {n} out of bounds", offset=off, field=f"{name}_len")
    return _take(data, off + 4, n, name)


__all__ = [
    "MAX_ENCODED_LEN",
    "EntryProof",
    "EntryProofError",
    "decode_entry_proof",
    "verify_entry_inclusion",
]
