"""Sealed weights: sealing and loading throughput against raw AES-256-GCM, in one run.

Rows (``ratio`` = our seconds / baseline seconds, so lower is better):

* ``sealed_load_np_2t``: ``agent.loader.numpy.load_model`` (2 threads) vs raw 2-thread
  ``AESGCM.decrypt_into`` of the same bytes into a fresh buffer, 1 MiB chunks.
  Target: at least 0.5x the raw throughput (ratio <= 2.0).
* ``sealed_load_np_2t_vs_1t``: the same load on 2 threads vs 1 (target >= 1.6x: ratio <= 0.625),
  the two timed alternately on warmed memory (``PEER_REPEAT`` pairs, as the peer rows below):
  timed one after the other, five runs each, a neighbour's burst on one side moved this ratio
  from 0.58 to 0.67.
* ``seal_2t``: ``seal_model`` (read plaintext, encrypt, write) vs raw 2-thread ``encrypt_into``
  (target >= 0.5x: ratio <= 2.0).
* ``sealed_load_peak_rss``: peak RSS of a fresh process that loads the model (target: at most
  plaintext + 10% + 64 MiB).
* The peer, CoreWeave ``tensorizer`` (a benchmark-only dependency: ``pip install tensorizer``,
  which needs ``torch``; never imported by the packages), on the same tensors, in the same run:

  * ``tensorizer_encrypted_serialize`` / ``tensorizer_encrypted_load``: its encrypted
    ``TensorSerializer.write_state_dict`` (from torch tensors already in memory) and
    ``TensorDeserializer(..., encryption=DecryptionParams.from_key(key))`` of every tensor
    onto the CPU, with the peer's default thread pools (one per CPU of the cgroup);
  * ``sealed_load_np_2t_vs_tensorizer``: our 2-thread sealed load into numpy vs the peer's
    encrypted load (target: at least 3x as fast, ratio <= 0.333), the two timed alternately
    (``PEER_REPEAT`` pairs), each run started on warmed memory (see ``_warm_memory``);
    ``cpu_ms``/``baseline_cpu_ms`` are each side's median CPU time in those pairs, and the load
    row's ``peer_config`` says how the peer ran (its defaults). The same pairs timed without
    the warming are reported beside them (``unwarmed_*``);
  * ``seal_2t_vs_tensorizer``: ``seal_model`` vs the peer's encrypted serialize (no target;
    ours also reads the plaintext from the files, the peer starts from memory).

  When ``tensorizer`` (or ``torch``, or its libsodium) is not importable, the same four rows
  say ``not measured (pip install tensorizer)``.

Size: ``LESSEE_BENCH_SEAL_MIB`` (default 1024, the size of issue #4's reference figures) of
float32 tensors, 16 MiB each, files fsynced after writing and served from the page cache.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.timing import median_seconds, row

MIB = 1 << 20
TENSOR_MIB = 16
CHUNK = 1 * MIB
REPEAT = int(os.environ.get("LESSEE_BENCH_SEAL_REPEAT", "5"))
#: Alternating ours/peer pairs for the tensorizer rows: more than REPEAT, because on a shared
#: 2-core machine a neighbour's burst can still hit one side of a pair; the median absorbs it.
#: 15, not 9: with 9, the median of either side still moved by 10-20% between runs.
PEER_REPEAT = int(os.environ.get("LESSEE_BENCH_SEAL_PEER_REPEAT", "15"))
MODEL_ID = "bench/sealed"

#: The child reads VmHWM (this process image's peak RSS), not ru_maxrss: Linux carries
#: ru_maxrss across exec, so a child would report its parent's peak.
_RSS_CHILD = """
import json, sys
from agent.loader import numpy as lnp
key = bytes.fromhex(sys.argv[2])
sd = lnp.load_model(sys.argv[1], key, model_id=sys.argv[3], model_version=1, threads=2)
total = sum(a.nbytes for a in sd.values())
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"peak_kib": int(hwm), "bytes": total}))
"""


def _settle(*paths: Path) -> None:
    """fsync every file under ``paths`` before timing anything that reads them.

    Files just written are dirty in the page cache; their writeback (kernel threads, disk
    I/O) would start ~30 s later, in the middle of some timed run. Synced, every input of
    either side is clean and cached: both sides read from the page cache in the same state.
    """
    for root in paths:
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def _cpu_seconds() -> float:
    """User + system CPU time of this process, every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _size_mib() -> int:
    return max(TENSOR_MIB, int(os.environ.get("LESSEE_BENCH_SEAL_MIB", "1024")))


def _make_model(path: Path, total_mib: int) -> int:
    from safetensors.numpy import save_file

    path.mkdir()
    rng = np.random.default_rng(0)
    per_shard = 4
    n = total_mib // TENSOR_MIB
    for shard_idx, first in enumerate(range(0, n, per_shard)):
        tensors = {
            f"layer{i}.weight": rng.standard_normal(TENSOR_MIB * MIB // 4, dtype=np.float32)
            for i in range(first, min(n, first + per_shard))
        }
        save_file(tensors, path / f"model-{shard_idx:05d}.safetensors")
    return sum(p.stat().st_size for p in path.iterdir())


def _raw(buf_len: int, threads: int, *, encrypt: bool) -> float:
    """Median seconds for raw AES-256-GCM over ``buf_len`` bytes in 1 MiB chunks."""
    aead = AESGCM(bytes(32))
    pt = np.random.default_rng(1).integers(0, 255, CHUNK, dtype=np.uint8).tobytes()
    ct = aead.encrypt(bytes(12), pt, b"")
    n = buf_len // CHUNK

    def once() -> None:
        if encrypt:
            src = np.empty(buf_len, np.uint8)
            src[:] = 1  # the plaintext has to exist, as a file read would make it
            out = np.empty(buf_len + n * 16, np.uint8)
            mv, sv = out.data, src.data

            def work(idx: range) -> None:
                for i in idx:
                    aead.encrypt_into(
                        bytes(12),
                        sv[i * CHUNK : (i + 1) * CHUNK],
                        b"",
                        mv[i * (CHUNK + 16) : (i + 1) * (CHUNK + 16)],
                    )
        else:
            out = np.empty(buf_len, np.uint8)
            mv = out.data

            def work(idx: range) -> None:
                for i in idx:
                    aead.decrypt_into(bytes(12), ct, b"", mv[i * CHUNK : (i + 1) * CHUNK])

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(work, [range(t, n, threads) for t in range(threads)]))

    return median_seconds(once, repeat=REPEAT, warmup=1)


def _peak_rss(sealed: Path, key: bytes) -> dict[str, object]:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(sealed), key.hex(), MODEL_ID],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    peak = doc["peak_kib"] * 1024
    plaintext = doc["bytes"]
    limit = plaintext * 1.1 + 64 * MIB
    return {
        "name": "sealed_load_peak_rss",
        "peak_rss_mib": round(peak / MIB, 1),
        "plaintext_mib": round(plaintext / MIB, 1),
        "limit_mib": round(limit / MIB, 1),
        "ratio": round(peak / limit, 3),
        "target_ratio": 1.0,
        "meets_target": peak <= limit,
    }


#: The rows the peer comparison produces, measured or not, so a reader sees the same names.
TENSORIZER_ROWS = (
    "tensorizer_encrypted_serialize",
    "tensorizer_encrypted_load",
    "sealed_load_np_2t_vs_tensorizer",
    "seal_2t_vs_tensorizer",
)
#: tensorizer's encrypted load, 1 GiB of float32 from page cache on 2 cores, as issue #4 states it.
TENSORIZER_REFERENCE_GBPS = 1.28
NOT_MEASURED = "not measured (pip install tensorizer)"


def _tensorizer() -> tuple[Any, Any] | None:
    """The peer's modules (tensorizer, torch), or None when it cannot run here.

    Imported lazily: tensorizer is a benchmark peer only, and it needs torch and libsodium.
    """
    try:
        import tensorizer
        import torch
        from tensorizer import _crypt
    except ImportError:
        return None
    if not _crypt.available:  # libsodium missing: tensorizer cannot encrypt at all
        return None
    return tensorizer, torch


def _warm_memory(nbytes: int) -> None:
    """Fault in ``nbytes`` of anonymous memory and free it, so the next allocation of that size
    finds memory the guest kernel holds, not memory the host took back.

    This VM reports free memory to its host (virtio-balloon free page reporting): about two
    seconds after a block of 2 MiB or more is freed, the host discards it, and the next touch
    of each page is a host fault (measured here: 1 GiB of such memory costs 0.4-1.2 s of system
    time instead of 0.15-0.2 s). Only blocks of 2 MiB or more are reported, so the cost falls
    on allocations that take whole blocks: our loader's arrays (numpy asks for transparent huge
    pages for large arrays) pay it, the peer's 4 KiB pages mostly come from unreported smaller
    blocks and do not. Which side pays then depends on what ran before it and how long ago,
    not on the loader. Warming before each timed run of either side takes that out: the timed
    run still allocates and faults in every page of its output, from memory in the same state
    for both sides. The peer's time is unchanged by it (measured: 0.57-0.74 s either way); the
    pairs without it are reported too.
    """
    if nbytes <= 0:
        return
    buf = np.empty(nbytes, dtype=np.uint8)
    buf[::4096] = 1  # one write per 4 KiB page faults in all of it
    del buf


def _paired(
    ours: Callable[[], object], peer: Callable[[], object], *, warm_bytes: int = 0
) -> tuple[float, float, float, float]:
    """Median seconds of ``ours`` and ``peer``, timed alternately, one warm-up each; then the
    median CPU seconds (every thread of this process) of each side's timed runs.

    The bench machine is shared: timing one side's five runs and then the other's lets a
    neighbour's burst land on one side only. Alternating puts both under the same load. The
    CPU time is for reading a noisy run: a neighbour stretches wall time, not CPU time.
    ``warm_bytes``: memory warmed (``_warm_memory``, untimed) before every timed run.
    """
    ours()
    peer()
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(PEER_REPEAT):
        for side, fn in enumerate((ours, peer)):
            _warm_memory(warm_bytes)
            c0 = _cpu_seconds()
            start = time.perf_counter()
            fn()
            wall[side].append(time.perf_counter() - start)
            cpu[side].append(_cpu_seconds() - c0)
    return (
        statistics.median(wall[0]),
        statistics.median(wall[1]),
        statistics.median(cpu[0]),
        statistics.median(cpu[1]),
    )


def _tensorizer_rows(
    model: Path,
    work: Path,
    total: int,
    *,
    our_load: Callable[[], object],
    our_seal: Callable[[], object],
    warm: int,
) -> list[dict[str, object]]:
    """The peer's encrypted serialize and load of the model's tensors, and our ratios to it.

    Our load and seal are timed again here, alternating with the peer's (see ``_paired``),
    so the ratio rows compare runs made under the same machine load.
    """
    peer = _tensorizer()
    if peer is None:
        return [{"name": n, "measured": False, "why": NOT_MEASURED} for n in TENSORIZER_ROWS]
    tensorizer, torch = peer
    from safetensors.torch import load_file as st_load
    from tensorizer import (
        DecryptionParams,
        EncryptionParams,
        TensorDeserializer,
        TensorSerializer,
    )

    key = bytes(range(32))  # the same public bench key as ours; raw key, no Argon2 cost
    tensors: dict[str, Any] = {}
    for shard in sorted(model.glob("*.safetensors")):
        tensors |= st_load(shard)
    path = work / "peer.tensors"

    def serialize(dst: Path) -> None:
        ser = TensorSerializer(str(dst), encryption=EncryptionParams(key))
        ser.write_state_dict(tensors)
        ser.close()

    def serialize_once() -> None:
        dst = work / f"peer-{time.monotonic_ns()}.tensors"
        serialize(dst)
        dst.unlink()

    config: dict[str, object] = {}

    def load() -> dict[str, Any]:
        # Its defaults are its fastest setting here: num_readers=None picks 8 reader threads
        # for a local file (1, 2 and 4 were measured slower on this machine, 16 the same),
        # decryption runs on a pool of one thread per CPU, lazy_load and verify_hash are off.
        dec = DecryptionParams.from_key(key)
        with TensorDeserializer(str(path), device="cpu", encryption=dec) as d:
            config.setdefault("num_readers", getattr(d, "_num_readers", None))
            return {name: d[name] for name in d}

    serialize(path)
    _settle(path)
    loaded = load()  # once untimed: the peer must really return our tensors, byte for byte
    if set(loaded) != set(tensors) or not all(
        torch.equal(loaded[n].detach(), tensors[n]) for n in tensors
    ):
        raise RuntimeError("tensorizer did not round-trip the bench tensors")
    del loaded
    load2, load_s, load2_cpu, load_cpu = _paired(our_load, load, warm_bytes=warm)
    cold2, cold_s, cold2_cpu, cold_cpu = _paired(our_load, load)
    seal2, ser_s, _, _ = _paired(our_seal, serialize_once, warm_bytes=warm)
    config |= {
        "decryption_threads": tensorizer.serialization.cpu_count,
        "lazy_load": False,
        "verify_hash": False,
        "device": "cpu",
    }
    gb = total / 1e9
    version = str(tensorizer.__version__)
    return [
        row(
            "tensorizer_encrypted_serialize",
            ser_s,
            gbps=round(gb / ser_s, 2),
            tensorizer_version=version,
        ),
        row(
            "tensorizer_encrypted_load",
            load_s,
            gbps=round(gb / load_s, 2),
            reference_gbps_issue=TENSORIZER_REFERENCE_GBPS,
            tensorizer_version=version,
            cpu_ms=round(load_cpu * 1e3, 1),
            peer_config=config,
        ),
        row(
            "sealed_load_np_2t_vs_tensorizer",
            load2,
            baseline_name="tensorizer_encrypted_load",
            baseline_seconds=load_s,
            target_ratio=round(1 / 3, 3),
            gbps=round(gb / load2, 2),
            speedup=round(load_s / load2, 2),
            cpu_ms=round(load2_cpu * 1e3, 1),
            baseline_cpu_ms=round(load_cpu * 1e3, 1),
            warmed_mib=round(warm / MIB),
            unwarmed_ratio=round(cold2 / cold_s, 3),
            unwarmed_ms=round(cold2 * 1e3, 1),
            unwarmed_baseline_ms=round(cold_s * 1e3, 1),
            unwarmed_cpu_ms=round(cold2_cpu * 1e3, 1),
            unwarmed_baseline_cpu_ms=round(cold_cpu * 1e3, 1),
        ),
        row(
            "seal_2t_vs_tensorizer",
            seal2,
            baseline_name="tensorizer_encrypted_serialize",
            baseline_seconds=ser_s,
            gbps=round(gb / seal2, 2),
            speedup=round(ser_s / seal2, 2),
        ),
    ]


def run() -> list[dict[str, object]]:
    from agent.loader import numpy as lnp
    from agent.loader import seal_model

    size_mib = _size_mib()
    tmp = Path(tempfile.mkdtemp(prefix="lessee-bench-seal-"))
    rows: list[dict[str, object]] = []
    try:
        model = tmp / "model"
        total = _make_model(model, size_mib)
        key = bytes(range(32))
        counter = iter(range(1 << 30))
        lock = threading.Lock()

        def rng(n: int) -> bytes:
            with lock:
                return next(counter).to_bytes(n, "big")

        def seal_once() -> None:
            out = tmp / f"sealed-{time.monotonic_ns()}"
            seal_model(model, out, key, model_id=MODEL_ID, model_version=1, rng=rng, threads=2)
            shutil.rmtree(out)

        def load(threads: int) -> None:
            lnp.load_model(sealed, key, model_id=MODEL_ID, model_version=1, threads=threads)

        sealed = tmp / "sealed"
        seal_model(model, sealed, key, model_id=MODEL_ID, model_version=1, rng=rng, threads=2)
        _settle(model, sealed)
        gb = total / 1e9
        raw_dec2 = _raw(total, 2, encrypt=False)
        raw_dec1 = _raw(total, 1, encrypt=False)
        raw_enc2 = _raw(total, 2, encrypt=True)
        load2 = median_seconds(lambda: load(2), repeat=REPEAT, warmup=1)
        warm = total + total // 4  # each side's buffers and allocator slack besides
        paired2, paired1, _, _ = _paired(lambda: load(2), lambda: load(1), warm_bytes=warm)
        seal2 = median_seconds(seal_once, repeat=REPEAT, warmup=1)
        rows.append(
            row(
                "sealed_load_np_2t",
                load2,
                baseline_name="raw_aesgcm_decrypt_into_2t",
                baseline_seconds=raw_dec2,
                target_ratio=2.0,
                size_mib=round(total / MIB),
                gbps=round(gb / load2, 2),
                baseline_gbps=round(gb / raw_dec2, 2),
                raw_1t_gbps=round(gb / raw_dec1, 2),
            )
        )
        rows.append(
            row(
                "sealed_load_np_2t_vs_1t",
                paired2,
                baseline_name="sealed_load_np_1t",
                baseline_seconds=paired1,
                target_ratio=round(1 / 1.6, 3),
                speedup=round(paired1 / paired2, 2),
                pairs=PEER_REPEAT,
            )
        )
        rows.append(
            row(
                "seal_2t",
                seal2,
                baseline_name="raw_aesgcm_encrypt_into_2t",
                baseline_seconds=raw_enc2,
                target_ratio=2.0,
                gbps=round(gb / seal2, 2),
                baseline_gbps=round(gb / raw_enc2, 2),
            )
        )
        rows.append(_peak_rss(sealed, key))
        rows.extend(
            _tensorizer_rows(
                model, tmp, total, our_load=lambda: load(2), our_seal=seal_once, warm=warm
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
