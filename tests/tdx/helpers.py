"""Real TDX vectors and a rebuilder that re-encodes a quote's nested lengths after an edit.

The rebuilder never signs anything: it lets a test swap one field (PEM chain, auth data) while
keeping every length prefix consistent, so the verifier's *cryptographic* checks are what
refuse the result, not the parser.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

from attest.tdx.collateral import TdxCollateral, parse_collateral_json
from attest.tdx.quote import TdxQuote, parse_quote
from tests.conftest import CPU

TDX = CPU / "tdx"
DCAP = TDX / "dcap-qvl"
GTG = TDX / "go-tdx-guest"

#: Where the real quote ends inside go-tdx-guest's SPR_E4 file (39 test bytes follow it).
SPR_E4_QUOTE_END = 4935
#: dcap-qvl's tdx_quote is a 5006-byte buffer: the v4 quote is 4936 bytes, then 70 zeros.
DCAP_QUOTE_END = 4936


def read(path: Path) -> bytes:
    return path.read_bytes()


def dcap_quote_bytes() -> bytes:
    return read(DCAP / "tdx_quote")[:DCAP_QUOTE_END]


def dcap_quote() -> TdxQuote:
    return parse_quote(dcap_quote_bytes())


def dcap_collateral() -> TdxCollateral:
    return parse_collateral_json(read(DCAP / "tdx_quote_collateral.json"))


def outdated_quote() -> TdxQuote:
    return parse_quote(read(DCAP / "tdx_quote_outdated"))


def outdated_collateral() -> TdxCollateral:
    return parse_collateral_json(read(DCAP / "tdx_quote_outdated_collateral.json"))


def spr_e4_bytes() -> bytes:
    return read(GTG / "tdx_prod_quote_SPR_E4.dat")[:SPR_E4_QUOTE_END]


def v5_sample_bytes() -> bytes:
    return read(GTG / "quote_v5_sample.dat")


def cos_buffer() -> bytes:
    return read(GTG / "cos-113-tdx-quote.dat")


#: dcap-qvl's README: verify at the TCB Info issueDate + 1 hour.
DCAP_AT = datetime(2025, 6, 19, 10, 16, 3, tzinfo=UTC) + timedelta(hours=1)
OUTDATED_AT = datetime(2026, 2, 18, 10, 58, 51, tzinfo=UTC) + timedelta(hours=1)
#: go-tdx-guest's 2023 collateral (TCB Info issued 2023-06-18T08:42:58Z) + 1 hour.
GTG_2023_AT = datetime(2023, 6, 18, 9, 42, 58, tzinfo=UTC)
#: go-tdx-guest's v5 TCB Info (issued 2026-02-01T14:49:26Z) + 1 hour.
GTG_V5_AT = datetime(2026, 2, 1, 15, 49, 26, tzinfo=UTC)


def rebuild(
    quote: TdxQuote,
    *,
    pem: bytes | None = None,
    auth_data: bytes | None = None,
    signed_region: bytes | None = None,
) -> bytes:
    """Re-encode ``quote`` with some parts replaced and every length recomputed."""
    sd = quote.signature_data
    pem = sd.pck_chain_pem if pem is None else pem
    auth = sd.qe_auth_data if auth_data is None else auth_data
    inner = struct.pack("<HI", 5, len(pem)) + pem
    cert = sd.qe_report.raw + sd.qe_report_signature + struct.pack("<H", len(auth)) + auth + inner
    sig = sd.signature + sd.attestation_key + struct.pack("<HI", 6, len(cert)) + cert
    region = quote.signed_region if signed_region is None else signed_region
    return region + struct.pack("<I", len(sig)) + sig


def offset_of_signature_data(quote: TdxQuote) -> int:
    """Byte offset of the 64-byte quote signature inside ``quote.raw``."""
    return len(quote.signed_region) + 4
