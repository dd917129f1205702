"""The whole pipeline on the real vectors: the one fully passing set, expiry, mismatches,
Blackwell, the PPCIe set, revocation modes and caches."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from agent.rim_fetch import DirectoryRimSource, RimFetchError
from attest.errors import InputError
from attest.nvidia.evidence import DeviceEvidence, load_evidence
from attest.nvidia.verifier import Status, VerifierCaches, verify_gpu_evidence
from attest.revocation.ocsp import RevocationMode, StapledOcsp
from tests.conftest import LEGACY_NONCE, NVIDIA, RIM_ERA, TODAY

RIMS = DirectoryRimSource([NVIDIA / "rims" / "test_no_gpu"])
LEGACY = load_evidence(
    (NVIDIA / "hopper_legacy/attestationReport.txt").read_bytes(),
    certs=(NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes(),
)
HOPPER = load_evidence(
    (NVIDIA / "hopper/hopperAttestationReport.txt").read_bytes(),
    certs=(NVIDIA / "hopper/hopperCertChain.txt").read_bytes(),
)
BLACKWELL = load_evidence(
    (NVIDIA / "blackwell/blackwell_coco_report.txt").read_bytes(),
    certs=(NVIDIA / "blackwell/blackwell_coco_certs.txt").read_bytes(),
)
GPUS = load_evidence((NVIDIA / "ppcie/gpu_evidence.json").read_bytes())
SWITCHES = load_evidence((NVIDIA / "ppcie/switch_evidence.json").read_bytes())
PPCIE = tuple(replace(e, index=i) for i, e in enumerate((*GPUS, *SWITCHES)))
PPCIE_NONCE = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")

#: The 20 RIM indexes where the current Hopper sample differs from the test RIMs
#: (PROVENANCE.md §1, NVIDIA's own harness); report block = RIM index + 1.
HOPPER_MISMATCHES = (1, 2, 3, 7, 9, 11, 21, 22, 25, 26, 27, 29, 30, 31, 32, 34, 36, 37, 39, 40)


class MappedRims:
    """Serve the test RIMs under the ids of another report (NVIDIA's harness did the same by
    forcing RIM paths); everything else about them is checked as usual."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self._m = {
            k: (NVIDIA / "rims" / "test_no_gpu" / v).read_bytes() for k, v in mapping.items()
        }

    def rim_bytes(self, rim_id: str) -> bytes | None:
        return self._m.get(rim_id)


def _run(evidence: tuple[DeviceEvidence, ...], **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "at": RIM_ERA,
        "expected_nonce": bytes.fromhex(LEGACY_NONCE),
        "rim_source": RIMS,
        "revocation_mode": RevocationMode.SKIP,
        "ocsp_source": None,
    }
    args.update(kw)
    return verify_gpu_evidence(evidence, **args)  # type: ignore[arg-type]


def test_legacy_passes_every_check_in_rim_era() -> None:
    r = _run(LEGACY)
    d = r.devices[0]
    assert d.failures == () and r.failures == ()
    assert d.status is Status.WARNING  # only because revocation was skipped, and it says so
    assert all("revocation NOT checked" in w for w in d.warnings) and len(d.warnings) == 3
    c = d.claims
    true_claims = [k for k, v in c.items() if v is True]
    assert len(true_claims) == 17  # 5 report + 2 x 5 RIM + no-conflict + secboot
    assert [k for k, v in c.items() if v is False] == []
    assert c["measres"] == "success" and c["dbgstat"] == "disabled"
    assert c["x-nvidia-gpu-driver-version"] == "545.00"
    assert c["x-nvidia-gpu-vbios-version"] == "96.00.5E.00.01"
    assert c["x-lessee-fwid-binding"] == "absent-in-report"
    assert c["oemid"] == "5703" and c["hwmodel"] == "GH100 A01 GSP BROM"
    assert c["eat_nonce"] == LEGACY_NONCE
    assert d.name == "gpu0" and r.topology is None


def test_legacy_today_rim_chain_expired() -> None:
    d = _run(LEGACY, at=TODAY).devices[0]
    assert d.status is Status.CONTRAINDICATED
    fields = {f.field: f for f in d.failures}
    for prefix in ("x-nvidia-gpu-driver", "x-nvidia-gpu-vbios"):
        f = fields[f"{prefix}-rim-cert-chain"]
        assert (f.expected, f.actual) == ("valid", "expired")
        assert "HCC RIM L4 Signer" in f.detail and "expired" in f.detail
        chain = d.claims[f"{prefix}-rim-cert-chain"]
        assert isinstance(chain, dict) and chain["x-nvidia-cert-status"] == "expired"
    # the device itself is still fine today
    assert d.claims["x-nvidia-gpu-attestation-report-signature-verified"] is True
    assert d.claims["x-nvidia-gpu-attestation-report-nonce-match"] is True


def test_current_hopper_reports_20_mismatches_by_index() -> None:
    rims = MappedRims(
        {
            "NV_GPU_DRIVER_GH100_550.90.07": "Driver_RIM_test_no_gpu.swidtag",
            "NV_GPU_VBIOS_1010_0200_882_96009F0001": "1010_0200_882_96005E0001_test_no_gpu.swidtag",
        }
    )
    nonce = HOPPER[0].report_bytes[4:36]
    d = _run(HOPPER, rim_source=rims, expected_nonce=nonce).devices[0]
    assert d.mismatched_rim_indexes == HOPPER_MISMATCHES
    mismatch_fields = [f.field for f in d.failures if f.field.startswith("measurement[")]
    assert mismatch_fields == [f"measurement[{i}]" for i in HOPPER_MISMATCHES]
    first = next(f for f in d.failures if f.field == "measurement[1]")
    assert "report block 2" in first.detail and isinstance(first.actual, str)
    assert d.claims["measres"] == "fail"
    # the versions differ too, and are reported as such
    assert d.claims["x-nvidia-gpu-driver-rim-version-match"] is False
    assert d.claims["x-nvidia-gpu-vbios-rim-version-match"] is False
    for key in ("signature-verified", "nonce-match", "parsed", "cert-chain-fwid-match"):
        assert d.claims[f"x-nvidia-gpu-attestation-report-{key}"] is True


def test_current_hopper_without_rims_says_which_rims() -> None:
    d = _run(HOPPER, expected_nonce=HOPPER[0].report_bytes[4:36]).devices[0]
    fetched = [f for f in d.failures if f.field.endswith("-rim-fetched")]
    assert [f.expected for f in fetched] == [
        "NV_GPU_DRIVER_GH100_550.90.07",
        "NV_GPU_VBIOS_1010_0200_882_96009F0001",
    ]


def test_blackwell_device_checks_pass() -> None:
    d = _run(BLACKWELL, expected_nonce=BLACKWELL[0].report_bytes[4:36], at=TODAY).devices[0]
    c = d.claims
    assert d.arch == "BLACKWELL"
    for key in ("signature-verified", "nonce-match", "parsed", "cert-chain-fwid-match"):
        assert c[f"x-nvidia-gpu-attestation-report-{key}"] is True
    assert c["x-lessee-fwid-binding"] == "match"
    # no Blackwell RIM is shipped: the id comes from CHIP_INFO and is reported missing
    assert any(f.expected == "NV_GPU_CC_DRIVER_GB202_595.58.03" for f in d.failures)


def test_ppcie_set_every_device_and_topology() -> None:
    r = _run(PPCIE, expected_nonce=PPCIE_NONCE, at=TODAY)
    assert [d.name for d in r.devices] == [f"gpu{i}" for i in range(8)] + [
        f"switch{i}" for i in range(4)
    ]
    for d in r.devices:
        p = "x-nvidia-gpu" if d.name.startswith("gpu") else "x-nvidia-switch"
        for key in ("signature-verified", "nonce-match", "parsed", "cert-chain-fwid-match"):
            assert d.claims[f"{p}-attestation-report-{key}"] is True, (d.name, key)
        cc = d.claims[f"{p}-attestation-report-cert-chain"]
        assert isinstance(cc, dict) and cc["x-nvidia-cert-status"] == "valid"
        assert not [f for f in d.failures if "attestation-report" in f.field]
    assert r.topology is not None and r.topology.ok
    assert r.devices[8].claims["x-lessee-fwid-binding"] == "absent-in-report"
    # no RIMs for this set are shipped: rejected for that reason only
    assert r.status is Status.CONTRAINDICATED


def test_ppcie_gpus_without_switches_is_incomplete() -> None:
    r = _run(GPUS, expected_nonce=PPCIE_NONCE, at=TODAY)
    assert r.topology is not None and not r.topology.ok
    assert any(f.field == "topology.switch_count" for f in r.failures)


def test_same_device_twice() -> None:
    r = _run((LEGACY[0], replace(LEGACY[0], index=1)))
    assert any(f.field == "device1.leaf_certificate" for f in r.failures)
    assert r.status is Status.CONTRAINDICATED


def test_wrong_nonce() -> None:
    d = _run(LEGACY, expected_nonce=bytes(32)).devices[0]
    f = next(f for f in d.failures if f.field.endswith("nonce-match"))
    assert (f.expected, f.actual) == ("00" * 32, LEGACY_NONCE)
    assert d.claims["x-nvidia-gpu-attestation-report-nonce-match"] is False


def test_no_nonce_is_a_warning_never_a_pass() -> None:
    r = _run(LEGACY, expected_nonce=None)
    assert r.status is Status.WARNING
    assert any("nonce NOT checked" in w for w in r.devices[0].warnings)
    assert r.devices[0].claims["x-nvidia-gpu-attestation-report-nonce-match"] is False


def test_container_nonce_must_agree() -> None:
    r = _run((replace(LEGACY[0], nonce_hint=bytes(32)),))
    assert any(f.field == "evidence.nonce" for f in r.devices[0].failures)


def test_declared_versions_must_agree() -> None:
    ev = replace(
        LEGACY[0], declared_driver_version="550.00", declared_vbios_version="96.00.5E.00.01"
    )
    fields = [f.field for f in _run((ev,)).devices[0].failures]
    assert fields == ["evidence.driver_version"]


@pytest.mark.parametrize("mode", [RevocationMode.STAPLED, RevocationMode.ONLINE])
def test_revocation_without_answers_is_rejected(mode: RevocationMode) -> None:
    source = StapledOcsp([]) if mode is RevocationMode.STAPLED else None
    d = _run(LEGACY, revocation_mode=mode, ocsp_source=source).devices[0]
    assert d.status is Status.CONTRAINDICATED
    ocsp = [f for f in d.failures if f.field.endswith("x-nvidia-cert-ocsp-status")]
    assert len(ocsp) == 9  # 3 device + 3 per RIM chain
    assert all(f.actual == "missing" for f in ocsp)
    chain = d.claims["x-nvidia-gpu-attestation-report-cert-chain"]
    assert isinstance(chain, dict) and chain["x-nvidia-cert-ocsp-status"] == "missing"


def test_corrupt_report_is_contraindicated_not_raised() -> None:
    ev = replace(LEGACY[0], report_bytes=LEGACY[0].report_bytes[:-1])
    d = _run((ev,)).devices[0]
    assert d.claims["x-nvidia-gpu-attestation-report-parsed"] is False
    assert d.failures[0].field == "x-nvidia-gpu-attestation-report-parsed"


def test_caller_errors_raise() -> None:
    with pytest.raises(InputError):
        _run(())
    with pytest.raises(InputError):
        _run(LEGACY, revocation_mode="sometimes")
    with pytest.raises(InputError):
        _run(LEGACY, at=datetime(2024, 6, 1))  # naive on purpose


def test_caches_give_the_same_answer() -> None:
    caches = VerifierCaches()
    first = _run(LEGACY, caches=caches)
    second = _run(LEGACY, caches=caches)
    assert first.to_json() == second.to_json()
    assert len(caches.rims) == 2
    # a cached chain is not used outside its validity window
    later = _run(LEGACY, caches=caches, at=datetime(2026, 1, 1, tzinfo=UTC))
    assert later.status is Status.CONTRAINDICATED


def test_json_shape() -> None:
    j = _run(LEGACY).to_json()
    # revocation skipped: a warning, so not NVIDIA's overall pass
    assert j["status"] == "warning" and j["x-nvidia-overall-att-result"] is False
    assert isinstance(j["devices"], list) and j["devices"][0]["name"] == "gpu0"


class _DriverRimServiceDown:
    """The RIM service is unreachable for driver RIMs; VBIOS RIMs come from the test folder."""

    def rim_bytes(self, rim_id: str) -> bytes | None:
        if "_DRIVER_" in rim_id:
            raise RimFetchError(f"RIM service unreachable for {rim_id}: connection refused")
        return RIMS.rim_bytes(rim_id)


def test_an_unreachable_rim_service_is_a_finding_for_the_device() -> None:
    """A source's ``RimFetchError`` (a ``VerificationError``) once escaped and aborted the
    whole evidence set; it is the device's failed RIM fetch, with the reason."""
    r = _run(LEGACY, rim_source=_DriverRimServiceDown())
    d = r.devices[0]
    (fetch,) = [f for f in d.failures if f.field == "x-nvidia-gpu-driver-rim-fetched"]
    assert fetch.expected == "NV_GPU_DRIVER_GH100_545.00"
    assert "RIM service unreachable" in fetch.detail and "connection refused" in fetch.detail
    assert not [f for f in d.failures if f.field.startswith("x-nvidia-gpu-vbios-rim")]
    assert r.status is Status.CONTRAINDICATED
    # every GPU of a set gets its own finding; the set is still verified to the end
    ppcie = _run(PPCIE, expected_nonce=PPCIE_NONCE, at=TODAY, rim_source=_DriverRimServiceDown())
    for dev in ppcie.devices[:8]:
        assert any(
            f.field == "x-nvidia-gpu-driver-rim-fetched" and "unreachable" in f.detail
            for f in dev.failures
        ), dev.name
    assert ppcie.topology is not None and ppcie.topology.ok
