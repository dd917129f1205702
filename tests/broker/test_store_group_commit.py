"""Group commit of the broker store (issue #5): concurrent changes share one transaction, a
failing change undoes only itself (statement atomicity for one-statement changes, a savepoint
for the others), and every change is durable before the call that made it returns."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agent.broker.store import (
    MAX_GROUP_COMMIT,
    NONCE_PURGE_AFTER_SECONDS,
    NonceError,
    ResultRecord,
    SqliteBrokerStore,
)

NOW = 1_800_000_000.0


def _run_as_one_group(s: SqliteBrokerStore, calls: list[object]) -> list[object]:
    """Run ``calls`` on threads while the write lock is held, so they queue up and one thread
    then commits them all as a single group; return each call's result or exception."""
    out: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()  # type: ignore[operator]
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    with s._write_lock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(s._pending) < len(calls):
            assert time.monotonic() < deadline, "changes did not queue up"
            time.sleep(0.001)
    for t in threads:
        t.join(10)
    return out


def test_failed_change_leaves_the_rest_of_its_group_intact(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    s.issue_nonce(b"dup", model_id="m", now=NOW, expires_at=NOW + 60)
    calls: list[object] = [
        lambda: s.issue_nonce(b"n0", model_id="m", now=NOW, expires_at=NOW + 60),
        lambda: s.issue_nonce(b"dup", model_id="m", now=NOW, expires_at=NOW + 60),
        lambda: s.consume_nonce(b"dup", now=NOW + 1),
        lambda: s.consume_nonce(b"dup", now=NOW + 1),
        lambda: s.issue_nonce(b"n1", model_id="m", now=NOW, expires_at=NOW + 60),
    ]
    out = _run_as_one_group(s, calls)
    assert out[0] is None and out[4] is None
    assert isinstance(out[1], sqlite3.IntegrityError)  # nonce already issued
    # exactly one of the two consumers of "dup" in the same group wins
    wins = [o for o in out[2:4] if o == "m"]
    losses = [o for o in out[2:4] if isinstance(o, NonceError) and o.reason == "nonce_used"]
    assert len(wins) == 1 and len(losses) == 1
    # the others were committed: a fresh connection sees them
    db = sqlite3.connect(tmp_path / "b.db")
    rows = {bytes(r[0]) for r in db.execute("SELECT nonce FROM nonces")}
    db.close()
    assert rows == {b"dup", b"n0", b"n1"}


def test_failed_multi_statement_change_is_undone_whole(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")

    def half_done(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO nonces(nonce, model_id, issued_at, expires_at) VALUES (?,?,?,?)",
            (b"half", "m", NOW, NOW + 60),
        )
        raise RuntimeError("second step failed")

    calls: list[object] = [
        lambda: s.issue_nonce(b"n0", model_id="m", now=NOW, expires_at=NOW + 60),
        lambda: s._write(half_done),
        lambda: s.issue_nonce(b"n1", model_id="m", now=NOW, expires_at=NOW + 60),
    ]
    out = _run_as_one_group(s, calls)
    assert out[0] is None and out[2] is None and isinstance(out[1], RuntimeError)
    db = sqlite3.connect(tmp_path / "b.db")
    rows = {bytes(r[0]) for r in db.execute("SELECT nonce FROM nonces")}
    db.close()
    assert rows == {b"n0", b"n1"}


def test_claim_release_once_within_one_group(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    s.put_result(ResultRecord("r1", "m", bytes(32), b"n", "affirming", NOW, NOW + 60))
    calls: list[object] = [
        (lambda: s.claim_release(result_id="r1", model_id="m", released_at=NOW)) for _ in range(10)
    ]
    out = _run_as_one_group(s, calls)
    assert out.count(True) == 1 and out.count(False) == 9
    assert s.count_releases("r1") == 1


def test_groups_are_bounded(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    n = MAX_GROUP_COMMIT * 2 + 3
    calls: list[object] = [
        (lambda i=i: s.issue_nonce(i.to_bytes(4, "big"), model_id="m", now=NOW, expires_at=NOW + 9))
        for i in range(n)
    ]
    out = _run_as_one_group(s, calls)
    assert out == [None] * n
    assert not s._pending
    assert s.consume_nonce((n - 1).to_bytes(4, "big"), now=NOW) == "m"


def test_change_is_durable_when_the_call_returns(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    other = sqlite3.connect(tmp_path / "b.db")
    for i in range(20):
        s.issue_nonce(bytes([i]), model_id="m", now=NOW, expires_at=NOW + 60)
        assert other.execute("SELECT COUNT(*) FROM nonces").fetchone()[0] == i + 1
    other.close()


def test_purge_runs_at_most_once_per_interval_and_still_purges(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    s.issue_nonce(b"old", model_id="m", now=NOW, expires_at=NOW + 1)
    later = NOW + NONCE_PURGE_AFTER_SECONDS + 10
    s.issue_nonce(b"new", model_id="m", now=later, expires_at=later + 60)
    with pytest.raises(NonceError) as e:
        s.consume_nonce(b"old", now=later)
    assert e.value.reason == "nonce_unknown"  # purged
    assert s.consume_nonce(b"new", now=later) == "m"


def test_a_clock_stepped_back_does_not_stop_the_purge(tmp_path: Path) -> None:
    """One reading from a year ahead set the next purge a year ahead: after the clock stepped
    back (NTP correcting an RTC) nothing was purged until it caught up."""
    s = SqliteBrokerStore(tmp_path / "b.db")
    year = 365 * 24 * 3600.0
    s.issue_nonce(b"ahead", model_id="m", now=NOW + year, expires_at=NOW + year + 60)
    s.issue_nonce(b"old", model_id="m", now=NOW, expires_at=NOW + 1)
    later = NOW + NONCE_PURGE_AFTER_SECONDS + 10  # still far behind the reading a year ahead
    s.issue_nonce(b"new", model_id="m", now=later, expires_at=later + 60)
    with pytest.raises(NonceError) as e:
        s.consume_nonce(b"old", now=later)
    assert e.value.reason == "nonce_unknown"  # purged
    assert s.consume_nonce(b"new", now=later) == "m"


def test_many_threads_single_use(tmp_path: Path) -> None:
    s = SqliteBrokerStore(tmp_path / "b.db")
    nonces = [i.to_bytes(2, "big") for i in range(100)]
    for n in nonces:
        s.issue_nonce(n, model_id="m", now=NOW, expires_at=NOW + 60)
    wins: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        for n in nonces:
            try:
                s.consume_nonce(n, now=NOW + 1)
            except NonceError:
                continue
            with lock:
                wins.append(n)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == nonces
