"""Device and RIM chain shape on the emulated PKI, whose keys let a test build what a real
vendor never issues: a CA or non-signing leaf, a self-signed certificate inside the chain, an
unknown critical extension, and a report signed by a BROM behind a chain shifted onto a second
root copy (security review findings F1 and F2)."""

from __future__ import annotations

import os
from datetime import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from agent.emulation import EmulatedGpu, EmulationPki
from agent.emulation.gpu import OPAQUE_FWID
from agent.emulation.pki import GpuIdentity, Issued
from attest.errors import ChainError
from attest.nvidia.device import verify_device_chain
from attest.nvidia.evidence import Arch, DeviceEvidence
from attest.nvidia.rim import RimChainError, RimCollection, verify_rim_bytes
from attest.nvidia.rim_parse import DS_NS
from attest.nvidia.verifier import Status, VerifierCaches, verify_gpu_evidence
from attest.revocation.ocsp import StapledOcsp

UNKNOWN_CRITICAL = x509.UnrecognizedExtension(
    x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"
)


def _reissue(
    cert: x509.Certificate,
    signer: ec.EllipticCurvePrivateKey,
    *,
    subject: x509.Name | None = None,
    issuer: x509.Name | None = None,
    public_key: ec.EllipticCurvePublicKey | None = None,
    drop: tuple[type[x509.ExtensionType], ...] = (),
    add: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> x509.Certificate:
    """``cert`` again, signed by ``signer``, with extensions of the types in ``drop`` removed
    and those in ``add`` (value, critical) appended; names and key changed where given."""
    b = (
        x509.CertificateBuilder()
        .subject_name(subject if subject is not None else cert.subject)
        .issuer_name(issuer if issuer is not None else cert.issuer)
        .public_key(public_key if public_key is not None else cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, drop):
            b = b.add_extension(ext.value, ext.critical)
    for value, critical in add:
        b = b.add_extension(value, critical)
    return b.sign(signer, hashes.SHA384())


def _key_usage(*, sign: bool, agree: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=agree,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _with_leaf(pki: EmulationPki, leaf: x509.Certificate) -> tuple[x509.Certificate, ...]:
    return (leaf, *pki.device_chain(0)[1:])


def _verify(pki: EmulationPki, chain: tuple[x509.Certificate, ...], at: datetime) -> None:
    verify_device_chain(chain, at=at, root=pki.gpu_root.cert)


def test_reissued_leaf_verifies(pki: EmulationPki, at: datetime) -> None:
    """The baseline: the leaf reissued unchanged, or without keyUsage, still verifies."""
    g = pki.gpu(0)
    _verify(pki, _with_leaf(pki, _reissue(g.leaf.cert, g.brom.key)), at)
    no_usage = _reissue(g.leaf.cert, g.brom.key, drop=(x509.KeyUsage,))
    _verify(pki, _with_leaf(pki, no_usage), at)


def test_ca_leaf_is_refused(pki: EmulationPki, at: datetime) -> None:
    """A leaf with basicConstraints cA=TRUE (and digitalSignature) is a CA, not an attestation
    key: refused even though every link and every issuer is right."""
    g = pki.gpu(0)
    ca_leaf = _reissue(
        g.leaf.cert, g.brom.key, add=((x509.BasicConstraints(ca=True, path_length=None), True),)
    )
    with pytest.raises(ChainError) as info:
        _verify(pki, _with_leaf(pki, ca_leaf), at)
    assert info.value.reason == "leaf_is_ca"


def test_leaf_without_digital_signature_is_refused(pki: EmulationPki, at: datetime) -> None:
    g = pki.gpu(0)
    agree_only = _reissue(
        g.leaf.cert,
        g.brom.key,
        drop=(x509.KeyUsage,),
        add=((_key_usage(sign=False, agree=True), True),),
    )
    with pytest.raises(ChainError) as info:
        _verify(pki, _with_leaf(pki, agree_only), at)
    assert info.value.reason == "leaf_key_usage"


def test_self_signed_certificate_inside_a_device_chain_is_refused(
    pki: EmulationPki, at: datetime
) -> None:
    """[leaf, BROM self-signed, BROM key certified by the Identity CA, Identity, root]: five
    certificates whose links all verify (the self-signed BROM's signature is made by the key
    the next certificate holds), but a self-signed certificate may only come last."""
    g = pki.gpu(0)
    brom = g.brom.cert
    self_signed = _reissue(brom, g.brom.key, issuer=brom.subject)
    under_identity = _reissue(brom, pki.gpu_identity.key, issuer=pki.gpu_identity.cert.subject)
    chain = (g.leaf.cert, self_signed, under_identity, pki.gpu_identity.cert, pki.gpu_root.cert)
    with pytest.raises(ChainError) as info:
        _verify(pki, chain, at)
    assert info.value.reason == "self_signed_not_last"


@pytest.mark.parametrize("where", ["leaf", "brom"])
def test_unknown_critical_extension_in_a_device_chain_is_refused(
    pki: EmulationPki, at: datetime, where: str
) -> None:
    g = pki.gpu(0)
    for critical in (False, True):
        add = ((UNKNOWN_CRITICAL, critical),)
        if where == "leaf":
            chain = _with_leaf(pki, _reissue(g.leaf.cert, g.brom.key, add=add))
        else:
            brom = _reissue(g.brom.cert, pki.gpu_provisioner.key, add=add)
            chain = (g.leaf.cert, brom, *pki.device_chain(0)[2:])
        if not critical:
            _verify(pki, chain, at)  # the same extension, not critical: ignored
            continue
        with pytest.raises(ChainError) as info:
            _verify(pki, chain, at)
        assert info.value.reason == "unsupported_critical_extension"


def _resigned_rim(
    gpu: EmulatedGpu,
    signer: Issued[ec.EllipticCurvePrivateKey],
    chain: tuple[x509.Certificate, ...],
) -> bytes:
    """The GPU's driver RIM signed again by ``signer`` with ``chain`` in its KeyInfo."""
    doc = etree.fromstring(gpu.driver_rim())
    signature = doc.find(f"{{{DS_NS}}}Signature")
    assert signature is not None
    doc.remove(signature)
    xml_signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA384,
        digest_algorithm=DigestAlgorithm.SHA384,
        c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
    )
    certs = [c.public_bytes(Encoding.PEM).decode("ascii") for c in chain]
    return bytes(etree.tostring(xml_signer.sign(doc, key=signer.key, cert=certs))) + b"\n"


def test_unknown_critical_extension_in_a_rim_signer_chain_is_refused(
    pki: EmulationPki, gpu: EmulatedGpu, at: datetime
) -> None:
    real = pki.rim_signer("driver")
    for critical in (False, True):
        cert = _reissue(real.cert, pki.rim_l3.key, add=((UNKNOWN_CRITICAL, critical),))
        data = _resigned_rim(gpu, Issued(cert, real.key), (cert, *pki.rim_chain("driver")[1:]))
        if not critical:
            assert verify_rim_bytes(data, at=at, root=pki.rim_root.cert).signer == cert
            continue
        with pytest.raises(RimChainError) as info:
            verify_rim_bytes(data, at=at, root=pki.rim_root.cert)
        assert info.value.reason == "rim_chain_unsupported_critical_extension"


class _BromSignedGpu(EmulatedGpu):
    """An emulated GPU whose reports are signed by its BROM key (a CA key) and carry no FWID
    (the BROM certifies none), its BROM renamed as NVIDIA names it so the leaf names Hopper."""

    def __init__(self, pki: EmulationPki) -> None:
        super().__init__(pki)
        old = self.identity.brom
        brom = _reissue(
            old.cert,
            pki.gpu_provisioner.key,
            subject=x509.Name.from_rfc4514_string(
                "CN=GH100 A01 GSP BROM,O=NVIDIA Corporation,C=US"
            ),
        )
        self.identity = GpuIdentity(index=0, brom=Issued(brom, old.key), leaf=Issued(brom, old.key))

    def _build_opaque(self) -> bytes:
        opaque, out, off = super()._build_opaque(), b"", 0
        while off < len(opaque):
            size = 4 + int.from_bytes(opaque[off + 2 : off + 4], "little")
            if int.from_bytes(opaque[off : off + 2], "little") != OPAQUE_FWID:
                out += opaque[off : off + size]
            off += size
        return out


def test_report_signed_by_a_brom_behind_a_shifted_chain_is_contraindicated(
    pki: EmulationPki, at: datetime
) -> None:
    """Review finding F1, end to end: with [BROM, ICA, Identity, root, root] and the report
    signed by the BROM key, every check passed (FWID 'absent-in-report', OCSP on ICA, Identity
    and root instead of the per-chip BROM) and the GPU was affirmed."""
    gpu = _BromSignedGpu(pki)
    nonce = os.urandom(32)
    root = pki.gpu_root
    chain = (
        gpu.identity.leaf.cert,
        pki.gpu_provisioner.cert,
        pki.gpu_identity.cert,
        root.cert,
        root.cert,
    )
    ocsp = [
        pki.ocsp_response(chain[1], pki.gpu_identity, at=at),
        pki.ocsp_response(chain[2], root, at=at),
        pki.ocsp_response(chain[3], root, at=at),
        *(pki.ocsp_response(c, i, at=at) for c, i in pki.rim_ocsp_subjects()),
    ]
    evidence = DeviceEvidence(
        index=0, arch=Arch.HOPPER, report_bytes=gpu.report(nonce), chain=chain
    )
    result = verify_gpu_evidence(
        [evidence],
        at=at,
        expected_nonce=nonce,
        rim_source=RimCollection([gpu.driver_rim(), gpu.vbios_rim()]),
        revocation_mode="stapled",
        ocsp_source=StapledOcsp(ocsp),
        caches=VerifierCaches(device_root=root.cert, rim_root=pki.rim_root.cert),
    )
    assert result.status is Status.CONTRAINDICATED
    failures = {f.field: f for f in result.devices[0].failures}
    assert "x-nvidia-gpu-attestation-report-cert-chain" in failures
    assert "pinned root" in failures["x-nvidia-gpu-attestation-report-cert-chain"].detail
