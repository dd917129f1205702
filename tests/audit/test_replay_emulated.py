"""Replay over a broker log of *emulated* hardware (``agent.emulation``): evidence made for the
broker's session (so the binding holds) and signed by a per-installation PKI whose roots only the
logged policy trusts. The broker does not archive those roots, so the replay needs them as
``--trust-root-candidates``: with them every verdict is reproduced, without them the replay says
which roots were missing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.audit.replay import ReplayReport, replay_bundle_file
from agent.cli.main import main
from attest.binding import DeviceState, derive_session_binding
from attest.bundle import EvidenceBundle
from attest.ear import Status
from tests.audit.helpers import MODEL, VERIFIER_KEY, Built, build_emulated, enclave_key
from tests.log.helpers import LOG_SIGNER

emulation = pytest.importorskip("agent.emulation")

MEASUREMENT = hashlib.sha384(b"lessee replay test VM image").digest()


@dataclass
class Emulated:
    built: Built
    roots_pem: Path
    results: list[Status]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulated]:
    d = tmp_path_factory.mktemp("emulated")
    b, pki = build_emulated(d, name="replay-emulated", measurement=MEASUREMENT)
    cpu = emulation.EmulatedCpuSource(emulation.EmulatedSnp(pki, measurement=MEASUREMENT))
    results = []
    for cc_on in (True, False):
        gpus = emulation.EmulatedGpuSource(
            [emulation.EmulatedGpu(pki, cc_mode_on=cc_on)], clock=b.clock
        )
        b.clock.tick()
        ch = b.broker.challenge(MODEL)
        key = enclave_key()
        state = gpus.cc_state()  # read first, as the agent does: version 2 binds it
        binding = derive_session_binding(
            ch.nonce,
            key,
            ch.protocol_label,
            DeviceState(state.cc_mode_on, state.devtools_on, gpus.gpu_count(), 0),
        )
        bundle = EvidenceBundle(
            cpu=cpu.collect(binding.report_data),
            gpus=gpus.collect(binding.gpu_nonce),
            cc_mode_on=state.cc_mode_on,
            devtools_on=state.devtools_on,
        )
        out = b.broker.attest(nonce=ch.nonce, enclave_public_key=key, model_id=MODEL, bundle=bundle)
        results.append(out.status)
        if out.status is Status.AFFIRMING:
            b.release(out.result)
    b.export()
    roots = d / "emulation-roots.pem"
    roots.write_bytes(pki.gpu_root.pem + pki.rim_root.pem + pki.ark.pem)
    yield Emulated(b, roots, results)
    b.close()


def _replay(e: Emulated, **kw: object) -> ReplayReport:
    return replay_bundle_file(
        e.built.dir / "log.zip",
        LOG_SIGNER.verifier(),
        VERIFIER_KEY.public_key(),
        **kw,
    )


def test_emulated_gpu_passes_for_the_session(emulated: Emulated) -> None:
    report = _replay(emulated, candidates=_candidates(emulated))
    assert report.ok, [f.line() for f in report.all_findings]
    attests = [e for e in report.entries if e.kind.value == "attest"]
    assert [e.logged_status for e in attests] == emulated.results
    assert all(e.verdict_equal for e in attests)
    assert all(e.roots_unavailable == () for e in report.entries)
    # The session's own evidence: the GPU is affirming with CC on (the emulated SNP's verdict
    # depends on the SNP verifier accepting the emulation's AMD chain), refused with CC off.
    assert emulated.results[1] is Status.CONTRAINDICATED
    releases = [e for e in report.entries if e.kind.value == "release"]
    assert len(releases) == sum(s is Status.AFFIRMING for s in emulated.results)


def test_archived_emulation_roots_need_no_candidates(emulated: Emulated) -> None:
    # The broker archives every root its policy trusted by digest (trust-root-* collateral),
    # so the auditor replays without being handed them.
    report = _replay(emulated)
    assert [f for f in report.findings if f.code == "verdict_mismatch"] == []
    assert all(e.roots_unavailable == () for e in report.entries if e.kind.value == "attest")


def test_cli_with_candidate_file(emulated: Emulated, capsys: pytest.CaptureFixture[str]) -> None:
    d = emulated.built.dir
    base = ["audit", "replay", str(d / "log.zip"), "--log-key", str(d / "log.vkey")]
    base += ["--verifier-key", str(d / "verifier.pem"), "--quiet", "--workers", "1"]
    assert main([*base, "--trust-root-candidates", str(emulated.roots_pem)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    assert main(base) == 0  # the archived roots suffice
    assert capsys.readouterr().out.startswith("OK: ")


def _candidates(e: Emulated) -> list[object]:
    from agent.audit.replay import load_root_candidates

    return list(load_root_candidates(e.roots_pem.read_bytes()))
