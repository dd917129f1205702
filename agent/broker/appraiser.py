"""The broker's appraiser: ``attest.appraise.composite`` plus what the broker holds locally."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.serialization import Encoding

from agent.broker.service import Appraisal
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import EvidenceBundle
from attest.errors import InputError
from attest.policy import Policy
from attest.snp.report import Product, SigningKey
from attest.snp.verify import held_crl_dates, held_crl_name

#: Collateral role prefix of archived trust roots: ``trust-root-<role>-<n>``.
TRUST_ROOT_ROLE_PREFIX = "trust-root-"
#: Collateral role prefix of the AMD CRLs the broker holds: ``broker-amd-crl-<kind>-<product>``,
#: lower case (log roles are; ``broker-amd-crl-vcek-milan``).
AMD_CRL_ROLE_PREFIX = "broker-amd-crl-"
AMD_CRL_MEDIA_TYPE = "application/pkix-crl"


Collateral = tuple[tuple[str, str, bytes], ...]


@dataclass(frozen=True)
class HeldSnapshot:
    """What the appraiser holds at one moment: the context (its RIMs and AMD CRLs) and the
    same RIMs and CRLs as archived collateral. One object, swapped whole by a reload, so an
    appraisal reads both from the same snapshot: the lists it checked are the lists it archives."""

    context: AppraisalContext
    collateral: Collateral


def _snapshot(ctx: AppraisalContext) -> HeldSnapshot:
    held = tuple((f"broker-rim-{i}", "application/xml", rim) for i, rim in enumerate(ctx.rims))
    # The AMD CRLs it holds, every one with every entry (as its RIMs): the replay must check
    # a report against the same list, and which one applied depends on the report.
    held += tuple(
        (f"{AMD_CRL_ROLE_PREFIX}{held_crl_name(*key).lower()}", AMD_CRL_MEDIA_TYPE, crl)
        for key, crl in sorted(ctx.amd_crls.items())
    )
    return HeldSnapshot(ctx, held)


@dataclass(frozen=True)
class ReloadReport:
    """What a reload changed, for the broker's log line (names and dates, never bytes)."""

    rims: int
    #: ``<kind>-<product>`` of every list now held, with its thisUpdate and nextUpdate (ISO).
    amd_crls: dict[str, tuple[str, str | None]]
    #: Lists held before and not any more: reports of that kind and product fall back to the
    #: CRL in their evidence, so the operator should see it.
    amd_crls_dropped: tuple[str, ...]


class CompositeAppraiser:
    """An appraiser over every device of a bundle. RIMs the broker holds itself
    (``context.rims``) and the AMD CRLs it holds (``context.amd_crls``) are archived as
    collateral in every log entry, so a replay years later has the same bytes.

    ``reload`` replaces the held RIMs and CRLs while the broker serves (a held list past its
    nextUpdate refuses every report of its kind and product): the new inputs
    share the old context's caches (keyed by exact bytes), and an appraisal already running
    finishes with the snapshot it started with.
    """

    def __init__(self, context: AppraisalContext | None = None) -> None:
        ctx = context if context is not None else AppraisalContext()
        self._held = _snapshot(ctx)
        self._reload_lock = threading.Lock()
        #: The newest thisUpdate held for each (kind, product) since this broker started,
        #: kept when a reload drops the list: a reload that dropped it and then one that
        #: brought an older list back would otherwise go back in time in two steps.
        self._crl_high_water: dict[tuple[SigningKey, Product], datetime] = {
            key: held_crl_dates(crl)[0] for key, crl in ctx.amd_crls.items()
        }
        # Candidate roots in archive order, each with its DER and digest, computed once: they
        # are fixed for the appraiser's life (a reload changes RIMs and CRLs only), and
        # encoding and hashing them per Attest was a visible part of it (issue #5).
        roots = [(role, cert) for role, cert in sorted(ctx.candidates.items())]
        roots += [("amd_ark", cert) for cert in ctx.amd_extra_arks]
        self._roots = tuple(
            (role, der, hashlib.sha256(der).hexdigest())
            for role, der in ((role, cert.public_bytes(Encoding.DER)) for role, cert in roots)
        )

    @property
    def held(self) -> HeldSnapshot:
        return self._held

    def reload(
        self, *, rims: Sequence[bytes], amd_crls: Mapping[tuple[SigningKey, Product], bytes]
    ) -> ReloadReport:
        """Hold these RIMs and AMD CRLs from now on (each CRL already accepted by
        ``attest.snp.verify.load_held_crl``).

        Refused with ``InputError``, holding what it held, if a list would go back in time:
        a CRL whose thisUpdate is older than that of any list held for the same kind and
        product since the broker started (one dropped by an earlier reload included). A
        rollback is how a list made before a revocation would come back.
        """
        with self._reload_lock:
            old = self._held.context
            dates = {key: held_crl_dates(crl)[0] for key, crl in amd_crls.items()}
            for key, now in sorted(dates.items()):
                was = self._crl_high_water.get(key)
                if was is not None and now < was:
                    raise InputError(
                        f"{held_crl_name(*key)}: thisUpdate {now.isoformat()} is older than "
                        f"the held list's ({was.isoformat()}; one an earlier reload dropped "
                        "counts); a reload never goes back to an older list"
                    )
            ctx = old.sharing_caches(
                rims=rims,
                candidates=old.candidates,
                amd_extra_arks=old.amd_extra_arks,
                amd_crls=amd_crls,
            )
            self._held = _snapshot(ctx)  # one reference swapped: appraisals see old or new
            for key, now in dates.items():
                self._crl_high_water[key] = max(now, self._crl_high_water.get(key, now))
        dropped = tuple(held_crl_name(*key) for key in sorted(old.amd_crls) if key not in amd_crls)
        return _report(ctx, dropped)

    def describe(self) -> ReloadReport:
        """What is held now (the broker logs it at start)."""
        return _report(self._held.context, ())

    def __call__(
        self, bundle: EvidenceBundle, binding: SessionBinding, policy: Policy, at: datetime
    ) -> Appraisal:
        held = self._held  # read once: the lists checked are the lists archived
        devices, findings = appraise_bundle(bundle, binding, policy, at, context=held.context)
        collateral = list(held.collateral)
        # Roots the policy trusted besides the vendors' are archived too, so an auditor can
        # re-verify years later without being handed them (they are used only if the logged
        # policy lists their SHA-256, exactly as here).
        listed = set(policy.roots.extra_trusted_sha256)
        n = 0
        for role, der, digest in self._roots:
            if digest in listed:
                collateral.append(
                    (f"{TRUST_ROOT_ROLE_PREFIX}{role}-{n}", "application/pkix-cert", der)
                )
                n += 1
        return Appraisal(devices=devices, collateral=tuple(collateral), findings=findings)


def _report(ctx: AppraisalContext, dropped: tuple[str, ...]) -> ReloadReport:
    return ReloadReport(
        rims=len(ctx.rims),
        amd_crls={held_crl_name(*key): _window(crl) for key, crl in sorted(ctx.amd_crls.items())},
        amd_crls_dropped=dropped,
    )


def _window(crl: bytes) -> tuple[str, str | None]:
    this_update, next_update = held_crl_dates(crl)
    return this_update.isoformat(), next_update.isoformat() if next_update is not None else None


def composite_appraiser(context: AppraisalContext | None = None) -> CompositeAppraiser:
    """The broker's appraiser over ``context`` (see ``CompositeAppraiser``)."""
    return CompositeAppraiser(context)
