"""SQLite log store: group commit, receipts, proofs, reopen checks, export (real SQLite)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.logstore import (
    AppendReceipt,
    BlobMissingError,
    LogIntegrityError,
    LogStore,
    LogStoreError,
)
from attest.errors import InputError
from attest.log import merkle
from attest.log.checkpoint import format_checkpoint, verify_checkpoint
from attest.log.entry import BlobRef, LogEntry, attest_entry
from attest.log.merkle import EMPTY_ROOT, leaf_hash
from attest.log.note import sign_note
from tests.log.helpers import EAR, LOG_SIGNER, OTHER_SIGNER, POLICY, T0, make_entry


def _fill(store: LogStore, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        store.append(*make_entry(i))


def test_empty_log_has_signed_empty_checkpoint(tmp_path: Path) -> None:
    with LogStore(tmp_path / "log.db", LOG_SIGNER) as store:
        cp = verify_checkpoint(store.latest_checkpoint(), LOG_SIGNER.verifier()).checkpoint
        assert (cp.origin, cp.size, cp.root_hash) == (LOG_SIGNER.name, 0, EMPTY_ROOT)
        assert store.size == 0


def test_receipt_proves_inclusion(tmp_path: Path) -> None:
    with LogStore(tmp_path / "log.db", LOG_SIGNER) as store:
        _fill(store, 5)
        entry, blobs = make_entry(5)
        r = store.append(entry, blobs)
        assert r.index == 5 and r.tree_size == 6
        cp = verify_checkpoint(r.checkpoint, LOG_SIGNER.verifier()).checkpoint
        assert r.leaf_hash == leaf_hash(entry.raw)
        merkle.verify_inclusion(
            r.index, cp.size, r.leaf_hash, list(r.inclusion_proof), cp.root_hash
        )
        # Read API.
        assert store.entries(5, 6) == [entry.raw]
        assert store.blob(hashlib.sha256(POLICY).digest()) == POLICY
        old = verify_checkpoint(store.checkpoints()[3], LOG_SIGNER.verifier()).checkpoint
        assert old.size == 3
        merkle.verify_consistency(3, 6, store.consistency_proof(3), old.root_hash, cp.root_hash)
        merkle.verify_inclusion(
            1, 3, leaf_hash(make_entry(1)[0].raw), store.inclusion_proof(1, 3), old.root_hash
        )
        with pytest.raises(InputError):
            store.entries(0, 7)
        with pytest.raises(InputError):
            store.inclusion_proof(0, 7)
        with pytest.raises(InputError):
            store.blob(bytes(32))


def test_group_commit_under_concurrency(tmp_path: Path) -> None:
    threads, per_thread = 8, 40
    receipts: list[int] = []
    lock = threading.Lock()
    with LogStore(tmp_path / "log.db", LOG_SIGNER) as store:

        def work(k: int) -> None:
            for j in range(per_thread):
                r = store.append(*make_entry(k * 1000 + j))
                cp = verify_checkpoint(r.checkpoint, LOG_SIGNER.verifier()).checkpoint
                merkle.verify_inclusion(
                    r.index, r.tree_size, r.leaf_hash, list(r.inclusion_proof), cp.root_hash
                )
                with lock:
                    receipts.append(r.index)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        n = threads * per_thread
        assert sorted(receipts) == list(range(n))
        # Group commit: far fewer checkpoints (= transactions) than entries. Each thread waits
        # for its receipt, so a batch holds at most ``threads`` appends; while one commits
        # (fsync) the others queue, giving ~3.5 appends a commit even on a 2-core machine.
        # One per append would be n; at most n/2 means appends really were batched.
        commits = len(store.checkpoints()) - 1
        assert n // threads <= commits <= n // 2, commits


def test_group_commit_takes_every_queued_append(tmp_path: Path) -> None:
    """Appends that arrive while the database is busy all go into the next transaction: the
    writer is held in its BEGIN with a batch of one append (the write lock is taken elsewhere),
    eight more queue behind it, and they are committed together: checkpoints at 0, 1 and 9.
    Waits on the writer and the queue themselves, never on a sleep."""
    threads = 8
    db = tmp_path / "log.db"

    def wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.005)

    with LogStore(db, LOG_SIGNER) as store:
        batches: list[int] = []
        in_commit = threading.Event()
        commit = store._commit  # the writer looks it up on the instance for every batch

        def spy(batch: Sequence[Any]) -> None:
            batches.append(len(batch))
            in_commit.set()
            commit(batch)

        store._commit = spy  # type: ignore[method-assign]
        blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the writer's BEGIN waits (busy timeout 5 s)
            first = threading.Thread(target=store.append, args=make_entry(0))
            first.start()
            assert in_commit.wait(60)  # the writer took it, alone, and is now in its BEGIN
            assert batches == [1]
            ts = [
                threading.Thread(target=store.append, args=make_entry(k))
                for k in range(1, threads + 1)
            ]
            for t in ts:
                t.start()
            wait_for(lambda: store._queue.qsize() == threads)  # all eight queued behind it
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        for t in [first, *ts]:
            t.join()
        assert store.size == threads + 1
        assert batches == [1, threads]
        sizes = [
            verify_checkpoint(c, LOG_SIGNER.verifier()).checkpoint.size for c in store.checkpoints()
        ]
        assert sizes == [0, 1, threads + 1], sizes


def test_baseline_one_transaction_per_entry(tmp_path: Path) -> None:
    with LogStore(tmp_path / "log.db", LOG_SIGNER, max_batch=1) as store:
        _fill(store, 4)
        assert len(store.checkpoints()) == 5  # empty + one per entry


def test_blob_rules(tmp_path: Path) -> None:
    with LogStore(tmp_path / "log.db", LOG_SIGNER) as store:
        entry, blobs = make_entry(0)
        with pytest.raises(BlobMissingError):
            store.append(entry, blobs[:1])  # evidence not supplied, not stored
        with pytest.raises(InputError):
            store.append(entry, [*blobs, b"stray"])
        with pytest.raises(InputError):
            store.append(entry, [POLICY + b" "])
        assert store.size == 0
        store.append(entry, blobs)
        entry2, _ = make_entry(1)
        store.append(entry2)  # the policy is already stored: no need to resend it
        assert store.size == 2


def test_reopen_checks_identity_and_integrity(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    with LogStore(db, LOG_SIGNER) as store:
        _fill(store, 6)
        head = store.latest_checkpoint()
    with LogStore(db, LOG_SIGNER) as store:
        assert store.size == 6 and store.latest_checkpoint() == head
        _fill(store, 1, start=6)
    with pytest.raises(LogIntegrityError):
        LogStore(db, OTHER_SIGNER)
    with pytest.raises(LogIntegrityError):
        LogStore(db, LOG_SIGNER, origin="another.origin/log")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE entries SET leaf_hash = ? WHERE idx = 3", (bytes(32),))
    conn.commit()
    with pytest.raises(LogIntegrityError) as exc:
        LogStore(db, LOG_SIGNER)
    assert exc.value.reason == "store_checkpoint"
    conn.execute("DELETE FROM entries WHERE idx = 2")
    conn.commit()
    conn.close()
    with pytest.raises(LogIntegrityError) as exc:
        LogStore(db, LOG_SIGNER)
    assert exc.value.reason == "store_gap"


def test_closed_store_refuses(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "log.db", LOG_SIGNER)
    store.close()
    store.close()  # idempotent
    with pytest.raises(LogStoreError):
        store.append(*make_entry(0))


def test_export_is_deterministic(tmp_path: Path) -> None:
    with LogStore(tmp_path / "log.db", LOG_SIGNER) as store:
        _fill(store, 7)
        assert store.export_bundle(tmp_path / "a.zip") == 7
        assert store.export_bundle(tmp_path / "b.zip") == 7
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    # The signing key never reaches the database file.
    assert LOG_SIGNER.seed not in (tmp_path / "log.db").read_bytes()


def _blobs_layout(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'blobs'").fetchone()
        schema = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    finally:
        conn.close()
    return f"{bytes(schema[0]).decode()}:{'WITHOUT ROWID' in row[0]}"


def test_layout_1_blobs_table_is_migrated_on_open(tmp_path: Path) -> None:
    """Issue #5: a ``WITHOUT ROWID`` blobs table (layout 1) made every insert read earlier
    blobs back; opening such a database migrates it in one transaction, keeping every row."""
    db = tmp_path / "log.db"
    with LogStore(db, LOG_SIGNER) as store:
        _fill(store, 4)
        head = store.latest_checkpoint()
        digests = {r.sha256 for i in range(4) for r in make_entry(i)[0].blob_refs()}
        stored = {d: store.blob(d) for d in digests}
    assert _blobs_layout(db) == "2:False"
    # Turn it back into layout 1, exactly as version 1 of the store created it.
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(
        "BEGIN;"
        "CREATE TABLE old (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;"
        "INSERT INTO old SELECT sha256, data FROM blobs; DROP TABLE blobs;"
        "ALTER TABLE old RENAME TO blobs;"
        "UPDATE meta SET value = CAST('1' AS BLOB) WHERE key = 'schema'; COMMIT;"
    )
    conn.close()
    assert _blobs_layout(db) == "1:True"
    with LogStore(db, LOG_SIGNER) as store:
        assert store.size == 4 and store.latest_checkpoint() == head
        assert {d: store.blob(d) for d in digests} == stored
        _fill(store, 1, start=4)  # the policy blob is found in the migrated table
        assert store.size == 5
    assert _blobs_layout(db) == "2:False"
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = CAST('3' AS BLOB) WHERE key = 'schema'")
    conn.commit()
    conn.close()
    with pytest.raises(LogIntegrityError) as exc:
        LogStore(db, LOG_SIGNER)
    assert exc.value.reason == "store_schema"


def test_checkpoints_are_byte_identical_to_sign_note(tmp_path: Path) -> None:
    """Issue #5: the writer formats and signs checkpoints without the library's re-parse; every
    note it stores must still be exactly ``sign_note(format_checkpoint(...))`` (Ed25519 is
    deterministic), with the origin apart from the key name, over many group commits."""
    origin = "example.com/lessee-log"
    with LogStore(tmp_path / "log.db", LOG_SIGNER, origin=origin) as store:
        ts = [threading.Thread(target=_fill, args=(store, 9, k * 100)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        notes = store.checkpoints()
        assert notes[-1] == store.latest_checkpoint()
        for note in notes:
            cp = verify_checkpoint(note, LOG_SIGNER.verifier(), expected_origin=origin).checkpoint
            assert cp.root_hash == (EMPTY_ROOT if cp.size == 0 else store._tree.root(cp.size))
            assert note == sign_note(
                format_checkpoint(origin, cp.size, cp.root_hash).text, [LOG_SIGNER]
            )
        assert [verify_checkpoint(n, LOG_SIGNER.verifier()).checkpoint.size for n in notes][
            -1
        ] == 36


def _attest(i: int, evidence: list[bytes]) -> LogEntry:
    return attest_entry(
        at=T0,
        nonce=hashlib.sha256(b"group nonce %d" % i).digest()[:16],
        binding=hashlib.sha256(b"group binding %d" % i).digest(),
        policy=BlobRef.of("policy", "application/json", POLICY),
        verifier="lessee 0.1.0",
        result=EAR,
        evidence=[
            BlobRef.of(f"cpu{k}.report", "application/octet-stream", e)
            for k, e in enumerate(evidence)
        ],
    )


def test_blob_supplied_earlier_in_the_same_group(tmp_path: Path) -> None:
    """A group is written with one ``executemany`` per table, so a request may rely on a blob
    supplied by a request accepted before it *in the same group* (as when each was inserted
    in turn), never on one from a request that group refused."""
    ev_b, ev_f, ev_g = b"evidence B", b"evidence F", b"evidence G"
    db = tmp_path / "log.db"
    with LogStore(db, LOG_SIGNER) as store:
        results: dict[str, object] = {}

        def run(name: str, entry: LogEntry, blobs: list[bytes]) -> None:
            try:
                results[name] = store.append(entry, blobs)
            except BlobMissingError as exc:
                results[name] = exc

        threads: list[threading.Thread] = []

        def start(name: str, entry: LogEntry, blobs: list[bytes], queued: int) -> None:
            t = threading.Thread(target=run, args=(name, entry, blobs))
            t.start()
            threads.append(t)
            while store._queue.qsize() != queued:
                time.sleep(0.001)

        # Stall the writer inside the first request's transaction (it appends to the tree
        # under this lock), then queue the group behind it.
        with store._tree_lock:
            start("first", *make_entry(1), queued=0)
            probe = sqlite3.connect(db, timeout=0)
            while True:
                try:
                    probe.execute("BEGIN IMMEDIATE")
                    probe.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    break  # the writer holds the write lock: "first" is being committed
                time.sleep(0.001)
            probe.close()
            start("b", _attest(1, [ev_b]), [POLICY, ev_b], queued=1)
            start("x", _attest(2, [ev_f, ev_g]), [POLICY, ev_f], queued=2)  # G missing
            start("c", _attest(3, [ev_b]), [], queued=3)  # B from "b", policy stored
            start("d", _attest(4, [ev_f]), [], queued=4)  # F only from refused "x"
        for t in threads:
            t.join()
        b, c = results["b"], results["c"]
        assert isinstance(b, AppendReceipt) and isinstance(c, AppendReceipt)
        assert (b.index, c.index) == (1, 2) and b.tree_size == c.tree_size == 3
        assert isinstance(results["x"], BlobMissingError)
        assert isinstance(results["d"], BlobMissingError)
        assert store.blob(hashlib.sha256(ev_b).digest()) == ev_b
        with pytest.raises(InputError):
            store.blob(hashlib.sha256(ev_f).digest())
        assert len(store.checkpoints()) == 3  # empty, "first", one for the group


def test_opening_a_log_another_store_appends_to_reads_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``export-log`` opens the log.db the broker serves. Opening read the entries and the
    newest checkpoint in two statements, so a batch committed in between made the checkpoint
    newer than the entries: a false ``store_checkpoint`` alarm. Here the serving store appends
    exactly there (when the opener builds its tree); the opener must see one snapshot."""
    import agent.logstore as logstore_module

    db = tmp_path / "log.db"
    with LogStore(db, LOG_SIGNER) as serving:
        for i in range(5):
            serving.append(*make_entry(i))
        real_tree = logstore_module.MerkleTree

        def tree_then_append(hashes: Sequence[bytes]) -> merkle.MerkleTree:
            tree = real_tree(hashes)
            if hashes:  # the opener, between its read of the entries and of the checkpoint
                serving.append(*make_entry(len(hashes)))
            return tree

        monkeypatch.setattr(logstore_module, "MerkleTree", tree_then_append)
        with LogStore(db, LOG_SIGNER) as opened:
            assert opened.size == 5  # the snapshot it read, signed
        monkeypatch.setattr(logstore_module, "MerkleTree", real_tree)
        assert serving.size == 6
    with LogStore(db, LOG_SIGNER) as reopened:
        assert reopened.size == 6


def test_processes_opening_one_fresh_log_at_once_all_succeed(tmp_path: Path) -> None:
    """Two processes on a fresh log.db (a broker's first start and an ``export-log``): the
    first-time rows were check-then-insert in separate statements (a UNIQUE constraint failed
    in the loser) and the WAL switch answered "database is locked" without waiting."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(8):
        db = tmp_path / f"log{round_}.db"
        barrier = ctx.Barrier(3)
        results = ctx.Queue()
        procs = [ctx.Process(target=_open_once, args=(db, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcomes = [results.get(timeout=10) for _ in procs]
        assert outcomes == ["ok"] * 3, outcomes
        with LogStore(db, LOG_SIGNER) as log:
            assert log.size == 0


def _open_once(db: Path, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        LogStore(db, LOG_SIGNER).close()
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")
