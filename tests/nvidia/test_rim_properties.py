"""Property tests: hostile bytes give only typed errors; no edit changes what a RIM says."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from attest.errors import VerificationError
from attest.nvidia.rim import RimParseError, RimVerifier, parse_rim
from tests.conftest import RIM_ERA
from tests.nvidia.test_rim import DRIVER

ORIGINAL = DRIVER.read_bytes()
ORIGINAL_RIM = parse_rim(ORIGINAL)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        parse_rim(data)
    except RimParseError:
        return
    raise AssertionError("random bytes parsed as a RIM")


@SETTINGS
@given(st.text(alphabet='<>/=" ?!-[]&;:abcxmlnsDOCTYPE', max_size=300))
def test_random_markup_only_raises_parse_error(text: str) -> None:
    try:
        parse_rim(text.encode())
    except RimParseError:
        return
    raise AssertionError("random markup parsed as a RIM")


@SETTINGS
@given(st.integers(min_value=0, max_value=len(ORIGINAL) - 1))
def test_truncations_only_raise_parse_error(cut: int) -> None:
    data = ORIGINAL[:cut]
    try:
        parse_rim(data)
    except RimParseError:
        return
    # a cut inside the trailing newline leaves a complete document: it must be the same RIM
    assert ORIGINAL[cut:].strip() == b""


_VERIFIER = RimVerifier()


@SETTINGS
@given(
    st.integers(min_value=0, max_value=len(ORIGINAL) - 1), st.integers(min_value=1, max_value=255)
)
@example(pos=19957, delta=253)  # regression: a damaged certificate subject (lazy decoding)
def test_single_byte_change_is_refused_or_changes_nothing(pos: int, delta: int) -> None:
    """Any one-byte change is a typed error, or (whitespace inside a tag, base64 line breaks)
    leaves the signed meaning intact: then what verifies is exactly the original RIM's content."""
    data = bytearray(ORIGINAL)
    data[pos] = (data[pos] + delta) % 256
    try:
        verified = _VERIFIER.verify(bytes(data), at=RIM_ERA)
    except (RimParseError, VerificationError):
        return
    assert verified.rim.body == ORIGINAL_RIM.body
    assert verified.rim.measurements == ORIGINAL_RIM.measurements
    assert verified.rim.version == ORIGINAL_RIM.version
