"""Emulated Hopper GPU: real formats byte for byte, accepted by the real verifiers only when the
emulation roots are supplied, rejected with NVIDIA's pinned roots."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from lxml import etree

from agent.emulation import EmulatedGpu, EmulationPki, default_measurements
from agent.emulation.gpu import DRIVER_RIM_ACTIVE, VBIOS_RIM_ACTIVE, vbios_bytes
from attest.bundle import DeviceEvidenceIn
from attest.errors import ChainError, InputError
from attest.nvidia.device import (
    FwidStatus,
    NonceMismatchError,
    SignatureError,
    check_fwid,
    check_nonce,
    verify_device_chain,
    verify_signature,
)
from attest.nvidia.evidence import decode_report_bytes
from attest.nvidia.opaque import DeviceKind, parse_device_report
from attest.nvidia.rim import (
    RimChainError,
    RimCollection,
    RimVerificationError,
    compare_measurements,
    driver_rim_id,
    parse_rim,
    vbios_rim_id,
    verify_rim,
)
from attest.nvidia.verifier import Status
from attest.revocation.ocsp import (
    StapledOcsp,
    check_chain_revocation,
    check_ocsp_response,
    nvidia_device_ocsp_indices,
    nvidia_rim_ocsp_indices,
)
from attest.x509chain import load_pem_chain
from tests.conftest import NVIDIA
from tests.emulation.helpers import run_pipeline

NONCE = bytes(range(32))
REAL_REPORT = decode_report_bytes((NVIDIA / "hopper" / "hopperAttestationReport.txt").read_bytes())
RIMS = NVIDIA / "rims" / "test_no_gpu"


def _evidence(gpu: EmulatedGpu, nonce: bytes, at: datetime) -> DeviceEvidenceIn:
    return DeviceEvidenceIn(
        arch=gpu.arch,
        report=gpu.report(nonce),
        certificate_chain_pem=gpu.certificate_chain_pem(),
        ocsp_responses=gpu.ocsp_responses(at),
        rims=(gpu.driver_rim(), gpu.vbios_rim()),
    )


# --- the report, byte for byte ---------------------------------------------------------------


def test_report_has_the_real_hopper_layout(gpu: EmulatedGpu) -> None:
    ours = parse_device_report(gpu.report(NONCE), DeviceKind.GPU)
    real = parse_device_report(REAL_REPORT, DeviceKind.GPU)
    assert len(ours.raw) == len(real.raw) == 4117
    assert ours.spdm.request.raw[:4] == real.spdm.request.raw[:4] == bytes.fromhex("11e001ff")
    assert ours.spdm.request.raw[36] == real.spdm.request.raw[36] == 0
    assert ours.spdm.response.raw[:8] == real.spdm.response.raw[:8]
    shape = [
        (b.index, b.specification, b.value_type, len(b.value)) for b in real.spdm.response.blocks
    ]
    assert [
        (b.index, b.specification, b.value_type, len(b.value)) for b in ours.spdm.response.blocks
    ] == shape
    assert [(f.type, len(f.value)) for f in ours.opaque.fields] == [
        (f.type, len(f.value)) for f in real.opaque.fields
    ]
    assert ours.opaque.driver_version == real.opaque.driver_version == "550.90.07"
    assert ours.opaque.vbios_version == real.opaque.vbios_version == "96.00.9f.00.01"
    assert ours.opaque.value("VBIOS_VERSION") == real.opaque.value("VBIOS_VERSION")
    for name in ("PROJECT", "PROJECT_SKU", "CHIP_SKU", "CHIP_SKU_MOD", "NVDEC0_STATUS"):
        assert ours.opaque.decoded[name] == real.opaque.decoded[name], name
    assert ours.nonce == NONCE
    assert ours.measurements == dict(enumerate(default_measurements(), start=1))


def test_report_verifies_with_the_emulation_root_only(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    report = parse_device_report(gpu.report(NONCE), DeviceKind.GPU)
    chain = load_pem_chain(gpu.certificate_chain_pem())
    verified = verify_device_chain(chain, at=at, root=pki.gpu_root.cert)
    verify_signature(report, verified.leaf)
    check_nonce(report, NONCE)
    assert check_fwid(report, verified.leaf) is FwidStatus.MATCH
    assert report.opaque.fwid == gpu.fwid
    with pytest.raises(ChainError) as err:
        verify_device_chain(chain, at=at)  # NVIDIA's pinned Device Identity CA
    assert err.value.reason == "issuer_mismatch"
    with pytest.raises(NonceMismatchError):
        check_nonce(report, bytes(32))
    other = load_pem_chain(EmulatedGpu(pki, index=1).certificate_chain_pem())
    with pytest.raises(SignatureError):
        verify_signature(report, other[0])


def test_each_report_has_a_fresh_responder_nonce(gpu: EmulatedGpu) -> None:
    a = parse_device_report(gpu.report(NONCE), DeviceKind.GPU)
    b = parse_device_report(gpu.report(NONCE), DeviceKind.GPU)
    assert a.spdm.response.responder_nonce != b.spdm.response.responder_nonce
    assert a.spdm.request.raw == b.spdm.request.raw


# --- the whole pipeline -----------------------------------------------------------------------


def test_pipeline_affirms_with_emulation_roots(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    result = run_pipeline([_evidence(gpu, NONCE, at)], nonce=NONCE, at=at, pki=pki)
    device = result.devices[0]
    assert device.failures == ()
    assert device.warnings == ()
    assert result.status is Status.AFFIRMING
    assert device.mismatched_rim_indexes == ()
    assert device.claims["measres"] == "success"
    assert device.claims["x-nvidia-gpu-attestation-report-cert-chain-fwid-match"] is True
    assert {c.status for c in device.ocsp} == {"good"}
    # device links 1..3, then signer, L3 and CA of each RIM's chain: each RIM has its own
    # signer, and one stapled answer for the shared L3 and CA serves both chains
    assert len(device.ocsp) == 3 + 3 + 3
    assert len({c.response_der for c in device.ocsp}) == 7


def test_pipeline_rejects_with_default_roots(gpu: EmulatedGpu, at: datetime) -> None:
    result = run_pipeline([_evidence(gpu, NONCE, at)], nonce=NONCE, at=at, pki=None)
    assert result.status is Status.CONTRAINDICATED
    fields = {f.field for f in result.devices[0].failures}
    assert "x-nvidia-gpu-attestation-report-cert-chain" in fields
    assert "x-nvidia-gpu-driver-rim-cert-chain" in fields
    assert "x-nvidia-gpu-vbios-rim-cert-chain" in fields


def test_eight_gpus_affirm_and_a_repeated_gpu_is_refused(pki: EmulationPki, at: datetime) -> None:
    gpus = [EmulatedGpu(pki, index=i) for i in range(8)]
    evidence = [_evidence(g, NONCE, at) for g in gpus]
    assert len({e.rims for e in evidence}) == 1  # identical GPUs share byte-identical RIMs
    result = run_pipeline(evidence, nonce=NONCE, at=at, pki=pki)
    assert result.status is Status.AFFIRMING
    assert [d.name for d in result.devices] == [f"gpu{i}" for i in range(8)]
    twice = run_pipeline([evidence[0], _evidence(gpus[0], NONCE, at)], nonce=NONCE, at=at, pki=pki)
    assert twice.status is Status.CONTRAINDICATED


def test_wrong_nonce_is_refused(pki: EmulationPki, gpu: EmulatedGpu, at: datetime) -> None:
    result = run_pipeline([_evidence(gpu, NONCE, at)], nonce=bytes(32), at=at, pki=pki)
    assert result.status is Status.CONTRAINDICATED
    assert [f.field for f in result.devices[0].failures] == [
        "x-nvidia-gpu-attestation-report-nonce-match"
    ]


def test_changed_measurement_is_named_by_index(pki: EmulationPki, at: datetime) -> None:
    good = EmulatedGpu(pki, index=2)
    values = list(default_measurements())
    values[21] = bytes(48)  # block 22 = driver RIM index 21
    bad = EmulatedGpu(pki, index=2, measurements=values)
    evidence = _evidence(bad, NONCE, at)
    evidence = DeviceEvidenceIn(
        arch=evidence.arch,
        report=evidence.report,
        certificate_chain_pem=evidence.certificate_chain_pem,
        ocsp_responses=evidence.ocsp_responses,
        rims=(good.driver_rim(), good.vbios_rim()),
    )
    result = run_pipeline([evidence], nonce=NONCE, at=at, pki=pki)
    assert result.status is Status.CONTRAINDICATED
    assert result.devices[0].mismatched_rim_indexes == (21,)


def test_stapled_ocsp_expires(pki: EmulationPki, gpu: EmulatedGpu, at: datetime) -> None:
    evidence = _evidence(gpu, NONCE, at)
    later = at + timedelta(days=2)
    result = run_pipeline([evidence], nonce=NONCE, at=later, pki=pki)
    assert result.status is Status.CONTRAINDICATED
    assert {c.code for c in result.devices[0].ocsp} == {"stale"}


# --- RIMs ------------------------------------------------------------------------------------


def test_rims_verify_with_the_emulation_root_only(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    for kind, data in (("driver", gpu.driver_rim()), ("vbios", gpu.vbios_rim())):
        rim = parse_rim(data)
        verified = verify_rim(rim, at=at, root=pki.rim_root.cert)
        assert verified.signer == pki.rim_signer(kind).cert
        assert rim.embedded_certificates == pki.rim_chain(kind)
        with pytest.raises(RimChainError):
            verify_rim(rim, at=at)  # NVIDIA's pinned CoRIM root


def test_rim_golden_values_are_the_reports_measurements(gpu: EmulatedGpu) -> None:
    report = parse_device_report(gpu.report(NONCE), DeviceKind.GPU)
    driver, vbios = parse_rim(gpu.driver_rim()), parse_rim(gpu.vbios_rim())
    comparison = compare_measurements(report.measurements, driver=driver, vbios=vbios)
    assert comparison.mismatches == ()
    assert comparison.conflicts == ()
    assert comparison.matched == tuple(sorted(DRIVER_RIM_ACTIVE | VBIOS_RIM_ACTIVE))
    assert comparison.golden_count == 33
    assert driver.version == report.opaque.driver_version
    assert vbios.version_matches(report.opaque.vbios_version or "")
    assert driver.kind == "driver" and vbios.kind == "vbios"


def test_rims_are_found_under_the_ids_the_verifier_computes(gpu: EmulatedGpu) -> None:
    report = parse_device_report(gpu.report(NONCE), DeviceKind.GPU)
    o = report.opaque
    driver_id = driver_rim_id(
        arch="HOPPER", chip_info=o.chip_info, driver_version=o.driver_version or ""
    )
    vbios_id = vbios_rim_id(
        project=o.project or "",
        project_sku=o.project_sku or "",
        chip_sku=o.chip_sku or "",
        vbios_version=o.vbios_version or "",
    )
    assert (driver_id, vbios_id) == (gpu.driver_rim_id, gpu.vbios_rim_id)
    assert driver_id == "NV_GPU_DRIVER_GH100_550.90.07"
    assert vbios_id == "NV_GPU_VBIOS_1010_0200_882_96009F0001"
    found = RimCollection([gpu.vbios_rim(), gpu.driver_rim()])
    assert found.rim_bytes(driver_id) == gpu.driver_rim()
    assert found.rim_bytes(vbios_id) == gpu.vbios_rim()


def _skeleton(el: etree._Element) -> list[tuple[str, tuple[str, ...], dict[str | None, str]]]:
    """Tags, attribute names (in order) and namespace declarations, depth first."""
    out: list[tuple[str, tuple[str, ...], dict[str | None, str]]] = []
    for node in el.iter():
        if node.tag.endswith("}Resource") or node.tag.endswith("}X509Certificate"):
            continue
        algorithm = node.get("Algorithm")
        attrs = tuple(str(k) for k in node.attrib) if algorithm is None else (algorithm,)
        out.append((node.tag, attrs, dict(node.nsmap)))
    return out


@pytest.mark.parametrize(
    ("kind", "template"),
    [
        ("driver", "Driver_RIM_test_no_gpu.swidtag"),
        ("vbios", "1010_0200_882_96005E0001_test_no_gpu.swidtag"),
    ],
)
def test_rim_follows_nvidias_structure(gpu: EmulatedGpu, kind: str, template: str) -> None:
    real_bytes = (RIMS / template).read_bytes()
    ours_bytes = gpu.driver_rim() if kind == "driver" else gpu.vbios_rim()
    real, ours = etree.fromstring(real_bytes), etree.fromstring(ours_bytes)
    assert _skeleton(ours) == _skeleton(real)
    real_rim, our_rim = parse_rim(real_bytes), parse_rim(ours_bytes)
    assert [m.index for m in our_rim.measurements] == list(range(64))
    assert [(m.index, m.name, m.active, len(m.alternatives)) for m in our_rim.measurements] == [
        (m.index, m.name, m.active, len(m.alternatives)) for m in real_rim.measurements
    ]
    real_res = real.find(".//{*}Resource")
    our_res = ours.find(".//{*}Resource")
    assert real_res is not None and our_res is not None
    assert list(our_res.attrib.keys()) == list(real_res.attrib.keys())
    # same text layout: first line, indentation, the newline before the signature, final newline
    assert ours_bytes.split(b" tagId=")[0] == real_bytes.split(b" tagId=")[0]
    assert b"</ns0:Payload>\n<ds:Signature " in ours_bytes
    assert ours_bytes.endswith(b"</SoftwareIdentity>\n") and real_bytes.endswith(
        b"</SoftwareIdentity>\n"
    )
    assert our_rim.version == (gpu.driver_version if kind == "driver" else "96.00.9F.00.01")
    assert len(our_rim.tag_id) == len(real_rim.tag_id) == 96


def test_tampered_rim_is_refused(pki: EmulationPki, gpu: EmulatedGpu, at: datetime) -> None:
    data = gpu.driver_rim()
    flipped = data.replace(b'index="1" active="False"', b'index="1" active="True"', 1)
    assert flipped != data
    with pytest.raises(RimVerificationError):
        verify_rim(parse_rim(flipped), at=at, root=pki.rim_root.cert)
    value = default_measurements()[7].hex().encode()
    changed = data.replace(value, value[:-1] + (b"0" if value[-1:] != b"0" else b"1"), 1)
    assert changed != data
    with pytest.raises(RimVerificationError):
        verify_rim(parse_rim(changed), at=at, root=pki.rim_root.cert)


# --- OCSP -------------------------------------------------------------------------------------


def test_ocsp_answers_every_certificate_the_pipeline_checks(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    stapled = StapledOcsp(gpu.ocsp_responses(at))
    chain = pki.device_chain(gpu.index)
    device = check_chain_revocation(
        chain, indices=nvidia_device_ocsp_indices(), mode="stapled", source=stapled, at=at
    )
    rim = tuple(
        check
        for kind in ("driver", "vbios")
        for check in check_chain_revocation(
            pki.rim_chain(kind),
            indices=nvidia_rim_ocsp_indices(4),
            mode="stapled",
            source=stapled,
            at=at,
        )
    )
    checks = device + rim
    assert [c.status for c in checks] == ["good"] * (3 + 3 + 3)
    assert len(gpu.ocsp_responses(at)) == 7  # the shared L3 and CA are answered once
    assert {c.responder for c in checks} == {"issuer"}
    assert {c.cert_id_hash for c in checks} == {"sha384"}


def test_revoked_answer_is_reported(pki: EmulationPki, at: datetime) -> None:
    chain = pki.device_chain(0)
    der = pki.ocsp_response(chain[2], pki.gpu_identity, at=at, revoked=True)
    check = check_ocsp_response(der, cert=chain[2], issuer=chain[3], at=at)
    assert check.status == "revoked"
    assert not check.ok
    # an answer about another certificate is not an answer about this one
    other_brom = pki.device_chain(1)[1]
    about_brom0 = pki.ocsp_response(chain[1], pki.gpu_provisioner, at=at)
    check = check_ocsp_response(about_brom0, cert=other_brom, issuer=chain[2], at=at)
    assert check.code == "wrong_certificate"
    with pytest.raises(InputError):
        pki.ocsp_response(chain[1], pki.gpu_root, at=at)


# --- inputs ----------------------------------------------------------------------------------


def test_bad_inputs_are_input_errors(pki: EmulationPki, gpu: EmulatedGpu) -> None:
    with pytest.raises(InputError):
        gpu.report(bytes(31))
    with pytest.raises(InputError):
        EmulatedGpu(pki, arch="BLACKWELL")
    with pytest.raises(InputError):
        EmulatedGpu(pki, driver_version="550.90.07; rm")
    with pytest.raises(InputError):
        EmulatedGpu(pki, vbios_version="96.00.9f.00")
    with pytest.raises(InputError):
        EmulatedGpu(pki, measurements=[bytes(48)] * 63)
    with pytest.raises(InputError):
        EmulatedGpu(pki, measurements=[bytes(47)] * 64)
    with pytest.raises(InputError):
        EmulatedGpu(pki, project="10<10")
    with pytest.raises(InputError):
        EmulatedGpu(pki, chip_sku="8821234567")  # wider than the 9-byte field


def test_other_versions_flow_through(pki: EmulationPki, at: datetime) -> None:
    gpu = EmulatedGpu(pki, index=4, driver_version="570.124.06", vbios_version="96.00.A5.00.01")
    assert vbios_bytes("96.00.a5.00.01") == bytes([0x00, 0xA5, 0x00, 0x96, 0x01, 0, 0, 0])
    nonce = os.urandom(32)
    result = run_pipeline([_evidence(gpu, nonce, at)], nonce=nonce, at=at, pki=pki)
    assert result.status is Status.AFFIRMING
    assert result.devices[0].claims["x-nvidia-gpu-driver-version"] == "570.124.06"
    assert str(result.devices[0].claims["x-nvidia-gpu-vbios-version"]).lower() == "96.00.a5.00.01"
    leaf = load_pem_chain(gpu.certificate_chain_pem())[0]
    assert leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier("2.23.133.5.4.1"))
