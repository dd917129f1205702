"""A log store killed with SIGKILL mid-append loses no acknowledged entry and stays consistent."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.logstore import LogStore
from attest.log.checkpoint import verify_checkpoint
from attest.log.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from tests.log.helpers import LOG_SIGNER, make_entry

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 3


def _run_and_kill(db: Path, first: int, rng: random.Random) -> list[tuple[int, int]]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.log.crash_child", str(db), str(first)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.2, 0.8))
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()  # acks printed before the kill are still in the pipe
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    acked = []
    for line in rest.decode().splitlines():
        i, index = line.split()
        acked.append((int(i), int(index)))
    return acked


def test_sigkill_mid_append(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    rng = random.Random(7)
    acked: list[tuple[int, int]] = []
    for round_ in range(ROUNDS):
        got = _run_and_kill(db, round_ * 1_000_000, rng)
        assert got, "the child acknowledged nothing before it was killed"
        acked += got
        # Reopening runs the store's own integrity checks (contiguity, checkpoint = entries).
        with LogStore(db, LOG_SIGNER) as store:
            size = store.size
            assert size >= len(acked)
            rows = {}
            for start in range(0, size, 1000):
                for k, data in enumerate(store.entries(start, min(size, start + 1000))):
                    rows[start + k] = data
            for i, index in acked:
                entry, blobs = make_entry(i)
                assert rows[index] == entry.raw, f"acknowledged entry {i} lost or changed"
                for b in blobs:
                    assert store.blob(hashlib.sha256(b).digest()) == b
            # Every signed root must be the root of the stored entries (recomputed here), and
            # the proofs the recovered store serves -- built from its own stored hashes, not
            # from this recomputation -- must verify against the signed checkpoints, as an
            # auditor holding only the checkpoints would check them.
            tree = MerkleTree([leaf_hash(rows[k]) for k in range(size)])
            notes = store.checkpoints()
            prev = None
            for note in notes:
                cp = verify_checkpoint(note, LOG_SIGNER.verifier()).checkpoint
                assert cp.root_hash == tree.root(cp.size)
                if prev is not None and prev.size > 0:
                    verify_consistency(
                        prev.size,
                        cp.size,
                        store.consistency_proof(prev.size, cp.size),
                        prev.root_hash,
                        cp.root_hash,
                    )
                prev = cp
            assert prev is not None and prev.size == size
            for i, index in acked:
                verify_inclusion(
                    index,
                    size,
                    leaf_hash(make_entry(i)[0].raw),
                    store.inclusion_proof(index, size),
                    prev.root_hash,
                )
            # The log keeps working after the crash.
            entry, blobs = make_entry(round_ * 1_000_000 + 999_999)
            receipt = store.append(entry, blobs)
            assert receipt.index == size
