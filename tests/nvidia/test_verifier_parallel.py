"""The pipeline on the shared pool gives exactly the sequential pipeline's results.

The cold work of a device (device chain, report signature, both RIMs, OCSP responses) runs
concurrently; every outcome is read back at the step that used to compute it. So for passing
and failing evidence alike (several failures at once included), the results with the pool, on
any number of threads and run after run, equal the results with all work in one thread:
same status, same failures in the same order with the same text, same claims. And a warm
verification, which has nothing to parallelise, never touches the pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from agent.emulation import EmulatedGpu, EmulationPki
from attest import concurrency
from attest.bundle import DeviceEvidenceIn
from attest.concurrency import pool_workers, set_pool_workers
from attest.errors import ChainError
from attest.nvidia.evidence import DeviceEvidence
from attest.nvidia.rim import RimCollection
from attest.nvidia.verifier import EvidenceSetResult, Status, VerifierCaches, verify_gpu_evidence
from attest.revocation import ocsp as ocsp_module
from attest.revocation.ocsp import OcspPrefetch, StapledOcsp
from attest.x509chain import ChainCache
from tests.conftest import NVIDIA, TODAY
from tests.emulation.helpers import emulation_caches, to_device_evidence
from tests.nvidia.test_verifier import (
    HOPPER,
    LEGACY,
    PPCIE,
    PPCIE_NONCE,
    MappedRims,
    _run,
)

RIM_DIR = NVIDIA / "rims" / "test_no_gpu"


@pytest.fixture
def workers() -> Iterator[Callable[[int], int]]:
    before = pool_workers()
    yield set_pool_workers
    set_pool_workers(before)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


class _TamperedRims:
    """The test RIMs with one measurement digit changed in the driver RIM (signature broken)."""

    def __init__(self) -> None:
        driver = (RIM_DIR / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
        at = driver.index(b"Hash0=") + 10
        self._m = {
            "NV_GPU_DRIVER_GH100_545.00": driver[:at] + b"0" + driver[at + 1 :]
            if driver[at : at + 1] != b"0"
            else driver[:at] + b"1" + driver[at + 1 :],
            "NV_GPU_VBIOS_1010_0200_882_96005E0001": (
                RIM_DIR / "1010_0200_882_96005E0001_test_no_gpu.swidtag"
            ).read_bytes(),
        }

    def rim_bytes(self, rim_id: str) -> bytes | None:
        return self._m.get(rim_id)


def _bad_signature() -> tuple[DeviceEvidence, ...]:
    ev = LEGACY[0]
    return (replace(ev, report_bytes=_flip(ev.report_bytes, len(ev.report_bytes) - 5)),)


def _swapped_chain() -> tuple[DeviceEvidence, ...]:
    ev = LEGACY[0]
    chain = ev.chain
    return (replace(ev, chain=(chain[0], chain[2], chain[1], *chain[3:])),)


#: name -> how to run it (fresh caches each time). Several fail in more than one place at once.
CASES: dict[str, Callable[[VerifierCaches], EvidenceSetResult]] = {
    "legacy passes": lambda c: _run(LEGACY, caches=c),
    "legacy today: both RIM chains expired": lambda c: _run(LEGACY, caches=c, at=TODAY),
    "report signature broken": lambda c: _run(_bad_signature(), caches=c),
    "device chain out of order + RIMs expired": lambda c: _run(
        _swapped_chain(), caches=c, at=TODAY
    ),
    "driver RIM tampered": lambda c: _run(LEGACY, caches=c, rim_source=_TamperedRims()),
    "hopper: 20 mismatches": lambda c: _run(
        HOPPER,
        caches=c,
        expected_nonce=HOPPER[0].report_bytes[4:36],
        rim_source=MappedRims(
            {
                "NV_GPU_DRIVER_GH100_550.90.07": "Driver_RIM_test_no_gpu.swidtag",
                "NV_GPU_VBIOS_1010_0200_882_96009F0001": (
                    "1010_0200_882_96005E0001_test_no_gpu.swidtag"
                ),
            }
        ),
    ),
    "hopper without RIMs": lambda c: _run(
        HOPPER, caches=c, expected_nonce=HOPPER[0].report_bytes[4:36]
    ),
    "ppcie: 12 devices": lambda c: _run(PPCIE, caches=c, expected_nonce=PPCIE_NONCE, at=TODAY),
    "stapled mode without answers": lambda c: _run(
        LEGACY, caches=c, revocation_mode="stapled", ocsp_source=StapledOcsp([])
    ),
}


def _facts(result: EvidenceSetResult) -> object:
    return (result.to_json(), [(d.failures, d.warnings, d.ocsp) for d in result.devices])


@pytest.mark.parametrize("case", sorted(CASES))
def test_pool_gives_the_sequential_result(case: str, workers: Callable[[int], int]) -> None:
    run = CASES[case]
    workers(0)
    expected = _facts(run(VerifierCaches()))
    for n in (1, 2, 4):
        workers(n)
        for _ in range(3):
            assert _facts(run(VerifierCaches())) == expected, (case, n)


def test_cases_fail_where_they_should() -> None:
    """The comparison above is not between two empty answers."""
    statuses = {name: run(VerifierCaches()).status for name, run in CASES.items()}
    assert statuses["legacy passes"] is Status.WARNING  # revocation skip
    assert all(s is Status.CONTRAINDICATED for n, s in statuses.items() if n != "legacy passes")
    swapped = CASES["device chain out of order + RIMs expired"](VerifierCaches()).devices[0]
    fields = [f.field for f in swapped.failures]
    assert fields.index("x-nvidia-gpu-attestation-report-cert-chain") < fields.index(
        "x-nvidia-gpu-driver-rim-cert-chain"
    )
    tampered = CASES["driver RIM tampered"](VerifierCaches()).devices[0]
    assert "x-nvidia-gpu-driver-rim-signature-verified" in {f.field for f in tampered.failures}


def test_cold_pipeline_link_counts_do_not_depend_on_timing(
    workers: Callable[[int], int],
) -> None:
    """Both RIM chains may be checked at the same moment; their shared links still cost one
    check each: 4 device + 3 driver + 1 VBIOS link signatures, 2 answered by the cache."""
    workers(2)
    for _ in range(10):
        caches = VerifierCaches()
        _run(LEGACY, caches=caches)
        assert (caches.chains.link_misses, caches.chains.link_hits) == (8, 2)


def test_warm_verification_never_touches_the_pool(workers: Callable[[int], int]) -> None:
    caches = VerifierCaches()
    workers(2)
    first = _run(LEGACY, caches=caches)
    workers(2)  # a fresh, not yet started pool
    assert not concurrency._POOL.started
    again = _run(LEGACY, caches=caches)
    assert again.devices == first.devices
    assert not concurrency._POOL.started  # nothing cold: nothing offered, no thread started


# ---------------------------------------------------------------------------------------------
# stapled OCSP answers (emulated Hopper: real SPDM, chains, signed RIMs, issuer-signed OCSP)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmulationPki, EmulatedGpu]:
    pki = EmulationPki.create(Path(tmp_path_factory.mktemp("emulation")) / "pki")
    return pki, EmulatedGpu(pki)


def test_stapled_ocsp_on_the_pool_gives_the_sequential_result(
    emulated: tuple[EmulationPki, EmulatedGpu], workers: Callable[[int], int]
) -> None:
    pki, gpu = emulated
    at = datetime.now(UTC)
    nonce = os.urandom(32)
    item = DeviceEvidenceIn(
        "HOPPER",
        gpu.report(nonce),
        gpu.certificate_chain_pem(),
        gpu.ocsp_responses(at),
        (gpu.driver_rim(), gpu.vbios_rim()),
    )
    evidence = to_device_evidence([item])

    def run(responses: tuple[bytes, ...]) -> object:
        return _facts(
            verify_gpu_evidence(
                evidence,
                at=at,
                expected_nonce=nonce,
                rim_source=RimCollection(item.rims),
                revocation_mode="stapled",
                ocsp_source=StapledOcsp(responses),
                caches=emulation_caches(pki),
            )
        )

    everything = tuple(item.ocsp_responses)
    some = everything[::2]  # several certificates without an answer: several failures
    workers(0)
    expected = {"all": run(everything), "some": run(some)}
    assert expected["all"][0]["status"] == "affirming"  # type: ignore[index]
    assert expected["some"][0]["status"] == "contraindicated"  # type: ignore[index]
    for n in (1, 2):
        workers(n)
        for _ in range(3):
            assert run(everything) == expected["all"]
            assert run(some) == expected["some"]


# ---------------------------------------------------------------------------------------------
# stapled OCSP checks started ahead of their steps (device chain and both RIM chains)


def _stapled_variants(
    pki: EmulationPki, gpu: EmulatedGpu
) -> tuple[tuple[DeviceEvidence, ...], datetime, bytes, dict[str, Callable[[], object]]]:
    """Emulated stapled evidence, and named ways to verify it: passing, and failing in the
    OCSP steps (missing, stale, forged answers), in the device chain (so its prefetched OCSP
    work is dropped) and in a RIM (its OCSP work too)."""
    at = datetime.now(UTC)
    nonce = os.urandom(32)
    report = gpu.report(nonce)
    item = DeviceEvidenceIn(
        "HOPPER",
        report,
        gpu.certificate_chain_pem(),
        gpu.ocsp_responses(at),
        (gpu.driver_rim(), gpu.vbios_rim()),
    )
    evidence = to_device_evidence([item])
    good = tuple(item.ocsp_responses)
    stale = gpu.ocsp_responses(at - timedelta(days=30))
    forged = tuple(_flip(der, len(der) - 3) for der in good)  # signatures broken
    chain = evidence[0].chain
    swapped = (replace(evidence[0], chain=(chain[0], chain[2], chain[1], *chain[3:])),)
    driver = item.rims[0]
    digit = driver.index(b"Hash0=") + 10
    tampered = driver[:digit] + (b"1" if driver[digit : digit + 1] == b"0" else b"0")
    tampered += driver[digit + 1 :]

    def run(
        responses: tuple[bytes, ...],
        devices: tuple[DeviceEvidence, ...] = evidence,
        rims: tuple[bytes, ...] = item.rims,
    ) -> Callable[[], object]:
        def verify() -> object:
            caches = emulation_caches(pki)
            result = verify_gpu_evidence(
                devices,
                at=at,
                expected_nonce=nonce,
                rim_source=RimCollection(rims),
                revocation_mode="stapled",
                ocsp_source=StapledOcsp(responses),
                caches=caches,
            )
            counters = (
                caches.ocsp.hits,
                caches.ocsp.misses,
                len(caches.ocsp),
                caches.chains.link_hits,
                caches.chains.link_misses,
            )
            return (_facts(result), counters)

        return verify

    variants = {
        "all good": run(good),
        "device answers only": run(good[:3]),
        "every other answer": run(good[::2]),
        "stale answers": run(stale),
        "forged answers": run(forged),
        "mixed: stale device, forged RIM": run(stale[:3] + forged[3:]),
        "device chain out of order": run(good, swapped),
        "driver RIM tampered": run(good, rims=(tampered, item.rims[1])),
    }
    return evidence, at, nonce, variants


def test_ocsp_started_ahead_gives_the_sequential_result(
    emulated: tuple[EmulationPki, EmulatedGpu], workers: Callable[[int], int]
) -> None:
    """Every variant, including cache counters, equal with 0, 1 and 2 pool threads."""
    pki, gpu = emulated
    _, _, _, variants = _stapled_variants(pki, gpu)
    workers(0)
    expected = {name: run() for name, run in variants.items()}
    statuses = {name: facts[0][0]["status"] for name, facts in expected.items()}  # type: ignore[index]
    assert statuses.pop("all good") == "affirming"
    assert set(statuses.values()) == {"contraindicated"}
    for n in (1, 2):
        workers(n)
        for _ in range(3):
            for name, run in variants.items():
                assert run() == expected[name], (name, n)


def test_every_cold_ocsp_check_is_started_ahead(
    emulated: tuple[EmulationPki, EmulatedGpu],
    workers: Callable[[int], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cold: the 7 distinct responses (3 device; 4 RIM chain: each RIM's own signer, then the
    shared L3 and CA, which the second RIM's chain asks again and the cache answers) are all
    started ahead and each checked once;
    warm with the same stapled set: nothing started, nothing offered to the pool."""
    pki, gpu = emulated
    evidence, at, nonce, _ = _stapled_variants(pki, gpu)
    item_rims = (gpu.driver_rim(), gpu.vbios_rim())
    stapled = StapledOcsp(gpu.ocsp_responses(at))
    started: list[int] = []
    real_start = OcspPrefetch.start

    def counted(self: OcspPrefetch, certs: object, indices: object) -> None:
        before = len(self)
        real_start(self, certs, indices)  # type: ignore[arg-type]
        started.append(len(self) - before)

    monkeypatch.setattr(OcspPrefetch, "start", counted)
    runs: list[int] = []
    real_run = ocsp_module._PendingCheck.run

    def run_counted(self: ocsp_module._PendingCheck) -> object:
        runs.append(self.cert.serial_number)
        return real_run(self)

    monkeypatch.setattr(ocsp_module._PendingCheck, "run", run_counted)
    caches = emulation_caches(pki)

    def verify() -> EvidenceSetResult:
        return verify_gpu_evidence(
            evidence,
            at=at,
            expected_nonce=nonce,
            rim_source=RimCollection(item_rims),
            revocation_mode="stapled",
            ocsp_source=stapled,
            caches=caches,
        )

    workers(1)
    assert verify().status is Status.AFFIRMING
    # device chain; driver RIM chain (signer, L3, CA); VBIOS RIM chain (its own signer; the
    # shared L3 and CA are already under way)
    assert started == [3, 3, 1]
    assert len(runs) == 7 and len(set(runs)) == 7  # each response checked exactly once
    assert (caches.ocsp.misses, caches.ocsp.hits) == (7, 2)
    started.clear()
    runs.clear()
    workers(1)  # a fresh, not yet started pool
    assert verify().status is Status.AFFIRMING
    assert started == [] and runs == []
    assert not concurrency._POOL.started


def _ask_together(
    cache: ChainCache, chain: tuple[x509.Certificate, ...], root: x509.Certificate, at: datetime
) -> list[object]:
    """Two threads ask ``cache`` for ``chain`` at the same moment; what each got (the chain's
    certificates, or the ``what`` its ChainError names)."""
    barrier = threading.Barrier(2)
    out: list[object] = []

    def ask(what: str) -> None:
        barrier.wait()
        try:
            out.append(cache.verify(chain, root=root, at=at, what=what).certs)
        except ChainError as exc:
            out.append(str(exc).split(":")[0])

    threads = [threading.Thread(target=ask, args=(w,)) for w in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_one_chain_asked_twice_at_once_is_verified_once(
    emulated: tuple[EmulationPki, EmulatedGpu], workers: Callable[[int], int]
) -> None:
    """Two RIMs with one signer chain ask for the same chain, possibly at the same
    moment: the second waits for the first and is a hit, as one after the other (and a chain
    that fails is checked by each asker, with its own error)."""
    pki, _ = emulated
    at = datetime.now(UTC)
    signer_chain = pki.rim_chain("driver")[:3]
    workers(2)
    for _ in range(20):
        cache = ChainCache()
        assert _ask_together(cache, signer_chain, pki.rim_root.cert, at) == [signer_chain] * 2
        assert (cache.misses, cache.hits, cache.link_misses) == (1, 1, 3)
        cache = ChainCache()
        wrong_root = _ask_together(cache, signer_chain, pki.gpu_root.cert, at)
        assert sorted(map(str, wrong_root)) == ["first", "second"]
        assert (cache.misses, cache.hits) == (2, 0)
