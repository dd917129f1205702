"""``lessee demo``: the whole flow on one machine, on emulated confidential-computing hardware.

What it does, in order (each step printed as it happens):

1. makes an emulation PKI in its work directory (``emulation-pki``; reused when the same
   ``--workdir`` is given again): GPU, RIM and SEV-SNP roots that no default policy trusts;
2. starts a key broker on loopback (plaintext only because it is loopback), state in its own
   directory: SQLite databases, master key, EAR signing key, log key;
3. generates a small model (numpy tensors saved as safetensors) and seals it
   (``agent.loader.seal_model``); the data key goes into a 0600 key file, never beside the
   sealed files;
4. writes a policy that trusts the emulation roots *explicitly* (``roots.extra_trusted_sha256``)
   and pins the emulated guest's launch measurement and the sealed manifest, and registers the
   model's key and policy with the broker (admin call, loopback);
5. runs the agent on emulated hardware: attest (result summary per device; EAR signature and
   log inclusion checked with the pinned broker keys) -> release -> load the weights into
   memory and compare them with the originals;
6. serves the enclave's encrypted token stream with the attested key and a version-2 key bundle
   (its evidence and session nonce included); one client pins the broker's key, a second trusts
   no broker and appraises that evidence itself; a recording relay shows it saw no plaintext,
   and a request sent twice is answered once (the copy is refused before any response);
7. shows the refusals: tampered evidence, a replayed nonce, evidence made for another nonce, a
   debug-mode CPU and a GPU not in CC mode (each with the broker's finding), plus a release
   attempt with a refused result;
8. exports the attestation log and runs ``lessee audit verify`` and ``lessee audit replay`` on
   it.

Exit 0 only if every step had exactly the expected outcome. ``--workdir DIR`` keeps everything
(and says where each thing is); without it a temporary directory is removed at the end. DIR must
be new, empty, or one an earlier demo run made (it holds a ``.lessee-demo`` marker): the demo
writes its files there by fixed names, overwriting earlier ones, so any other non-empty
directory is refused (exit 2) before anything is written. DIR (and, when reused, the
subdirectories the demo writes into) must be the user's own and not writable by group or
others; whatever is at one of the demo's fixed names is removed first (a symlink itself, never
what it points to) and each output is created anew, never through a symlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.agent import (
    EMULATED_LAUNCH_MEASUREMENT,
    AttestationRefusedError,
    BrokerRefusedError,
    EnclaveAgent,
    Session,
    call_broker,
    load_sealed_model,
    open_channel,
    wipe,
)
from agent.broker.config import LOG_VKEY, BrokerConfig, BrokerKeys, prepare_state_dir
from agent.client import (
    EnclaveClient,
    broker_ear_check,
    channel_options,
    evidence_check,
    log_inclusion_check,
)
from agent.emulation import (
    EmulatedCpuSource,
    EmulatedGpu,
    EmulatedGpuSource,
    EmulatedSnp,
    EmulationPki,
    non_cc_gpu_source,
)
from agent.enclave.generator import EchoGenerator
from agent.enclave.service import ENCLAVE_LOGGER, GENERATE_METHOD, EnclaveService, serve_enclave
from agent.enclave.tap import ByteTap
from agent.evidence.sources import CpuEvidenceSource, GpuEvidenceSource
from agent.loader import seal_model
from agent.loader.keyfile import write_key_file
from agent.rpc import convert
from agent.rpc.server import (
    RunningBroker,
    appraisal_context,
    load_emulation_roots,
    serve_broker,
)
from agent.rpc.v1 import broker_pb2, broker_pb2_grpc, enclave_pb2
from attest.bundle import DeviceEvidenceIn, EvidenceBundle
from attest.ear import Status, VerifyingKey
from attest.errors import InputError
from attest.log.note import NoteVerifier
from attest.policy import Policy, load_policy
from sealing.hpke_suite import HpkePrivateKey
from sealing.stream import ClientStream, KeyBundle, VerifiedKeyBundle, record_len
from sealing.weights import key_fingerprint

MODEL_ID = "lessee-demo-model"
MODEL_VERSION = 1
#: The demo model: a few small tensors of different dtypes (fast to seal and load).
DEMO_TENSORS: dict[str, tuple[tuple[int, ...], str]] = {
    "embed.weight": ((512, 64), "float32"),
    "layers.0.attn.qkv.weight": ((64, 192), "float16"),
    "layers.0.mlp.up.weight": ((64, 256), "float32"),
    "layers.0.mlp.up.bias": ((256,), "float32"),
    "lm_head.weight": ((64, 512), "float16"),
}
#: Offset into an SPDM report that lies inside the measurement records (a signed byte).
TAMPER_OFFSET = 200


@dataclass
class DemoLayout:
    """Where the demo keeps each thing (printed at the end with ``--workdir``)."""

    root: Path
    emulation: Path = field(init=False)
    broker: Path = field(init=False)
    model: Path = field(init=False)
    sealed: Path = field(init=False)
    key_file: Path = field(init=False)
    policy: Path = field(init=False)
    log_bundle: Path = field(init=False)

    def __post_init__(self) -> None:
        self.emulation = self.root / "emulation-pki"
        self.broker = self.root / "broker-state"
        self.model = self.root / "model"
        self.sealed = self.root / "sealed-model"
        self.key_file = self.root / "keys" / "model.key"
        self.policy = self.root / "policy.json"
        self.log_bundle = self.root / "audit-log.bundle"


class _Report:
    """Prints each step and remembers whether every expected outcome happened."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failures: list[str] = []
        self.t0 = time.perf_counter()

    def step(self, text: str) -> None:
        print(f"\n[{time.perf_counter() - self.t0:5.2f}s] {text}", file=self.out, flush=True)

    def info(self, text: str) -> None:
        print(f"    {text}", file=self.out, flush=True)

    def expect(self, ok: bool, text: str) -> None:
        print(f"    {'ok  ' if ok else 'FAIL'} {text}", file=self.out, flush=True)
        if not ok:
            self.failures.append(text)


def make_model(model_dir: Path, seed: int = 7) -> dict[str, np.ndarray[Any, Any]]:
    """A small random model saved as safetensors, plus a config.json; returns the tensors."""
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    tensors = {
        name: rng.standard_normal(shape).astype(dtype)
        for name, (shape, dtype) in DEMO_TENSORS.items()
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    _write_new(model_dir / "model.safetensors", save(tensors, metadata={"format": "np"}))
    _write_new(
        model_dir / "config.json", (json.dumps({"model_type": "lessee-demo"}) + "\n").encode()
    )
    return tensors


def _remove(path: Path) -> None:
    """Remove whatever is at ``path``, without following a symlink there (the link itself goes);
    a directory is refused (``OSError``): only the demo's own subdirectories are removed whole,
    by ``_remove_tree``."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_tree(path: Path) -> None:
    """Remove one of the demo's own subdirectories (``model/``, ``sealed-model/``, ``keys/``)
    whatever is at its name: a symlink or file is unlinked, never followed; a directory is
    removed whole (``shutil.rmtree`` follows no symlink inside it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` as a new file: what was at the name is removed first
    (``_remove``), and the file is created with O_EXCL|O_NOFOLLOW, never through a symlink."""
    _remove(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def demo_policy(roots_sha256: list[str], manifest_digest: str) -> dict[str, Any]:
    """Trusts the emulation roots *by name*; everything else is the safe default."""
    return {
        "name": "lessee demo: emulated SEV-SNP + Hopper (never use for real hardware)",
        "cpu_tees": ["snp"],
        "snp": {"allowed_measurements": [EMULATED_LAUNCH_MEASUREMENT.hex()]},
        "roots": {"extra_trusted_sha256": sorted(roots_sha256)},
        "model_manifest_digests": [manifest_digest.removeprefix("sha256:")],
    }


def _tampered(bundle: EvidenceBundle) -> EvidenceBundle:
    g = bundle.gpus[0]
    report = bytearray(g.report)
    report[TAMPER_OFFSET] ^= 0x01
    gpu = DeviceEvidenceIn(g.arch, bytes(report), g.certificate_chain_pem, g.ocsp_responses, g.rims)
    return EvidenceBundle(
        bundle.cpu, (gpu, *bundle.gpus[1:]), bundle.switches, bundle.cc_mode_on, bundle.devtools_on
    )


def _first_reject(findings: tuple[str, ...], *needles: str) -> str | None:
    for line in findings:
        if any(n in line for n in needles):
            return line
    return None


#: The file the demo leaves in a ``--workdir`` it made its own: a later run may overwrite what
#: an earlier one left there, and nothing else.
WORKDIR_MARKER = ".lessee-demo"
#: Subdirectories a run reuses (the emulation PKI, the broker's state) and writes into.
REUSED_DIRS = ("emulation-pki", "broker-state")
#: Subdirectories a run removes and makes afresh.
FRESH_DIRS = ("model", "sealed-model", "keys")


def _check_private(path: Path, st: os.stat_result, what: str) -> None:
    """``path`` must be the user's own and not writable by group or others: anyone else who
    can write there could plant a symlink that the demo would then write through."""
    if st.st_uid != os.geteuid():
        raise InputError(f"--workdir {what}: not owned by you (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InputError(f"--workdir {what}: writable by group or others (chmod go-w it)")


def _is_marker(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def claim_workdir(root: Path) -> None:
    """Make ``root`` the demo's work directory, or refuse (``InputError``, exit 2) before
    anything is written: the demo overwrites and deletes files by fixed names there
    (``policy.json``, ``model/``, ``keys/model.key``, ``audit-log.bundle``, ...), so it takes
    only a new or empty directory, or one an earlier run marked with ``WORKDIR_MARKER``; and
    only one of the user's own that group and others cannot write (nor, when it is reused, can
    they write the subdirectories the demo writes into)."""
    if root.exists() and not root.is_dir():
        raise InputError(f"--workdir {root}: not a directory")
    if root.is_dir():
        marked = _is_marker(root / WORKDIR_MARKER)
        if not marked and any(root.iterdir()):
            raise InputError(
                f"--workdir {root}: not empty and not made by lessee demo (no {WORKDIR_MARKER} "
                "file); the demo overwrites files there (policy.json, model/, keys/model.key, "
                "audit-log.bundle, ...), so give it a new or empty directory"
            )
        _check_private(root, os.stat(root), str(root))
        for name in (*REUSED_DIRS, *FRESH_DIRS):
            sub = root / name
            try:
                st = os.lstat(sub)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                _check_private(sub, st, str(sub))
            elif name in REUSED_DIRS:  # a symlink here would be written through
                raise InputError(f"--workdir {sub}: not a directory (a symlink is not followed)")
            # a FRESH_DIRS name that is not a directory is unlinked before the run writes there
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700)
    _write_new(
        root / WORKDIR_MARKER,
        b"made by lessee demo: a later 'lessee demo --workdir' may overwrite what is here\n",
    )


def run_demo(workdir: Path | None, out: TextIO) -> int:
    """Run every step; return 0 if all expected outcomes happened, 1 otherwise. A ``workdir``
    must be new, empty or an earlier demo's (``claim_workdir``)."""
    keep = workdir is not None
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lessee-demo-"))
    if keep:
        claim_workdir(root)
    layout = DemoLayout(root)
    rep = _Report(out)
    previous = _interrupt_on_termination()
    try:
        return _run(layout, rep, keep)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _interrupt_on_termination() -> dict[int, Any]:
    """SIGTERM and SIGHUP (``timeout``, a closed terminal) stop the demo as Ctrl-C does, so the
    ``finally`` blocks run: the broker stops and a temporary directory, keys included, is
    removed (their default action ended the process and left it in /tmp). Only from the main
    thread (signal handlers cannot be set elsewhere); returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    return {signum: signal.signal(signum, interrupt) for signum in wanted}


def _run(layout: DemoLayout, rep: _Report, keep: bool) -> int:
    rep.step("1. emulated confidential-computing hardware (per-installation emulation PKI)")
    pki = EmulationPki.load_or_create(layout.emulation)
    fps = pki.root_fingerprints()
    for name, fp in fps.items():
        rep.info(f"{name}: sha256 {fp}")
    rep.info("no default policy trusts these roots; the demo policy names them explicitly")

    rep.step("2. key broker on loopback (plaintext only because this is loopback)")
    broker = serve_broker(
        BrokerConfig(
            state_dir=layout.broker, listen="127.0.0.1:0", trust_emulation=layout.emulation
        )
    )
    try:
        keys = prepare_state_dir(layout.broker, create=False)
        rep.info(f"listening on {broker.target}; log {keys.log_name}")
        return _with_broker(layout, rep, keep, broker=broker, keys=keys, pki=pki)
    finally:
        broker.stop(1.0)


def _with_broker(
    layout: DemoLayout,
    rep: _Report,
    keep: bool,
    *,
    broker: RunningBroker,
    keys: BrokerKeys,
    pki: EmulationPki,
) -> int:

    fps = pki.root_fingerprints()
    rep.step("3. a small model, generated and sealed")
    for fresh in (layout.model, layout.sealed, layout.key_file.parent):
        _remove_tree(fresh)
    layout.model.mkdir(mode=0o700)
    originals = make_model(layout.model)
    dek = bytearray(os.urandom(32))
    try:
        sealed = seal_model(
            layout.model, layout.sealed, dek, model_id=MODEL_ID, model_version=MODEL_VERSION,
            rng=os.urandom,
        )  # fmt: skip
        layout.key_file.parent.mkdir(mode=0o700)
        write_key_file(
            layout.key_file, dek, key_id=key_fingerprint(dek), model_id=MODEL_ID,
            model_version=MODEL_VERSION, manifest_digest=sealed.manifest_digest,
        )  # fmt: skip
        data_key = bytes(dek)
    finally:
        wipe(dek)
    total = sum(int(t.nbytes) for t in originals.values())
    rep.info(
        f"{len(originals)} tensors, {total} bytes -> {len(sealed.manifest.entries)} sealed files"
    )
    rep.info(f"manifest digest {sealed.manifest_digest}")

    rep.step("4. policy (trusts the emulation roots explicitly) and model registration")
    policy = demo_policy(list(fps.values()), sealed.manifest_digest)
    policy_json = json.dumps(policy, indent=1)
    _write_new(layout.policy, (policy_json + "\n").encode())
    channel = open_channel(broker.target)
    with channel:
        admin = broker_pb2_grpc.BrokerAdminStub(channel)  # type: ignore[no-untyped-call]
        request = broker_pb2.RegisterModelRequest(
            model_id=MODEL_ID,
            model_version=MODEL_VERSION,
            data_key=data_key,
            policy_json=policy_json,
            manifest_digest=bytes.fromhex(sealed.manifest_digest.removeprefix("sha256:")),
        )
        reg = call_broker("RegisterModel", admin.RegisterModel, request, 30.0)
        del data_key
        rep.info(f"registered {MODEL_ID} v{MODEL_VERSION}: key id {reg.key_id}")
        rep.info(f"policy {reg.policy_digest} (unsafe settings: roots.extra_trusted_sha256)")

        def agent(
            cpu: CpuEvidenceSource | None = None, gpu: GpuEvidenceSource | None = None
        ) -> EnclaveAgent:
            return EnclaveAgent(
                channel,
                cpu=cpu
                or EmulatedCpuSource(EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)),
                gpu=gpu or EmulatedGpuSource([EmulatedGpu(pki, index=0)]),
                broker_key=keys.result_key.public_key(),
                log_key=keys.log_signer.verifier(),
            )

        rep.step("5. agent on emulated hardware: attest -> release -> load")
        good = agent()
        session = good.start_session(MODEL_ID)
        rep.info(
            f"enclave key made in-process ({len(session.public_key)}-byte ML-KEM-768+X25519 public key)"
        )
        bundle = good.collect(session)
        try:
            attested = good.check_result(session, good.send_evidence(session, bundle))
        except AttestationRefusedError as exc:
            rep.expect(False, f"attestation affirming (got {exc.status.value})")
            for line in exc.findings:
                rep.info(f"finding: {line}")
            return _finish(layout, rep, keep)
        rep.expect(
            attested.status is Status.AFFIRMING, f"attestation result: {attested.status.value}"
        )
        for name, status in sorted(attested.devices.items()):
            rep.info(f"  {name}: {status}")
        rep.expect(attested.result_verified, "EAR signature verified with the pinned broker key")
        rep.expect(
            attested.log_verified,
            f"result is log entry {attested.log_index}: inclusion proof verified against the "
            "signed checkpoint",
        )
        key, release = good.release(attested)
        try:
            rep.expect(True, f"data key released, HPKE {release.suite}, opened inside the enclave")
            loaded = load_sealed_model(
                layout.sealed, key, model_id=MODEL_ID, model_version=release.model_version,
                manifest_digest=release.manifest_digest,
            )  # fmt: skip
        finally:
            wipe(key)
        same = set(loaded.tensors) == set(originals) and all(
            np.array_equal(loaded.tensors[n], originals[n])
            and loaded.tensors[n].dtype == originals[n].dtype
            for n in originals
        )
        rep.expect(
            same,
            f"loaded {loaded.tensor_count} tensors ({loaded.total_bytes} bytes) into memory; equal to the originals",
        )

        rep.step("6. encrypted token stream: client -> host relay -> attested enclave")
        _stream_demo(
            rep,
            session.enclave_key(),
            attested.result,
            keys.result_key.public_key(),
            log=(good.key_bundle_log_proof(attested), keys.log_signer.verifier()),
            zero_trust=(
                bundle.to_json(),
                session.nonce,
                load_policy(policy_json),
                layout.emulation,
            ),
        )

        rep.step("7. refusals")
        _refusal_tampered(rep, agent())
        _refusal_replay(rep, good, session, bundle)
        _refusal_wrong_nonce(rep, agent())
        debug_cpu = EmulatedCpuSource(
            EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT, policy_debug=True)
        )
        refused = _refusal(
            rep, agent(cpu=debug_cpu), "debug-mode CPU (SNP policy DEBUG=1)", "debug"
        )
        _refusal(rep, agent(gpu=non_cc_gpu_source(pki)), "GPU not in CC mode", "cc_mode")
        if refused is not None:
            _refusal_release(rep, channel, refused)

    rep.step("8. audit: export the log, verify it and replay every appraisal offline")
    _remove(layout.log_bundle)
    # written in a new private directory, then renamed to its name (a rename follows no symlink)
    staging = Path(tempfile.mkdtemp(prefix=".audit-log-", dir=layout.root))
    try:
        size = broker.log_store.export_bundle(staging / layout.log_bundle.name)
        os.replace(staging / layout.log_bundle.name, layout.log_bundle)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rep.info(f"exported {size} entries to {layout.log_bundle}")
    code = _command(
        ["audit", "verify", str(layout.log_bundle), "--log-key", str(layout.broker / LOG_VKEY)]
    )
    rep.expect(code == 0, f"lessee audit verify exit code {code}")
    _write_new(
        layout.broker / "verifier.pem",
        keys.result_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    )
    code = _command(
        [
            "audit", "replay", str(layout.log_bundle), "--log-key", str(layout.broker / LOG_VKEY),
            "--verifier-key", str(layout.broker / "verifier.pem"), "--quiet", "--workers", "1",
        ]
    )  # fmt: skip
    rep.expect(code == 0, f"lessee audit replay: every verdict recomputed, exit code {code}")
    return _finish(layout, rep, keep)


DEMO_PROMPT = "Summarise the quarterly numbers for the board, in confidence"


def _stream_demo(
    rep: _Report,
    key: HpkePrivateKey,
    result: str,
    broker_key: VerifyingKey,
    *,
    log: tuple[bytes, NoteVerifier],
    zero_trust: tuple[bytes, bytes, Policy, Path],
) -> None:
    """Serve the enclave's streaming service with the attested key, send one prompt through a
    recording relay, and show what the relay saw; then the same with a client that trusts no
    broker (``zero_trust``: the evidence and nonce the enclave attested with, the client's own
    policy and the emulation PKI whose roots that policy pins). ``log``: the bundle's log proof
    and the log key both clients pin, so each also checks that the result was logged."""
    log_proof, log_key = log
    evidence, nonce, policy, pki_dir = zero_trust
    check = evidence_check(
        policy,
        context=appraisal_context(emulation=load_emulation_roots(pki_dir)),
        log_key=log_key,
    )
    broker_check = broker_ear_check(broker_key, log_proof_check=log_inclusion_check(log_key))

    async def run() -> tuple[list[str], list[str], ByteTap, int, tuple[int, str]]:
        # The tokens of each client, what the relay saw of the first, its records, and what a
        # replayed request got.
        service = EnclaveService(
            key,
            KeyBundle.build(
                key.public_key, result.encode(), log_proof, evidence=evidence, nonce=nonce
            ),
            EchoGenerator(upper=True),
        )
        server = await serve_enclave(service)
        tap = ByteTap(server.port)
        await tap.start()
        try:
            async with EnclaveClient(tap.target, bundle_check=broker_check) as client:
                tokens = [t async for t in client.generate(DEMO_PROMPT)]
                verified = await client.key_bundle()
            records = service.stats.records_sent
            replay = await _replayed_request(server.port, verified)
            async with EnclaveClient(f"127.0.0.1:{server.port}", bundle_check=check) as client:
                own = [t async for t in client.generate(DEMO_PROMPT)]
        finally:
            await tap.stop()
            await server.stop(0)
        return tokens, own, tap, records, replay

    tokens, own, tap, records, (answered, replayed) = asyncio.run(run())
    text = "".join(tokens)
    rep.expect(
        text == DEMO_PROMPT.upper(), f"client verified the key bundle and received: {text!r}"
    )
    rep.expect(
        "".join(own) == text,
        "zero trust in the broker: a second client appraised the enclave's own evidence "
        "(carried in its key bundle) under its own policy, ignored the broker's result, "
        "and received the same answer",
    )
    rep.expect(
        True,
        f"both clients verified the bundle's log proof ({len(log_proof)} bytes) with the "
        "pinned log key: its result is the logged attest entry, included under the signed "
        "checkpoint, for this nonce and this key",
    )
    seen = bytes(tap.to_server) + bytes(tap.to_client)
    # Words of 5+ letters: a 2-3 byte word turns up in 10 KiB of random bytes by chance.
    words = {w.strip(",") for w in (*DEMO_PROMPT.split(), *text.split()) if len(w.strip(",")) >= 5}
    leaked = [w for w in (*words, DEMO_PROMPT, text) if w.encode() in seen]
    rep.info(
        f"relay saw {len(tap.to_server)} bytes up and {len(tap.to_client)} bytes down; "
        f"{records} records, each {record_len(32)} bytes of ciphertext whatever the token's length"
    )
    rep.expect(
        not leaked,
        f"neither the prompt nor the answer, nor any of their words, is in the relay's bytes ({len(leaked)} found)",
    )
    rep.expect(
        answered > 0 and replayed == "ALREADY_EXISTS",
        f"a request the relay sent twice: the first copy answered ({answered} records), the "
        f"second refused before any response ({replayed}): the enclave answers a request once",
    )


async def _replayed_request(port: int, verified: VerifiedKeyBundle) -> tuple[int, str]:
    """The relay's replay: one sealed request sent twice, straight to the enclave. Returns the
    records the first copy got and the status the second got (``OK`` would be a failure)."""
    stream = ClientStream.start(verified, DEMO_PROMPT, sent_at=int(time.time()))
    request = enclave_pb2.GenerateRequest(sealed_request=stream.request)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options()) as ch:
        call = ch.unary_stream(
            GENERATE_METHOD,
            request_serializer=enclave_pb2.GenerateRequest.SerializeToString,
            response_deserializer=enclave_pb2.StreamRecord.FromString,
        )
        first = [message async for message in call(request)]
        # The service warns of every replay (for its operator); here the demo expects one and
        # prints the outcome itself.
        service_log = logging.getLogger(ENCLAVE_LOGGER)
        level = service_log.level
        service_log.setLevel(logging.ERROR)
        try:
            second = [message async for message in call(request)]
        except grpc.aio.AioRpcError as exc:
            return len(first), exc.code().name
        finally:
            service_log.setLevel(level)
    return len(first), f"OK with {len(second)} records"


def _command(argv: list[str]) -> int:
    """``lessee ARGV`` in this process. The CLI answers Ctrl-C with exit code 130; here that
    is the demo's own interrupt, raised on (it ran on into the next command, then said FAILED)."""
    from agent.cli.main import EXIT_INTERRUPTED
    from agent.cli.main import main as lessee_main

    code = lessee_main(argv)
    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    return code


def _refusal(
    rep: _Report, agent: EnclaveAgent, what: str, needle: str
) -> convert.AttestReply | None:
    session = agent.start_session(MODEL_ID)
    reply = agent.send_evidence(session, agent.collect(session))
    line = _first_reject(reply.findings, needle)
    rep.expect(
        reply.status is Status.CONTRAINDICATED and line is not None,
        f"{what}: {reply.status.value}",
    )
    rep.info(f"  finding: {line or (reply.findings[:1] or ['(none)'])[0]}")
    return reply if reply.status is not Status.AFFIRMING else None


def _refusal_tampered(rep: _Report, agent: EnclaveAgent) -> None:
    session = agent.start_session(MODEL_ID)
    reply = agent.send_evidence(session, _tampered(agent.collect(session)))
    line = _first_reject(reply.findings, "gpu0")
    rep.expect(
        reply.status is Status.CONTRAINDICATED and line is not None,
        f"tampered evidence (one bit of the GPU report flipped): {reply.status.value}",
    )
    rep.info(f"  finding: {line or '(none)'}")


def _refusal_wrong_nonce(rep: _Report, agent: EnclaveAgent) -> None:
    """Evidence made for another session's nonce, sent under this session's: the reports carry
    a binding the broker does not derive from this nonce and key."""
    session = agent.start_session(MODEL_ID)
    other = agent.start_session(MODEL_ID)  # its nonce goes unused and expires
    reply = agent.send_evidence(session, agent.collect(other))
    line = _first_reject(reply.findings, "report_data")
    rep.expect(
        reply.status is Status.CONTRAINDICATED and line is not None,
        f"evidence made for another nonce: {reply.status.value}",
    )
    rep.info(f"  finding: {line or '(none)'}")


def _refusal_replay(
    rep: _Report, agent: EnclaveAgent, session: Session, bundle: EvidenceBundle
) -> None:
    try:
        agent.send_evidence(session, bundle)
    except BrokerRefusedError as exc:
        rep.expect(exc.reason == "nonce_used", f"replayed nonce: {exc.code.name} [{exc.reason}]")
        return
    rep.expect(False, "replayed nonce refused")


def _refusal_release(rep: _Report, channel: Any, reply: convert.AttestReply) -> None:
    """A hostile relay asks for the key with a refused result (the agent itself never would)."""
    stub = broker_pb2_grpc.KeyBrokerStub(channel)  # type: ignore[no-untyped-call]
    request = broker_pb2.ReleaseKeyRequest(result=reply.result, model_id=MODEL_ID)
    try:
        call_broker("ReleaseKey", stub.ReleaseKey, request, 30.0)
    except BrokerRefusedError as exc:
        rep.expect(
            exc.reason == "not_affirming",
            f"release with a refused result: {exc.code.name} [{exc.reason}]",
        )
        return
    rep.expect(False, "release with a refused result was refused")


def _finish(layout: DemoLayout, rep: _Report, keep: bool) -> int:
    rep.step("done" if not rep.failures else f"FAILED: {len(rep.failures)} unexpected outcome(s)")
    for f in rep.failures:
        rep.info(f"unexpected: {f}")
    if keep:
        rep.info(f"everything is kept under {layout.root}:")
        for label, path in (
            ("emulation PKI (private keys 0600)", layout.emulation),
            ("broker state (broker.db, log.db, master.key, EAR and log keys)", layout.broker),
            ("EAR verifier key", layout.broker / "ear-verifier.pem"),
            ("log verifier key", layout.broker / LOG_VKEY),
            ("plaintext model", layout.model),
            ("sealed model", layout.sealed),
            ("data key file (0600; normally kept apart)", layout.key_file),
            ("policy", layout.policy),
            ("exported log (audit bundle)", layout.log_bundle),
        ):
            rep.info(f"  {label}: {path}")
    return 0 if not rep.failures else 1


__all__ = [
    "DEMO_TENSORS",
    "MODEL_ID",
    "WORKDIR_MARKER",
    "DemoLayout",
    "claim_workdir",
    "demo_policy",
    "make_model",
    "run_demo",
]
