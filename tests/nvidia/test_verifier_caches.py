"""The verifier's warm-path memos: hits give the full check's answer, and nothing else.

Emulated Hopper evidence (``agent.emulation``: real SPDM, device chains, signed RIMs, stapled
issuer-signed OCSP) through the real pipeline with the emulation roots, as the broker runs it.
For each memo: a hit inside the validity window, the full check outside it, failures never
remembered, and sources that may change never short-circuited.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.emulation import EmulatedGpu, EmulationPki
from agent.emulation.pki import OCSP_VALIDITY
from attest.bundle import DeviceEvidenceIn
from attest.nvidia.evidence import DeviceEvidence
from attest.nvidia.opaque import DeviceKind
from attest.nvidia.rim import NVDEC_RIM_INDEX, RimCollection
from attest.nvidia.verifier import (
    EvidenceSetResult,
    Status,
    VerifierCaches,
    measurement_record,
    verify_gpu_evidence,
)
from attest.revocation.ocsp import OcspSource, StapledOcsp
from tests.emulation.helpers import emulation_caches, to_device_evidence


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> EmulationPki:
    return EmulationPki.create(Path(tmp_path_factory.mktemp("emulation")) / "pki")


@pytest.fixture(scope="module")
def gpu(pki: EmulationPki) -> EmulatedGpu:
    return EmulatedGpu(pki)


@pytest.fixture
def at() -> Iterator[datetime]:
    yield datetime.now(UTC)  # emulated OCSP answers are stamped with the signing time


def _evidence(gpu: EmulatedGpu, nonce: bytes, at: datetime) -> DeviceEvidenceIn:
    return DeviceEvidenceIn(
        "HOPPER",
        gpu.report(nonce),
        gpu.certificate_chain_pem(),
        gpu.ocsp_responses(at),
        (gpu.driver_rim(), gpu.vbios_rim()),
    )


def _verify(
    evidence: tuple[DeviceEvidence, ...],
    item: DeviceEvidenceIn,
    *,
    nonce: bytes,
    at: datetime,
    caches: VerifierCaches,
    source: OcspSource,
) -> EvidenceSetResult:
    return verify_gpu_evidence(
        evidence,
        at=at,
        expected_nonce=nonce,
        rim_source=RimCollection(item.rims),
        revocation_mode="stapled",
        ocsp_source=source,
        caches=caches,
    )


def _statuses(result: EvidenceSetResult) -> list[tuple[str, str]]:
    return [(c.subject, c.status) for d in result.devices for c in d.ocsp]


def test_stapled_revocation_memo_hits_and_answers_like_the_full_check(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    nonce = os.urandom(32)
    item = _evidence(gpu, nonce, at)
    evidence = to_device_evidence([item])
    stapled = StapledOcsp(item.ocsp_responses)
    caches = emulation_caches(pki)
    first = _verify(evidence, item, nonce=nonce, at=at, caches=caches, source=stapled)
    assert first.status is Status.AFFIRMING
    misses, hits = caches.ocsp.misses, caches.ocsp.hits
    second = _verify(evidence, item, nonce=nonce, at=at, caches=caches, source=stapled)
    assert caches.ocsp.misses == misses  # every verdict answered from the verdict cache
    assert caches.ocsp.hits == hits + 9  # 3 device + 2 x 3 RIM certificates, by their keys
    assert second.devices[0].ocsp == first.devices[0].ocsp
    cold = _verify(evidence, item, nonce=nonce, at=at, caches=emulation_caches(pki), source=stapled)
    assert _statuses(second) == _statuses(cold) == [(s, "good") for s, _ in _statuses(cold)]


def test_revocation_memo_misses_outside_the_verdict_window(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    nonce = os.urandom(32)
    item = _evidence(gpu, nonce, at)
    evidence = to_device_evidence([item])
    stapled = StapledOcsp(item.ocsp_responses)
    caches = emulation_caches(pki)
    assert _verify(evidence, item, nonce=nonce, at=at, caches=caches, source=stapled).ok
    later = at + OCSP_VALIDITY + timedelta(hours=1)  # past every answer's nextUpdate
    warm = _verify(evidence, item, nonce=nonce, at=later, caches=caches, source=stapled)
    cold = _verify(
        evidence, item, nonce=nonce, at=later, caches=emulation_caches(pki), source=stapled
    )
    assert warm.status is Status.CONTRAINDICATED
    assert _statuses(warm) == _statuses(cold)
    assert all(status == "invalid" for _, status in _statuses(warm))


def test_a_revoked_answer_is_never_remembered(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    nonce = os.urandom(32)
    chain, issuers = pki.device_chain(gpu.index), pki.device_issuers(gpu.index)
    revoked = pki.ocsp_response(chain[1], issuers[1], at=at, revoked=True)
    good = _evidence(gpu, nonce, at)
    item = DeviceEvidenceIn(
        good.arch,
        good.report,
        good.certificate_chain_pem,
        (revoked, *good.ocsp_responses[1:]),
        good.rims,
    )
    evidence = to_device_evidence([item])
    stapled = StapledOcsp(item.ocsp_responses)
    caches = emulation_caches(pki)
    for _ in range(2):
        result = _verify(evidence, item, nonce=nonce, at=at, caches=caches, source=stapled)
        assert result.status is Status.CONTRAINDICATED
        assert ("revoked" in dict(_statuses(result)).values()) is True
    chain_anchor = caches.device_chain(evidence[0].chain, at)
    assert caches.revocation_keys.get(stapled, chain_anchor, False, (1, 2, 3)) is None


class _SwitchingSource:
    """An OCSP source whose answers change (like an online responder): good, then revoked."""

    def __init__(self, first: StapledOcsp, then: StapledOcsp) -> None:
        self.current = first
        self.then = then

    def response_for(self, cert: object, issuer: object) -> bytes | None:
        return self.current.response_for(cert, issuer)  # type: ignore[arg-type]


def test_a_source_that_may_change_is_always_asked(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    nonce = os.urandom(32)
    item = _evidence(gpu, nonce, at)
    chain, issuers = pki.device_chain(gpu.index), pki.device_issuers(gpu.index)
    revoked = pki.ocsp_response(chain[1], issuers[1], at=at, revoked=True)
    source = _SwitchingSource(
        StapledOcsp(item.ocsp_responses), StapledOcsp((revoked, *item.ocsp_responses[1:]))
    )
    evidence = to_device_evidence([item])
    caches = emulation_caches(pki)
    assert _verify(evidence, item, nonce=nonce, at=at, caches=caches, source=source).ok
    source.current = source.then
    result = _verify(evidence, item, nonce=nonce, at=at, caches=caches, source=source)
    assert result.status is Status.CONTRAINDICATED
    assert "revoked" in dict(_statuses(result)).values()


def test_leaf_facts_are_remembered_per_chain(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    nonce = os.urandom(32)
    item = _evidence(gpu, nonce, at)
    evidence = to_device_evidence([item])
    caches = emulation_caches(pki)
    stapled = StapledOcsp(item.ocsp_responses)
    first = _verify(evidence, item, nonce=nonce, at=at, caches=caches, source=stapled)
    facts = caches.leaves.get(evidence[0].chain)
    assert facts is not None and facts[0] == gpu.fwid
    second = _verify(evidence, item, nonce=nonce, at=at, caches=caches, source=stapled)
    assert second.devices[0].claims == first.devices[0].claims
    assert first.devices[0].claims["x-nvidia-gpu-attestation-report-cert-chain-fwid-match"]


def test_next_report_reuses_parse_and_comparison_but_checks_nonce_and_signature(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    caches = emulation_caches(pki)
    results = []
    for _ in range(2):
        nonce = os.urandom(32)
        item = _evidence(gpu, nonce, at)
        evidence = to_device_evidence([item])
        stapled = StapledOcsp(item.ocsp_responses)
        results.append(_verify(evidence, item, nonce=nonce, at=at, caches=caches, source=stapled))
    assert all(r.ok for r in results)
    templates = caches.reports
    assert getattr(templates, "hits", 0) == 1
    report = templates.parse(item.report, DeviceKind.GPU)
    key = (
        measurement_record(report),
        gpu.driver_rim(),
        gpu.vbios_rim(),
        frozenset({NVDEC_RIM_INDEX}),
    )
    assert caches.comparisons.get(key) is not None
    # a report for another session fails its nonce; a bad signature fails too, template or not
    other = os.urandom(32)
    stale = _verify(evidence, item, nonce=other, at=at, caches=caches, source=stapled)
    assert stale.status is Status.CONTRAINDICATED
    assert stale.devices[0].claims["x-nvidia-gpu-attestation-report-nonce-match"] is False
    forged = bytearray(item.report)
    forged[-1] ^= 1
    bad = DeviceEvidence(index=0, arch=evidence[0].arch, report_bytes=bytes(forged),
                         chain=evidence[0].chain)  # fmt: skip
    res = _verify((bad,), item, nonce=nonce, at=at, caches=caches, source=stapled)
    assert res.devices[0].claims["x-nvidia-gpu-attestation-report-signature-verified"] is False


def test_other_measurements_are_compared_afresh(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    caches = emulation_caches(pki)
    nonce = os.urandom(32)
    item = _evidence(gpu, nonce, at)
    stapled = StapledOcsp(item.ocsp_responses)
    ok = _verify(
        to_device_evidence([item]), item, nonce=nonce, at=at, caches=caches, source=stapled
    )
    assert ok.ok
    patched = EmulatedGpu(pki, seed=b"another firmware")  # same versions, other measurements
    foreign = DeviceEvidenceIn("HOPPER", patched.report(nonce), item.certificate_chain_pem,
                               item.ocsp_responses, item.rims)  # fmt: skip
    result = _verify(
        to_device_evidence([foreign]), foreign, nonce=nonce, at=at, caches=caches, source=stapled
    )
    assert result.status is Status.CONTRAINDICATED
    assert result.devices[0].claims["measres"] == "fail"
    assert result.devices[0].mismatched_rim_indexes
