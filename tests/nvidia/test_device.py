"""Device checks on every real report: chain to the pinned root, signature, nonce, FWID."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography import x509

from attest.errors import ChainError
from attest.nvidia.device import (
    ArchMismatchError,
    FwidError,
    FwidStatus,
    NonceMismatchError,
    SignatureError,
    check_fwid,
    leaf_fwid,
    verify_device,
    verify_device_chain,
)
from attest.nvidia.evidence import Arch, DeviceEvidence, load_evidence
from attest.nvidia.opaque import DeviceKind, parse_device_report
from attest.x509chain import ChainCache
from tests.conftest import LEGACY_NONCE, NVIDIA, TODAY


def _bare(report: str, chain: str) -> DeviceEvidence:
    return load_evidence((NVIDIA / report).read_bytes(), certs=(NVIDIA / chain).read_bytes())[0]


HOPPER = _bare("hopper/hopperAttestationReport.txt", "hopper/hopperCertChain.txt")
LEGACY = _bare("hopper_legacy/attestationReport.txt", "hopper_legacy/gpuAkCertChain.txt")
BLACKWELL = _bare("blackwell/blackwell_coco_report.txt", "blackwell/blackwell_coco_certs.txt")
PPCIE = load_evidence((NVIDIA / "ppcie/gpu_evidence.json").read_bytes()) + load_evidence(
    (NVIDIA / "ppcie/switch_evidence.json").read_bytes()
)
HOPPER_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
BLACKWELL_NONCE = bytes.fromhex("d622979b6c3ab8b8e7b30a43f2dc7f553ebbc187536231d531effa496ec03fb5")
PPCIE_NONCE = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")
#: Every real device chain of the vectors (tests/assets holds byte-identical copies of
#: ../shared/vectors, tests/test_assets.py): Hopper 2023 and 2025, Blackwell, 8 PPCIe Hopper
#: GPUs and 4 LS10 NVSwitches.
REAL = {"hopper": HOPPER, "hopper_legacy": LEGACY, "blackwell": BLACKWELL} | {
    f"ppcie{i}": ev for i, ev in enumerate(PPCIE)
}


@pytest.mark.parametrize(
    ("ev", "nonce", "arch", "fwid"),
    [
        (HOPPER, HOPPER_NONCE, Arch.HOPPER, FwidStatus.MATCH),
        (LEGACY, bytes.fromhex(LEGACY_NONCE), Arch.HOPPER, FwidStatus.ABSENT_IN_REPORT),
        (BLACKWELL, BLACKWELL_NONCE, Arch.BLACKWELL, FwidStatus.MATCH),
    ],
)
def test_single_gpu_samples_pass(
    ev: DeviceEvidence, nonce: bytes, arch: Arch, fwid: FwidStatus
) -> None:
    v = verify_device(ev, at=TODAY, expected_nonce=nonce)
    assert v.arch is arch and v.fwid is fwid and v.nonce_checked
    assert len(v.chain.certs) == 5
    assert v.chain.valid_until.year == 9999


@pytest.mark.parametrize("index", range(12))
def test_every_ppcie_device_passes(index: int) -> None:
    ev = PPCIE[index]
    v = verify_device(ev, at=TODAY, expected_nonce=PPCIE_NONCE, chain_cache=ChainCache())
    expected = FwidStatus.MATCH if index < 8 else FwidStatus.ABSENT_IN_REPORT
    assert v.fwid is expected
    assert v.report.kind is (DeviceKind.GPU if index < 8 else DeviceKind.SWITCH)


def test_hopper_fwid_is_last_48_bytes_of_extension() -> None:
    leaf = HOPPER.chain[0]
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("2.23.133.5.4.1"))
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert leaf_fwid(leaf) == ext.value.value[-48:]


def test_blackwell_fwid_from_tcbinfo() -> None:
    fwid = leaf_fwid(BLACKWELL.chain[0])
    assert fwid is not None and fwid.hex().startswith("9b92cc3e")
    report = parse_device_report(BLACKWELL.report_bytes, DeviceKind.GPU)
    assert report.opaque.fwid == fwid


def test_nonce_mismatch() -> None:
    with pytest.raises(NonceMismatchError) as info:
        verify_device(HOPPER, at=TODAY, expected_nonce=bytes(32))
    assert info.value.reason == "nonce_mismatch"


def test_no_expected_nonce_is_recorded() -> None:
    assert not verify_device(HOPPER, at=TODAY, expected_nonce=None).nonce_checked


def test_other_devices_chain_fails_signature() -> None:
    # a valid chain to the pinned root, but of another GPU
    ev = replace(HOPPER, chain=LEGACY.chain)
    with pytest.raises(SignatureError) as info:
        verify_device(ev, at=TODAY, expected_nonce=HOPPER_NONCE)
    assert info.value.reason == "bad_signature"


def test_fwid_mismatch_with_other_leaf() -> None:
    report = parse_device_report(HOPPER.report_bytes, DeviceKind.GPU)
    with pytest.raises(FwidError) as info:
        check_fwid(report, PPCIE[0].chain[0])
    assert info.value.reason == "fwid_mismatch"


def test_fwid_present_but_leaf_without_extension() -> None:
    report = parse_device_report(HOPPER.report_bytes, DeviceKind.GPU)
    with pytest.raises(FwidError) as info:
        check_fwid(report, HOPPER.chain[1])  # the BROM certificate has no FWID extension
    assert info.value.reason == "fwid_missing_in_certificate"


@pytest.mark.parametrize("chain_slice", [slice(0, 4), slice(1, 5)], ids=["no-root", "no-leaf"])
def test_chain_must_have_five(chain_slice: slice) -> None:
    with pytest.raises(ChainError) as info:
        verify_device_chain(HOPPER.chain[chain_slice], at=TODAY)
    assert info.value.reason == "length"


def test_chain_six_refused() -> None:
    with pytest.raises(ChainError):
        verify_device_chain((*HOPPER.chain, HOPPER.chain[-1]), at=TODAY)


def test_chain_before_validity() -> None:
    with pytest.raises(ChainError) as info:
        verify_device_chain(HOPPER.chain, at=datetime(2015, 1, 1, tzinfo=UTC))
    assert info.value.reason == "not_yet_valid"


def test_chain_to_wrong_root() -> None:
    # pin the RIM root instead of the device root: the device root copy is then not trusted
    from attest.roots import nvidia_rim_root

    with pytest.raises(ChainError):
        verify_device_chain(HOPPER.chain, at=TODAY, root=nvidia_rim_root())


def test_arch_mismatch() -> None:
    with pytest.raises(ArchMismatchError) as info:
        verify_device(replace(HOPPER, arch=Arch.BLACKWELL), at=TODAY, expected_nonce=None)
    assert info.value.reason == "arch_mismatch"


def test_arch_unknown_leaf() -> None:
    ev = replace(HOPPER, chain=HOPPER.chain[1:])  # leaf is now "GH100 A01 GSP BROM"
    ev2 = replace(ev, chain=(HOPPER.chain[4], *HOPPER.chain[1:]))  # leaf: the root CA
    with pytest.raises(ArchMismatchError) as info:
        verify_device(ev2, at=TODAY, expected_nonce=None)
    assert info.value.reason == "arch_unknown"


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_real_device_chain_still_verifies(name: str) -> None:
    """The chain-shape rules (root only last, end-entity leaf, critical extensions) refuse
    nothing real: every real chain verifies to the pinned root, cached or not."""
    chain = REAL[name].chain
    for verified in (
        verify_device_chain(chain, at=TODAY),
        verify_device_chain(chain, at=TODAY, cache=ChainCache()),
    ):
        assert verified.certs == tuple(chain) and verified.leaf is chain[0]
        assert verified.valid_until.year == 9999


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_chain_shifted_onto_a_second_root_copy_is_refused(name: str) -> None:
    """[BROM, ICA, Identity, root, root] is five certificates, each signed by the next, ending
    at the pinned root: it made the BROM (a CA, keyCertSign only) the attestation key, took
    the FWID binding to be absent and sent OCSP to the wrong certificates."""
    ev = REAL[name]
    shifted = (*ev.chain[1:], ev.chain[-1])
    for cache in (None, ChainCache()):
        with pytest.raises(ChainError) as info:
            verify_device_chain(shifted, at=TODAY, cache=cache)
        assert info.value.reason == "pinned_root_not_last"
    with pytest.raises(ChainError):
        verify_device(replace(ev, chain=shifted), at=TODAY, expected_nonce=None)


def test_real_leaves_are_end_entities_and_brom_certificates_are_not() -> None:
    from attest.x509chain import check_end_entity

    for ev in REAL.values():
        check_end_entity(ev.chain[0], "leaf")
        with pytest.raises(ChainError) as info:
            check_end_entity(ev.chain[1], "BROM")
        assert info.value.reason == "leaf_is_ca"
