"""Hypothesis: random bytes, truncations and single-byte changes give typed errors only."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.errors import ChainError, LesseeError
from attest.tdx.collateral import (
    parse_collateral_json,
    parse_qe_identity_response,
    parse_tcb_info_response,
)
from attest.tdx.quote import TdxQuoteParseError, parse_quote
from attest.tdx.verify import TcbStatus, verify_quote
from tests.tdx import helpers as h

QUOTES = [h.dcap_quote_bytes(), h.v5_sample_bytes(), h.spr_e4_bytes()]
DCAP = h.dcap_quote_bytes()
COLLATERAL = h.read(h.DCAP / "tdx_quote_collateral.json")
TCB_RESPONSE = h.read(h.GTG / "sample_tcbinfo_response_v5")
QE_RESPONSE = h.read(h.GTG / "sample_qeIdentity_response")
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=6000), st.booleans())
def test_random_bytes(data: bytes, pad: bool) -> None:
    try:
        parse_quote(data, allow_trailing_zero_padding=pad)
    except TdxQuoteParseError:
        pass


@FAST
@given(st.sampled_from(QUOTES), st.data())
def test_truncation(quote: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, len(quote) - 1))
    try:
        parse_quote(quote[:n], allow_trailing_zero_padding=True)
    except TdxQuoteParseError:
        return
    raise AssertionError(f"a {n}-byte prefix parsed")


@FAST
@given(st.data())
def test_header_like_random_tail(data: st.DataObject) -> None:
    """Valid header and body, random signature data: the nested parser must hold."""
    q = h.dcap_quote()
    tail = data.draw(st.binary(max_size=5000))
    try:
        parse_quote(q.signed_region + tail)
    except TdxQuoteParseError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(DCAP) - 1), st.integers(1, 255))
def test_single_byte_change_never_verifies_silently(offset: int, xor: int) -> None:
    changed = bytearray(DCAP)
    changed[offset] ^= xor
    try:
        q = parse_quote(bytes(changed))
        v = verify_quote(q, h.dcap_collateral(), at=h.DCAP_AT)
    except LesseeError:
        return
    # Every byte of the quote is covered by a signature, a hash binding, the PCK chain or a
    # strict format rule, so nothing should get here; if it does, it must be the same quote.
    assert v.quote.signed_region == h.dcap_quote().signed_region
    assert v.tcb_status is TcbStatus.UP_TO_DATE


@FAST
@given(st.binary(max_size=4000))
def test_collateral_random(data: bytes) -> None:
    for parse in (parse_collateral_json, parse_tcb_info_response, parse_qe_identity_response):
        try:
            parse(data)
        except LesseeError:
            pass


@FAST
@given(st.sampled_from([COLLATERAL, TCB_RESPONSE, QE_RESPONSE]), st.data())
def test_collateral_byte_changes(doc: bytes, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(doc) - 1))
    value = data.draw(st.integers(0, 255))
    cut = data.draw(st.booleans())
    changed = doc[:offset] if cut else doc[:offset] + bytes([value]) + doc[offset + 1 :]
    for parse in (parse_collateral_json, parse_tcb_info_response, parse_qe_identity_response):
        try:
            parse(changed)
        except LesseeError:
            pass


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_tcb_info_text_changes_fail_signature(data: st.DataObject) -> None:
    doc = json.loads(COLLATERAL)
    text: str = doc["tcb_info"]
    i = data.draw(st.integers(0, len(text) - 1))
    ch = data.draw(st.sampled_from('0123456789abcdefABCDEF":,{}[] '))
    if text[i] == ch:
        return
    doc["tcb_info"] = text[:i] + ch + text[i + 1 :]
    try:
        c = parse_collateral_json(json.dumps(doc).encode())
        verify_quote(h.dcap_quote(), c, at=h.DCAP_AT)
    except LesseeError:
        return
    raise AssertionError("a changed TCB Info verified")


def test_regression_malformed_pck_subject_is_typed() -> None:
    """Found by hypothesis: one bit in the PCK leaf's base64 broke its subject Name, which
    ``cryptography`` only decodes lazily, and a ValueError escaped from a chain message."""
    changed = bytearray(DCAP)
    changed[1678] ^= 1
    try:
        verify_quote(parse_quote(bytes(changed)), h.dcap_collateral(), at=h.DCAP_AT)
    except ChainError as exc:
        assert exc.reason == "malformed_certificate" and "PCK chain" in str(exc)
    else:
        raise AssertionError("a changed PCK certificate verified")
