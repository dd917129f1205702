"""One physical device given twice in one evidence set, however its certificates are encoded.

The verifier once recognised a repeated device by its leaf certificate's exact DER. An ECDSA
signature (r, s) is equally valid as (r, n - s), so anyone can re-encode a device's leaf into
other bytes that still chain to NVIDIA's root: the same GPU then passed twice (``gpu.count``
met by one GPU; a PPCIe set with one GPU's evidence in two slots). A device is now named by its
leaf key, its leaf's signed body and its per-chip device identity (BROM) key
(``attest.nvidia.verifier.DeviceIdentity``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding

from agent.emulation import EmulatedGpu, EmulationPki
from agent.emulation.pki import MAX_EMULATED_GPUS
from agent.rim_fetch import DirectoryRimSource
from attest.bundle import DeviceEvidenceIn
from attest.nvidia.evidence import DeviceEvidence, load_evidence
from attest.nvidia.verifier import EvidenceSetResult, Status, verify_gpu_evidence
from attest.revocation.ocsp import RevocationMode
from tests.conftest import LEGACY_NONCE, NVIDIA, RIM_ERA, TODAY
from tests.emulation.helpers import run_pipeline

RIMS = DirectoryRimSource([NVIDIA / "rims" / "test_no_gpu"])
LEGACY = load_evidence(
    (NVIDIA / "hopper_legacy/attestationReport.txt").read_bytes(),
    certs=(NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes(),
)[0]
GPUS = load_evidence((NVIDIA / "ppcie/gpu_evidence.json").read_bytes())
SWITCHES = load_evidence((NVIDIA / "ppcie/switch_evidence.json").read_bytes())
PPCIE_NONCE = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")

#: The order of P-384, the curve of every key in NVIDIA's device chains.
P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = bytes([0x81, n])
    else:
        length = bytes([0x82]) + n.to_bytes(2, "big")
    return bytes([tag]) + length + content


def _header_length(der: bytes) -> int:
    return 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)


def malleate(cert: x509.Certificate, issuer: x509.Certificate) -> x509.Certificate:
    """The same certificate with its ECDSA signature (r, s) re-encoded as (r, n - s): other DER,
    same signed body, still valid under the issuer's key (checked here)."""
    der = cert.public_bytes(Encoding.DER)
    tbs = cert.tbs_certificate_bytes
    start = _header_length(der)
    assert der[start : start + len(tbs)] == tbs
    rest = der[start + len(tbs) :]
    assert rest[0] == 0x30 and rest[1] < 0x80  # AlgorithmIdentifier, a short SEQUENCE
    algid = rest[: 2 + rest[1]]
    r, s = decode_dss_signature(cert.signature)
    signature = encode_dss_signature(r, P384_ORDER - s)
    twin = x509.load_der_x509_certificate(_tlv(0x30, tbs + algid + _tlv(0x03, b"\x00" + signature)))
    key = issuer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    key.verify(twin.signature, twin.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    assert twin != cert and twin.tbs_certificate_bytes == tbs
    return twin


def _with_malleated_leaf(ev: DeviceEvidence, index: int) -> DeviceEvidence:
    return replace(ev, index=index, chain=(malleate(ev.chain[0], ev.chain[1]), *ev.chain[1:]))


def _run(evidence: tuple[DeviceEvidence, ...], nonce: bytes, at: datetime) -> EvidenceSetResult:
    return verify_gpu_evidence(
        evidence,
        at=at,
        expected_nonce=nonce,
        rim_source=RIMS,
        revocation_mode=RevocationMode.SKIP,
        ocsp_source=None,
    )


def _set_failures(r: EvidenceSetResult) -> list[tuple[str, object]]:
    return [(f.field, f.actual) for f in r.failures]


def _ppcie(gpus: tuple[DeviceEvidence, ...]) -> tuple[DeviceEvidence, ...]:
    return tuple(replace(e, index=i) for i, e in enumerate((*gpus, *SWITCHES)))


def test_real_hopper_twice_with_a_malleated_leaf_is_one_device() -> None:
    twin = _with_malleated_leaf(LEGACY, 1)
    assert twin.chain[0] != LEGACY.chain[0]  # the old check compared exactly these
    r = _run((LEGACY, twin), bytes.fromhex(LEGACY_NONCE), RIM_ERA)
    # each report, on its own, verifies as before (revocation skipped: a warning only)
    assert [d.status for d in r.devices] == [Status.WARNING, Status.WARNING]
    assert _set_failures(r) == [("device1.leaf_certificate", "same leaf as device0")]
    assert r.failures[0].expected == "a device given once"
    assert r.status is Status.CONTRAINDICATED


def test_real_ppcie_set_with_gpu7_replaced_by_a_malleated_gpu0() -> None:
    honest = _run(_ppcie(GPUS), PPCIE_NONCE, TODAY)
    assert not [f for f in honest.failures if f.field.startswith("device")]
    assert honest.topology is not None and honest.topology.ok
    r = _run(_ppcie((*GPUS[:7], _with_malleated_leaf(GPUS[0], 7))), PPCIE_NONCE, TODAY)
    # the topology only counts GPU slots (GPUs report no PDI of their own): it still passes
    assert r.topology is not None and r.topology.ok
    assert _set_failures(r) == [("device7.leaf_certificate", "same leaf as device0")]
    assert r.status is Status.CONTRAINDICATED


def test_every_real_device_has_its_own_identity() -> None:
    """The keys are per device in NVIDIA's own sets (the 8 GPUs and 4 NVSwitches of the PPCIe
    sample, the Hopper and Blackwell samples), so honest sets never trip the check."""
    from attest.nvidia.verifier import DeviceIdentity

    chains = [e.chain for e in (*GPUS, *SWITCHES, LEGACY)]
    for report, certs in (
        ("hopper/hopperAttestationReport.txt", "hopper/hopperCertChain.txt"),
        ("blackwell/blackwell_coco_report.txt", "blackwell/blackwell_coco_certs.txt"),
    ):
        (ev,) = load_evidence((NVIDIA / report).read_bytes(), certs=(NVIDIA / certs).read_bytes())
        chains.append(ev.chain)
    identities = [DeviceIdentity.of(c) for c in chains]
    for part in ("leaf_key", "leaf_tbs", "identity_key"):
        values = [getattr(i, part) for i in identities]
        assert None not in values and len(set(values)) == len(values), part


def test_emulated_gpus_have_distinct_identities(pki: EmulationPki) -> None:
    from attest.nvidia.verifier import DeviceIdentity

    identities = [DeviceIdentity.of(pki.device_chain(i)) for i in range(MAX_EMULATED_GPUS)]
    for part in ("leaf_key", "leaf_tbs", "identity_key"):
        values = [getattr(i, part) for i in identities]
        assert len(set(values)) == MAX_EMULATED_GPUS, part


def _emulated(gpu: EmulatedGpu, nonce: bytes, at: datetime, chain: bytes) -> DeviceEvidenceIn:
    return DeviceEvidenceIn(
        "HOPPER",
        gpu.report(nonce),
        chain,
        gpu.ocsp_responses(at),
        (gpu.driver_rim(), gpu.vbios_rim()),
    )


def _pem(chain: tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in chain)


def test_emulated_gpu_twice_with_a_malleated_leaf(pki: EmulationPki) -> None:
    at, nonce = datetime.now(UTC), os.urandom(32)
    gpu = EmulatedGpu(pki, index=0)
    chain = pki.device_chain(0)
    twin = _pem((malleate(chain[0], chain[1]), *chain[1:]))
    r = run_pipeline(
        (_emulated(gpu, nonce, at, gpu.certificate_chain_pem()), _emulated(gpu, nonce, at, twin)),
        nonce=nonce,
        at=at,
        pki=pki,
    )
    assert [d.status for d in r.devices] == [Status.AFFIRMING, Status.AFFIRMING]
    assert _set_failures(r) == [("device1.leaf_certificate", "same leaf as device0")]
    assert r.status is Status.CONTRAINDICATED


def test_another_leaf_under_the_same_device_identity_is_the_same_device(
    pki: EmulationPki,
) -> None:
    """A device that makes a new leaf (new key, new body) under its BROM is still one device."""
    at, nonce = datetime.now(UTC), os.urandom(32)
    gpu = EmulatedGpu(pki, index=0)
    chain, brom = pki.device_chain(0), pki.gpu(0).brom
    old = chain[0]
    new_key = ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(new_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - timedelta(days=1))
        .not_valid_after(old.not_valid_after_utc)
    )
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    leaf = builder.sign(brom.key, hashes.SHA384())
    second = _pem((leaf, *chain[1:]))
    r = run_pipeline(
        (_emulated(gpu, nonce, at, gpu.certificate_chain_pem()), _emulated(gpu, nonce, at, second)),
        nonce=nonce,
        at=at,
        pki=pki,
    )
    assert _set_failures(r) == [("device1.device_identity", "same device identity as device0")]
    assert r.status is Status.CONTRAINDICATED


def test_two_emulated_gpus_are_two_devices(pki: EmulationPki) -> None:
    at, nonce = datetime.now(UTC), os.urandom(32)
    gpus = [EmulatedGpu(pki, index=i) for i in range(2)]
    r = run_pipeline(
        [_emulated(g, nonce, at, g.certificate_chain_pem()) for g in gpus],
        nonce=nonce,
        at=at,
        pki=pki,
    )
    assert r.failures == () and r.status is Status.AFFIRMING
