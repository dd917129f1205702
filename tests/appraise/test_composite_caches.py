"""AppraisalContext's caches: a broker's next appraisal reuses loads, parses and verifications.

Emulated SEV-SNP + Hopper bundles (``agent.emulation``) appraised with the demo policy, which
trusts the emulation roots by SHA-256, exactly as the broker does. For each cache: hits give the
fresh answer, a time outside the validity window gets the full check, failures are not kept,
and concurrent appraisals through one context agree.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.agent import EMULATED_LAUNCH_MEASUREMENT
from agent.demo import demo_policy
from agent.emulation import EmulatedGpu, EmulatedSnp, EmulationPki
from agent.emulation.pki import VCEK_VALIDITY
from attest.appraise import composite
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn
from attest.ear import Status
from attest.policy import Policy, load_policy
from tests.appraise.test_composite import emulated_context

GPUS = 2
BAD_PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


class _Default:
    """The setup's own CRL (``None`` means a bundle without one)."""


DEFAULT = _Default()


class Setup:
    def __init__(self, directory: Path) -> None:
        self.pki = EmulationPki.create(directory)
        self.policy: Policy = load_policy(
            json.dumps(demo_policy(list(self.pki.root_fingerprints().values()), "00" * 32))
        )
        self.gpus = [EmulatedGpu(self.pki, index=i) for i in range(GPUS)]
        self.snp = EmulatedSnp(self.pki, measurement=EMULATED_LAUNCH_MEASUREMENT)
        self.made = datetime.now(UTC)
        self.ocsp = {g.index: g.ocsp_responses(self.made) for g in self.gpus}
        self.crl = self.snp.crl(self.made)

    def context(self) -> AppraisalContext:
        return emulated_context(self.pki)

    def session(self, *, cpu_certs: tuple[bytes, ...] | None = None, chain: bytes | None = None,
                crl: bytes | _Default | None = DEFAULT) -> tuple[EvidenceBundle, SessionBinding]:  # fmt: skip
        binding = SessionBinding(report_data=os.urandom(64), gpu_nonce=os.urandom(32))
        gpus = tuple(
            DeviceEvidenceIn(
                "HOPPER",
                g.report(binding.gpu_nonce),
                chain if chain is not None else g.certificate_chain_pem(),
                self.ocsp[g.index],
                (g.driver_rim(), g.vbios_rim()),
            )
            for g in self.gpus
        )
        cpu = SnpEvidenceIn(
            self.snp.report(binding.report_data),
            cpu_certs if cpu_certs is not None else self.snp.certificates(),
            self.crl if isinstance(crl, _Default) else crl,
        )
        return EvidenceBundle(cpu=cpu, gpus=gpus, cc_mode_on=True, devtools_on=False), binding


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(Path(tmp_path_factory.mktemp("emulation")) / "pki")


def _verdict(
    setup: Setup, ctx: AppraisalContext, session: tuple[EvidenceBundle, SessionBinding],
    at: datetime,
) -> list[tuple[str, Status, list[str]]]:  # fmt: skip
    devices, findings = appraise_bundle(session[0], session[1], setup.policy, at, context=ctx)
    out = [(d.name, d.status, sorted(f.field for f in d.findings)) for d in devices]
    return out + [("enclave", Status.CONTRAINDICATED, [f.field for f in findings])] * bool(findings)


def test_next_appraisal_hits_every_cache_and_agrees_with_a_fresh_context(setup: Setup) -> None:
    ctx = setup.context()
    at = datetime.now(UTC)
    first = _verdict(setup, ctx, setup.session(), at)
    assert [s for _, s, _ in first] == [Status.AFFIRMING] * (GPUS + 1)
    session = setup.session()
    warm = _verdict(setup, ctx, session, at)
    assert warm == _verdict(setup, setup.context(), session, at) == first
    assert ctx.pem_chains.hits == GPUS and len(ctx.pem_chains) == GPUS
    assert ctx.amd_certificates.hits == 2 and len(ctx.amd_certificates) == 2  # VCEK, ASK+ARK
    assert ctx.snp_chains.hits == 1
    assert (ctx.snp_crls.misses, ctx.snp_crls.hits, len(ctx.snp_crls)) == (1, 1, 1)
    assert ctx.rim_parses.misses == 2 and ctx.rim_parses.hits == 2  # one pair per bundle
    assert ctx.stapled_sets.hits == 1


def test_snp_chain_cache_misses_outside_the_window(setup: Setup) -> None:
    ctx = setup.context()
    at = datetime.now(UTC)
    assert _verdict(setup, ctx, setup.session(), at)[0][1] is Status.AFFIRMING
    expired = setup.pki.created_at + VCEK_VALIDITY + timedelta(days=1)
    session = setup.session()
    warm = _verdict(setup, ctx, session, expired)
    assert warm[0][1] is Status.CONTRAINDICATED and warm[0][2] == ["snp.verification"]
    assert warm == _verdict(setup, setup.context(), session, expired)


def _cpu_detail(
    setup: Setup, ctx: AppraisalContext, session: tuple[EvidenceBundle, SessionBinding],
    at: datetime,
) -> tuple[Status, list[tuple[str, object, str]]]:  # fmt: skip
    devices, _ = appraise_bundle(session[0], session[1], setup.policy, at, context=ctx)
    cpu = devices[0]
    return cpu.status, [(f.field, f.actual, f.severity.value) for f in cpu.findings]


def test_snp_crl_cache_hits_inside_the_window_and_checks_again_outside(setup: Setup) -> None:
    """A CRL verdict is reused only between its lastUpdate and nextUpdate, keyed by the CRL's
    bytes: at any other time, or for other bytes, the full check runs and answers as a fresh
    context does; failures (stale, not yet valid) are never kept."""
    from cryptography import x509

    crl = x509.load_der_x509_crl(setup.crl)
    next_update = crl.next_update_utc
    assert next_update is not None
    ctx = setup.context()
    inside = next_update - timedelta(seconds=1)
    session = setup.session()
    assert _cpu_detail(setup, ctx, session, inside) == (Status.AFFIRMING, [])
    assert (ctx.snp_crls.misses, ctx.snp_crls.hits) == (1, 0)
    assert _cpu_detail(setup, ctx, setup.session(), crl.last_update_utc) == (Status.AFFIRMING, [])
    assert (ctx.snp_crls.misses, ctx.snp_crls.hits) == (1, 1)
    for at, reason in (
        (next_update + timedelta(seconds=1), "crl_stale"),
        (crl.last_update_utc - timedelta(seconds=1), "crl_not_yet_valid"),
    ):
        verdict = _cpu_detail(setup, ctx, session, at)
        assert verdict == (Status.CONTRAINDICATED, [("snp.verification", reason, "reject")])
        assert verdict == _cpu_detail(setup, setup.context(), session, at)
    assert (ctx.snp_crls.misses, ctx.snp_crls.hits, len(ctx.snp_crls)) == (3, 1, 1)
    # a CRL of other bytes (the next publication, made with under a day of the first left) is
    # checked in full, then kept beside the first
    at = setup.made + timedelta(days=6, hours=12)
    later = setup.pki.amd_crl(at=at)
    assert later != setup.crl
    assert _cpu_detail(setup, ctx, setup.session(crl=later), at) == (Status.AFFIRMING, [])
    assert (ctx.snp_crls.misses, len(ctx.snp_crls)) == (4, 2)


def test_snp_without_crl_is_refused_by_the_demo_policy(setup: Setup) -> None:
    """The demo policy keeps missing_revocation: reject, so emulated evidence without its CRL
    is refused for exactly that, and nothing is put in the CRL cache."""
    ctx = setup.context()
    verdict = _cpu_detail(setup, ctx, setup.session(crl=None), datetime.now(UTC))
    assert verdict == (Status.CONTRAINDICATED, [("snp.revocation", "missing", "reject")])
    assert len(ctx.snp_crls) == 0


def test_unreadable_chain_is_a_finding_every_time_and_never_kept(setup: Setup) -> None:
    ctx = setup.context()
    at = datetime.now(UTC)
    for _ in range(2):
        verdict = _verdict(setup, ctx, setup.session(chain=BAD_PEM), at)
        assert verdict[-1] == ("enclave", Status.CONTRAINDICATED, ["gpu.evidence"])
    assert len(ctx.pem_chains) == 0 and ctx.pem_chains.hits == 0


def test_unreadable_amd_certificate_is_refused_every_time_and_never_kept(setup: Setup) -> None:
    ctx = setup.context()
    at = datetime.now(UTC)
    vcek, _ = setup.snp.certificates()
    for _ in range(2):
        verdict = _verdict(setup, ctx, setup.session(cpu_certs=(vcek[:-1],)), at)
        assert verdict[0] == ("cpu0", Status.CONTRAINDICATED, ["snp.verification"])
    assert len(ctx.amd_certificates) == 0


def test_stapled_sets_are_shared_only_for_the_same_bytes(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = setup.context()
    answers = setup.ocsp[0]
    assert ctx.stapled(answers) is ctx.stapled(list(answers))
    assert ctx.stapled(answers[::-1]) is not ctx.stapled(answers)
    monkeypatch.setattr(composite, "MAX_CACHED_STAPLED_SET_BYTES", 16)
    big = setup.ocsp[1]
    assert ctx.stapled(big) is not ctx.stapled(big)  # too large to keep: built per bundle
    assert len(ctx.stapled_sets) == 2


def test_concurrent_appraisals_share_one_context(setup: Setup) -> None:
    ctx = setup.context()
    at = datetime.now(UTC)
    sessions = [setup.session() for _ in range(8)]
    verdicts: list[list[tuple[str, Status, list[str]]]] = []
    lock = threading.Lock()

    def work(session: tuple[EvidenceBundle, SessionBinding]) -> None:
        v = _verdict(setup, ctx, session, at)
        with lock:
            verdicts.append(v)

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(verdicts) == 8
    assert all([s for _, s, _ in v] == [Status.AFFIRMING] * (GPUS + 1) for v in verdicts)
    assert len(ctx._caches) == 1  # one VerifierCaches for the one trust-anchor set
