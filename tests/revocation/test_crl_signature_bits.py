"""CRLs whose signature BIT STRING is not DER (non-zero unused-bits count) are refused.

``cryptography`` ignores the unused-bits octet of a signature, so a CRL with that octet changed
(and the padding bits zero, so still valid BER) parses and verifies like the original: two byte
strings, one list. Exact bytes are what the CRL caches key on and what the log archives (held
AMD lists, TDX collateral), so, as for certificates (``signature_bits_canonical``) and OCSP
responses, the loaders refuse it. Real Intel PCK CRL; emulated ARK-signed AMD CRLs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.emulation import EmulationPki
from attest.errors import InputError
from attest.snp.report import Product, SigningKey
from attest.snp.verify import load_held_crl
from attest.tdx.collateral import CollateralParseError, parse_crl
from attest.x509chain import _tlv, signed_der_canonical
from tests.tdx import helpers as h


def _unused_bits_offset(der: bytes) -> int:
    _, start, _ = _tlv(der, 0)
    _, _, pos = _tlv(der, start)  # tbsCertList
    _, _, pos = _tlv(der, pos)  # signatureAlgorithm
    tag, bits, _ = _tlv(der, pos)
    assert tag == 0x03
    return bits


def _noncanonical(der: bytes) -> bytes:
    """``der`` with the unused-bits count set to 1; the last octet's low bit must be 0, so
    the string stays valid BER and parses (what makes the encoding malleable at all)."""
    assert der[-1] & 1 == 0
    at = _unused_bits_offset(der)
    assert der[at] == 0
    out = bytearray(der)
    out[at] = 1
    return bytes(out)


def test_real_pck_crl_with_a_changed_unused_bits_octet_is_refused() -> None:
    der = h.read(h.GTG / "pckcrl")
    assert signed_der_canonical(der) and parse_crl(der).der == der
    bad = _noncanonical(der)
    x509.load_der_x509_crl(bad)  # cryptography alone accepts it
    assert not signed_der_canonical(bad)
    with pytest.raises(CollateralParseError, match="signature BIT STRING is not DER"):
        parse_crl(bad)


def test_held_amd_crl_with_a_changed_unused_bits_octet_is_refused(tmp_path: Path) -> None:
    pki = EmulationPki.create(tmp_path / "pki")
    # PSS signatures are randomised: make lists until one ends in an even octet.
    for serial in range(1, 200):
        crl = pki.amd_crl(at=datetime.now(UTC), revoked_serials=(serial,))
        if crl[-1] & 1 == 0:
            break
    else:
        raise AssertionError("no CRL signature ended in an even octet")
    key = (SigningKey.VCEK, Product.MILAN)
    assert load_held_crl(crl, *key) == crl
    bad = _noncanonical(crl)
    x509.load_der_x509_crl(bad)
    with pytest.raises(InputError, match="signature BIT STRING is not DER"):
        load_held_crl(bad, *key)
    pem = x509.load_der_x509_crl(bad).public_bytes(Encoding.PEM)
    with pytest.raises(InputError, match="signature BIT STRING is not DER"):
        load_held_crl(pem, *key)


def _bad_version(der: bytes) -> bytes:
    """``der`` with its version (v2, INTEGER 1) set to 0, which cryptography refuses with
    ``InvalidVersion``, an exception that is not a ``ValueError``."""
    _, start, _ = _tlv(der, 0)
    _, tbs, _ = _tlv(der, start)  # tbsCertList contents
    tag, value, end = _tlv(der, tbs)
    assert (tag, der[value:end]) == (0x02, b"\x01")
    return der[:value] + b"\x00" + der[end:]


def test_a_crl_with_a_bad_version_is_a_typed_error(tmp_path: Path) -> None:
    """Found by hypothesis (``tests/snp/test_crl.py``): the version byte changed escaped the
    AMD CRL check as ``cryptography.x509.InvalidVersion``; the TDX CRL parser had the same gap."""
    from attest.snp.verify import check_amd_crl

    pck = _bad_version(h.read(h.GTG / "pckcrl"))
    with pytest.raises(CollateralParseError, match="malformed DER CRL"):
        parse_crl(pck)
    pki = EmulationPki.create(tmp_path / "pki")
    amd = _bad_version(pki.amd_crl(at=datetime.now(UTC)))
    with pytest.raises(InputError, match="malformed CRL"):
        load_held_crl(amd, SigningKey.VCEK, Product.MILAN)
    with pytest.raises(InputError, match="malformed CRL"):
        check_amd_crl(amd, ark=pki.ark.cert, intermediate=pki.ask.cert, at=datetime.now(UTC))
