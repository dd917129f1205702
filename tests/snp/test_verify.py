"""SEV-SNP verification with the real AMD vectors: positives, every named refusal, hypothesis."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest import roots
from attest.errors import ChainError, InputError, ParseError, VerificationError
from attest.snp.report import REPORT_SIZE, SIGNED_SIZE, Product, SigningKey, parse_report
from attest.snp.verify import (
    AMD_PSS_SHA384_ALGIDS,
    CertRole,
    check_extensions_match_report,
    classify,
    load_amd_certificates,
    parse_amd_extensions,
    pinned_chain,
    verify_snp_report,
)
from attest.x509chain import ChainCache, verify_chain
from tests.conftest import TODAY
from tests.snp.helpers import (
    GSG,
    SNP,
    VIRTEE,
    certs,
    flip,
    gsg_certs,
    gsg_report,
    patch,
    set_u32,
    virtee_certs,
    virtee_report,
)

# --- the real reports verify ----------------------------------------------------------------


def test_go_sev_guest_report_verifies_and_has_debug() -> None:
    v = verify_snp_report(gsg_report(), gsg_certs(), at=TODAY)
    assert v.product is Product.MILAN
    assert v.signing_key_kind is SigningKey.VCEK
    assert (v.tcb.bootloader, v.tcb.tee, v.tcb.snp, v.tcb.microcode) == (2, 0, 5, 68)
    assert v.chip_id_checked is True
    assert v.revocation_checked is False
    assert [c.subject.rfc4514_string().split(",")[0] for c in v.chain.certs] == [
        "CN=SEV-VCEK",
        "CN=SEV-Milan",
    ]
    assert v.chain.root.subject.rfc4514_string().startswith("CN=ARK-Milan")
    assert v.extensions.product_name == "Milan-B0"
    # Verified is not acceptable: the DEBUG bit is a typed fact for the appraisal to refuse.
    assert v.report.policy.debug is True


def test_virtee_report_verifies_without_debug() -> None:
    v = verify_snp_report(virtee_report(), virtee_certs(), at=TODAY)
    assert v.product is Product.MILAN
    assert v.report.policy.debug is False
    assert (v.tcb.bootloader, v.tcb.snp, v.tcb.microcode) == (3, 8, 115)


def test_vcek_alone_uses_pinned_ask_and_ark() -> None:
    vcek = certs("virtee-sev/vcek_milan.der")
    v = verify_snp_report(virtee_report(), vcek, at=TODAY)
    assert v.chain.root == pinned_chain(Product.MILAN, SigningKey.VCEK)[1]


def test_parsed_report_accepted() -> None:
    report = parse_report(virtee_report())
    assert verify_snp_report(report, virtee_certs(), at=TODAY).report is report


def test_chain_cache_hit_gives_same_chain() -> None:
    cache = ChainCache()
    a = verify_snp_report(virtee_report(), virtee_certs(), at=TODAY, cache=cache)
    b = verify_snp_report(virtee_report(), virtee_certs(), at=TODAY, cache=cache)
    assert a.chain is b.chain


# --- wrong roots and chains -----------------------------------------------------------------


def test_genoa_chain_for_milan_vcek_refused() -> None:
    bad = certs("virtee-sev/vcek_milan.der", "go-sev-guest/ask_ark_genoa.pem")
    with pytest.raises(ChainError) as e:
        verify_snp_report(virtee_report(), bad, at=TODAY)
    assert e.value.reason == "untrusted_root"
    assert "ARK-Genoa" in str(e.value)


def test_genoa_ask_for_milan_vcek_refused() -> None:
    ask_genoa = load_amd_certificates((GSG / "ask_ark_genoa.pem").read_bytes())[0]
    with pytest.raises(ChainError) as e:
        verify_snp_report(
            virtee_report(), (*certs("virtee-sev/vcek_milan.der"), ask_genoa), at=TODAY
        )
    assert e.value.reason == "issuer_mismatch"


def test_asvk_for_a_vcek_report_refused() -> None:
    bad = certs("virtee-sev/vcek_milan.der", "go-sev-guest/ask_ark_milan_vlek.pem")
    with pytest.raises(ChainError) as e:
        verify_snp_report(virtee_report(), bad, at=TODAY)
    assert e.value.reason == "unexpected_certificate"


def test_two_vceks_refused() -> None:
    two = certs("virtee-sev/vcek_milan.der", "go-sev-guest/vcek.testcer")
    with pytest.raises(ChainError) as e:
        verify_snp_report(virtee_report(), two, at=TODAY)
    assert e.value.reason == "unexpected_certificate"


def test_missing_vcek() -> None:
    with pytest.raises(VerificationError) as e:
        verify_snp_report(virtee_report(), certs("virtee-sev/cert_chain_milan"), at=TODAY)
    assert e.value.reason == "missing_certificate"
    with pytest.raises(VerificationError) as e:
        verify_snp_report(virtee_report(), (), at=TODAY)
    assert e.value.reason == "missing_certificate"


def test_non_amd_certificate_is_bad_input() -> None:
    with pytest.raises(InputError, match="not an AMD SEV-SNP certificate"):
        verify_snp_report(virtee_report(), (roots.nvidia_device_root(),), at=TODAY)


# --- tampering ------------------------------------------------------------------------------


def test_tampered_signature_refused() -> None:
    with pytest.raises(VerificationError) as e:
        verify_snp_report(flip(virtee_report(), SIGNED_SIZE + 3), virtee_certs(), at=TODAY)
    assert e.value.reason == "bad_signature"


def test_tampered_measurement_refused() -> None:
    with pytest.raises(VerificationError) as e:
        verify_snp_report(flip(virtee_report(), 0x90), virtee_certs(), at=TODAY)
    assert e.value.reason == "bad_signature"


def test_vcek_of_another_chip_refused() -> None:
    wrong = certs("virtee-sev/vcek_milan.der")
    with pytest.raises(VerificationError) as e:
        verify_snp_report(gsg_report(), wrong, at=TODAY)
    assert e.value.reason == "bad_signature"


def test_tampered_vcek_refused() -> None:
    der = (VIRTEE / "vcek_milan.der").read_bytes()
    # The last bytes are the ASK's RSA-PSS signature over the VCEK.
    bad = load_amd_certificates(flip(der, len(der) - 5))
    with pytest.raises(ChainError) as e:
        verify_snp_report(virtee_report(), bad, at=TODAY)
    assert e.value.reason == "bad_signature"


# --- time -----------------------------------------------------------------------------------


def test_before_vcek_not_before_refused() -> None:
    at = datetime(2022, 9, 1, tzinfo=UTC)  # the go-sev-guest VCEK dates from 2022-09-24
    with pytest.raises(ChainError) as e:
        verify_snp_report(gsg_report(), gsg_certs(), at=at)
    assert e.value.reason == "not_yet_valid"


def test_after_vcek_not_after_refused() -> None:
    at = datetime(2029, 9, 25, tzinfo=UTC)  # the go-sev-guest VCEK expires 2029-09-24
    with pytest.raises(ChainError) as e:
        verify_snp_report(gsg_report(), gsg_certs(), at=at)
    assert e.value.reason == "expired"


def test_naive_time_refused() -> None:
    with pytest.raises(InputError):
        verify_snp_report(gsg_report(), gsg_certs(), at=datetime(2026, 1, 1))


# --- key kind, product, binding ---------------------------------------------------------------


def test_vlek_report_with_vcek_refused() -> None:
    vlek_report = set_u32(virtee_report(), 0x48, 1 << 2)
    with pytest.raises(VerificationError) as e:
        verify_snp_report(vlek_report, certs("virtee-sev/vcek_milan.der"), at=TODAY)
    assert e.value.reason == "signing_key_mismatch"


def test_unsigned_report_refused() -> None:
    data = set_u32(virtee_report(), 0x48, 7 << 2)
    data = patch(data, SIGNED_SIZE, bytes(REPORT_SIZE - SIGNED_SIZE))
    with pytest.raises(VerificationError) as e:
        verify_snp_report(data, virtee_certs(), at=TODAY)
    assert e.value.reason == "unsigned"


def test_cpuid_product_must_match_vcek() -> None:
    genoa_v3 = patch(set_u32(virtee_report(), 0, 3), 0x188, bytes([0x19, 0x11, 0x01]))
    with pytest.raises(VerificationError) as e:
        verify_snp_report(genoa_v3, virtee_certs(), at=TODAY)
    assert e.value.reason == "product_mismatch"


def test_report_data_binding() -> None:
    expected = parse_report(gsg_report()).report_data
    v = verify_snp_report(gsg_report(), gsg_certs(), at=TODAY, report_data=expected)
    assert v.report.report_data == expected
    with pytest.raises(VerificationError) as e:
        verify_snp_report(gsg_report(), gsg_certs(), at=TODAY, report_data=bytes(64))
    assert e.value.reason == "report_data_mismatch"
    with pytest.raises(InputError):
        verify_snp_report(gsg_report(), gsg_certs(), at=TODAY, report_data=bytes(32))


# --- VCEK extensions vs the report ------------------------------------------------------------


def _vcek_ext(name: str):  # type: ignore[no-untyped-def]
    return parse_amd_extensions(certs(name)[0])


def test_tcb_mismatch_named() -> None:
    ext = _vcek_ext("virtee-sev/vcek_milan.der")
    report = parse_report(patch(virtee_report(), 0x180 + 6, bytes([9])))  # SNP SPL 8 -> 9
    with pytest.raises(VerificationError) as e:
        check_extensions_match_report(ext, report, Product.MILAN, SigningKey.VCEK)
    assert e.value.reason == "tcb_mismatch"
    assert "snp SPL 8" in str(e.value) and "has 9" in str(e.value)


def test_chip_id_mismatch_named() -> None:
    ext = _vcek_ext("virtee-sev/vcek_milan.der")
    report = parse_report(flip(virtee_report(), 0x1A0 + 10))
    with pytest.raises(VerificationError) as e:
        check_extensions_match_report(ext, report, Product.MILAN, SigningKey.VCEK)
    assert e.value.reason == "chip_id_mismatch"


def test_masked_chip_id_and_vlek_skip_hwid() -> None:
    ext = _vcek_ext("virtee-sev/vcek_milan.der")
    masked = set_u32(patch(virtee_report(), 0x1A0, bytes(64)), 0x48, 0b10)
    _, checked = check_extensions_match_report(
        ext, parse_report(masked), Product.MILAN, SigningKey.VCEK
    )
    assert checked is False
    _, checked = check_extensions_match_report(
        ext, parse_report(virtee_report()), Product.MILAN, SigningKey.VLEK
    )
    assert checked is False


def test_real_vcek_extensions_milan() -> None:
    ext = _vcek_ext("go-sev-guest/vcek.testcer")
    assert ext.product is Product.MILAN and ext.product_name == "Milan-B0"
    assert (ext.bootloader, ext.tee, ext.snp, ext.microcode, ext.fmc) == (2, 0, 5, 68, None)
    assert ext.reserved_spls == (0, 0, 0, 0)
    assert ext.hwid == parse_report(gsg_report()).chip_id
    assert ext.struct_version == 0


def test_turin_vcek_extensions_and_chain() -> None:
    vcek = certs("virtee-sev/vcek_turin.der")[0]
    assert classify(vcek) == (CertRole.VCEK, None)
    ext = parse_amd_extensions(vcek)
    assert ext.product is Product.TURIN and ext.product_name == "Turin"
    assert ext.struct_version == 1
    assert (ext.fmc, ext.bootloader, ext.tee, ext.snp, ext.microcode) == (0, 0, 0, 0, 9)
    assert ext.hwid is not None and len(ext.hwid) == 8
    ask, ark = pinned_chain(Product.TURIN, SigningKey.VCEK)
    chain = verify_chain([vcek, ask], root=ark, at=TODAY, expected_length=2)
    assert chain.root.subject.rfc4514_string().startswith("CN=ARK-Turin")
    # Milan's ARK does not reach it.
    with pytest.raises(ChainError):
        verify_chain([vcek, ask], root=pinned_chain(Product.MILAN, SigningKey.VCEK)[1], at=TODAY)


def _turin_report(hwid: bytes, tail: bytes = bytes(56)) -> bytes:
    """A v3 Turin-layout report (unsigned edit of a real one) carrying the given chip id."""
    data = patch(set_u32(virtee_report(), 0, 3), 0x188, bytes([0x1A, 0x02, 0x00]))
    tcb = bytes([0, 0, 0, 0, 0, 0, 0, 9])  # FMC, BL, TEE, SNP, rsvd x3, UCODE
    for off in (0x38, 0x180, 0x1E0, 0x1F0):
        data = patch(data, off, tcb)
    return patch(data, 0x1A0, hwid + tail)


def test_turin_hwid_is_an_8_byte_prefix() -> None:
    ext = _vcek_ext("virtee-sev/vcek_turin.der")
    assert ext.hwid is not None
    tcb, checked = check_extensions_match_report(
        ext, parse_report(_turin_report(ext.hwid)), Product.TURIN, SigningKey.VCEK
    )
    assert checked and tcb.fmc == 0 and tcb.microcode == 9
    for bad in (_turin_report(flip(ext.hwid, 0)), _turin_report(ext.hwid, b"\x01" + bytes(55))):
        with pytest.raises(VerificationError) as e:
            check_extensions_match_report(ext, parse_report(bad), Product.TURIN, SigningKey.VCEK)
        assert e.value.reason == "chip_id_mismatch"


def test_turin_fmc_must_match() -> None:
    ext = _vcek_ext("virtee-sev/vcek_turin.der")
    assert ext.hwid is not None
    data = patch(_turin_report(ext.hwid), 0x180, bytes([3]))  # REPORTED_TCB.FMC = 3
    with pytest.raises(VerificationError) as e:
        check_extensions_match_report(ext, parse_report(data), Product.TURIN, SigningKey.VCEK)
    assert e.value.reason == "tcb_mismatch" and "fmc" in str(e.value)


# --- serial number 0 ------------------------------------------------------------------------


def test_serial_zero_vcek_loads_without_warning() -> None:
    der = (GSG / "vcek.testcer").read_bytes()
    # Plain cryptography warns (and says a future release will refuse): this is why the
    # tolerant loader exists.
    with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
        x509.load_der_x509_certificate(der)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (vcek,) = load_amd_certificates(der)
        v = verify_snp_report(gsg_report(), (vcek,), at=TODAY)
    assert v.chain.leaf == vcek
    with pytest.warns(CryptographyDeprecationWarning):
        assert vcek.serial_number == 0


def test_malformed_certificate_is_bad_input() -> None:
    with pytest.raises(InputError):
        load_amd_certificates(b"\x30\x03\x02\x01")
    with pytest.raises(InputError):
        load_amd_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(InputError, match="limit"):
        load_amd_certificates(b"\x00" * (65 * 1024))


# --- AMD's signature algorithm, exactly -----------------------------------------------------


def test_pss_algorithm_identifiers_are_amds() -> None:
    seen: set[bytes] = set()
    for path in (*GSG.glob("*.pem"), GSG / "vcek.testcer", *VIRTEE.glob("vcek_*.der")):
        for cert in load_amd_certificates(path.read_bytes()):
            der = cert.public_bytes(Encoding.DER)
            seen.update(a for a in AMD_PSS_SHA384_ALGIDS if a in der)
    assert seen == AMD_PSS_SHA384_ALGIDS


def _fake_vcek(issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A certificate that looks like a Milan VCEK but is ECDSA-signed (not AMD's algorithm)."""
    amd = "1.3.6.1.4.1.3704.1"

    def ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
        return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "SEV-VCEK")])
    issuer = load_amd_certificates((GSG / "ask_ark_milan.pem").read_bytes())[0].subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(TODAY - timedelta(days=1))
        .not_valid_after(TODAY + timedelta(days=1))
        .add_extension(ext(f"{amd}.2", b"\x16\x08Milan-B0"), critical=False)
    )
    for i in (1, 2, 3, 8):
        builder = builder.add_extension(ext(f"{amd}.3.{i}", b"\x02\x01\x00"), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def test_non_pss_certificate_refused() -> None:
    fake = _fake_vcek(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ChainError) as e:
        verify_snp_report(virtee_report(), (fake,), at=TODAY)
    assert e.value.reason == "cert_algorithm"


# --- hypothesis: any change in the report fails verification --------------------------------

_CACHE = ChainCache()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, REPORT_SIZE - 1), st.integers(1, 255))
def test_any_single_byte_change_fails(offset: int, mask: int) -> None:
    mutated = flip(virtee_report(), offset, mask)
    with pytest.raises((ParseError, VerificationError)):
        verify_snp_report(mutated, virtee_certs(), at=TODAY, cache=_CACHE)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, SIGNED_SIZE - 1))
def test_any_signed_byte_flip_fails_signature_or_parse(offset: int) -> None:
    mutated = flip(gsg_report(), offset)
    with pytest.raises((ParseError, VerificationError)) as e:
        verify_snp_report(mutated, gsg_certs(), at=TODAY, cache=_CACHE)
    if isinstance(e.value, VerificationError):
        assert e.value.reason in {"bad_signature", "signing_key_mismatch", "unsigned"}


_CORRUPT_NAME = "ignore:Attribute's length must be:UserWarning"


@pytest.mark.filterwarnings(_CORRUPT_NAME)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 1359), st.integers(1, 255))
def test_vcek_byte_changes_only_typed_errors(offset: int, mask: int) -> None:
    der = (SNP / "virtee-sev/vcek_milan.der").read_bytes()
    assert len(der) == 1360
    original = load_amd_certificates(der)[0]
    try:
        bad = load_amd_certificates(flip(der, offset, mask))
        verify_snp_report(virtee_report(), bad, at=TODAY, cache=_CACHE)
    except (InputError, VerificationError):
        return
    # Only the unsigned outer encoding may change unnoticed (e.g. the BIT STRING's unused-bits
    # octet at offset 847, which cryptography ignores): what is signed, and the signature value,
    # must be exactly the original.
    assert bad[0].tbs_certificate_bytes == original.tbs_certificate_bytes
    assert bad[0].signature == original.signature


@pytest.mark.filterwarnings(_CORRUPT_NAME)
def test_vcek_every_byte_exhaustively_typed() -> None:
    """Every offset, three masks: only typed errors, and never a change to signed content."""
    der = (SNP / "virtee-sev/vcek_milan.der").read_bytes()
    original = load_amd_certificates(der)[0]
    unnoticed = []
    for offset in range(len(der)):
        for mask in (0x01, 0xFF):
            try:
                bad = load_amd_certificates(flip(der, offset, mask))
                verify_snp_report(virtee_report(), bad, at=TODAY, cache=_CACHE)
            except (InputError, VerificationError):
                continue
            assert bad[0].tbs_certificate_bytes == original.tbs_certificate_bytes
            assert bad[0].signature == original.signature
            unnoticed.append(offset)
    # Offset 847, the signature BIT STRING's unused-bits octet that cryptography ignores, is now
    # refused at load time (attest.x509chain.signature_bits_canonical): nothing changes unnoticed.
    assert unnoticed == []


@pytest.mark.parametrize("offset", [0x38, 0x1E0, 0x1F0], ids=["current", "committed", "launch"])
def test_v2_report_reserved_tcb_bytes_are_checked_once_the_product_is_known(
    pki: Any, offset: int
) -> None:
    """A version-2 report does not name its product, so the parser cannot decode its TCB
    fields; the verifier decoded REPORTED_TCB only, and a signed report whose other TCB fields
    had a reserved byte set verified (docs/snp.md 1.3 says they are checked) and then failed
    as malformed wherever it was printed. All four are decoded once the VCEK names the product."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from agent.emulation.snp import EmulatedSnp

    snp = EmulatedSnp(pki, measurement=b"\x11" * 48, version=2)
    raw = bytearray(snp.report(bytes(64)))
    raw[offset + 3] = 0x7F  # a reserved byte of the Milan TCB_VERSION layout
    r, s = decode_dss_signature(snp._vcek.key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0 : 0x2A0 + 48] = r.to_bytes(48, "little")
    raw[0x2E8 : 0x2E8 + 48] = s.to_bytes(48, "little")
    vcek, chain = snp.certificates()
    certs = (*load_amd_certificates(vcek), *load_amd_certificates(chain))
    with pytest.raises(ParseError, match="reserved"):
        verify_snp_report(bytes(raw), certs, at=datetime.now(UTC), extra_arks=[pki.ark.cert])
