"""Attestation log: appends per second with group commit vs one transaction per entry, and the
cost of verifying an inclusion proof vs recomputing the root from every leaf.

Both append runs use the same store code, the same SQLite settings (WAL, synchronous=FULL, so
every commit is an fsync) and the same number of concurrent appenders; only ``max_batch``
differs (1 = one transaction, one checkpoint signature and one fsync per entry). The target
(issue 7) is >= 5,000 appends/s with batching; ``target_ratio`` is that target expressed as a
time ratio against the baseline measured in this run.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.logstore import LogStore
from attest.log.entry import BlobRef, LogEntry, attest_entry
from attest.log.merkle import MerkleTree, leaf_hash, root_from_leaf_hashes, verify_inclusion
from attest.log.note import NoteSigner
from bench.timing import median_seconds, row

TARGET_APPENDS_PER_S = 5000
APPENDERS = 32
GROUP_ENTRIES = 8000
BASELINE_ENTRIES = 800
PROOF_TREE_SIZE = (1 << 16) + 3

_SIGNER = NoteSigner("bench.lessee.test/log", hashlib.sha256(b"bench log key").digest())
_POLICY = b'{"policy":"bench"}'
_EAR = "eyJhbGciOiJFUzI1NiJ9.eyJlYXIiOiJiZW5jaCJ9.c2ln"


def _entry(i: int) -> tuple[LogEntry, list[bytes]]:
    ev = b"evidence %d " % i + bytes(1000)
    return (
        attest_entry(
            at=datetime(2026, 11, 28, tzinfo=UTC),
            nonce=hashlib.sha256(b"%d" % i).digest()[:16],
            binding=hashlib.sha256(b"b%d" % i).digest(),
            policy=BlobRef.of("policy", "application/json", _POLICY),
            verifier="lessee bench",
            result=_EAR,
            evidence=[BlobRef.of("cpu0.report", "application/octet-stream", ev)],
        ),
        [_POLICY, ev],
    )


def _appends_per_second(db: Path, total: int, max_batch: int) -> tuple[float, int]:
    work = [_entry(i) for i in range(total)]  # built up front: measure the store only
    with LogStore(db, _SIGNER, max_batch=max_batch) as store:

        def run(k: int) -> None:
            for entry, blobs in work[k::APPENDERS]:
                store.append(entry, blobs)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(APPENDERS)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        commits = len(store.checkpoints()) - 1
    return total / elapsed, commits


def run() -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as d:
        group_rate, group_commits = _appends_per_second(Path(d) / "group.db", GROUP_ENTRIES, 1024)
        base_rate, _ = _appends_per_second(Path(d) / "base.db", BASELINE_ENTRIES, 1)
    t_group, t_base = 1 / group_rate, 1 / base_rate
    append = row(
        "append_group_commit",
        t_group,
        baseline_name="append_one_txn_per_entry",
        baseline_seconds=t_base,
        appends_per_s=round(group_rate),
        baseline_appends_per_s=round(base_rate),
        speedup=round(group_rate / base_rate, 1),
        mean_batch=round(GROUP_ENTRIES / max(group_commits, 1), 1),
        appenders=APPENDERS,
        target_appends_per_s=TARGET_APPENDS_PER_S,
    )
    target_ratio = (1 / TARGET_APPENDS_PER_S) / t_base
    append |= {
        "target_ratio": round(target_ratio, 3),
        "meets_target": group_rate >= TARGET_APPENDS_PER_S,
    }

    hashes = [leaf_hash(b"%d" % i) for i in range(PROOF_TREE_SIZE)]
    tree = MerkleTree(hashes)
    root = tree.root()
    index = PROOF_TREE_SIZE // 3
    proof = tree.inclusion_proof(index)
    t_verify = median_seconds(
        lambda: verify_inclusion(index, PROOF_TREE_SIZE, hashes[index], proof, root), repeat=500
    )
    t_full = median_seconds(lambda: root_from_leaf_hashes(hashes), repeat=3, warmup=1)
    verify = row(
        "verify_inclusion_proof",
        t_verify,
        baseline_name="recompute_root_from_all_leaves",
        baseline_seconds=t_full,
        tree_size=PROOF_TREE_SIZE,
        proof_nodes=len(proof),
        times_faster=round(t_full / t_verify),
    )
    return [append, verify]
