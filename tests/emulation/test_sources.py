"""Emulated evidence sources behind agent.evidence.sources' interfaces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.emulation import (
    EmulatedCpuSource,
    EmulatedGpu,
    EmulatedGpuSource,
    EmulatedSnp,
    EmulationPki,
    non_cc_gpu_source,
)
from agent.evidence.sources import CcState, CpuEvidenceSource, GpuEvidenceSource
from attest.bundle import EvidenceBundle, SnpEvidenceIn, load_bundle
from attest.errors import InputError
from attest.nvidia.verifier import Status
from attest.revocation.ocsp import StapledOcsp, check_chain_revocation
from attest.snp import parse_report
from attest.snp.verify import load_amd_certificates
from tests.emulation.helpers import run_pipeline

NONCE = b"\x5a" * 32


def test_gpu_source_collects_complete_evidence(pki: EmulationPki, at: datetime) -> None:
    source: GpuEvidenceSource = EmulatedGpuSource([EmulatedGpu(pki, index=i) for i in range(2)])
    evidence = source.collect(NONCE)
    assert len(evidence) == 2
    for item in evidence:
        assert item.arch == "HOPPER"
        assert item.certificate_chain_pem.count(b"BEGIN CERTIFICATE") == 5
        assert len(item.ocsp_responses) == 7  # device 3, RIM: 2 signers, L3, CA
        assert len(item.rims) == 2
    result = run_pipeline(evidence, nonce=NONCE, at=at, pki=pki)
    assert result.status is Status.AFFIRMING
    assert source.cc_state() == CcState(cc_mode_on=True, devtools_on=False)


def test_bundle_round_trip_keeps_every_byte(pki: EmulationPki) -> None:
    gpus = EmulatedGpuSource([EmulatedGpu(pki)])
    cpu: CpuEvidenceSource = EmulatedCpuSource(EmulatedSnp(pki, measurement=bytes(48)))
    state = gpus.cc_state()
    bundle = EvidenceBundle(
        cpu=cpu.collect(bytes(64)),
        gpus=gpus.collect(NONCE),
        cc_mode_on=state.cc_mode_on,
        devtools_on=state.devtools_on,
    )
    assert load_bundle(bundle.to_json()) == bundle


def test_cpu_source_returns_report_and_certificate_table(pki: EmulationPki) -> None:
    source = EmulatedCpuSource(EmulatedSnp(pki, measurement=b"\x01" * 48))
    evidence = source.collect(b"\x02" * 64)
    assert isinstance(evidence, SnpEvidenceIn)
    assert parse_report(evidence.report).report_data == b"\x02" * 64
    assert len(evidence.certificates) == 2
    loaded = [c for blob in evidence.certificates for c in load_amd_certificates(blob)]
    assert [c.subject == c.issuer for c in loaded] == [False, False, True]  # VCEK, ASK, ARK


def test_non_cc_and_devtools_states(pki: EmulationPki) -> None:
    assert non_cc_gpu_source(pki).cc_state() == CcState(cc_mode_on=False, devtools_on=False)
    mixed = EmulatedGpuSource(
        [EmulatedGpu(pki, index=0), EmulatedGpu(pki, index=1, devtools_on=True)]
    )
    assert mixed.cc_state() == CcState(cc_mode_on=True, devtools_on=True)
    one_off = EmulatedGpuSource(
        [EmulatedGpu(pki, index=0), EmulatedGpu(pki, index=1, cc_mode_on=False)]
    )
    assert not one_off.cc_state().cc_mode_on
    # the non-CC GPU still answers, so that the broker's refusal can be shown end to end
    assert len(non_cc_gpu_source(pki).collect(NONCE)) == 1


def test_stapled_answers_are_dated_by_the_injected_clock(pki: EmulationPki) -> None:
    later = datetime.now(UTC) + timedelta(hours=6)
    source = EmulatedGpuSource([EmulatedGpu(pki)], clock=lambda: later)
    item = source.collect(NONCE)[0]
    chain = pki.device_chain(0)
    checks = check_chain_revocation(
        chain, indices=(1, 2, 3), mode="stapled", source=StapledOcsp(item.ocsp_responses), at=later
    )
    assert [c.status for c in checks] == ["good"] * 3
    assert {c.this_update for c in checks} == {later.replace(microsecond=0)}


def test_source_input_errors(pki: EmulationPki) -> None:
    with pytest.raises(InputError):
        EmulatedGpuSource([])
    with pytest.raises(InputError):
        EmulatedGpuSource([EmulatedGpu(pki, index=3), EmulatedGpu(pki, index=3)])
    with pytest.raises(InputError):
        EmulatedGpuSource([EmulatedGpu(pki)]).collect(bytes(16))
    with pytest.raises(InputError):
        EmulatedGpuSource([EmulatedGpu(pki)], clock=lambda: datetime(2026, 1, 1)).collect(NONCE)
    with pytest.raises(InputError):
        EmulatedCpuSource(EmulatedSnp(pki, measurement=bytes(48))).collect(bytes(65))
