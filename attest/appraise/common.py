"""Shared appraisal types: one ``DeviceAppraisal`` per submodule, AR4SI trust vectors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from attest.ear import (
    AFFIRMING_VALUE,
    CONTRAINDICATED_VALUE,
    WARNING_VALUE,
    Status,
    Submodule,
)
from attest.findings import Finding, Severity

#: The EAR submodule for findings about the enclave as a whole (no GPU evidence, a topology
#: rule, a GPU whose evidence failed verification before it could be named a device). Without
#: it a token whose device submodules all affirm would *say* affirming while the decision was
#: not, and a relying party that reads only the signed status (the agent, the client SDK, any
#: EAR consumer) would trust an enclave the broker refused. No device is ever named this.
ENCLAVE_SUBMODULE = "enclave"


def findings_status(findings: Iterable[Finding]) -> Status:
    """A ``reject`` finding contraindicates, any other finding warns, none affirms."""
    status = Status.AFFIRMING
    for f in findings:
        if f.severity is Severity.REJECT:
            return Status.CONTRAINDICATED
        status = Status.WARNING
    return status


def appraisal_status(devices: Iterable[DeviceAppraisal], findings: Iterable[Finding]) -> Status:
    """The decision of one appraisal: the worst of every device's status and of the enclave
    findings' (``findings_status``); nothing appraised at all contraindicates. The broker signs
    it and a zero-trust client (``agent.client.evidence_check``) requires it affirming, so both
    reach a verdict from the same ``appraise_bundle`` output the same way."""
    statuses = [d.status for d in devices]
    findings = tuple(findings)
    if findings:
        statuses.append(findings_status(findings))
    return Status.worst(statuses) if statuses else Status.CONTRAINDICATED


def result_submodules(
    devices: Iterable[DeviceAppraisal], findings: Iterable[Finding], policy_id: str
) -> dict[str, Submodule]:
    """The EAR submodules of one appraisal: one per device, and :data:`ENCLAVE_SUBMODULE` when
    there are enclave-level findings, with their status (the findings themselves travel in the
    result's ``ear.lessee.findings`` claim). The token's status, the worst of its submodules,
    is then the decision's: the broker, ``lessee appraise`` and the auditor's replay all build
    results with this."""
    out = {d.name: d.submodule(policy_id) for d in devices}
    findings = tuple(findings)
    if findings:
        if ENCLAVE_SUBMODULE in out:
            raise ValueError(f"a device may not be named {ENCLAVE_SUBMODULE!r}")
        out[ENCLAVE_SUBMODULE] = Submodule(findings_status(findings), policy_id=policy_id)
    return out


@dataclass(frozen=True)
class DeviceAppraisal:
    """The verdict on one device (``cpu0``, ``gpu3``, ``switch1``)."""

    name: str
    findings: tuple[Finding, ...]
    #: AR4SI claim name -> category of the checks feeding it (see ``trust_vector``).
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Facts worth carrying in the result (e.g. NVIDIA claims, the SNP measurement).
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return findings_status(self.findings)

    def trust_vector(self) -> dict[str, int]:
        """Each AR4SI claim is affirming unless a finding in one of its fields says otherwise."""
        if not self.findings:  # the common case: nothing to look up per claim
            return dict.fromkeys(self.categories, AFFIRMING_VALUE)
        out: dict[str, int] = {}
        for claim, prefixes in self.categories.items():
            hits = [f for f in self.findings if f.field.startswith(prefixes)]
            if any(f.severity is Severity.REJECT for f in hits):
                out[claim] = CONTRAINDICATED_VALUE
            elif hits:
                out[claim] = WARNING_VALUE
            else:
                out[claim] = AFFIRMING_VALUE
        return out

    def submodule(self, policy_id: str) -> Submodule:
        """This device's EAR submodule. The claims are copied (the submodule must not change if
        the caller's mapping does), findings appended in order; signed into every result, so
        the output is fixed (``tests/appraise/test_submodule_output.py``)."""
        extra: dict[str, Any] = dict(self.claims)
        if self.findings:
            extra["ear.lessee.findings"] = [f.to_json() for f in self.findings]
        return Submodule(self.status, self.trust_vector(), policy_id, extra)


class FindingCollector:
    """Collects findings for one device; ``expect`` reads like the check it performs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.findings: list[Finding] = []

    def expect(
        self,
        ok: bool,
        field: str,
        expected: Any,
        actual: Any,
        *,
        severity: Severity = Severity.REJECT,
        detail: str = "",
    ) -> None:
        if not ok:
            self.findings.append(Finding(self.device, field, expected, actual, severity, detail))

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)
