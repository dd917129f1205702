"""Key broker under load: Challenge + Attest + ReleaseKey flows per second over real gRPC.

Setup: a broker in its own process (``lessee broker serve`` on loopback, real SQLite with WAL and
``synchronous=FULL``, emulation roots offered as candidates), one model registered with the demo
policy. A load generator in another process runs ``CLIENTS`` concurrent clients for
``DURATION_S`` seconds; each flow makes a fresh enclave key pair, gets a nonce, produces emulated
evidence bound to it (SNP report + Hopper SPDM report, signed per flow; the certificate chain,
RIMs and stapled OCSP answers are made once: "warm caches"), attests, asks for the key and opens
it. Baseline, measured in the same run: one client, flows back to back.

Reported per run: flows (attestations with release) per second, p50/p99 flow latency, errors,
double-used nonces, and where the CPU went during the timed window: CPU milliseconds per flow
and cores busy, in the broker process (all threads, and its Python threads alone: those share
one GIL, so Python cores near 1.0 mean one broker process is at its limit) and in the load
generator. The last is measured, not assumed: every nonce the clients saw affirmed
is replayed once after the run (each replay must be refused) and the broker's database must show
one result per nonce and at most one release per result. Target (issue 5): >= 200 flows/s with
64 clients on a 2-core machine, zero errors, zero double-used nonces.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TARGET_FLOWS_PER_S = 200
CLIENTS = 64
DURATION_S = 10.0
BASELINE_DURATION_S = 3.0
MODEL = "bench-model"
#: Nonces replayed after the run to check single use (all of them, up to this many).
MAX_REPLAYS = 2000
#: Broker server threads (``broker serve --workers``). The broker's Python work is serialised
#: by the GIL, so threads beyond what overlaps its waits (SQLite and log fsyncs) only add GIL
#: hand-offs and unfair wake-ups: on the 2-core machine 4-16 workers served ~5-10% more flows
#: than 64 with a p99 of ~0.6 s instead of ~2.5 s (64 clients; numbers in the issue #5 report).
BROKER_WORKERS = 8
#: Thread names of gRPC's C core in the broker process; every other thread runs Python.
_GRPC_CORE_THREADS = ("event_engine", "grpc_global_tim", "lifeguard")


def _start_broker(state: Path, pki_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli.main", "broker", "serve", "--state", str(state),
         "--listen", "127.0.0.1:0", "--trust-emulation", str(pki_dir), "--workers", str(BROKER_WORKERS)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"broker did not start: {line!r}")
    target = line.split("listening on ", 1)[1].split()[0]
    return proc, target


def _register(target: str, pki_dir: Path) -> None:
    from agent.agent import call_broker, open_channel
    from agent.demo import demo_policy
    from agent.emulation import EmulationPki
    from agent.rpc.v1 import broker_pb2, broker_pb2_grpc

    roots = list(EmulationPki.load(pki_dir).root_fingerprints().values())
    policy = demo_policy(roots, "00" * 32)
    with open_channel(target) as ch:
        admin = broker_pb2_grpc.BrokerAdminStub(ch)  # type: ignore[no-untyped-call]
        call_broker(
            "RegisterModel",
            admin.RegisterModel,
            broker_pb2.RegisterModelRequest(
                model_id=MODEL,
                model_version=1,
                data_key=bytes(range(32)),
                policy_json=json.dumps(policy),
                manifest_digest=bytes(32),
            ),
            30.0,
        )


def _load(target: str, pki_dir: str, clients: int, duration: float, out: Any) -> None:
    """The load generator (its own process): ``clients`` threads, each running flows."""
    from datetime import UTC, datetime

    import grpc

    from agent.agent import EMULATED_LAUNCH_MEASUREMENT, open_channel
    from agent.emulation import EmulatedGpu, EmulatedSnp, EmulationPki
    from agent.rpc import convert
    from agent.rpc.v1 import broker_pb2, broker_pb2_grpc
    from attest.binding import DeviceState, derive_session_binding
    from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn
    from sealing.hpke_suite import generate_keypair
    from sealing.keyrelease import open_data_key

    pki = EmulationPki.load(pki_dir)
    gpu = EmulatedGpu(pki)
    snp = EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)
    chain, rims = gpu.certificate_chain_pem(), (gpu.driver_rim(), gpu.vbios_rim())
    ocsp = gpu.ocsp_responses(datetime.now(UTC))
    snp_certs = snp.certificates()
    snp_crl = snp.crl(datetime.now(UTC))  # AMD's CRL, signed by the emulated ARK, made once
    channel = open_channel(target)
    stub = broker_pb2_grpc.KeyBrokerStub(channel)  # type: ignore[no-untyped-call]
    lock = threading.Lock()
    latencies: list[float] = []
    nonces: list[str] = []
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + duration

    def flow() -> None:
        t0 = time.perf_counter()
        sk = generate_keypair()
        pk = sk.public_key.encode()
        ch = stub.Challenge(broker_pb2.ChallengeRequest(model_id=MODEL), timeout=60)
        # The flags first, as the agent reads them before it asks for reports: a version-2
        # label (the broker's default) binds them.
        state = DeviceState(cc_mode_on=True, devtools_on=False, gpus=1, switches=0)
        b = derive_session_binding(ch.nonce, pk, ch.protocol_label, state)
        bundle = EvidenceBundle(
            cpu=SnpEvidenceIn(snp.report(b.report_data), snp_certs, crl=snp_crl),
            gpus=(DeviceEvidenceIn("HOPPER", gpu.report(b.gpu_nonce), chain, ocsp, rims),),
            cc_mode_on=state.cc_mode_on,
            devtools_on=state.devtools_on,
        )
        req = convert.attest_request_to_proto(
            nonce=ch.nonce, enclave_public_key=pk, model_id=MODEL, bundle=bundle
        )
        reply = stub.Attest(req, timeout=60)
        if reply.status != "affirming":
            raise RuntimeError("not affirming")
        rel = stub.ReleaseKey(
            broker_pb2.ReleaseKeyRequest(result=reply.result, model_id=MODEL), timeout=60
        )
        import base64

        payload = reply.result.split(".")[1]
        jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
        open_data_key(sk, rel.sealed_key, model_id=MODEL, model_version=rel.model_version,
                      key_id=rel.key_id, result_id=jti)  # fmt: skip
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)
            nonces.append(ch.nonce.hex())

    def worker() -> None:
        while time.monotonic() < stop_at:
            try:
                flow()
            except Exception as exc:
                key = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
                with lock:
                    errors[key] = errors.get(key, 0) + 1

    out.put({"phase": "start"})
    start = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out.put({"phase": "done"})
    load_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    # Single use, measured: replay every affirmed nonce once; each must be refused.
    accepted_twice = 0
    for nonce_hex in nonces[:MAX_REPLAYS]:
        sk = generate_keypair()
        try:
            stub.Attest(
                broker_pb2.AttestRequest(
                    nonce=bytes.fromhex(nonce_hex),
                    enclave_public_key=sk.public_key.encode(),
                    model_id=MODEL,
                    evidence=broker_pb2.AttestRequest().evidence,
                ),
                timeout=60,
            )
            accepted_twice += 1  # any answer but a refusal means the nonce was accepted again
        except grpc.RpcError:
            pass
    channel.close()
    out.put(
        {
            "latencies": latencies,
            "errors": errors,
            "elapsed": elapsed,
            "nonces": len(nonces),
            "distinct_nonces": len(set(nonces)),
            "replays": min(len(nonces), MAX_REPLAYS),
            "replays_accepted": accepted_twice,
            "load_cpu_s": load_cpu,
        }
    )


def _broker_cpu(pid: int) -> tuple[float, float]:
    """(all threads, Python threads) CPU seconds of process ``pid`` so far (Linux /proc)."""
    total = python = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    task_dir = Path(f"/proc/{pid}/task")
    for task in task_dir.iterdir() if task_dir.is_dir() else ():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        total += seconds
        if not name.startswith(_GRPC_CORE_THREADS):
            python += seconds
    return total, python


def _run_load(
    target: str, pki_dir: Path, clients: int, duration: float, broker_pid: int
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load, args=(target, str(pki_dir), clients, duration, q))
    p.start()
    assert q.get(timeout=300)["phase"] == "start"
    before = _broker_cpu(broker_pid)
    assert q.get(timeout=duration + 300)["phase"] == "done"
    after = _broker_cpu(broker_pid)
    result: dict[str, Any] = q.get(timeout=300)
    p.join(timeout=60)
    result["broker_cpu_s"] = after[0] - before[0]
    result["broker_python_cpu_s"] = after[1] - before[1]
    return result


def _db_double_use(state: Path) -> int:
    db = sqlite3.connect(state / "broker.db")
    try:
        dup_nonce = db.execute(
            "SELECT COUNT(*) FROM (SELECT nonce FROM results GROUP BY nonce HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        dup_release = db.execute(
            "SELECT COUNT(*) FROM (SELECT result_id FROM releases GROUP BY result_id "
            "HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    finally:
        db.close()
    return int(dup_nonce) + int(dup_release)


def _row(
    name: str, r: dict[str, Any], baseline: dict[str, Any] | None, db_dups: int
) -> dict[str, object]:
    lat = sorted(r["latencies"])
    n = len(lat)
    rate = n / r["elapsed"] if r["elapsed"] else 0.0
    out: dict[str, object] = {
        "name": name,
        "flows_per_s": round(rate, 1),
        "flows": n,
        "p50_ms": round(statistics.median(lat) * 1e3, 1) if lat else None,
        "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1e3, 1) if lat else None,
        "errors": sum(r["errors"].values()),
        "error_kinds": r["errors"],
        "double_used_nonces": r["replays_accepted"]
        + (r["nonces"] - r["distinct_nonces"])
        + db_dups,
        "replays_checked": r["replays"],
        "cpus": os.cpu_count(),
        "broker_workers": BROKER_WORKERS,
    }
    if n and r["elapsed"]:
        out |= {
            "broker_cpu_ms_per_flow": round(r["broker_cpu_s"] / n * 1e3, 2),
            "broker_python_cpu_ms_per_flow": round(r["broker_python_cpu_s"] / n * 1e3, 2),
            "loadgen_cpu_ms_per_flow": round(r["load_cpu_s"] / n * 1e3, 2),
            # CPU seconds per second: Python threads near 1.0 means the GIL is saturated (they
            # exceed 1.0 only while some run without it: SQLite, fsync, large hashes)
            "broker_cores": round(r["broker_cpu_s"] / r["elapsed"], 2),
            "broker_python_cores": round(r["broker_python_cpu_s"] / r["elapsed"], 2),
            "loadgen_cores": round(r["load_cpu_s"] / r["elapsed"], 2),
        }
    if baseline is not None and baseline["latencies"] and rate:
        base_rate = len(baseline["latencies"]) / baseline["elapsed"]
        # Time per flow relative to the one-client baseline; the target is 1/200 s per flow.
        ratio = (1 / rate) / (1 / base_rate)
        target_ratio = (1 / TARGET_FLOWS_PER_S) / (1 / base_rate)
        out |= {
            "baseline": "1 client, sequential",
            "baseline_flows_per_s": round(base_rate, 1),
            "ratio": round(ratio, 3),
            "target_ratio": round(target_ratio, 3),
            "meets_target": rate >= TARGET_FLOWS_PER_S
            and out["errors"] == 0
            and out["double_used_nonces"] == 0,
        }
    return out


def run() -> list[dict[str, object]]:
    from agent.emulation import EmulationPki

    with tempfile.TemporaryDirectory(prefix="lessee-bench-broker-") as tmp:
        root = Path(tmp)
        pki_dir = root / "pki"
        EmulationPki.create(pki_dir)
        state = root / "state"
        proc, target = _start_broker(state, pki_dir)
        try:
            _register(target, pki_dir)
            # warm-up: caches, connections, SQLite pages
            _run_load(target, pki_dir, 4, 1.0, proc.pid)
            baseline = _run_load(target, pki_dir, 1, BASELINE_DURATION_S, proc.pid)
            loaded = _run_load(target, pki_dir, CLIENTS, DURATION_S, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        dups = _db_double_use(state)
        return [
            _row("broker_flow_1_client", baseline, None, dups),
            _row(f"broker_flow_{CLIENTS}_clients", loaded, baseline, dups),
        ]


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
