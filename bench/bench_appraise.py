"""Composite appraisal throughput (issue #3): one SEV-SNP report + 8 Hopper GPU reports.

The inputs are what a broker sees from one eight-GPU server: emulated hardware
(``agent.emulation``, byte-exact SNP and SPDM reports, 5-certificate device chains, signed
driver and VBIOS RIMs, stapled issuer-signed OCSP answers for every certificate NVIDIA checks),
appraised by the real ``attest.appraise.composite.appraise_bundle`` against the demo policy,
which trusts the emulation roots by SHA-256 (``agent.demo.demo_policy``), through one long-lived
``AppraisalContext`` the way the broker holds it.

Every timed appraisal gets a *fresh* bundle (new session binding, so nine new signed reports);
the chains, RIMs and OCSP verdicts are the same each time and therefore cached. Rows:

* ``p384_verify_x9``: the baseline, measured in the same run: the nine raw ECDSA P-384 / SHA-384
  report-signature checks one appraisal cannot avoid (8 SPDM + 1 SNP), nothing else;
* ``appraise_warm_1cpu_8gpu``: ``appraise_bundle`` with every cache warm; issue #3 target:
  <= 1.5 x the baseline (``appraisals_per_s`` is the throughput on one core);
* ``appraise_cold_1cpu_8gpu``: the same with a fresh ``AppraisalContext`` each time (every
  chain, RIM parse and XML-DSig, OCSP response verified from scratch); informational.

Each result must be affirming with no finding, or the benchmark stops: a fast path that gave
another answer would not be measured.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bench.timing import median_seconds, row

TARGET_RATIO = 1.5
GPUS = 8
#: Distinct pre-signed bundles cycled through (signing is not part of what is measured).
BUNDLES = 40
#: SPDM signature: raw r || s, big-endian P-384 scalars, at the end of the report.
SPDM_SIGNATURE_BYTES = 96
P384_BYTES = 48
#: SEV-SNP: bytes [0, 0x2A0) are signed; R and S are little-endian in 72-byte fields after them.
SNP_SIGNED_BYTES = 0x2A0
SNP_COMPONENT_FIELD = 72


@dataclass(frozen=True)
class _Signed:
    """One report signature, ready for a raw verify."""

    key: ec.EllipticCurvePublicKey
    signature: bytes
    message: bytes


def _spdm_signed(report: bytes, key: ec.EllipticCurvePublicKey) -> _Signed:
    sig = report[-SPDM_SIGNATURE_BYTES:]
    der = encode_dss_signature(
        int.from_bytes(sig[:P384_BYTES], "big"), int.from_bytes(sig[P384_BYTES:], "big")
    )
    return _Signed(key, der, report[:-SPDM_SIGNATURE_BYTES])


def _snp_signed(report: bytes, key: ec.EllipticCurvePublicKey) -> _Signed:
    r = report[SNP_SIGNED_BYTES : SNP_SIGNED_BYTES + P384_BYTES]
    s_off = SNP_SIGNED_BYTES + SNP_COMPONENT_FIELD
    s = report[s_off : s_off + P384_BYTES]
    der = encode_dss_signature(int.from_bytes(r, "little"), int.from_bytes(s, "little"))
    return _Signed(key, der, report[:SNP_SIGNED_BYTES])


def _cycle(items: list[object]) -> Callable[[], object]:
    it: Iterator[object] = itertools.cycle(items)
    return lambda: next(it)


def run() -> list[dict[str, object]]:
    from agent.agent import EMULATED_LAUNCH_MEASUREMENT
    from agent.demo import demo_policy
    from agent.emulation import EmulatedGpu, EmulatedSnp, EmulationPki
    from agent.rpc.server import load_emulation_roots
    from attest.appraise.composite import AppraisalContext, TrustAnchors, appraise_bundle
    from attest.binding import SessionBinding
    from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn
    from attest.ear import Status
    from attest.policy import load_policy
    from attest.snp.verify import load_amd_certificates

    with tempfile.TemporaryDirectory(prefix="lessee-bench-appraise-") as tmp:
        pki_dir = Path(tmp) / "pki"
        pki = EmulationPki.create(pki_dir)
        roots = load_emulation_roots(pki_dir)  # what ``broker serve --trust-emulation`` loads
    policy = load_policy(json.dumps(demo_policy(list(pki.root_fingerprints().values()), "00" * 32)))

    def new_context() -> AppraisalContext:
        return AppraisalContext(
            candidates={
                "nvidia_device_root": roots.nvidia_device_root,
                "nvidia_rim_root": roots.nvidia_rim_root,
            },
            amd_extra_arks=(roots.amd_ark,),
        )

    gpus = [EmulatedGpu(pki, index=i) for i in range(GPUS)]
    snp = EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)
    snp_certs = snp.certificates()
    snp_crl = snp.crl(datetime.now(UTC))
    ocsp = {g.index: g.ocsp_responses(datetime.now(UTC)) for g in gpus}
    chains = {g.index: g.certificate_chain_pem() for g in gpus}
    rims = (gpus[0].driver_rim(), gpus[0].vbios_rim())  # one RIM pair serves all eight
    gpu_keys = {g.index: g.identity.leaf.cert.public_key() for g in gpus}
    vcek_key = load_amd_certificates(snp_certs[0])[0].public_key()
    assert isinstance(vcek_key, ec.EllipticCurvePublicKey)

    sessions: list[tuple[EvidenceBundle, SessionBinding]] = []
    signed: list[list[_Signed]] = []
    for _ in range(BUNDLES):
        binding = SessionBinding(report_data=os.urandom(64), gpu_nonce=os.urandom(32))
        cpu_report = snp.report(binding.report_data)
        reports = {g.index: g.report(binding.gpu_nonce) for g in gpus}
        bundle = EvidenceBundle(
            cpu=SnpEvidenceIn(cpu_report, snp_certs, crl=snp_crl),
            gpus=tuple(
                DeviceEvidenceIn("HOPPER", reports[g.index], chains[g.index], ocsp[g.index], rims)
                for g in gpus
            ),
            cc_mode_on=True,
            devtools_on=False,
        )
        sessions.append((bundle, binding))
        per: list[_Signed] = []
        for g in gpus:
            key = gpu_keys[g.index]
            assert isinstance(key, ec.EllipticCurvePublicKey)
            per.append(_spdm_signed(reports[g.index], key))
        per.append(_snp_signed(cpu_report, vcek_key))
        signed.append(per)
    at = datetime.now(UTC)  # the OCSP answers were produced just before

    def appraise(ctx: AppraisalContext, session: tuple[EvidenceBundle, SessionBinding]) -> None:
        devices, findings = appraise_bundle(session[0], session[1], policy, at, context=ctx)
        if findings or len(devices) != GPUS + 1:
            raise RuntimeError(f"benchmark bundle no longer appraises cleanly: {findings}")
        for d in devices:
            if d.status is not Status.AFFIRMING:
                raise RuntimeError(f"benchmark bundle: {d.name} is {d.status.value}")

    next_signed = _cycle(list(signed))
    ecdsa = ec.ECDSA(hashes.SHA384())

    def raw_verifies() -> None:
        batch = next_signed()
        assert isinstance(batch, list)
        for s in batch:
            s.key.verify(s.signature, s.message, ecdsa)

    warm_ctx = new_context()
    for session in sessions:  # warm-up: every bundle once, each checked affirming
        appraise(warm_ctx, session)
    next_session = _cycle(list(sessions))

    def warm() -> None:
        session = next_session()
        assert isinstance(session, tuple)
        appraise(warm_ctx, session)

    def cold() -> None:
        session = next_session()
        assert isinstance(session, tuple)
        appraise(new_context(), session)

    baseline = median_seconds(raw_verifies, repeat=200, warmup=10)
    warm_s = median_seconds(warm, repeat=200, warmup=10)
    cold_s = median_seconds(cold, repeat=10, warmup=1)
    caches = warm_ctx.caches_for(TrustAnchors.for_policy(policy, candidates=warm_ctx.candidates))
    facts = {
        "rim_parse_hits": warm_ctx.rim_parses.hits,
        "rim_parse_misses": warm_ctx.rim_parses.misses,
        "pem_chain_hits": warm_ctx.pem_chains.hits,
        "ocsp_verdict_hits": caches.ocsp.hits,
        "ocsp_verdict_misses": caches.ocsp.misses,
        "snp_chain_hits": warm_ctx.snp_chains.hits,
    }
    return [
        row("p384_verify_x9", baseline, reports=GPUS + 1),
        row(
            "appraise_warm_1cpu_8gpu",
            warm_s,
            baseline_name="p384_verify_x9",
            baseline_seconds=baseline,
            target_ratio=TARGET_RATIO,
            appraisals_per_s=round(1 / warm_s, 1),
            fresh_reports=True,
            **facts,
        ),
        row(
            "appraise_cold_1cpu_8gpu",
            cold_s,
            baseline_name="p384_verify_x9",
            baseline_seconds=baseline,
            appraisals_per_s=round(1 / cold_s, 1),
            measured="fresh AppraisalContext per appraisal",
        ),
    ]


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
