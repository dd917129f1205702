"""AMD CRL checks (``check_amd_crl``) with a synthetic ARK, since no real AMD CRL is vendored.

The keys are made here, per test session, and never leave memory: AMD's real ARK cannot sign
test CRLs, and the function takes the ARK as an argument precisely so it can be tested.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError, RevocationError
from attest.snp.verify import check_amd_crl, verify_snp_report
from tests.conftest import TODAY
from tests.snp.helpers import virtee_certs, virtee_report

PSS48 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
ARK_NAME = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ARK-Test")])


def _cert(
    name: str, key: rsa.RSAPrivateKey, issuer_key: rsa.RSAPrivateKey, serial: int, issuer: x509.Name
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(TODAY - timedelta(days=365))
        .not_valid_after(TODAY + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA384(), rsa_padding=PSS48)
    )


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    ark = _cert("ARK-Test", ark_key, ark_key, 1, ARK_NAME)
    ask = _cert("SEV-Test", ask_key, ark_key, 0x10002, ARK_NAME)
    return {"ark_key": ark_key, "ark": ark, "ask": ask, "other_key": ask_key}


def _crl(
    key: rsa.RSAPrivateKey,
    revoked: tuple[int, ...] = (),
    *,
    issuer: x509.Name = ARK_NAME,
    last: timedelta = timedelta(days=-1),
    next_: timedelta | None = timedelta(days=7),
    pss: bool = True,
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(TODAY + last)
        .next_update(TODAY + (next_ if next_ is not None else timedelta(days=7)))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(TODAY - timedelta(days=2))
            .build()
        )
    crl = builder.sign(key, hashes.SHA384(), rsa_padding=PSS48 if pss else padding.PKCS1v15())
    return crl.public_bytes(Encoding.DER)


def test_crl_not_listing_the_ask_passes(pki: dict) -> None:  # type: ignore[type-arg]
    crl = _crl(pki["ark_key"], revoked=(7, 8))
    check_amd_crl(crl, ark=pki["ark"], intermediate=pki["ask"], at=TODAY)
    pem = x509.load_der_x509_crl(crl).public_bytes(Encoding.PEM)
    check_amd_crl(pem, ark=pki["ark"], intermediate=pki["ask"], at=TODAY)


def test_revoked_ask_refused(pki: dict) -> None:  # type: ignore[type-arg]
    crl = _crl(pki["ark_key"], revoked=(7, 0x10002))
    with pytest.raises(RevocationError) as e:
        check_amd_crl(crl, ark=pki["ark"], intermediate=pki["ask"], at=TODAY)
    assert e.value.reason == "revoked"


@pytest.mark.parametrize(
    ("kwargs", "at_shift", "reason"),
    [
        ({}, timedelta(days=8), "crl_stale"),
        ({}, timedelta(days=-2), "crl_not_yet_valid"),
        ({"pss": False}, timedelta(0), "crl_bad_signature"),
        (
            {"issuer": x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ARK-Other")])},
            timedelta(0),
            "crl_issuer",
        ),
    ],
)
def test_crl_refusals(pki: dict, kwargs: dict, at_shift: timedelta, reason: str) -> None:  # type: ignore[type-arg]
    crl = _crl(pki["ark_key"], **kwargs)
    with pytest.raises(RevocationError) as e:
        check_amd_crl(crl, ark=pki["ark"], intermediate=pki["ask"], at=TODAY + at_shift)
    assert e.value.reason == reason


def test_crl_signed_by_another_key_refused(pki: dict) -> None:  # type: ignore[type-arg]
    crl = _crl(pki["other_key"])
    with pytest.raises(RevocationError) as e:
        check_amd_crl(crl, ark=pki["ark"], intermediate=pki["ask"], at=TODAY)
    assert e.value.reason == "crl_bad_signature"


def test_malformed_crl_is_bad_input(pki: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError):
        check_amd_crl(b"\x30\x00", ark=pki["ark"], intermediate=pki["ask"], at=TODAY)
    with pytest.raises(InputError, match="limit"):
        check_amd_crl(bytes(300 * 1024), ark=pki["ark"], intermediate=pki["ask"], at=TODAY)


def test_verify_wires_the_crl_to_the_pinned_ark(pki: dict) -> None:  # type: ignore[type-arg]
    """A CRL not issued by ARK-Milan is refused when verifying a real Milan report."""
    crl = _crl(pki["ark_key"])
    with pytest.raises(RevocationError) as e:
        verify_snp_report(virtee_report(), virtee_certs(), at=TODAY, crl=crl)
    assert e.value.reason == "crl_issuer"
    milan = virtee_certs()[-1].subject
    forged = _crl(pki["ark_key"], issuer=milan)
    with pytest.raises(RevocationError) as e:
        verify_snp_report(virtee_report(), virtee_certs(), at=TODAY, crl=forged)
    assert e.value.reason == "crl_bad_signature"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_changed_lists_only_raise_typed_errors(pki: dict, data: st.DataObject) -> None:  # type: ignore[type-arg]
    """One changed byte anywhere: ``InputError`` (it does not decode, including fields
    ``cryptography`` decodes lazily: a CRL's issuer name once escaped as ``ValueError``) or
    ``RevocationError`` (it decodes but is not the list the ARK signed); never accepted."""
    crl = bytearray(_crl(pki["ark_key"], revoked=(7, 8)))
    at = data.draw(st.integers(0, len(crl) - 1))
    crl[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises((InputError, RevocationError)):
        check_amd_crl(bytes(crl), ark=pki["ark"], intermediate=pki["ask"], at=TODAY)
