"""The broker's appraiser: ``attest.appraise.composite`` plus what the broker holds locally."""

from __future__ import annotations

import hashlib
from datetime import datetime

from cryptography.hazmat.primitives.serialization import Encoding

from agent.broker.service import Appraisal, Appraiser
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import EvidenceBundle
from attest.policy import Policy
from attest.snp.verify import held_crl_name

#: Collateral role prefix of archived trust roots: ``trust-root-<role>-<n>``.
TRUST_ROOT_ROLE_PREFIX = "trust-root-"
#: Collateral role prefix of the AMD CRLs the broker holds: ``broker-amd-crl-<kind>-<product>``,
#: lower case (log roles are; ``broker-amd-crl-vcek-milan``).
AMD_CRL_ROLE_PREFIX = "broker-amd-crl-"
AMD_CRL_MEDIA_TYPE = "application/pkix-crl"


def composite_appraiser(context: AppraisalContext | None = None) -> Appraiser:
    """An appraiser over every device of a bundle. RIMs the broker holds itself (``context.rims``)
    are archived as collateral in the log entry, so a replay years later has the same bytes."""
    ctx = context if context is not None else AppraisalContext()
    held_collateral = tuple(
        (f"broker-rim-{i}", "application/xml", rim) for i, rim in enumerate(ctx.rims)
    )
    # The AMD CRLs it holds, every one with every entry (as its RIMs): the replay must check
    # a report against the same list, and which one applied depends on the report.
    held_collateral += tuple(
        (f"{AMD_CRL_ROLE_PREFIX}{held_crl_name(*key).lower()}", AMD_CRL_MEDIA_TYPE, crl)
        for key, crl in sorted(ctx.amd_crls.items())
    )
    # Candidate roots in archive order, each with its DER and digest, computed once: they are
    # fixed for the appraiser's life, and encoding and hashing them per Attest was a visible
    # part of it (issue #5).
    roots = [(role, cert) for role, cert in sorted(ctx.candidates.items())]
    roots += [("amd_ark", cert) for cert in ctx.amd_extra_arks]
    encoded = []
    for role, cert in roots:
        der = cert.public_bytes(Encoding.DER)
        encoded.append((role, der, hashlib.sha256(der).hexdigest()))

    def appraise(
        bundle: EvidenceBundle, binding: SessionBinding, policy: Policy, at: datetime
    ) -> Appraisal:
        devices, findings = appraise_bundle(bundle, binding, policy, at, context=ctx)
        collateral = list(held_collateral)
        # Roots the policy trusted besides the vendors' are archived too, so an auditor can
        # re-verify years later without being handed them (they are used only if the logged
        # policy lists their SHA-256, exactly as here).
        listed = set(policy.roots.extra_trusted_sha256)
        n = 0
        for role, der, digest in encoded:
            if digest in listed:
                collateral.append(
                    (f"{TRUST_ROOT_ROLE_PREFIX}{role}-{n}", "application/pkix-cert", der)
                )
                n += 1
        return Appraisal(devices=devices, collateral=tuple(collateral), findings=findings)

    return appraise
