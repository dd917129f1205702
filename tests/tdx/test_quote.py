"""Strict TDX quote parsing on the real vectors, one malformation at a time."""

from __future__ import annotations

import struct

import pytest

from attest.tdx.quote import (
    HEADER_SIZE,
    INTEL_QE_VENDOR_ID,
    TD_REPORT10_SIZE,
    TdxQuoteParseError,
    parse_quote,
)
from tests.tdx import helpers as h


def _err(data: bytes, **kw: bool) -> TdxQuoteParseError:
    with pytest.raises(TdxQuoteParseError) as e:
        parse_quote(data, **kw)
    return e.value


def test_v4_dcap_quote_fields() -> None:
    q = h.dcap_quote()
    assert (q.version, q.body_type, q.padding_length) == (4, 2, 0)
    assert q.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert len(q.signed_region) == HEADER_SIZE + TD_REPORT10_SIZE
    assert q.raw == h.dcap_quote_bytes()
    b = q.body
    assert b.mr_td.hex().startswith("91eb2b44d141d4ec")
    assert b.tee_tcb_svn.hex() == "06010300000000000000000000000000"
    assert (b.tdx_module_version, b.tdx_module_isv_svn) == (1, 6)
    assert not b.debug and b.sept_ve_disable
    assert b.tee_tcb_svn_2 is None and b.mr_service_td is None
    assert len(b.rtmrs) == 4 and all(len(r) == 48 for r in b.rtmrs)
    assert q.signature_data.qe_auth_data == bytes(range(32))
    assert q.signature_data.pck_chain_pem.endswith(b"-----END CERTIFICATE-----\n\x00")


def test_v5_body_type_3_fields() -> None:
    q = parse_quote(h.v5_sample_bytes())
    assert (q.version, q.body_type) == (5, 3)
    assert len(q.signed_region) == HEADER_SIZE + 6 + 648
    assert q.body.tee_tcb_svn_2 is not None and q.body.tee_tcb_svn_2.hex().startswith("0d0104")
    assert q.body.mr_service_td == bytes(48)
    assert len(q.raw) == 5006


def test_dcap_buffer_padding_only_when_declared() -> None:
    data = h.read(h.DCAP / "tdx_quote")
    e = _err(data)
    assert e.field == "trailing data" and e.offset == h.DCAP_QUOTE_END
    q = parse_quote(data, allow_trailing_zero_padding=True)
    assert q.padding_length == 70 and q.raw == h.dcap_quote_bytes()


def test_cos_capture_buffer() -> None:
    data = h.cos_buffer()
    assert len(data) == 8000
    e = _err(data)
    assert e.offset == 4935
    q = parse_quote(data, allow_trailing_zero_padding=True)
    assert q.padding_length == 8000 - 4935
    assert q.body.report_data == bytes(64)
    # One non-zero byte in the padding is refused even when padding is allowed.
    bad = bytearray(data)
    bad[7000] = 1
    e = _err(bytes(bad), allow_trailing_zero_padding=True)
    assert e.offset == 7000


def test_spr_e4_trailing_text_refused_always() -> None:
    data = h.read(h.GTG / "tdx_prod_quote_SPR_E4.dat")
    assert _err(data).offset == h.SPR_E4_QUOTE_END
    assert _err(data, allow_trailing_zero_padding=True).field == "trailing data"
    q = parse_quote(data[: h.SPR_E4_QUOTE_END])
    assert q.body.td_attributes.hex() == "0000004000000000"


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, struct.pack("<H", 3), "header.version"),
        (2, struct.pack("<H", 3), "header.att_key_type"),
        (4, struct.pack("<I", 0), "header.tee_type"),
        (8, b"\x01", "header.reserved"),
        (11, b"\x80", "header.reserved"),
    ],
)
def test_header_fields_strict(offset: int, value: bytes, field: str) -> None:
    assert _err(_patch(h.dcap_quote_bytes(), offset, value)).field == field


def test_v5_body_descriptor_strict() -> None:
    data = h.v5_sample_bytes()
    assert _err(_patch(data, 48, struct.pack("<H", 1))).field == "body.type"
    assert _err(_patch(data, 50, struct.pack("<I", 584))).field == "body.size"


def test_signature_data_length_must_be_exact() -> None:
    data = h.dcap_quote_bytes()
    at = HEADER_SIZE + TD_REPORT10_SIZE
    (n,) = struct.unpack_from("<I", data, at)
    # One byte longer than the data: refused; one shorter: the nested sizes no longer fit.
    assert _err(_patch(data, at, struct.pack("<I", n + 1))).field == "signature_data.size"
    assert _err(_patch(data, at, struct.pack("<I", n - 1))).field == "certification_data.size"
    assert _err(_patch(data, at, struct.pack("<I", 10))).field == "signature_data.size"


def test_certification_types_strict() -> None:
    data = h.dcap_quote_bytes()
    at = HEADER_SIZE + TD_REPORT10_SIZE + 4 + 128
    assert _err(_patch(data, at, struct.pack("<H", 5))).field == "certification_data.type"
    inner = at + 6 + 384 + 64 + 2 + 32
    assert _err(_patch(data, inner, struct.pack("<H", 4))).field == "pck_cert_chain.type"


def test_qe_report_reserved_bytes_must_be_zero() -> None:
    data = h.dcap_quote_bytes()
    qe = HEADER_SIZE + TD_REPORT10_SIZE + 4 + 128 + 6
    for rel, field in (
        (20, "reserved1"),
        (96, "reserved2"),
        (160, "reserved3"),
        (262, "reserved4"),
    ):
        e = _err(_patch(data, qe + rel, b"\x01"))
        assert e.field == f"qe_report.{field}" and e.offset == qe + rel


def test_auth_data_bound() -> None:
    q = h.dcap_quote()
    assert _err(h.rebuild(q, auth_data=bytes(2000))).field == "qe_auth_data.size"
    # A different (in-bounds) auth data still parses: the verifier refuses it.
    assert parse_quote(h.rebuild(q, auth_data=bytes(48))).signature_data.qe_auth_data == bytes(48)


def test_pem_chain_must_be_only_certificates() -> None:
    q = h.dcap_quote()
    pem = q.signature_data.pck_chain_pem
    assert parse_quote(h.rebuild(q)).raw == q.raw
    smuggled = pem.replace(b"-----END CERTIFICATE-----\n", b"-----END CERTIFICATE-----\nhi\n", 1)
    assert _err(h.rebuild(q, pem=smuggled)).field == "pck_cert_chain"
    assert _err(h.rebuild(q, pem=pem + b"\x00")).field == "pck_cert_chain"
    assert _err(h.rebuild(q, pem=b"")).field == "pck_cert_chain"
    six = pem[:-1] * 2
    assert _err(h.rebuild(q, pem=six)).field == "pck_cert_chain"


def test_every_truncation_refused() -> None:
    data = h.dcap_quote_bytes()
    for n in range(len(data)):
        with pytest.raises(TdxQuoteParseError):
            parse_quote(data[:n])


def test_parsed_objects_are_frozen() -> None:
    q = h.dcap_quote()
    with pytest.raises(AttributeError):
        q.body.mr_td = b""  # type: ignore[misc]
