"""Broker state: single-use nonces, registered models (wrapped data keys + policies), results
and releases. SQLite by default (WAL, synchronous=FULL), behind ``BrokerStore`` so a PostgreSQL
backend can serve several stateless broker replicas later.

Restart safety: every state change commits before the caller acts on it. Concurrent changes
share one transaction ("group commit"): one fsync then acknowledges many changes, where one
fsync per change made SQLite's serialised commits the broker's limit under load (issue #5). One
failing change leaves the others intact: a change of one statement relies on SQLite's
statement atomicity (a statement that fails is undone, the transaction stays open), a change of
several statements runs in its own savepoint; an error that ends the whole transaction fails
the whole group. Nonce consumption is a single conditional UPDATE, so a nonce is accepted at
most once even with concurrent callers or a crash right after (the consumed mark is durable
before Attest proceeds). Times are POSIX seconds passed in by the caller.

Connections: group commits run on one writer connection (whichever thread commits uses it,
under the write lock), so its page cache stays warm; reads use one connection per thread.
With a connection per thread for writes too, every commit invalidated the other connections'
caches and the next write on them re-read the B-tree pages (~250 ``pread`` calls per flow
under load, issue #5).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from attest.errors import VerificationError

#: Expired nonces older than this are purged (keeps the table small; they can never be used).
NONCE_PURGE_AFTER_SECONDS = 24 * 3600
#: Seconds between purges. The purge scans the nonce table (``expires_at`` has no index), so
#: running it on every Challenge made each nonce issue cost a table scan under the write lock;
#: once a minute keeps the table as small as before to within a minute of nonces.
NONCE_PURGE_INTERVAL_SECONDS = 60.0
#: Most changes committed in one transaction: bounds how long the committing thread works for
#: others (and the transaction's size); under load batches are this size at most, then the next
#: waiting thread commits the next batch.
MAX_GROUP_COMMIT = 64


@dataclass(eq=False)
class _Write:
    """One pending state change: ``fn`` runs inside the group's transaction.

    ``savepoint`` False is for a change whose partial effect is acceptable if it fails: one
    modifying statement (SQLite undoes a failed statement by itself; reads around it are
    fine), or statements whose earlier ones may stand alone (``issue_nonce``'s purge of long-
    expired nonces). The savepoint's two extra statements per change would then buy nothing.
    """

    fn: Callable[[sqlite3.Connection], Any]
    savepoint: bool = True
    done: bool = False
    result: Any = None
    error: BaseException | None = None


def _statement(sql: str, params: tuple[Any, ...]) -> Callable[[sqlite3.Connection], int]:
    """A change that runs one statement and returns its row count (never the cursor, which
    belongs to the committing thread's connection)."""

    def change(db: sqlite3.Connection) -> int:
        return db.execute(sql, params).rowcount

    return change


def _connect(path: str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, timeout=30.0, isolation_level=None, check_same_thread=check_same_thread
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


class NonceError(VerificationError):
    """Unknown, expired or already-used nonce (reason: nonce_unknown/nonce_expired/nonce_used)."""


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    model_version: int
    key_id: str
    wrapped_key: bytes
    policy_json: str
    policy_digest: str
    manifest_digest: bytes


@dataclass(frozen=True)
class ResultRecord:
    result_id: str
    model_id: str
    enclave_key_digest: bytes
    nonce: bytes
    status: str
    issued_at: float
    expires_at: float


@dataclass(frozen=True)
class ReleaseClaim:
    """What a release claim recorded for finding out, later, whether its log entry was ever
    written: the entry's leaf hash, the log's size when the claim was made (the entry, if
    appended, lies at or after it) and the broker process (``Broker.instance``) that made it.
    Claims from before these were recorded have None in each."""

    entry_leaf: bytes | None
    log_size: int | None
    instance: str | None


class BrokerStore(Protocol):
    def issue_nonce(
        self, nonce: bytes, *, model_id: str, now: float, expires_at: float
    ) -> None: ...
    def consume_nonce(self, nonce: bytes, *, now: float) -> str: ...
    def put_model(self, model: ModelRecord) -> None: ...
    def get_model(self, model_id: str) -> ModelRecord | None: ...
    def put_result(self, result: ResultRecord) -> None: ...
    def get_result(self, result_id: str) -> ResultRecord | None: ...
    def record_release(self, *, result_id: str, model_id: str, released_at: float) -> None: ...
    def claim_release(
        self,
        *,
        result_id: str,
        model_id: str,
        released_at: float,
        entry_leaf: bytes | None = None,
        log_size: int | None = None,
        instance: str | None = None,
    ) -> bool: ...
    def release_claim(self, result_id: str) -> ReleaseClaim | None: ...
    def models_wrapped_in_format(self, version: int) -> list[str]: ...
    def drop_release_claim(self, *, result_id: str, instance: str) -> bool: ...
    def count_releases(self, result_id: str) -> int: ...
    def claim_refusal(self, *, result_id: str, reason: str, refused_at: float) -> bool: ...
    def forget_refusal(self, *, result_id: str, reason: str) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
  nonce BLOB PRIMARY KEY, model_id TEXT NOT NULL, issued_at REAL NOT NULL,
  expires_at REAL NOT NULL, used_at REAL
);
CREATE TABLE IF NOT EXISTS models (
  model_id TEXT PRIMARY KEY, model_version INTEGER NOT NULL, key_id TEXT NOT NULL UNIQUE,
  wrapped_key BLOB NOT NULL, policy_json TEXT NOT NULL, policy_digest TEXT NOT NULL,
  manifest_digest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
  result_id TEXT PRIMARY KEY, model_id TEXT NOT NULL, enclave_key_digest BLOB NOT NULL,
  nonce BLOB NOT NULL UNIQUE, status TEXT NOT NULL, issued_at REAL NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
  id INTEGER PRIMARY KEY AUTOINCREMENT, result_id TEXT NOT NULL REFERENCES results(result_id),
  model_id TEXT NOT NULL, released_at REAL NOT NULL,
  entry_leaf BLOB, log_size INTEGER, instance TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS releases_one_per_result ON releases(result_id);
CREATE TABLE IF NOT EXISTS refusals (
  result_id TEXT NOT NULL, reason TEXT NOT NULL, refused_at REAL NOT NULL,
  PRIMARY KEY (result_id, reason)
);
"""


#: Columns a release claim gained (``ReleaseClaim``), added to older databases on open.
_RELEASE_CLAIM_COLUMNS = (("entry_leaf", "BLOB"), ("log_size", "INTEGER"), ("instance", "TEXT"))


class SqliteBrokerStore:
    """SQLite implementation; one connection per thread, WAL mode, full sync."""

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._local = threading.local()
        # Writers of this process queue on this lock, not on SQLite's busy handler (which polls
        # with sleeps of up to 100 ms, so a writer slept long after the lock was free). The
        # holder commits every pending change, its own and those queued meanwhile, in one
        # transaction. SQLite's own locking still serialises writers across processes.
        self._write_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_Write] = []
        self._next_purge = float("-inf")  # only read and written under _write_lock
        # Used only by the thread holding _write_lock (hence check_same_thread=False).
        self._writer = _connect(self._path, check_same_thread=False)
        self._writer.executescript(_SCHEMA)
        self._add_release_claim_columns()

    def _add_release_claim_columns(self) -> None:
        """Databases from before release claims recorded their log entry get the columns (one
        transaction, NULL in the old rows: such a claim is never taken for an orphan)."""
        db = self._writer
        have = {row[1] for row in db.execute("PRAGMA table_info(releases)")}
        missing = [c for c in _RELEASE_CLAIM_COLUMNS if c[0] not in have]
        if not missing:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            have = {row[1] for row in db.execute("PRAGMA table_info(releases)")}
            for name, kind in _RELEASE_CLAIM_COLUMNS:
                if name not in have:  # another process may have added it meanwhile
                    db.execute(f"ALTER TABLE releases ADD COLUMN {name} {kind}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _db(self) -> sqlite3.Connection:
        """This thread's read connection."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = _connect(self._path)
            self._local.db = db
        return db

    def _write(self, fn: Callable[[sqlite3.Connection], Any], *, savepoint: bool = True) -> Any:
        """Run ``fn(db)`` in a write transaction; return its result once that is durable.

        ``fn`` may run on another thread (the one committing the group), so it must use only
        its argument. An exception ``fn`` raises undoes its own changes only and is re-raised
        here; a failed commit fails every change of the group. ``savepoint=False``: see
        ``_Write``.
        """
        op = _Write(fn, savepoint)
        with self._pending_lock:
            self._pending.append(op)
        while True:
            with self._write_lock:
                if op.done:  # committed (or failed) by the thread that held the lock
                    break
                with self._pending_lock:
                    batch = self._pending[:MAX_GROUP_COMMIT]
                    del self._pending[:MAX_GROUP_COMMIT]
                self._commit(batch)
        if op.error is not None:
            raise op.error
        return op.result

    def _write_statement(self, change: Callable[[sqlite3.Connection], int]) -> int:
        """``_write`` for a ``_statement`` change (one statement: no savepoint needed)."""
        result: int = self._write(change, savepoint=False)
        return result

    def _commit(self, batch: list[_Write]) -> None:
        db = self._writer
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in batch:
                if not op.savepoint:
                    try:
                        op.result = op.fn(db)
                    except Exception as exc:
                        if not db.in_transaction:
                            # SQLite ended the whole transaction (I/O error, disk full, ...):
                            # the group's earlier changes are gone too, so the group fails.
                            raise
                        op.error = exc
                    continue
                db.execute("SAVEPOINT change")
                try:
                    op.result = op.fn(db)
                except Exception as exc:
                    db.execute("ROLLBACK TO change")
                    op.error = exc
                db.execute("RELEASE change")
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            for op in batch:
                op.result, op.error, op.done = None, exc, True
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and the like; each waiter got the error already
            return
        for op in batch:
            op.done = True

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        with self._write_lock:
            self._writer.close()

    def issue_nonce(self, nonce: bytes, *, model_id: str, now: float, expires_at: float) -> None:

        def change(db: sqlite3.Connection) -> None:
            # Also when ``now`` is behind the last purge by more than the interval: the clock
            # stepped back (an RTC ahead at boot, then NTP), and waiting for it to catch up
            # let unauthenticated Challenges grow the table for as long as the step.
            last = self._next_purge - NONCE_PURGE_INTERVAL_SECONDS
            if now >= self._next_purge or now < last - NONCE_PURGE_INTERVAL_SECONDS:
                db.execute(  # runs under the write lock
                    "DELETE FROM nonces WHERE expires_at < ?", (now - NONCE_PURGE_AFTER_SECONDS,)
                )
                self._next_purge = now + NONCE_PURGE_INTERVAL_SECONDS
            db.execute(
                "INSERT INTO nonces(nonce, model_id, issued_at, expires_at) VALUES (?,?,?,?)",
                (nonce, model_id, now, expires_at),
            )

        # No savepoint: if the INSERT fails, keeping the purge of long-expired nonces is fine.
        self._write(change, savepoint=False)

    def consume_nonce(self, nonce: bytes, *, now: float) -> str:
        """Mark ``nonce`` used; return its model id. Raises NonceError; never succeeds twice."""

        def change(db: sqlite3.Connection) -> tuple[str | None, Any]:
            # One modifying statement (so no savepoint); the SELECT only says why it failed.
            used = db.execute(
                "UPDATE nonces SET used_at=? WHERE nonce=? AND used_at IS NULL AND expires_at>=? "
                "RETURNING model_id",
                (now, nonce, now),
            ).fetchall()
            if len(used) == 1:
                return str(used[0][0]), None
            row = db.execute(
                "SELECT model_id, used_at, expires_at FROM nonces WHERE nonce=?", (nonce,)
            ).fetchone()
            return None, row

        model_id, row = self._write(change, savepoint=False)
        if model_id is not None:
            return str(model_id)
        if row is None:
            raise NonceError(
                "unknown nonce (not issued by this broker, or purged)", reason="nonce_unknown"
            )
        if row[1] is not None:
            raise NonceError("nonce already used", reason="nonce_used")
        raise NonceError("nonce expired", reason="nonce_expired")

    def put_model(self, model: ModelRecord) -> None:
        self._write_statement(
            _statement(
                "INSERT INTO models VALUES (?,?,?,?,?,?,?) ON CONFLICT(model_id) DO UPDATE SET "
                "model_version=excluded.model_version, key_id=excluded.key_id, "
                "wrapped_key=excluded.wrapped_key, policy_json=excluded.policy_json, "
                "policy_digest=excluded.policy_digest, manifest_digest=excluded.manifest_digest",
                (
                    model.model_id,
                    model.model_version,
                    model.key_id,
                    model.wrapped_key,
                    model.policy_json,
                    model.policy_digest,
                    model.manifest_digest,
                ),
            )
        )

    def get_model(self, model_id: str) -> ModelRecord | None:
        row = self._db().execute("SELECT * FROM models WHERE model_id=?", (model_id,)).fetchone()
        return (
            None
            if row is None
            else ModelRecord(
                row[0], int(row[1]), row[2], bytes(row[3]), row[4], row[5], bytes(row[6])
            )
        )

    def put_result(self, result: ResultRecord) -> None:
        self._write_statement(
            _statement(
                "INSERT INTO results VALUES (?,?,?,?,?,?,?)",
                (
                    result.result_id,
                    result.model_id,
                    result.enclave_key_digest,
                    result.nonce,
                    result.status,
                    result.issued_at,
                    result.expires_at,
                ),
            )
        )

    def get_result(self, result_id: str) -> ResultRecord | None:
        row = self._db().execute("SELECT * FROM results WHERE result_id=?", (result_id,)).fetchone()
        return (
            None
            if row is None
            else ResultRecord(row[0], row[1], bytes(row[2]), bytes(row[3]), row[4], row[5], row[6])
        )

    def record_release(self, *, result_id: str, model_id: str, released_at: float) -> None:
        self._write_statement(
            _statement(
                "INSERT INTO releases(result_id, model_id, released_at) VALUES (?,?,?)",
                (result_id, model_id, released_at),
            )
        )

    def claim_release(
        self,
        *,
        result_id: str,
        model_id: str,
        released_at: float,
        entry_leaf: bytes | None = None,
        log_size: int | None = None,
        instance: str | None = None,
    ) -> bool:
        """Record the release of ``result_id`` if none was recorded; False if one was.

        One conditional INSERT under the unique index: of any number of concurrent callers
        exactly one wins, and the claim is durable before the key is sealed, so a crash can
        lose a release but never make two. ``entry_leaf``, ``log_size`` and ``instance``
        (``ReleaseClaim``) let a later broker process find a claim whose log entry was never
        written and drop it (``drop_release_claim``).
        """
        inserted = self._write_statement(
            _statement(
                "INSERT OR IGNORE INTO releases(result_id, model_id, released_at, entry_leaf, "
                "log_size, instance) VALUES (?,?,?,?,?,?)",
                (result_id, model_id, released_at, entry_leaf, log_size, instance),
            )
        )
        return inserted == 1

    def models_wrapped_in_format(self, version: int) -> list[str]:
        """Ids of the models whose data key is wrapped in format ``version`` (its first byte,
        ``agent.broker.keywrap``)."""
        rows = self._db().execute(
            "SELECT model_id FROM models WHERE substr(wrapped_key, 1, 1) = ? ORDER BY model_id",
            (bytes([version]),),
        )
        return [str(r[0]) for r in rows]

    def release_claim(self, result_id: str) -> ReleaseClaim | None:
        """The claim on ``result_id``, if there is one."""
        row = (
            self._db()
            .execute(
                "SELECT entry_leaf, log_size, instance FROM releases WHERE result_id=?",
                (result_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        leaf, size, instance = row
        return ReleaseClaim(
            entry_leaf=bytes(leaf) if leaf is not None else None, log_size=size, instance=instance
        )

    def drop_release_claim(self, *, result_id: str, instance: str) -> bool:
        """Delete the claim on ``result_id`` made by broker process ``instance``; False if there
        is none by it (another caller dropped it first, or it is not that process's)."""
        deleted = self._write_statement(
            _statement(
                "DELETE FROM releases WHERE result_id=? AND instance=?", (result_id, instance)
            )
        )
        return deleted == 1

    def count_releases(self, result_id: str) -> int:
        row = (
            self._db()
            .execute("SELECT COUNT(*) FROM releases WHERE result_id=?", (result_id,))
            .fetchone()
        )
        return int(row[0])

    def claim_refusal(self, *, result_id: str, reason: str, refused_at: float) -> bool:
        """Note that a refusal of ``result_id`` for ``reason`` is being logged; False if one
        already was.

        Bounds the log: at most one ``release_refused`` entry per (result, reason), across
        restarts and replicas sharing this database, however often a caller retries. No
        foreign key to ``results``: an ``unknown_result`` refusal names a result this database
        does not hold. One conditional INSERT, as ``claim_release``.
        """
        inserted = self._write_statement(
            _statement(
                "INSERT OR IGNORE INTO refusals(result_id, reason, refused_at) VALUES (?,?,?)",
                (result_id, reason, refused_at),
            )
        )
        return inserted == 1

    def forget_refusal(self, *, result_id: str, reason: str) -> None:
        """Undo ``claim_refusal`` when its entry could not be logged, so a retry logs it."""
        self._write_statement(
            _statement("DELETE FROM refusals WHERE result_id=? AND reason=?", (result_id, reason))
        )
