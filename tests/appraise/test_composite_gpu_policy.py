"""GPU policy in the composite appraisal: minimum versions, the declared architecture, and what
``unsafe_skip_rim_match`` downgrades, on the real legacy Hopper report (patched where a test
needs a value the real one does not have: its signature then fails, which must stay a REJECT)."""

from __future__ import annotations

import pytest

from attest.appraise.common import DeviceAppraisal
from attest.appraise.composite import (
    _gpu_policy_findings,
    appraise_bundle,
    driver_version_tuple,
    vbios_version_tuple,
)
from attest.bundle import DeviceEvidenceIn
from attest.ear import Status
from attest.errors import InputError, ParseError
from attest.findings import Finding, Severity
from attest.nvidia.claims import Failure
from attest.nvidia.opaque import DeviceKind, parse_device_report
from attest.nvidia.verifier import DeviceResult
from attest.nvidia.verifier import Status as VerifierStatus
from tests.appraise.test_composite import (
    LEGACY_CHAIN,
    LEGACY_REPORT,
    RIMS,
    _binding,
    _bundle,
    gpu_policy,
)
from tests.conftest import NVIDIA, RIM_ERA

#: The real report's signed versions (its claims upper-case the VBIOS hex).
REAL_DRIVER = "545.00"
REAL_VBIOS = "96.00.5E.00.01"
SIGNATURE = "x-nvidia-gpu-attestation-report-signature-verified"


def _gpu(report: bytes = LEGACY_REPORT, **gpu: object) -> DeviceAppraisal:
    devices, findings = appraise_bundle(
        _bundle(gpus=(DeviceEvidenceIn("HOPPER", report, LEGACY_CHAIN, rims=RIMS),)),
        _binding(),
        gpu_policy(**gpu),
        RIM_ERA,
    )
    assert findings == ()
    return devices[1]


def _with_opaque(name: str, value: bytes) -> bytes:
    """The real report with one opaque field's value replaced (same length; signature broken)."""
    report = parse_device_report(LEGACY_REPORT, DeviceKind.GPU)
    (f,) = [x for x in report.opaque.fields if x.name == name]
    assert len(value) == len(f.value)
    opaque_start = LEGACY_REPORT.rindex(report.spdm.response.opaque_data)
    at = opaque_start + f.offset + 4  # type (2 bytes) and length (2 bytes), then the value
    assert LEGACY_REPORT[at : at + len(value)] == f.value
    return LEGACY_REPORT[:at] + value + LEGACY_REPORT[at + len(value) :]


def _vbios_bytes(text: str) -> bytes:
    """``opaque.gpu_vbios_text`` backwards: b3.b2.b1.b0.b4 -> the 8 stored bytes."""
    b3, b2, b1, b0, b4 = (int(p, 16) for p in text.split("."))
    return bytes([b0, b1, b2, b3, b4, 0, 0, 0])


def _finding(device: DeviceAppraisal, field: str) -> Finding | None:
    hits = [f for f in device.findings if f.field == field]
    assert len(hits) <= 1
    return hits[0] if hits else None


def _rejects(device: DeviceAppraisal) -> set[str]:
    return {f.field for f in device.findings if f.severity is Severity.REJECT}


# --- version parsing -------------------------------------------------------------------------


def test_vbios_versions_are_hex_in_every_part() -> None:
    # The old parser read all-digit parts as decimal and the rest as hex: 0x1a (26) >= 20.
    assert vbios_version_tuple("96.00.1a.00.01") < vbios_version_tuple("96.00.20.00.01")
    assert vbios_version_tuple("96.00.10.00.01") > vbios_version_tuple("96.00.0f.00.01")
    assert vbios_version_tuple("96.00.5E.00.01") == vbios_version_tuple("96.00.5e.00.01")
    assert vbios_version_tuple("96.00.5e.00.01") == (0x96, 0, 0x5E, 0, 1)


def test_driver_versions_are_decimal() -> None:
    assert driver_version_tuple("535.104.05") == (535, 104, 5)
    assert driver_version_tuple("550.54.15") > driver_version_tuple("545.00")


@pytest.mark.parametrize(
    "text",
    [
        "545.0x",
        "545.0a",
        "",
        "545..0",
        ".545",
        "545.",
        " 545.00",
        "545.00\x00",
        "5" * 10,
        "\u0665\u0664\u0665",
    ],
)
def test_bad_driver_versions_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        driver_version_tuple(text)


@pytest.mark.parametrize("text", ["96.00.5g.00.01", "96.00.5e.00.01 ", "96..00", "1" * 9, ""])
def test_bad_vbios_versions_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        vbios_version_tuple(text)


# --- minimum versions on the real report -----------------------------------------------------


@pytest.mark.parametrize("minimum", ["545.00", "545", "545.0.0", "535.104.05", "100"])
def test_minimum_driver_version_met(minimum: str) -> None:
    gpu = _gpu(minimum_driver_version=minimum)
    assert _finding(gpu, "gpu.minimum_driver_version") is None
    assert gpu.status is Status.WARNING  # only the offline revocation warnings, as without it


@pytest.mark.parametrize("minimum", ["545.1", "545.00.1", "550.54.15", "1000"])
def test_minimum_driver_version_not_met(minimum: str) -> None:
    gpu = _gpu(minimum_driver_version=minimum)
    f = _finding(gpu, "gpu.minimum_driver_version")
    assert f is not None and f.severity is Severity.REJECT
    assert (f.expected, f.actual) == (f">= {minimum}", REAL_DRIVER)
    assert gpu.status is Status.CONTRAINDICATED


@pytest.mark.parametrize(
    "minimum", ["96.00.5e.00.01", "96.00.5E.00.01", "96.00.59.00.01", "96.00.4f.00.01", "95"]
)
def test_minimum_vbios_version_met(minimum: str) -> None:
    gpu = _gpu(minimum_vbios_version=minimum)
    assert _finding(gpu, "gpu.minimum_vbios_version") is None
    assert gpu.status is Status.WARNING


@pytest.mark.parametrize(
    # 96.00.60: 0x60 > 0x5e, though the old parser read "60" as decimal 60 < 0x5e and passed it.
    "minimum",
    ["96.00.60.00.01", "96.00.5f.00.01", "96.00.5e.00.02", "96.00.5e.00.01.01", "97"],
)
def test_minimum_vbios_version_not_met(minimum: str) -> None:
    gpu = _gpu(minimum_vbios_version=minimum)
    f = _finding(gpu, "gpu.minimum_vbios_version")
    assert f is not None and f.severity is Severity.REJECT
    assert (f.expected, f.actual) == (f">= {minimum}", REAL_VBIOS)
    assert gpu.status is Status.CONTRAINDICATED


@pytest.mark.parametrize(
    ("reported", "minimum", "passes"),
    [
        ("96.00.1a.00.01", "96.00.20.00.01", False),  # older VBIOS: passed the minimum before
        ("96.00.10.00.01", "96.00.0f.00.01", True),  # newer VBIOS: failed the minimum before
    ],
)
def test_minimum_vbios_version_mixed_digit_parts(reported: str, minimum: str, passes: bool) -> None:
    gpu = _gpu(_with_opaque("VBIOS_VERSION", _vbios_bytes(reported)), minimum_vbios_version=minimum)
    assert gpu.claims["x-nvidia-gpu-vbios-version"] == reported.upper()
    f = _finding(gpu, "gpu.minimum_vbios_version")
    assert (f is None) is passes
    assert SIGNATURE in _rejects(gpu)  # the patched report is never accepted


def test_tampered_driver_version_is_a_finding_not_an_exception() -> None:
    # The reviewer's repro: the claims come from the parsed report although its signature
    # failed, so their text is the attacker's; it used to reach int() and raise ValueError.
    report = _with_opaque("DRIVER_VERSION", b"545.0x\x00")
    gpu = _gpu(report, minimum_driver_version="535.0")
    f = _finding(gpu, "gpu.minimum_driver_version")
    assert f is not None and f.severity is Severity.REJECT
    assert f.actual == "545.0x"
    assert "not a driver version" in f.detail
    assert SIGNATURE in _rejects(gpu)
    assert gpu.status is Status.CONTRAINDICATED


def test_a_policy_minimum_that_is_not_decimal_is_refused_and_never_raises() -> None:
    # The policy schema refuses a driver minimum that is not decimal when it loads...
    with pytest.raises(InputError, match="minimum_driver_version"):
        gpu_policy(minimum_driver_version="545.0a")
    # ...and a policy object that carries one anyway (built without validation) still gives a
    # REJECT finding at appraisal, never an exception.
    base = gpu_policy()
    policy = base.model_copy(
        update={"gpu": base.gpu.model_copy(update={"minimum_driver_version": "545.0a"})}
    )
    devices, findings = appraise_bundle(
        _bundle(gpus=(DeviceEvidenceIn("HOPPER", LEGACY_REPORT, LEGACY_CHAIN, rims=RIMS),)),
        _binding(),
        policy,
        RIM_ERA,
    )
    assert findings == ()
    f = _finding(devices[1], "gpu.minimum_driver_version")
    assert f is not None and f.severity is Severity.REJECT
    assert "the policy's minimum" in f.detail


# --- declared architecture -------------------------------------------------------------------


def _gpu_declared(arch: str) -> DeviceAppraisal:
    devices, findings = appraise_bundle(
        _bundle(gpus=(DeviceEvidenceIn(arch, LEGACY_REPORT, LEGACY_CHAIN, rims=RIMS),)),
        _binding(),
        gpu_policy(),
        RIM_ERA,
    )
    assert findings == ()
    return devices[1]


@pytest.mark.parametrize("arch", ["HOPPER", "hopper"])
def test_declared_arch_matching_the_leaf_passes(arch: str) -> None:
    gpu = _gpu_declared(arch)
    assert "x-nvidia-gpu-arch-check" not in _rejects(gpu)
    assert gpu.status is Status.WARNING


@pytest.mark.parametrize(
    ("arch", "claim"),
    [
        ("BLACKWELL", "x-nvidia-gpu-arch-check"),
        # Declared an NVSwitch: the verifier names the failure (and the device) as one.
        ("LS10", "x-nvidia-switch-arch-check"),
    ],
)
def test_declared_arch_other_than_the_leaf_rejects(arch: str, claim: str) -> None:
    gpu = _gpu_declared(arch)
    f = _finding(gpu, claim)
    assert f is not None and f.severity is Severity.REJECT
    assert arch in f.detail and "HOPPER" in f.detail
    assert gpu.status is Status.CONTRAINDICATED


@pytest.mark.parametrize("arch", ["BANANA", "ARCH8", "x" * 32])
def test_unknown_declared_arch_rejects_and_the_rest_is_still_checked(arch: str) -> None:
    gpu = _gpu_declared(arch)
    f = _finding(gpu, "x-nvidia-gpu-arch-check")
    assert f is not None and f.severity is Severity.REJECT
    assert f.actual == repr(arch)[:40]
    assert f.expected == ["HOPPER", "BLACKWELL", "LS10"]
    assert gpu.status is Status.CONTRAINDICATED
    assert gpu.claims["measres"] == "success"  # verified as the leaf's Hopper all the same


# --- unsafe_skip_rim_match -------------------------------------------------------------------


def _with_measurement_flipped(block: int) -> bytes:
    value = parse_device_report(LEGACY_REPORT, DeviceKind.GPU).measurements[block]
    at = LEGACY_REPORT.index(value)
    return LEGACY_REPORT[:at] + bytes([LEGACY_REPORT[at] ^ 1]) + LEGACY_REPORT[at + 1 :]


def test_skip_rim_match_warns_on_measurement_mismatches_but_not_on_the_signature() -> None:
    report = _with_measurement_flipped(2)  # block 2 = RIM index 1
    strict = _gpu(report)
    assert _rejects(strict) == {"measurement[1]", SIGNATURE}
    assert strict.claims["measres"] == "fail"
    skipped = _gpu(report, unsafe_skip_rim_match=True)
    severities = {f.field: f.severity for f in skipped.findings}
    assert severities["measurement[1]"] is Severity.WARN
    assert _rejects(skipped) == {SIGNATURE}  # the broken signature still rejects
    assert skipped.status is Status.CONTRAINDICATED


def test_skip_rim_match_accepts_a_report_without_rims() -> None:
    bundle = _bundle(gpus=(DeviceEvidenceIn("HOPPER", LEGACY_REPORT, LEGACY_CHAIN),))
    strict, _ = appraise_bundle(bundle, _binding(), gpu_policy(), RIM_ERA)
    assert {"x-nvidia-gpu-driver-rim-fetched", "measres"} <= _rejects(strict[1])
    skipped, _ = appraise_bundle(
        bundle, _binding(), gpu_policy(unsafe_skip_rim_match=True), RIM_ERA
    )
    assert _rejects(skipped[1]) == set()
    assert skipped[1].status is Status.WARNING


def test_skip_rim_match_keeps_a_forged_rim_rejected() -> None:
    driver = (NVIDIA / "rims/test_no_gpu/Driver_RIM_test_no_gpu.swidtag").read_bytes()
    at = driver.index(b"Hash0=") + 10
    forged = driver[:at] + (b"1" if driver[at : at + 1] == b"0" else b"0") + driver[at + 1 :]
    vbios = [r for r in RIMS if r != driver]
    bundle = _bundle(
        gpus=(DeviceEvidenceIn("HOPPER", LEGACY_REPORT, LEGACY_CHAIN, rims=(forged, *vbios)),)
    )
    devices, _ = appraise_bundle(
        bundle, _binding(), gpu_policy(unsafe_skip_rim_match=True), RIM_ERA
    )
    assert "x-nvidia-gpu-driver-rim-signature-verified" in _rejects(devices[1])
    assert devices[1].status is Status.CONTRAINDICATED


def test_skip_rim_match_downgrades_exactly_the_rim_matching_failures() -> None:
    skippable = [
        "measres",
        "measurement[0]",
        "measurement[35]",
        "x-nvidia-gpu-vbios-index-no-conflict",
        "x-nvidia-gpu-driver-rim-fetched",
        "x-nvidia-gpu-vbios-rim-version-match",
        "x-nvidia-switch-bios-rim-measurements-available",
        "x-nvidia-gpu-rim-fetched",
    ]
    kept = [
        "x-nvidia-gpu-attestation-report-signature-verified",
        "x-nvidia-gpu-attestation-report-cert-chain",
        "x-nvidia-gpu-attestation-report-nonce-match",
        "x-nvidia-gpu-arch-check",
        "x-nvidia-gpu-driver-rim-signature-verified",
        "x-nvidia-gpu-vbios-rim-cert-chain",
        "x-nvidia-gpu-driver-rim-cert-chain.x-nvidia-cert-ocsp-status",
        "x-nvidia-gpu-driver-rim-schema-validated",
        "measurement[1]x",
    ]
    result = DeviceResult(
        index=0,
        arch="HOPPER",
        kind=DeviceKind.GPU,
        status=VerifierStatus.CONTRAINDICATED,
        claims={},
        failures=tuple(Failure(name, "e", "a") for name in skippable + kept),
        warnings=(),
        name="gpu0",
    )
    policy = gpu_policy(unsafe_skip_rim_match=True)
    out = _gpu_policy_findings(result, policy.gpu, _bundle(), policy)
    severity = {f.field: f.severity for f in out}
    assert [n for n in skippable if severity[n] is not Severity.WARN] == []
    assert [n for n in kept if severity[n] is not Severity.REJECT] == []
    strict = gpu_policy()
    out = _gpu_policy_findings(result, strict.gpu, _bundle(), strict)
    assert all(f.severity is Severity.REJECT for f in out if f.field in skippable + kept)


def test_a_reject_on_any_claim_lowers_a_trust_vector_claim() -> None:
    """A relying-party policy may reject on any claim of the submodule (``hwmodel``, ``ueid``,
    ``oemid``, ...): each must fall under a trust-vector claim, or the signed submodule said
    contraindicated with every trust-vector claim affirming."""
    real = _gpu()
    assert real.claims and "hwmodel" in real.claims
    for name in real.claims:
        rejected = DeviceAppraisal(
            real.name,
            (Finding(real.name, name, "x", "y", severity=Severity.REJECT),),
            real.categories,
            real.claims,
        )
        assert 96 in rejected.trust_vector().values(), name


def test_stapled_rims_can_be_refused_for_the_brokers_own() -> None:
    """``gpu.stapled_rims: false``: only RIMs the broker holds are used. NVIDIA signed a test
    build's VBIOS RIM under the same id as the production one, with other golden values, so a
    host that staples one when the broker holds none chooses which applies."""
    from attest.appraise.composite import AppraisalContext

    stapled = _bundle(gpus=(DeviceEvidenceIn("HOPPER", LEGACY_REPORT, LEGACY_CHAIN, rims=RIMS),))

    def gpu0(policy: object, context: AppraisalContext | None = None) -> DeviceAppraisal:
        devices, findings = appraise_bundle(stapled, _binding(), policy, RIM_ERA, context=context)  # type: ignore[arg-type]
        assert findings == ()
        return devices[1]

    used = gpu0(gpu_policy())
    assert used.claims["x-nvidia-gpu-driver-rim-fetched"] is True
    refused = gpu0(gpu_policy(stapled_rims=False))
    assert refused.claims["x-nvidia-gpu-driver-rim-fetched"] is False
    assert refused.status is Status.CONTRAINDICATED
    held = gpu0(gpu_policy(stapled_rims=False), AppraisalContext(rims=RIMS))
    assert held.claims["x-nvidia-gpu-driver-rim-fetched"] is True
    assert held.findings == used.findings
    # Left at its default the field does not enter the digest: existing policies keep theirs.
    assert gpu_policy().digest == gpu_policy(stapled_rims=True).digest
    assert gpu_policy().digest != gpu_policy(stapled_rims=False).digest
