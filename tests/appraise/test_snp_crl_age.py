"""``freshness.max_collateral_age_seconds`` bounds the age of the AMD CRL a SEV-SNP report is
checked against, as it bounds TDX's collateral.

It was applied to TDX only: an AMD CRL still inside its (lastUpdate, nextUpdate) window passed
however old, whatever the policy said. The CRL judged is the one ``verify_snp_report`` used:
the broker's own for the report's key kind and product when it holds one, else the evidence's.
Emulated SEV-SNP (Milan, VCEK) evidence with CRLs the emulated ARK signs.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from agent.agent import EMULATED_LAUNCH_MEASUREMENT
from agent.demo import demo_policy
from agent.emulation import EmulatedSnp, EmulationPki
from agent.emulation.pki import AMD_CRL_BACKDATE
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import EvidenceBundle, SnpEvidenceIn
from attest.ear import Status
from attest.policy import load_policy
from attest.snp.report import Product, SigningKey

#: Listed on every CRL made here, so the emulation makes a fresh one each time (it remembers
#: only its revocation-free list); no certificate of the chain has this serial.
UNRELATED_SERIAL = 7


def _crl(pki: EmulationPki, made: datetime) -> bytes:
    """A CRL whose lastUpdate is ``made - AMD_CRL_BACKDATE`` (nextUpdate a week after ``made``)."""
    return pki.amd_crl(at=made, revoked_serials=(UNRELATED_SERIAL,))


def _cpu(
    pki: EmulationPki,
    crl: bytes | None,
    max_age: int,
    at: datetime,
    held: bytes | None = None,
) -> tuple[Status, list[tuple[str, object, object, str]]]:
    doc = demo_policy(list(pki.root_fingerprints().values()), "00" * 32)
    doc["freshness"] = {"max_collateral_age_seconds": max_age}
    binding = SessionBinding(report_data=os.urandom(64), gpu_nonce=bytes(32))
    snp = EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)
    bundle = EvidenceBundle(
        cpu=SnpEvidenceIn(snp.report(binding.report_data), snp.certificates(), crl)
    )
    ctx = AppraisalContext(
        amd_extra_arks=(pki.ark.cert,),
        amd_crls={(SigningKey.VCEK, Product.MILAN): held} if held is not None else {},
    )
    devices, _ = appraise_bundle(bundle, binding, load_policy(json.dumps(doc)), at, context=ctx)
    cpu = devices[0]
    return cpu.status, [(f.field, f.expected, f.actual, f.severity.value) for f in cpu.findings]


def test_an_evidence_crl_older_than_the_policy_allows_is_refused(pki: EmulationPki) -> None:
    at = datetime.now(UTC).replace(microsecond=0)
    crl = _crl(pki, at - timedelta(days=6))  # current: nextUpdate is a day away
    age = int((timedelta(days=6) + AMD_CRL_BACKDATE).total_seconds())
    assert _cpu(pki, crl, 60, at) == (
        Status.CONTRAINDICATED,
        [("snp.collateral.crl.age", "<= 60 s", f"{age} s", "reject")],
    )
    # the same list under a policy that allows a week passes
    assert _cpu(pki, crl, 7 * 86400, at) == (Status.AFFIRMING, [])


def test_a_crl_just_inside_the_limit_passes(pki: EmulationPki) -> None:
    at = datetime.now(UTC).replace(microsecond=0)  # a CRL's times are whole seconds
    crl = _crl(pki, at)  # lastUpdate = at - AMD_CRL_BACKDATE
    limit = int(AMD_CRL_BACKDATE.total_seconds())
    assert _cpu(pki, crl, limit, at) == (Status.AFFIRMING, [])
    assert _cpu(pki, crl, limit - 60, at)[1] == [
        ("snp.collateral.crl.age", f"<= {limit - 60} s", f"{limit} s", "reject")
    ]


def test_the_held_crl_is_the_one_judged(pki: EmulationPki) -> None:
    at = datetime.now(UTC)
    old, fresh = _crl(pki, at - timedelta(days=6)), _crl(pki, at)
    # a fresh held list: the evidence's old one is not used, so its age does not matter
    assert _cpu(pki, old, 86400, at, held=fresh) == (Status.AFFIRMING, [])
    # an old held list: a fresh one in the evidence does not make up for it
    status, findings = _cpu(pki, fresh, 86400, at, held=old)
    assert status is Status.CONTRAINDICATED
    assert [f[0] for f in findings] == ["snp.collateral.crl.age"]


def test_without_a_crl_only_the_missing_revocation_finding(pki: EmulationPki) -> None:
    at = datetime.now(UTC)
    assert _cpu(pki, None, 60, at)[1] == [("snp.revocation", "checked", "missing", "reject")]
