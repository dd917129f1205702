"""KeyInfo certificates shared by a GPU's two RIMs are loaded once per RimVerifier."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attest.nvidia.rim import RimParseError, RimVerifier, verify_rim_bytes
from attest.nvidia.rim_parse import CertificateMemo, parse_rim, parse_rim_with_content
from tests.conftest import NVIDIA, RIM_ERA

RIMS = NVIDIA / "rims" / "test_no_gpu"
DRIVER = (RIMS / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
VBIOS = (RIMS / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes()


def test_shared_certificates_are_loaded_once_and_equal() -> None:
    memo = CertificateMemo()
    driver, _ = parse_rim_with_content(DRIVER, certificates=memo)
    vbios, _ = parse_rim_with_content(VBIOS, certificates=memo)
    assert len(memo) == 5  # two signers, and the L3, CA and root copy both embed
    shared = [
        (a, b)
        for a in driver.embedded_certificates
        for b in vbios.embedded_certificates
        if a.public_bytes(Encoding.DER) == b.public_bytes(Encoding.DER)
    ]
    assert len(shared) == 3 and all(a is b for a, b in shared)
    assert parse_rim(VBIOS) == vbios  # the same RIM as without the memo


def test_verifier_answers_as_a_fresh_verification() -> None:
    verifier = RimVerifier()
    for data in (DRIVER, VBIOS):
        assert verifier.verify(data, at=RIM_ERA) == verify_rim_bytes(data, at=RIM_ERA)


def test_a_certificate_that_does_not_load_is_not_remembered() -> None:
    memo = CertificateMemo()
    for _ in range(2):
        with pytest.raises(RimParseError):
            memo.load(b"\x30\x03\x02\x01\x01", "KeyInfo/X509Data/X509Certificate[0]")
    assert len(memo) == 0


def test_memo_is_bounded() -> None:
    memo = CertificateMemo(max_entries=2)
    parse_rim_with_content(DRIVER, certificates=memo)
    assert len(memo) == 2


def test_a_keyinfo_certificate_with_a_non_der_signature_bit_string_is_refused() -> None:
    """The XML signature does not cover KeyInfo, so an embedded certificate's bytes are only
    as fixed as their encoding: with its signature's unused-bits octet changed (the last octet
    even, so still valid BER) ``cryptography`` loads the same certificate. The RIM is refused,
    as every certificate lessee loads is (``attest.x509chain.signed_der_canonical``)."""
    import base64
    import re

    from attest.x509chain import _tlv

    match = list(re.finditer(rb"<(?:\w+:)?X509Certificate>([^<]+)</", DRIVER))[1]
    der = bytearray(base64.b64decode(match.group(1)))
    assert der[-1] & 1 == 0
    _, start, _ = _tlv(bytes(der), 0)
    _, _, pos = _tlv(bytes(der), start)  # tbsCertificate
    _, _, pos = _tlv(bytes(der), pos)  # signatureAlgorithm
    _, bits, _ = _tlv(bytes(der), pos)
    assert der[bits] == 0
    der[bits] = 1
    bad = DRIVER[: match.start(1)] + base64.b64encode(bytes(der)) + DRIVER[match.end(1) :]
    parse_rim(DRIVER)
    with pytest.raises(RimParseError, match="signature BIT STRING is not DER"):
        parse_rim(bad)
