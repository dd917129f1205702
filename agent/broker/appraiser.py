"""The broker's appraiser: ``attest.appraise.composite`` plus what the broker holds locally."""

from __future__ import annotations

from datetime import datetime

from agent.broker.service import Appraisal, Appraiser
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import EvidenceBundle
from attest.policy import Policy


def composite_appraiser(context: AppraisalContext | None = None) -> Appraiser:
    """An appraiser over every device of a bundle. RIMs the broker holds itself (``context.rims``)
    are archived as collateral in the log entry, so a replay years later has the same bytes."""
    ctx = context if context is not None else AppraisalContext()

    def appraise(
        bundle: EvidenceBundle, binding: SessionBinding, policy: Policy, at: datetime
    ) -> Appraisal:
        devices, findings = appraise_bundle(bundle, binding, policy, at, context=ctx)
        collateral = tuple(
            (f"broker-rim-{i}", "application/xml", rim) for i, rim in enumerate(ctx.rims)
        )
        return Appraisal(devices=devices, collateral=collateral, findings=findings)

    return appraise
