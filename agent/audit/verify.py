"""``lessee audit verify``: check an exported log bundle against the log's pinned key.

What is checked, in order (each failure is a ``Finding`` that names the entry or checkpoint;
the auditor keeps going so one run reports everything):

1. **Framing.** Entry *i* sits at position *i*: no gaps, no duplicates, no reordering.
2. **Content.** Each entry decodes (strict canonical encoding) and its SHA-256 leaf hash equals
   the leaf hash the log recorded for it. A mismatch names the edited entry.
3. **Blobs.** Every blob an entry references is present, its bytes hash to its digest, and its
   size matches; no blob is present that no entry references.
4. **Checkpoints.** Each checkpoint note carries a valid signature by the pinned log key and
   the bundle's origin. Cosignatures (c2sp.org/tlog-cosignature) from the witnesses the
   auditor pins are verified and counted; one that does not verify is a finding of its own and
   leaves the log's signature standing. Two signed checkpoints of the same size with different roots are a
   fork. Each checkpoint's root must equal the root recomputed from the entries themselves
   (this is "every entry included": a root over the recomputed leaf hashes matches the signed
   one only if every entry below that size is exactly the one the log signed). Consecutive
   checkpoints must be consistent (RFC 9162 consistency proof over the recorded leaf hashes;
   two views whose roots both equal the recomputed tree's, where the recorded hashes are the
   recomputed ones, are prefixes of one leaf sequence and need no proof). Entries beyond the newest checkpoint, or a checkpoint beyond the entries, are findings.
5. **Earlier views.** Each ``--previous-checkpoint`` (a checkpoint the auditor or a client saw
   before) must verify and be consistent with the bundle: same root at its size, and a valid
   consistency proof to the newest checkpoint. This is what catches a log that rewrote history
   and re-signed everything.

Replaying the appraisals (``lessee audit replay``) is a separate step that starts from
``AuditResult``: it has the decoded entries and the open bundle for the blobs.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.audit.bundle import Bundle
from attest.errors import InputError, LesseeError
from attest.log.checkpoint import Checkpoint, verify_checkpoint
from attest.log.entry import LogEntry, decode_entry
from attest.log.merkle import MerkleTree, ProofError, leaf_hash, verify_consistency
from attest.log.note import NoteVerifier

#: Findings of one kind listed one by one before the rest are summarised (a bundle with a
#: million missing blobs should produce a readable report, not a million lines).
MAX_FINDINGS_PER_CODE = 1000


@dataclass(frozen=True)
class Finding:
    """One problem. ``entry`` and/or ``checkpoint`` name where it is; ``code`` is stable."""

    code: str
    message: str
    entry: int | None = None
    checkpoint: str | None = None

    def line(self) -> str:
        where = []
        if self.entry is not None:
            where.append(f"entry {self.entry}")
        if self.checkpoint is not None:
            where.append(f"checkpoint {self.checkpoint}")
        return f"{', '.join(where) or 'log'}: {self.code}: {self.message}"


@dataclass
class AuditResult:
    """The outcome of ``verify_bundle``; ``ok`` iff there are no findings."""

    origin: str
    entries: int
    tree_size: int
    root_hash: str
    checkpoints_verified: int
    #: Cosignatures by pinned witnesses that verified, over all checkpoints.
    witness_cosignatures: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: Decoded entries by position (``None`` where decoding failed), for replay.
    decoded: list[LogEntry | None] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "origin": self.origin,
            "entries": self.entries,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "checkpoints_verified": self.checkpoints_verified,
            "witness_cosignatures": self.witness_cosignatures,
            "findings": [asdict(f) for f in self.findings],
        }


class BlobKeeper:
    """Blob bytes ``audit verify`` read and found matching their digest and size, kept for the
    replay so that each blob is read and hashed once rather than once per stage.

    Bounded by total bytes and by the size of one blob (larger ones are hashed streaming, as
    without a keeper, and read again when the replay needs them). ``take`` hands a blob out
    once: an evidence blob belongs to one entry, and a repeated reference (collateral, the
    policy) is the replay's own cache's business, so the keeper never turns a repeat into a
    free hit. Only bytes that matched are kept, so what ``take`` returns was verified.
    """

    def __init__(self, max_bytes: int, max_blob_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._max_blob = max_blob_bytes
        self._held = 0
        self._blobs: dict[bytes, bytes] = {}

    def wants(self, size: int) -> bool:
        return size <= self._max_blob and self._held + size <= self._max_bytes

    def keep(self, digest: bytes, data: bytes) -> None:
        if digest not in self._blobs and self.wants(len(data)):
            self._blobs[digest] = data
            self._held += len(data)

    def take(self, digest: bytes) -> bytes | None:
        data = self._blobs.pop(digest, None)
        if data is not None:
            self._held -= len(data)
        return data


class _Findings:
    def __init__(self) -> None:
        self.items: list[Finding] = []
        self._counts: dict[str, int] = {}

    def add(
        self, code: str, message: str, *, entry: int | None = None, checkpoint: str | None = None
    ) -> None:
        n = self._counts.get(code, 0) + 1
        self._counts[code] = n
        if n <= MAX_FINDINGS_PER_CODE:
            self.items.append(Finding(code, message, entry, checkpoint))

    def finish(self) -> list[Finding]:
        for code, n in sorted(self._counts.items()):
            if n > MAX_FINDINGS_PER_CODE:
                self.items.append(
                    Finding(code, f"{n - MAX_FINDINGS_PER_CODE} more {code} findings not listed")
                )
        return self.items


def _check_framing(bundle: Bundle, out: _Findings) -> None:
    """Entry *i* must sit at position *i*. Gaps are reported once as missing entries, and an
    entry is "out of place" only if it is not where its index would put it given those gaps
    (so deleting entry 3 names entry 3, not every entry after it)."""
    seen: set[int] = set()
    for rec in bundle.records:
        if rec.index in seen:
            out.add("entry_duplicate", f"appears again at position {rec.position}", entry=rec.index)
        seen.add(rec.index)
    ordered = sorted(seen)
    rank = {index: r for r, index in enumerate(ordered)}
    reported: set[int] = set()
    for rec in bundle.records:
        if rank[rec.index] != rec.position and rec.index not in reported:
            reported.add(rec.index)
            out.add(
                "entry_out_of_place",
                f"found at position {rec.position} (entries must be in log order)",
                entry=rec.index,
            )
    previous = -1
    for index in ordered:
        if index > previous + 1:
            first, last = previous + 1, index - 1
            what = f"entry {first}" if first == last else f"entries {first}..{last}"
            out.add("entry_missing", f"{what} not in the bundle", entry=first)
        previous = index


def _check_entries(bundle: Bundle, out: _Findings) -> tuple[list[bytes], list[LogEntry | None]]:
    recomputed: list[bytes] = []
    decoded: list[LogEntry | None] = []
    for rec in bundle.records:
        h = leaf_hash(rec.data)
        recomputed.append(h)
        if h != rec.leaf_hash:
            out.add(
                "entry_modified",
                "content does not hash to the leaf the log recorded",
                entry=rec.index,
            )
        try:
            decoded.append(decode_entry(rec.data))
        except LesseeError as exc:
            decoded.append(None)
            out.add("entry_malformed", str(exc), entry=rec.index)
    return recomputed, decoded


def _check_blobs(
    bundle: Bundle,
    decoded: Sequence[LogEntry | None],
    out: _Findings,
    keeper: BlobKeeper | None = None,
) -> None:
    present = bundle.blob_digests()
    referenced: set[bytes] = set()
    checked: dict[bytes, tuple[bytes, int]] = {}
    for rec, entry in zip(bundle.records, decoded, strict=True):
        if entry is None:
            continue
        for ref in entry.blob_refs():
            referenced.add(ref.sha256)
            if ref.sha256 not in present:
                out.add(
                    "blob_missing",
                    f"{ref.role}: blob {ref.sha256.hex()} is not in the bundle",
                    entry=rec.index,
                )
                continue
            if ref.sha256 not in checked:
                if keeper is not None and keeper.wants(bundle.blob_stored_size(ref.sha256)):
                    data = bundle.read_blob(ref.sha256)
                    checked[ref.sha256] = (hashlib.sha256(data).digest(), len(data))
                    if checked[ref.sha256] == (ref.sha256, ref.size):
                        keeper.keep(ref.sha256, data)
                else:
                    checked[ref.sha256] = bundle.blob_sha256(ref.sha256)
            actual, size = checked[ref.sha256]
            if actual != ref.sha256:
                out.add(
                    "blob_digest_mismatch",
                    f"{ref.role}: blob {ref.sha256.hex()} holds bytes with SHA-256 {actual.hex()}",
                    entry=rec.index,
                )
            elif size != ref.size:
                out.add(
                    "blob_size_mismatch",
                    f"{ref.role}: blob is {size} bytes, entry says {ref.size}",
                    entry=rec.index,
                )
    for digest in sorted(present - referenced):
        out.add("blob_unreferenced", f"blob {digest.hex()} is referenced by no entry")


def check_log_key(log_key: NoteVerifier) -> None:
    """A cosigner key never signs for the log (``verify_checkpoint`` refuses it): naming one as
    the log key is bad input (exit 2), not one ``checkpoint_signature`` per checkpoint."""
    if log_key.kind.startswith("cosignature"):
        raise InputError(
            f"log key {log_key.name} is a witness cosigning key; it cannot stand in for the "
            "log's key"
        )


def check_witness_keys(witnesses: Sequence[NoteVerifier]) -> None:
    """Refuse witness keys that are not cosigners, or repeated: as input, before any check,
    so that a wrong key file is an error (exit 2), not a finding on every checkpoint."""
    seen: set[tuple[str, bytes]] = set()
    for w in witnesses:
        if not w.kind.startswith("cosignature"):
            raise InputError(
                f"witness key {w.name} is a {w.kind} key, not a tlog-cosignature (type 0x04) key"
            )
        if (w.name, bytes(w.key_id)) in seen:
            raise InputError(f"witness key {w.name} given twice")
        seen.add((w.name, bytes(w.key_id)))


def _cosignatures(
    note: bytes,
    log_key: NoteVerifier,
    witnesses: Sequence[NoteVerifier],
    origin: str,
    out: _Findings,
    *,
    code: str,
    label: str,
) -> int:
    """Verify the pinned witnesses' cosignatures on a checkpoint whose log signature verified;
    return how many verified. Checked apart from the log's signature so that a forged witness
    line is named as such and does not hide the checkpoint from the other checks."""
    if not witnesses:
        return 0
    try:
        signed = verify_checkpoint(note, log_key, witnesses=witnesses, expected_origin=origin)
    except LesseeError as exc:
        out.add(code, str(exc), checkpoint=label)
        return 0
    return len(signed.cosigners())


def _verify_checkpoints(
    bundle: Bundle,
    log_key: NoteVerifier,
    out: _Findings,
    witnesses: Sequence[NoteVerifier] = (),
) -> tuple[list[tuple[str, Checkpoint]], int]:
    good: list[tuple[str, Checkpoint]] = []
    cosigned = 0
    origin = bundle.manifest.origin
    for name, note in bundle.checkpoints:
        label = name.removeprefix("checkpoints/")
        try:
            cp = verify_checkpoint(note, log_key, expected_origin=origin).checkpoint
        except LesseeError as exc:
            out.add("checkpoint_signature", str(exc), checkpoint=label)
            continue
        good.append((label, cp))
        cosigned += _cosignatures(
            note, log_key, witnesses, origin, out, code="checkpoint_cosignature", label=label
        )
    good.sort(key=lambda item: item[1].size)
    return good, cosigned


def _check_checkpoints(
    good: Sequence[tuple[str, Checkpoint]],
    real: MerkleTree,
    recorded: MerkleTree,
    out: _Findings,
) -> None:
    by_size: dict[int, tuple[str, Checkpoint]] = {}
    for label, cp in good:
        other = by_size.get(cp.size)
        if other is not None and other[1].root_hash != cp.root_hash:
            out.add(
                "checkpoint_fork",
                f"signed two different roots for size {cp.size} (also {other[0]})",
                checkpoint=label,
            )
        by_size.setdefault(cp.size, (label, cp))
    last_good = 0
    #: Signed (size, root) pairs equal to the recomputed tree's root at that size (keyed by the
    #: root too: of two forked checkpoints of one size, at most one matches).
    matched: set[tuple[int, bytes]] = set()
    for label, cp in good:
        if cp.size > real.size:
            out.add(
                "checkpoint_beyond_entries",
                f"signed size {cp.size} but the bundle has {real.size} entries "
                f"(entries {real.size}..{cp.size - 1} missing)",
                checkpoint=label,
            )
            continue
        if real.root(cp.size) == cp.root_hash:
            last_good = max(last_good, cp.size)
            matched.add((cp.size, cp.root_hash))
            continue
        hint = ""
        if recorded.size >= cp.size and recorded.root(cp.size) == cp.root_hash:
            hint = "; the recorded leaf hashes match it, so the entries named entry_modified were edited"
        else:
            hint = f"; the change lies in entries {last_good}..{cp.size - 1}"
        out.add(
            "checkpoint_root_mismatch",
            f"root of entries 0..{cp.size - 1} differs from the signed root{hint}",
            checkpoint=label,
        )
    # Consecutive signed views must be consistent (RFC 9162 proofs over the recorded hashes).
    # Where the recorded hashes are the recomputed ones and both roots were just found equal to
    # that tree's roots, the two views are prefixes of one leaf sequence: consistent by
    # construction, and a proof generated from that very tree verifies by the RFC's own
    # argument. Only the other pairs (a root or a leaf hash off) need a proof checked; with one
    # checkpoint per commit that skips ~n proof generations and verifications on a clean log.
    distinct = [(label, cp) for label, cp in good if cp.size <= recorded.size and cp.size > 0]
    for (l1, c1), (l2, c2) in itertools.pairwise(distinct):
        if c1.size == c2.size:
            continue
        if (
            recorded is real
            and (c1.size, c1.root_hash) in matched
            and (c2.size, c2.root_hash) in matched
        ):
            continue
        try:
            verify_consistency(
                c1.size,
                c2.size,
                recorded.consistency_proof(c1.size, c2.size),
                c1.root_hash,
                c2.root_hash,
            )
        except ProofError as exc:
            out.add("checkpoint_inconsistent", f"not consistent with {l1}: {exc}", checkpoint=l2)


def _check_previous(
    previous: Sequence[tuple[str, bytes]],
    log_key: NoteVerifier,
    *,
    origin: str,
    newest: Checkpoint | None,
    real: MerkleTree,
    out: _Findings,
    witnesses: Sequence[NoteVerifier] = (),
) -> None:
    for label, note in previous:
        try:
            prev = verify_checkpoint(note, log_key, expected_origin=origin).checkpoint
        except LesseeError as exc:
            out.add("previous_checkpoint_signature", str(exc), checkpoint=label)
            continue
        _cosignatures(
            note,
            log_key,
            witnesses,
            origin,
            out,
            code="previous_checkpoint_cosignature",
            label=label,
        )
        if newest is None or prev.size > newest.size:
            out.add(
                "previous_checkpoint_ahead",
                f"size {prev.size} is beyond the bundle's newest checkpoint: the log rolled back",
                checkpoint=label,
            )
            continue
        if prev.size == 0:
            continue  # every tree extends the empty one
        if prev.size <= real.size and real.root(prev.size) != prev.root_hash:
            out.add(
                "previous_checkpoint_inconsistent",
                f"the bundle's entries 0..{prev.size - 1} do not have the root seen before: history was rewritten",
                checkpoint=label,
            )
            continue
        if newest.size <= real.size:
            try:
                verify_consistency(
                    prev.size,
                    newest.size,
                    real.consistency_proof(prev.size, newest.size),
                    prev.root_hash,
                    newest.root_hash,
                )
            except ProofError as exc:
                out.add("previous_checkpoint_inconsistent", str(exc), checkpoint=label)


def verify_bundle(
    bundle: Bundle,
    log_key: NoteVerifier,
    *,
    previous: Sequence[tuple[str, bytes]] = (),
    keeper: BlobKeeper | None = None,
    witnesses: Sequence[NoteVerifier] = (),
) -> AuditResult:
    """Run every check above on an open bundle. Raises only for unreadable input (and for a
    cosigner as ``log_key`` or ``witnesses`` that are not distinct cosigner keys).

    ``keeper`` (the replay's) receives the bytes of blobs that matched, within its bounds;
    ``witnesses`` are the cosigners whose cosignatures are verified where present."""
    check_log_key(log_key)
    check_witness_keys(witnesses)
    out = _Findings()
    _check_framing(bundle, out)
    recomputed, decoded = _check_entries(bundle, out)
    _check_blobs(bundle, decoded, out, keeper)
    real = MerkleTree(recomputed)
    recorded_hashes = [r.leaf_hash for r in bundle.records]
    # One tree when nothing was edited (the usual case): the same leaves give the same tree.
    recorded = real if recorded_hashes == recomputed else MerkleTree(recorded_hashes)
    good, cosigned = _verify_checkpoints(bundle, log_key, out, witnesses)
    if not good:
        out.add("no_checkpoint", "no checkpoint signed by the log key")
    _check_checkpoints(good, real, recorded, out)
    newest = good[-1][1] if good else None
    if newest is not None:
        for rec in bundle.records[newest.size :]:
            out.add(
                "entry_not_checkpointed", "no signed checkpoint covers this entry", entry=rec.index
            )
        if bundle.manifest.tree_size != newest.size:
            out.add(
                "manifest_size",
                f"manifest says tree size {bundle.manifest.tree_size}, newest checkpoint {newest.size}",
            )
    _check_previous(
        previous,
        log_key,
        origin=bundle.manifest.origin,
        newest=newest,
        real=real,
        out=out,
        witnesses=witnesses,
    )
    return AuditResult(
        origin=bundle.manifest.origin,
        entries=len(bundle.records),
        tree_size=newest.size if newest else 0,
        root_hash=newest.root_hash.hex() if newest else "",
        checkpoints_verified=len(good),
        witness_cosignatures=cosigned,
        findings=out.finish(),
        decoded=decoded,
    )


def verify_bundle_file(
    path: str | Path,
    log_key: NoteVerifier,
    *,
    previous: Sequence[tuple[str, bytes]] = (),
    witnesses: Sequence[NoteVerifier] = (),
) -> AuditResult:
    """Open, verify and close a bundle file."""
    with Bundle(path) as bundle:
        return verify_bundle(bundle, log_key, previous=previous, witnesses=witnesses)
