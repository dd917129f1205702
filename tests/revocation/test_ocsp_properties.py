"""Property tests: hostile bytes give an ``invalid`` verdict, never an unexpected exception."""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError
from attest.revocation import StapledOcsp, check_ocsp_response
from tests.revocation.pki import NOW, build_cases, load_pki

PKI = load_pki()
SETTINGS = settings(max_examples=200, deadline=None)


@cache
def _valid(name: str) -> bytes:
    return build_cases(PKI)[name]


def _judge(der: bytes) -> str:
    check = check_ocsp_response(der, cert=PKI.leaf, issuer=PKI.intermediate, at=NOW)
    assert check.ok is (check.status == "good")
    return check.status


def test_baselines_are_good() -> None:
    assert _judge(_valid("good")) == "good"
    assert _judge(_valid("delegated")) == "good"


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_are_invalid(data: bytes) -> None:
    assert _judge(data) == "invalid"


@SETTINGS
@given(st.sampled_from(["good", "delegated"]), st.data())
def test_truncations_are_invalid(name: str, data: st.DataObject) -> None:
    der = _valid(name)
    cut = data.draw(st.integers(min_value=0, max_value=len(der) - 1))
    assert _judge(der[:cut]) == "invalid"


@SETTINGS
@given(st.sampled_from(["good", "delegated", "revoked"]), st.data())
def test_single_byte_changes_are_invalid(name: str, data: st.DataObject) -> None:
    """Every byte is covered by the signature, the responder's certificate or the DER framing."""
    der = bytearray(_valid(name))
    at = data.draw(st.integers(min_value=0, max_value=len(der) - 1))
    der[at] ^= data.draw(st.integers(min_value=1, max_value=255))
    assert _judge(bytes(der)) == "invalid"


@SETTINGS
@given(st.sampled_from(["good", "delegated"]), st.binary(min_size=1, max_size=16))
def test_appended_bytes_are_invalid(name: str, tail: bytes) -> None:
    assert _judge(_valid(name) + tail) == "invalid"


@SETTINGS
@given(st.binary(max_size=1024))
def test_stapled_raises_only_typed_errors(data: bytes) -> None:
    try:
        stapled = StapledOcsp([data])
    except InputError:  # ParseError is an InputError
        return
    # Random bytes that parse as a successful response are vanishingly rare; if they do, the
    # answer is still verified before use.
    der = stapled.response_for(PKI.leaf, PKI.intermediate)
    if der is not None:
        assert _judge(der) == "invalid"
