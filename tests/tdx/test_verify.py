"""TDX verification on real Intel-signed vectors: positives, negatives, tampering."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from attest.errors import ChainError, RevocationError, VerificationError
from attest.tdx.collateral import (
    parse_crl,
    parse_issuer_chain,
    parse_qe_identity_response,
    parse_tcb_info_response,
)
from attest.tdx.quote import parse_quote
from attest.tdx.verify import (
    INTEL_SGX_ROOT_CA_SHA256,
    TcbStatus,
    _check_not_revoked,
    evaluate_tcb,
    intel_sgx_root,
    verify_collateral,
    verify_crl,
    verify_quote,
    verify_quote_signatures,
    verify_signed_json,
    verify_tcb_info,
)
from attest.x509chain import ChainCache, load_pem_chain
from tests.tdx import helpers as h

# --- the pinned root ---------------------------------------------------------------------


def test_pinned_root_is_intels_and_in_every_real_chain() -> None:
    root = intel_sgx_root()
    assert root.fingerprint(hashes.SHA256()).hex() == INTEL_SGX_ROOT_CA_SHA256
    assert root.subject.rfc4514_string().endswith("CN=Intel SGX Root CA")
    for data in (h.dcap_quote_bytes(), h.v5_sample_bytes(), h.spr_e4_bytes()):
        pem = parse_quote(data).signature_data.pck_chain_pem[:-1]
        assert load_pem_chain(pem.rstrip(b"\x00"))[-1] == root


# --- dcap-qvl: full collateral -----------------------------------------------------------


def test_dcap_quote_up_to_date_at_issue_plus_one_hour() -> None:
    v = verify_quote(h.dcap_quote(), h.dcap_collateral(), at=h.DCAP_AT)
    assert v.tcb_status is TcbStatus.UP_TO_DATE
    assert v.advisory_ids == ()
    assert v.fmspc.hex() == "b0c06f000000"
    assert v.pck.pce_svn == 11 and v.pck.tcb_components[:8] == (3, 3, 2, 2, 4, 1, 0, 5)
    assert v.evaluation.tdx_module_status is TcbStatus.UP_TO_DATE
    assert v.evaluation.qe_status is TcbStatus.UP_TO_DATE
    # PCK CRL nextUpdate is the first thing to expire.
    assert v.collateral_expiry == datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)
    assert v.tcb_evaluation_data_number == 17
    assert not v.debug and v.mr_td == v.quote.body.mr_td and len(v.rtmrs) == 4


def test_dcap_quote_with_padding_declared_verifies_too() -> None:
    q = parse_quote(h.read(h.DCAP / "tdx_quote"), allow_trailing_zero_padding=True)
    assert verify_quote(q, h.dcap_collateral(), at=h.DCAP_AT).tcb_status is TcbStatus.UP_TO_DATE


def test_expected_report_data() -> None:
    q = h.dcap_quote()
    assert verify_quote(
        q, h.dcap_collateral(), at=h.DCAP_AT, expected_report_data=q.body.report_data
    )
    with pytest.raises(VerificationError) as e:
        verify_quote(q, h.dcap_collateral(), at=h.DCAP_AT, expected_report_data=bytes(64))
    assert e.value.reason == "report_data_mismatch"


def test_outdated_quote_no_matching_tcb_level() -> None:
    v = verify_quote(h.outdated_quote(), h.outdated_collateral(), at=h.OUTDATED_AT)
    assert v.tcb_status is TcbStatus.NO_MATCHING_TCB_LEVEL
    # SEAMLDR ACM (component 8) is 3 on this platform; every level asks for 5.
    assert v.pck.tcb_components[7] == 3
    assert all(lv.sgx_components[7] == 5 for lv in v.collateral.tcb_info.tcb_levels)
    assert v.evaluation.sgx_level is None and v.evaluation.tdx_level is None


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (datetime(2025, 7, 19, 10, 16, 4, tzinfo=UTC), "collateral_expired"),
        (datetime(2025, 7, 19, 10, 5, 0, tzinfo=UTC), "crl_expired"),
        (datetime(2025, 6, 19, 10, 0, 0, tzinfo=UTC), "collateral_not_yet_valid"),
    ],
)
def test_collateral_time_window(at: datetime, reason: str) -> None:
    with pytest.raises(VerificationError) as e:
        verify_quote(h.dcap_quote(), h.dcap_collateral(), at=at)
    assert e.value.reason == reason


def test_today_is_expired() -> None:
    from tests.conftest import TODAY

    with pytest.raises(VerificationError) as e:
        verify_quote(h.dcap_quote(), h.dcap_collateral(), at=TODAY)
    assert e.value.reason == "collateral_expired"


def test_naive_time_refused() -> None:
    from attest.errors import InputError

    with pytest.raises(InputError):
        verify_quote(h.dcap_quote(), h.dcap_collateral(), at=datetime(2025, 6, 19, 12))


def test_chain_cache_gives_same_answer() -> None:
    cache = ChainCache()
    a = verify_quote(h.dcap_quote(), h.dcap_collateral(), at=h.DCAP_AT, chain_cache=cache)
    b = verify_quote(h.dcap_quote(), h.dcap_collateral(), at=h.DCAP_AT, chain_cache=cache)
    assert a.tcb_status == b.tcb_status and a.pck_chain is b.pck_chain


# --- tampering ---------------------------------------------------------------------------


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _reason(data: bytes, at: datetime = h.DCAP_AT) -> str:
    with pytest.raises(VerificationError) as e:
        verify_quote(parse_quote(data), h.dcap_collateral(), at=at)
    return e.value.reason


def test_tampered_body_refused() -> None:
    data = h.dcap_quote_bytes()
    mr_td = 48 + 136
    assert _reason(_flip(data, mr_td)) == "quote_signature"
    assert _reason(_flip(data, 48 + 584 - 1)) == "quote_signature"  # REPORTDATA


def test_debug_bit_cannot_be_cleared_or_set() -> None:
    data = h.dcap_quote_bytes()
    td_attributes = 48 + 120
    flipped = parse_quote(_flip(data, td_attributes))
    assert flipped.body.debug
    assert _reason(_flip(data, td_attributes)) == "quote_signature"


def test_tampered_signature_and_key_refused() -> None:
    q = h.dcap_quote()
    data = h.dcap_quote_bytes()
    sig = h.offset_of_signature_data(q)
    assert _reason(_flip(data, sig)) == "quote_signature"
    # The attestation key is bound by the QE report data hash before any curve check.
    assert _reason(_flip(data, sig + 64)) == "qe_report_data"


def test_tampered_qe_report_and_auth_data_refused() -> None:
    q = h.dcap_quote()
    data = h.dcap_quote_bytes()
    qe = h.offset_of_signature_data(q) + 128 + 6
    assert _reason(_flip(data, qe + 258)) == "qe_report_signature"  # ISVSVN
    assert _reason(_flip(data, qe + 384)) == "qe_report_signature"  # its signature
    assert _reason(_flip(data, qe + 384 + 64 + 2)) == "qe_report_data"  # auth data
    assert _reason(h.rebuild(q, auth_data=bytes(32))) == "qe_report_data"


def test_pck_chain_from_another_platform_refused() -> None:
    q = h.dcap_quote()
    other = parse_quote(h.spr_e4_bytes()).signature_data.pck_chain_pem
    assert _reason(h.rebuild(q, pem=other)) == "qe_report_signature"


def test_pck_chain_reordered_or_short_refused() -> None:
    q = h.dcap_quote()
    pem = q.signature_data.pck_chain_pem[:-1]
    blocks = [
        b + b"-----END CERTIFICATE-----\n" for b in pem.split(b"-----END CERTIFICATE-----\n")[:-1]
    ]
    assert len(blocks) == 3
    with pytest.raises(ChainError) as e:
        verify_quote(
            parse_quote(h.rebuild(q, pem=blocks[1] + blocks[0] + blocks[2])),
            h.dcap_collateral(),
            at=h.DCAP_AT,
        )
    assert e.value.reason == "issuer_mismatch"
    with pytest.raises(ChainError) as e:
        verify_quote(
            parse_quote(h.rebuild(q, pem=blocks[0] + blocks[1])), h.dcap_collateral(), at=h.DCAP_AT
        )
    assert e.value.reason == "length"


def test_pck_chain_expired_as_of_late_time() -> None:
    with pytest.raises(ChainError) as e:
        verify_quote_signatures(h.dcap_quote(), at=datetime(2033, 1, 1, tzinfo=UTC))
    assert e.value.reason == "expired"


def test_other_root_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Intel SGX Root CA")])
    fake = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2018, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2049, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ChainError):
        verify_quote_signatures(h.dcap_quote(), at=h.DCAP_AT, root=fake)


def test_qe_vendor_must_be_intel() -> None:
    data = h.dcap_quote_bytes()
    with pytest.raises(VerificationError) as e:
        verify_quote_signatures(parse_quote(_flip(data, 12)), at=h.DCAP_AT)
    assert e.value.reason == "qe_vendor"


def _collateral_json_with(**changes: str) -> bytes:
    import json

    doc = json.loads(h.read(h.DCAP / "tdx_quote_collateral.json"))
    doc.update(changes)
    return json.dumps(doc).encode()


def test_tampered_tcb_info_refused() -> None:
    import json

    from attest.tdx.collateral import parse_collateral_json

    doc = json.loads(h.read(h.DCAP / "tdx_quote_collateral.json"))
    text = doc["tcb_info"]
    for changed in (
        text.replace('"OutOfDate"', '"UpToDate"'),
        text.replace('"pcesvn":11', '"pcesvn":10'),
        # Same JSON meaning, different bytes: the signature covers bytes, not meaning.
        json.dumps(json.loads(text)),
    ):
        assert changed != text
        c = parse_collateral_json(_collateral_json_with(tcb_info=changed))
        with pytest.raises(VerificationError) as e:
            verify_quote(h.dcap_quote(), c, at=h.DCAP_AT)
        assert e.value.reason == "tcb_info_signature"
    q_changed = doc["qe_identity"].replace('"isvsvn":4', '"isvsvn":3')
    c = parse_collateral_json(_collateral_json_with(qe_identity=q_changed))
    with pytest.raises(VerificationError) as e:
        verify_quote(h.dcap_quote(), c, at=h.DCAP_AT)
    assert e.value.reason == "qe_identity_signature"


def test_swapped_crls_refused() -> None:
    from attest.tdx.collateral import parse_collateral_json

    old_pck_crl = h.read(h.GTG / "pckcrl").hex()
    c = parse_collateral_json(_collateral_json_with(pck_crl=old_pck_crl))
    with pytest.raises(RevocationError) as e:
        verify_quote(h.dcap_quote(), c, at=h.DCAP_AT)
    assert e.value.reason == "crl_expired"
    # The Root CA CRL in the PCK CRL's place: wrong issuer.
    doc_root = _collateral_json_with(pck_crl=h.dcap_collateral().root_ca_crl.der.hex())
    with pytest.raises(RevocationError) as e:
        verify_quote(h.dcap_quote(), parse_collateral_json(doc_root), at=h.DCAP_AT)
    assert e.value.reason == "crl_issuer"


def test_tcb_info_for_another_platform_refused() -> None:
    v = verify_quote(h.dcap_quote(), h.dcap_collateral(), at=h.DCAP_AT)
    with pytest.raises(VerificationError) as e:
        evaluate_tcb(
            h.dcap_quote(), v.pck, h.outdated_collateral().tcb_info, v.collateral.qe_identity
        )
    assert e.value.reason == "fmspc_mismatch"


# --- revocation with a real CRL ----------------------------------------------------------


def test_go_tdx_guest_crls_verify_and_apply() -> None:
    q = parse_quote(h.spr_e4_bytes())
    signed = verify_quote_signatures(q, at=h.GTG_2023_AT)
    platform_ca = signed.pck_chain.certs[1]
    pck_crl = parse_crl(h.read(h.GTG / "pckcrl"))
    root_crl = parse_crl(h.read(h.GTG / "rootcrl.der"))
    verify_crl(pck_crl, platform_ca, h.GTG_2023_AT, "PCK CRL")
    verify_crl(root_crl, intel_sgx_root(), h.GTG_2023_AT, "Root CA CRL")
    _check_not_revoked(signed.pck_chain.leaf, pck_crl, "PCK")
    _check_not_revoked(platform_ca, root_crl, "PCK CA")
    # A certificate carrying a serial number the real CRL lists is refused.
    revoked_serial = next(iter(pck_crl.crl)).serial_number
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Intel SGX PCK Certificate")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(platform_ca.subject)
        .public_key(key.public_key())
        .serial_number(revoked_serial)
        .not_valid_before(datetime(2022, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2029, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(RevocationError) as e:
        _check_not_revoked(cert, pck_crl, "PCK")
    assert e.value.reason == "revoked"
    # The PCK CRL does not verify with the root's key, and is stale a month later.
    with pytest.raises(RevocationError) as e:
        verify_crl(pck_crl, intel_sgx_root(), h.GTG_2023_AT, "PCK CRL")
    assert e.value.reason == "crl_issuer"
    with pytest.raises(RevocationError) as e:
        verify_crl(pck_crl, platform_ca, h.GTG_2023_AT + timedelta(days=30), "PCK CRL")
    assert e.value.reason == "crl_expired"


# --- go-tdx-guest quotes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fmspc"),
    [
        (h.spr_e4_bytes(), "50806f000000"),
        (h.v5_sample_bytes(), "90c06f000000"),
        (h.cos_buffer(), "00806f050000"),
    ],
)
def test_go_tdx_guest_signatures_and_chains(data: bytes, fmspc: str) -> None:
    q = parse_quote(data, allow_trailing_zero_padding=len(data) == 8000)
    s = verify_quote_signatures(q, at=datetime(2026, 6, 1, tzinfo=UTC))
    assert s.pck.fmspc.hex() == fmspc
    assert s.pck_chain.certs[-1] == intel_sgx_root()
    expected = hashlib.sha256(q.signature_data.attestation_key + q.signature_data.qe_auth_data)
    assert q.signature_data.qe_report.report_data[:32] == expected.digest()


def _tcb_signing_chain() -> tuple[x509.Certificate, ...]:
    return h.dcap_collateral().tcb_info_issuer_chain


def test_go_tdx_guest_2023_collateral_signed_by_intel_key() -> None:
    """The 2023 PCS responses verify with Intel's TCB signing key (re-certified in 2025), but
    the only signing certificate in the vectors is valid from 2025-05-06, so a full check as of
    2023 fails on the certificate's validity: signature + evaluation only for SPR_E4."""
    signer = _tcb_signing_chain()[0]
    tcb = parse_tcb_info_response(h.read(h.GTG / "sample_tcbInfo_response"))
    qe_id = parse_qe_identity_response(h.read(h.GTG / "sample_qeIdentity_response"))
    verify_signed_json(tcb.signed_bytes, tcb.signature, signer, what="TCB Info", reason="x")
    verify_signed_json(qe_id.signed_bytes, qe_id.signature, signer, what="QE Identity", reason="x")
    with pytest.raises(ChainError) as e:
        verify_tcb_info(tcb, _tcb_signing_chain(), at=h.GTG_2023_AT)
    assert e.value.reason == "not_yet_valid"
    q = parse_quote(h.spr_e4_bytes())
    s = verify_quote_signatures(q, at=h.GTG_2023_AT)
    ev = evaluate_tcb(q, s.pck, tcb, qe_id)
    # This SPR E4 part's microcode (SGX components 1-2 are 3) is below every level of the
    # 2023 TCB Info (which asks for 5): no level matches, as Intel's QVL would say.
    assert s.pck.tcb_components[:2] == (3, 3)
    assert all(lv.sgx_components[0] == 5 for lv in tcb.tcb_levels)
    assert ev.status is TcbStatus.NO_MATCHING_TCB_LEVEL
    assert ev.sgx_level is None
    assert ev.tdx_module_status is None  # module version 0: checked against tdxModule
    assert ev.qe_status is TcbStatus.UP_TO_DATE


def test_go_tdx_guest_v5_tcb_info_full_check() -> None:
    tcb = parse_tcb_info_response(h.read(h.GTG / "sample_tcbinfo_response_v5"))
    chain = verify_tcb_info(tcb, _tcb_signing_chain(), at=h.GTG_V5_AT)
    assert chain.leaf.subject.rfc4514_string().endswith("CN=Intel SGX TCB Signing")
    q = parse_quote(h.v5_sample_bytes())
    s = verify_quote_signatures(q, at=h.GTG_V5_AT)
    # QE Identity from the same period (dcap-qvl's 2026-02-18 set; the TD_QE is the same).
    ev = evaluate_tcb(q, s.pck, tcb, h.outdated_collateral().qe_identity)
    assert ev.status is TcbStatus.UP_TO_DATE
    assert ev.tdx_module_level is not None and ev.tdx_module_level.isv_svn == 6
    with pytest.raises(VerificationError) as e:
        verify_tcb_info(tcb, _tcb_signing_chain(), at=tcb.next_update + timedelta(seconds=1))
    assert e.value.reason == "collateral_expired"


def test_collateral_alone() -> None:
    vc = verify_collateral(h.dcap_collateral(), at=h.DCAP_AT)
    assert vc.expiry == datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)
    assert vc.tcb_info.fmspc.hex() == "b0c06f000000"


def test_issuer_chain_must_be_tcb_signing() -> None:
    c = h.dcap_collateral()
    bad = dataclasses.replace(c, tcb_info_issuer_chain=c.pck_crl_issuer_chain)
    with pytest.raises(ChainError) as e:
        verify_collateral(bad, at=h.DCAP_AT)
    assert e.value.reason == "tcb_signing_cert"
    # An issuer chain is at most three certificates.
    from attest.tdx.collateral import CollateralParseError

    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (*c.pck_crl_issuer_chain,) * 2)
    with pytest.raises(CollateralParseError):
        parse_issuer_chain(pem, what="pck_crl_issuer_chain")
