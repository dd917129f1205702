"""Durable storage of the attestation log in SQLite, with group commit.

Why it is built this way:

* **One transaction per batch, not per entry.** A background writer thread takes every append
  waiting in its queue (up to ``max_batch``), writes their blobs and entries, signs one
  checkpoint for the new tree size, and commits once. With ``synchronous=FULL`` a commit costs
  an fsync; sharing it across a batch is what keeps throughput from collapsing under load.
  Callers block until *their* batch is durable, then get their index, the signed checkpoint
  and an inclusion proof against it.
* **Crash safety comes from SQLite's atomic commit.** Entries, blobs and the checkpoint that
  covers them are in the same WAL transaction, so after a crash either all of a batch is there
  or none of it is, and no caller was told "done" before the commit returned. On open, the
  store checks that the entries are contiguous, that the newest checkpoint's size equals the
  number of entries, that its root is the root of the stored leaf hashes, and that it carries
  the log key's valid signature; anything else is an ``LogIntegrityError``.
* **The tree lives in memory** (``attest.log.merkle.MerkleTree``, ~2 hashes per entry) and is
  rebuilt from the stored leaf hashes at start-up; proofs and roots then cost O(log n).
* The log's signing key is passed in; it is never written to the database. The database holds
  the log's *public* key and origin, and refuses to be reopened with a different key or origin.
* **The writer does as little Python per commit as it can** (issue #5: it shares the broker's
  GIL). A group's blobs and entries go to SQLite in one ``executemany`` each; the checkpoint
  text and its signature line are written from the typed values the writer holds, with no
  format-then-re-parse round trip (``_CheckpointSigner``); each appender waits on a bare
  one-shot lock the writer releases, not on an ``Event`` and its condition variable.
"""

from __future__ import annotations

import base64
import hashlib
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from agent.audit.bundle import BundleWriter
from attest.errors import InputError, LesseeError, VerificationError
from attest.log.checkpoint import format_checkpoint, verify_checkpoint
from attest.log.entry import LogEntry
from attest.log.merkle import EMPTY_ROOT, MerkleTree, leaf_hash
from attest.log.note import SIGNATURE_PREFIX, NoteSigner, sign_note

#: Version of the database layout, stored in ``meta``; a newer layout is refused, an older one
#: is migrated on open (one transaction). 2: ``blobs`` is a rowid table (see ``_SCHEMA``).
SCHEMA_VERSION = 2
#: Most appends committed in one transaction: bounds one commit's latency and memory.
DEFAULT_MAX_BATCH = 1024
#: How often a blocked appender checks that the writer thread is still running.
WRITER_CHECK_SECONDS = 0.5
#: Most entries returned by one ``entries()`` call (the gRPC layer pages on top of this).
MAX_ENTRIES_PER_READ = 1000

#: ``blobs`` is a rowid table with an index on ``sha256``. Layout 1 made it ``WITHOUT ROWID``,
#: which keeps each whole row in the key's B-tree: a blob (an 80 KiB evidence bundle) then lies
#: mostly on overflow pages, and SQLite reads a row's whole payload to compare its key, so every
#: insert read a few earlier bundles back from disk (~170 page reads per flow, issue #5). Now
#: the index holds only digests and blobs are appended in rowid order.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY, root BLOB NOT NULL, note BLOB NOT NULL);
"""
#: Layout 1 -> 2: the same rows in a rowid ``blobs`` table (one transaction, so a crash leaves
#: either layout whole).
_MIGRATE_1_TO_2 = (
    "CREATE TABLE blobs_v2 (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL)",
    "INSERT INTO blobs_v2 (sha256, data) SELECT sha256, data FROM blobs ORDER BY sha256",
    "DROP TABLE blobs",
    "ALTER TABLE blobs_v2 RENAME TO blobs",
    "UPDATE meta SET value = CAST('2' AS BLOB) WHERE key = 'schema'",
)


class LogStoreError(LesseeError):
    """The store could not do what was asked (closed, or a commit failed)."""


class LogIntegrityError(VerificationError):
    """The database does not hold a consistent log (see the module docstring)."""


class BlobMissingError(InputError):
    """An entry references a blob that was neither supplied nor already stored."""


@dataclass(frozen=True)
class AppendReceipt:
    """What an appender gets once its entry is durable."""

    index: int
    leaf_hash: bytes
    tree_size: int
    checkpoint: bytes
    inclusion_proof: tuple[bytes, ...]


class _Request:
    """One append in flight between its caller and the writer thread.

    ``done`` is a lock taken at creation and released once by the writer when the request is
    answered (committed or refused): a one-shot signal with the same meaning as an ``Event``
    that is set once and waited on by one thread, for a fraction of the Python work (no
    condition variable, no per-wait waiter lock; issue #5). ``unsupplied`` are the referenced
    digests the caller did not supply, worked out in the caller's thread: only those need a
    look-up in the writer.
    """

    __slots__ = (
        "blobs",
        "checkpoint",
        "done",
        "entry",
        "error",
        "index",
        "leaf",
        "tree_size",
        "unsupplied",
    )

    def __init__(
        self, entry: LogEntry, blobs: dict[bytes, bytes], unsupplied: tuple[bytes, ...]
    ) -> None:
        self.entry = entry
        self.blobs = blobs
        self.unsupplied = unsupplied
        self.done = threading.Lock()
        self.done.acquire()
        self.index = -1
        self.leaf = b""
        self.tree_size = 0
        self.checkpoint = b""
        self.error: LesseeError | None = None


class _CheckpointSigner:
    """Signed checkpoint notes for one origin and one key, written straight from typed values.

    ``format_checkpoint`` and ``sign_note`` build the text, re-parse it, and re-parse the
    signed note, to prove that what they emit is what they accept. For this log the only
    values that vary between checkpoints are the tree size (an ``int``, whose ``str`` is the
    canonical decimal) and the root (32 bytes from our own tree, whose standard base64 is
    canonical); the origin and the key name are checked once, here. So the writer formats
    ``origin\nsize\nbase64(root)\n``, signs it, and appends the fixed signature-line prefix
    and ``base64(key ID || signature)``: byte for byte the note ``sign_note`` gives (Ed25519 is
    deterministic), which ``__init__`` checks against the library path before the first use.
    """

    def __init__(self, origin: str, signer: NoteSigner) -> None:
        self._signer = signer
        self._origin_line = origin.encode() + b"\n"
        self._key_id = signer.key_id
        self._line_prefix = f"{SIGNATURE_PREFIX}{signer.name} ".encode()
        probe_root = hashlib.sha256(b"lessee checkpoint self-check").digest()
        expected = sign_note(format_checkpoint(origin, 1, probe_root).text, [signer])
        if self.sign(1, probe_root) != expected:  # a bug, never an input: refuse to run
            raise LogStoreError("checkpoint writer disagrees with sign_note")

    def sign(self, size: int, root: bytes) -> bytes:
        """The signed note of checkpoint (origin, ``size``, ``root``)."""
        text = b"%s%d\n%s\n" % (self._origin_line, size, base64.b64encode(root))
        sig = self._signer.sign(text)
        return b"%s\n%s%s\n" % (
            text,
            self._line_prefix,
            base64.b64encode(self._key_id + sig.signature),
        )


_STOP = object()


#: How long opening waits for another process that is switching a fresh database to WAL.
WAL_SWITCH_WAIT_S = 5.0


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # Switching a fresh file to WAL answers "database is locked" at once, without the busy
    # timeout, while another process switches it (the broker's first start racing an
    # ``export-log``): wait for it as for any other lock.
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class LogStore:
    """An append-only, signed, durable log. Thread-safe; use as a context manager."""

    def __init__(
        self,
        path: str | Path,
        signer: NoteSigner,
        *,
        origin: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise InputError("max_batch must be at least 1")
        self._path = Path(path)
        self._signer = signer
        self._verifier = signer.verifier()
        self.origin = origin or signer.name
        self._checkpoint_signer = _CheckpointSigner(self.origin, signer)  # checks the origin
        self._max_batch = max_batch
        self._db = _connect(self._path)
        self._reader = _connect(self._path)
        self._read_lock = threading.Lock()
        self._tree_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._closed = False
        try:
            self._open()
        except BaseException:
            self._db.close()
            self._reader.close()
            raise
        self._writer = threading.Thread(target=self._run, name="logstore-writer", daemon=True)
        self._writer.start()

    # ---- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        """Create the log if it is new, then load it from one snapshot.

        Another process may hold the same database: the broker serving it while ``export-log``
        opens it, or two that start on a fresh file at once. So the first-time rows (identity,
        checkpoint 0) are written under the write lock after checking again that nobody wrote
        them, and the entries and the newest checkpoint are read in one read transaction: read
        one statement at a time, a batch the broker committed in between made the checkpoint
        newer than the entries just read, a false ``store_checkpoint`` alarm."""
        db = self._db
        db.executescript(_SCHEMA)
        self._initialise()
        db.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot every read sees
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            migrate = self._check_identity(meta)
            if not migrate:
                self._load(db)
        finally:
            db.execute("COMMIT")
        if migrate:
            self._migrate_1_to_2()
            db.execute("BEGIN")
            try:
                self._load(db)
            finally:
                db.execute("COMMIT")

    def _initialise(self) -> None:
        """The identity rows and the signed empty checkpoint of a new log, in one transaction
        under the write lock (checked again there); nothing for a log that has both. (A log an
        older version created wrote them in two transactions: one stopped in between gets its
        checkpoint 0 here.)"""
        db = self._db

        def missing() -> tuple[bool, bool]:
            no_meta = db.execute("SELECT 1 FROM meta LIMIT 1").fetchone() is None
            no_checkpoint = db.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone() is None
            return no_meta, no_checkpoint

        if missing() == (False, False):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            no_meta, no_checkpoint = missing()
            if not no_meta:  # never sign into another log's database
                self._check_identity(dict(db.execute("SELECT key, value FROM meta").fetchall()))
            if no_meta:
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("schema", str(SCHEMA_VERSION).encode()),
                        ("origin", self.origin.encode()),
                        ("vkey", self._verifier.vkey().encode()),
                    ],
                )
            # Entries without any checkpoint are not a new log: ``_load`` refuses them.
            if no_checkpoint and db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is None:
                db.execute(
                    "INSERT INTO checkpoints VALUES (0, ?, ?)",
                    (EMPTY_ROOT, self._checkpoint_signer.sign(0, EMPTY_ROOT)),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _check_identity(self, meta: dict[str, bytes]) -> bool:
        """Refuse another log's database; True if it is schema 1 (to migrate)."""
        if meta.get("schema") not in (b"1", str(SCHEMA_VERSION).encode()):
            raise LogIntegrityError("unsupported log database schema", reason="store_schema")
        if meta.get("origin") != self.origin.encode() or meta.get("vkey") != (
            self._verifier.vkey().encode()
        ):
            raise LogIntegrityError(
                "log database belongs to another origin or log key", reason="store_identity"
            )
        return meta.get("schema") == b"1"

    def _load(self, db: sqlite3.Connection) -> None:
        """The tree and the newest checkpoint, which must sign it (inside a read transaction)."""
        hashes: list[bytes] = []
        for expected, (idx, h) in enumerate(
            db.execute("SELECT idx, leaf_hash FROM entries ORDER BY idx")
        ):
            if idx != expected:
                raise LogIntegrityError(f"entry {expected} is missing", reason="store_gap")
            hashes.append(h)
        self._tree = MerkleTree(hashes)
        row = db.execute(
            "SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise LogIntegrityError(
                f"no checkpoint for the {self._tree.size} stored entries", reason="store_checkpoint"
            )
        size, root, note = row
        if size != self._tree.size or root != self._tree.root():
            raise LogIntegrityError(
                f"newest checkpoint (size {size}) does not match the {self._tree.size} stored entries",
                reason="store_checkpoint",
            )
        cp = verify_checkpoint(note, self._verifier, expected_origin=self.origin).checkpoint
        if cp.size != size or cp.root_hash != root:
            raise LogIntegrityError(
                "checkpoint note disagrees with its row", reason="store_checkpoint"
            )
        self._checkpoint, self._size = bytes(note), int(size)

    def _migrate_1_to_2(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Checked again under the write lock: another process may have migrated meanwhile.
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is not None and bytes(row[0]) == b"1":
                for statement in _MIGRATE_1_TO_2:
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _sign(self, size: int) -> bytes:
        return self._checkpoint_signer.sign(size, self._tree.root(size))

    # ---- appending -----------------------------------------------------------------------

    def append(self, entry: LogEntry, blobs: Iterable[bytes] = ()) -> AppendReceipt:
        """Append ``entry`` with the blobs it references; block until durable.

        Every supplied blob must be referenced by the entry with the same size; every
        reference must be supplied or already stored. Supplying a blob twice is harmless.
        """
        by_digest: dict[bytes, bytes] = {}
        refs = {r.sha256: r for r in entry.blob_refs()}
        for data in blobs:
            digest = hashlib.sha256(data).digest()
            ref = refs.get(digest)
            if ref is None:
                raise InputError(f"blob {digest.hex()} is not referenced by the entry")
            if ref.size != len(data):
                raise InputError(f"blob {digest.hex()} size differs from its reference")
            by_digest[digest] = data
        if self._closed:
            raise LogStoreError("log store is closed")
        req = _Request(entry, by_digest, tuple(d for d in refs if d not in by_digest))
        self._queue.put(req)
        # The writer answers every request it takes; if it has exited (closed meanwhile), a
        # request queued after its final drain would wait forever, so check it is alive (and
        # look once more after seeing it gone: it may have answered just before exiting).
        while not req.done.acquire(timeout=WRITER_CHECK_SECONDS):
            if not self._writer.is_alive() and not req.done.acquire(blocking=False):
                raise LogStoreError("log store is closed")
        if req.error is not None:
            raise req.error
        with self._tree_lock:
            proof = self._tree.inclusion_proof(req.index, req.tree_size)
        return AppendReceipt(
            index=req.index,
            leaf_hash=req.leaf,
            tree_size=req.tree_size,
            checkpoint=req.checkpoint,
            inclusion_proof=tuple(proof),
        )

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._commit([r for r in batch if isinstance(r, _Request)])
        # Anything queued after the stop marker is refused, never silently dropped.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Request):
                item.error = LogStoreError("log store is closed")
                item.done.release()

    def _commit(self, batch: Sequence[_Request]) -> None:
        """Write one group in one transaction, sign one checkpoint, then answer every request.

        A request is refused (``BlobMissingError``) if a blob it references was neither
        supplied, nor supplied by a request accepted earlier in this group, nor stored before;
        the others go in. Nobody is answered before ``COMMIT`` returns (``synchronous=FULL``).
        """
        db = self._db
        base = self._tree.size
        accepted: list[_Request] = []
        # Every blob of the accepted requests, first supply of a digest wins (same bytes).
        blob_rows: dict[bytes, bytes] = {}
        try:
            db.execute("BEGIN IMMEDIATE")
            for req in batch:
                missing = [
                    d
                    for d in req.unsupplied
                    if d not in blob_rows
                    and db.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (d,)).fetchone() is None
                ]
                if missing:
                    ref = next(r for r in req.entry.blob_refs() if r.sha256 == missing[0])
                    req.error = BlobMissingError(
                        f"blob for role {ref.role!r} ({ref.sha256.hex()}) not supplied"
                    )
                    continue
                for digest, data in req.blobs.items():
                    blob_rows.setdefault(digest, data)
                req.leaf = leaf_hash(req.entry.raw)
                accepted.append(req)
            if accepted:
                with self._tree_lock:
                    for req in accepted:
                        req.index = self._tree.append(req.leaf)
                # Only this thread changes the tree, so it reads it without the lock.
                size = self._tree.size
                root = self._tree.root(size)
                db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?)", blob_rows.items())
                db.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?)",
                    [(req.index, req.leaf, req.entry.raw) for req in accepted],
                )
                note = self._checkpoint_signer.sign(size, root)
                db.execute("INSERT INTO checkpoints VALUES (?, ?, ?)", (size, root, note))
            db.execute("COMMIT")
        except Exception as exc:  # the writer thread must survive anything one batch does
            if db.in_transaction:
                db.execute("ROLLBACK")
            with self._tree_lock:
                self._tree.truncate(base)
            for req in accepted:
                req.error = LogStoreError(f"append not committed: {type(exc).__name__}")
            accepted = []
        else:
            if accepted:
                self._checkpoint, self._size = note, size
                for req in accepted:
                    req.tree_size, req.checkpoint = size, note
        for req in batch:
            req.done.release()

    # ---- reading -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Entries covered by the newest signed checkpoint (every acknowledged entry)."""
        return self._size

    def latest_checkpoint(self) -> bytes:
        """The newest signed checkpoint note."""
        return self._checkpoint

    def checkpoints(self) -> list[bytes]:
        """Every checkpoint this log signed, oldest first."""
        with self._read_lock:
            return [
                r[0] for r in self._reader.execute("SELECT note FROM checkpoints ORDER BY size")
            ]

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``[start, end)`` (canonical bytes); at most ``MAX_ENTRIES_PER_READ``."""
        size = self.size
        if not 0 <= start <= end <= size:
            raise InputError(f"range [{start}, {end}) is outside the log (size {size})")
        if end - start > MAX_ENTRIES_PER_READ:
            raise InputError(f"at most {MAX_ENTRIES_PER_READ} entries per read")
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
            ).fetchall()
        return [r[0] for r in rows]

    def contains_leaf(self, leaf: bytes, start: int, stop: int) -> bool:
        """Whether an entry with leaf hash ``leaf`` lies in ``[start, stop)`` (clamped to the
        acknowledged log). Reads only the leaf hashes, a chunk at a time, from ``start`` on and
        stops at the first match: the broker asks this of a release claim, whose entry, when
        it was written, follows the claim's log size by at most the appends in flight then."""
        stop = min(stop, self.size)
        pos = max(0, start)
        while pos < stop:
            end = min(stop, pos + MAX_ENTRIES_PER_READ)
            with self._read_lock:
                rows = self._reader.execute(
                    "SELECT leaf_hash FROM entries WHERE idx >= ? AND idx < ?", (pos, end)
                ).fetchall()
            if any(bytes(r[0]) == leaf for r in rows):
                return True
            pos = end
        return False

    def blob(self, sha256: bytes) -> bytes:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT data FROM blobs WHERE sha256 = ?", (sha256,)
            ).fetchone()
        if row is None:
            raise InputError(f"no blob {sha256.hex()}")
        return bytes(row[0])

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        size = self.size if tree_size is None else tree_size
        if size > self.size:
            raise InputError(f"tree size {size} is beyond the signed log ({self.size})")
        with self._tree_lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        size = self.size if size2 is None else size2
        if size > self.size:
            raise InputError(f"tree size {size} is beyond the signed log ({self.size})")
        with self._tree_lock:
            return self._tree.consistency_proof(size1, size)

    def export_bundle(self, path: str | Path | IO[bytes]) -> int:
        """Write the whole log (entries, checkpoints, blobs) as one audit bundle; return its size
        (``path``: a file name, or a binary file opened for writing, left open).

        Reads in one SQLite read transaction, so the bundle is a consistent snapshot even
        while appends continue.
        """
        with self._read_lock:
            r = self._reader
            r.execute("BEGIN")
            try:
                size = r.execute("SELECT MAX(size) FROM checkpoints").fetchone()[0]
                writer = BundleWriter(path)
                try:
                    writer.write_manifest(
                        origin=self.origin, tree_size=size, log_vkey=self._verifier.vkey()
                    )
                    writer.write_entries(
                        r.execute(
                            "SELECT idx, leaf_hash, data FROM entries WHERE idx < ? ORDER BY idx",
                            (size,),
                        )
                    )
                    for seq, (note,) in enumerate(
                        r.execute(
                            "SELECT note FROM checkpoints WHERE size <= ? ORDER BY size", (size,)
                        )
                    ):
                        writer.write_checkpoint(seq, note)
                    for digest, data in r.execute("SELECT sha256, data FROM blobs ORDER BY sha256"):
                        writer.write_blob(digest, data)
                finally:
                    writer.close()
            finally:
                r.execute("COMMIT")
        return int(size)

    # ---- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join()
        self._db.close()
        with self._read_lock:
            self._reader.close()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
