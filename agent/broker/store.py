"""Broker state: single-use nonces, registered models (wrapped data keys + policies), results
and releases. SQLite by default (WAL, synchronous=FULL), behind ``BrokerStore`` so a PostgreSQL
backend can serve several stateless broker replicas later.

Restart safety: every state change is one transaction that commits before the caller acts on
it. Nonce consumption is a single conditional UPDATE, so a nonce is accepted at most once even
with concurrent callers or a crash right after (the consumed mark is durable before Attest
proceeds). Times are POSIX seconds passed in by the caller.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from attest.errors import VerificationError

#: Expired nonces older than this are purged (keeps the table small; they can never be used).
NONCE_PURGE_AFTER_SECONDS = 24 * 3600


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
    def claim_release(self, *, result_id: str, model_id: str, released_at: float) -> bool: ...
    def count_releases(self, result_id: str) -> int: ...


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
  model_id TEXT NOT NULL, released_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS releases_one_per_result ON releases(result_id);
"""


class SqliteBrokerStore:
    """SQLite implementation; one connection per thread, WAL mode, full sync."""

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def issue_nonce(self, nonce: bytes, *, model_id: str, now: float, expires_at: float) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM nonces WHERE expires_at < ?", (now - NONCE_PURGE_AFTER_SECONDS,)
            )
            db.execute(
                "INSERT INTO nonces(nonce, model_id, issued_at, expires_at) VALUES (?,?,?,?)",
                (nonce, model_id, now, expires_at),
            )

    def consume_nonce(self, nonce: bytes, *, now: float) -> str:
        """Mark ``nonce`` used; return its model id. Raises NonceError; never succeeds twice."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE nonces SET used_at=? WHERE nonce=? AND used_at IS NULL AND expires_at>=?",
                (now, nonce, now),
            )
            row = db.execute(
                "SELECT model_id, used_at, expires_at FROM nonces WHERE nonce=?", (nonce,)
            ).fetchone()
        if cur.rowcount == 1 and row is not None:
            return str(row[0])
        if row is None:
            raise NonceError(
                "unknown nonce (not issued by this broker, or purged)", reason="nonce_unknown"
            )
        if row[1] is not None:
            raise NonceError("nonce already used", reason="nonce_used")
        raise NonceError("nonce expired", reason="nonce_expired")

    def put_model(self, model: ModelRecord) -> None:
        with self._tx() as db:
            db.execute(
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
        with self._tx() as db:
            db.execute(
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

    def get_result(self, result_id: str) -> ResultRecord | None:
        row = self._db().execute("SELECT * FROM results WHERE result_id=?", (result_id,)).fetchone()
        return (
            None
            if row is None
            else ResultRecord(row[0], row[1], bytes(row[2]), bytes(row[3]), row[4], row[5], row[6])
        )

    def record_release(self, *, result_id: str, model_id: str, released_at: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO releases(result_id, model_id, released_at) VALUES (?,?,?)",
                (result_id, model_id, released_at),
            )

    def claim_release(self, *, result_id: str, model_id: str, released_at: float) -> bool:
        """Record the release of ``result_id`` if none was recorded; False if one was.

        One conditional INSERT under the unique index: of any number of concurrent callers (or
        broker replicas on one database) exactly one wins, and the claim is durable before the
        key is sealed, so a crash can lose a release but never make two.
        """
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO releases(result_id, model_id, released_at) VALUES (?,?,?)",
                (result_id, model_id, released_at),
            )
        return cur.rowcount == 1

    def count_releases(self, result_id: str) -> int:
        row = (
            self._db()
            .execute("SELECT COUNT(*) FROM releases WHERE result_id=?", (result_id,))
            .fetchone()
        )
        return int(row[0])
