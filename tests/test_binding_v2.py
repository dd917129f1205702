"""Binding version 2: the relayed device state (CC mode, DevTools mode, device counts) is bound."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.binding import (
    BINDING_CLAIM,
    PROTOCOL_LABEL_V1,
    PROTOCOL_LABEL_V2,
    DeviceState,
    binding_claim,
    binding_version,
    derive_binding,
    derive_binding_v2,
    derive_session_binding,
    parse_binding_claim,
)
from attest.bundle import MAX_DEVICES, DeviceEvidenceIn, EvidenceBundle
from attest.errors import InputError

NONCE = bytes(range(32))
KEY = b"\x01" * 32
STATES = [DeviceState(cc, dt, 1, 0) for cc in (False, True) for dt in (False, True)]


def _lp(x: bytes) -> bytes:
    return len(x).to_bytes(4, "big") + x


def _independent_v2(
    nonce: bytes, key: bytes, cc: bool, dt: bool, gpus: int = 1, switches: int = 0
) -> tuple[bytes, bytes]:
    """docs/binding.md's version-2 encoding, spelled out with hashlib only."""
    state = (b"\x01" if cc else b"\x00") + (b"\x01" if dt else b"\x00")
    state += bytes([gpus >> 8, gpus & 0xFF, switches >> 8, switches & 0xFF])
    rd = hashlib.sha512(
        _lp(b"lessee/v2/binding/report-data")
        + _lp(b"lessee/v2/key-release")
        + _lp(nonce)
        + _lp(key)
        + _lp(state)
    ).digest()
    return rd, hashlib.sha256(_lp(b"lessee/v2/binding/gpu-nonce") + rd).digest()


def test_known_answer_v2() -> None:
    b = derive_binding_v2(
        NONCE, KEY, DeviceState(cc_mode_on=True, devtools_on=False, gpus=8, switches=4)
    )
    rd, gn = _independent_v2(NONCE, KEY, True, False, 8, 4)
    assert b.report_data == rd and b.gpu_nonce == gn
    # A fixed vector, so the encoding cannot drift together with the re-implementation above.
    assert rd.hex()[:32] == KNOWN_V2_PREFIX
    assert len(b.report_data) == 64 and len(b.gpu_nonce) == 32


KNOWN_V2_PREFIX = "2d26e6bf3aac0cb0426a540e968ab00f"


@pytest.mark.parametrize("state", STATES)
def test_every_state_matches_the_independent_encoding(state: DeviceState) -> None:
    b = derive_session_binding(NONCE, KEY, PROTOCOL_LABEL_V2, state)
    assert (b.report_data, b.gpu_nonce) == _independent_v2(
        NONCE, KEY, state.cc_mode_on, state.devtools_on, state.gpus, state.switches
    )


@pytest.mark.parametrize(("gpus", "switches"), [(0, 0), (1, 0), (8, 4), (64, 64), (3, 2)])
def test_device_counts_match_the_independent_encoding(gpus: int, switches: int) -> None:
    b = derive_binding_v2(NONCE, KEY, DeviceState(True, False, gpus, switches))
    assert (b.report_data, b.gpu_nonce) == _independent_v2(NONCE, KEY, True, False, gpus, switches)


def test_a_dropped_device_changes_the_binding() -> None:
    # The relay that drops one GPU's (or one switch's) evidence changes the counts the
    # verifier derives the binding from, so every remaining report fails it.
    eight = derive_binding_v2(NONCE, KEY, DeviceState(True, False, 8, 4))
    assert derive_binding_v2(NONCE, KEY, DeviceState(True, False, 7, 4)) != eight
    assert derive_binding_v2(NONCE, KEY, DeviceState(True, False, 8, 3)) != eight
    assert derive_binding_v2(NONCE, KEY, DeviceState(True, False, 4, 8)) != eight


def test_v1_unchanged_and_distinct_from_v2() -> None:
    v1 = derive_binding(NONCE, KEY)
    assert derive_session_binding(NONCE, KEY, PROTOCOL_LABEL_V1, None) == v1
    # v1 does not bind the state: any state gives the v1 value under a v1 label.
    assert derive_session_binding(NONCE, KEY, PROTOCOL_LABEL_V1, STATES[0]) == v1
    assert all(derive_binding_v2(NONCE, KEY, s) != v1 for s in STATES)


def test_each_flag_changes_the_binding() -> None:
    values = {derive_binding_v2(NONCE, KEY, s).report_data for s in STATES}
    gpu = {derive_binding_v2(NONCE, KEY, s).gpu_nonce for s in STATES}
    assert len(values) == 4 and len(gpu) == 4


def test_v2_label_without_state_is_an_error() -> None:
    with pytest.raises(InputError):
        derive_session_binding(NONCE, KEY, PROTOCOL_LABEL_V2, None)
    with pytest.raises(InputError):
        derive_binding(NONCE, KEY, PROTOCOL_LABEL_V2)  # never a silent version 1
    with pytest.raises(InputError):
        derive_binding_v2(NONCE, KEY, STATES[0], PROTOCOL_LABEL_V1)
    assert binding_version(PROTOCOL_LABEL_V2) == 2 and binding_version(PROTOCOL_LABEL_V1) == 1


@pytest.mark.parametrize(
    "nonce,key,label",
    [
        (b"\0" * 8, KEY, PROTOCOL_LABEL_V2),
        (NONCE, b"", PROTOCOL_LABEL_V2),
        (b"\0" * 65, KEY, PROTOCOL_LABEL_V2),
        (NONCE, KEY, "lessee/v2/" + "x" * 200),
    ],
)
def test_bounds_v2(nonce: bytes, key: bytes, label: str) -> None:
    with pytest.raises(InputError):
        derive_binding_v2(nonce, key, STATES[1], label)


@pytest.mark.parametrize("bad", [1, 0, None, "true"])
def test_state_flags_must_be_booleans(bad: object) -> None:
    with pytest.raises(InputError):
        DeviceState(bad, False, 1, 0)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        DeviceState(False, bad, 1, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, MAX_DEVICES + 1, 1 << 16, True, 1.0, None, "1"])
def test_state_counts_must_be_bounded_integers(bad: object) -> None:
    with pytest.raises(InputError):
        DeviceState(True, False, bad, 0)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        DeviceState(True, False, 0, bad)  # type: ignore[arg-type]


def test_the_count_bound_is_the_bundles() -> None:
    from attest.binding import MAX_BOUND_DEVICES

    assert MAX_BOUND_DEVICES == MAX_DEVICES


def test_bundle_state() -> None:
    gpu = DeviceEvidenceIn("HOPPER", b"r", b"c")
    b = EvidenceBundle(
        cpu=None, gpus=(gpu, gpu), switches=(gpu,), cc_mode_on=True, devtools_on=False
    )
    assert b.device_state == DeviceState(cc_mode_on=True, devtools_on=False, gpus=2, switches=1)


def test_claim_round_trip_and_refusals() -> None:
    for s in STATES:
        assert parse_binding_claim(binding_claim(PROTOCOL_LABEL_V2, s)) == (PROTOCOL_LABEL_V2, s)
    good = binding_claim(PROTOCOL_LABEL_V2, STATES[2])
    for bad in (
        None,
        [],
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "devtools_on"},
        {**good, "label": PROTOCOL_LABEL_V1},
        {**good, "label": 7},
        {**good, "label": "lessee/v2/" + "x" * 200},
        {**good, "cc_mode_on": 1},
        {k: v for k, v in good.items() if k != "gpus"},
        {**good, "gpus": -1},
        {**good, "switches": True},
        {**good, "gpus": MAX_DEVICES + 1},
    ):
        with pytest.raises(InputError):
            parse_binding_claim(bad)
    assert BINDING_CLAIM == "ear.lessee.binding"


st_count = st.integers(min_value=0, max_value=MAX_DEVICES)
st_state = st.builds(DeviceState, st.booleans(), st.booleans(), st_count, st_count)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=16, max_size=40),
    st.binary(min_size=1, max_size=40),
    st_state,
    st.binary(min_size=16, max_size=40),
    st.binary(min_size=1, max_size=40),
    st_state,
)
def test_injective(
    n1: bytes, k1: bytes, s1: DeviceState, n2: bytes, k2: bytes, s2: DeviceState
) -> None:
    # Distinct (nonce, key, state) inputs never share a binding (and equal ones always do).
    a = derive_binding_v2(n1, k1, s1)
    b = derive_binding_v2(n2, k2, s2)
    assert (a == b) == ((n1, k1, s1) == (n2, k2, s2))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=17, max_size=40), st.binary(min_size=1, max_size=40), st_state)
def test_no_shifting_collisions_v2(a: bytes, b: bytes, s: DeviceState) -> None:
    # Moving bytes between nonce and key, or the state into the key, never collides.
    base = derive_binding_v2(a, b, s)
    assert base != derive_binding_v2(a[:-1], a[-1:] + b, s)
    other = DeviceState(not s.cc_mode_on, s.devtools_on, s.gpus, s.switches)
    assert base != derive_binding_v2(a, b + s.encode(), other)


def test_a_label_that_is_not_text_is_an_input_error() -> None:
    # JSON's "\ud800" escape gives a lone surrogate, which has no UTF-8: a typed refusal from
    # the claim parser and from the derivation, never a UnicodeEncodeError.
    good = binding_claim(PROTOCOL_LABEL_V2, STATES[0])
    with pytest.raises(InputError):
        parse_binding_claim({**good, "label": "lessee/v2/\ud800"})
    for label in ("lessee/v2/\ud800", "lessee/v1/\udfff"):
        with pytest.raises(InputError):
            derive_session_binding(NONCE, KEY, label, STATES[0])


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        _json_values,
        st.fixed_dictionaries(
            {
                "label": st.one_of(st.just(PROTOCOL_LABEL_V2), st.text(max_size=140), _json_values),
                "cc_mode_on": _json_values,
                "devtools_on": _json_values,
                "gpus": _json_values,
                "switches": _json_values,
            }
        ),
    )
)
def test_any_claim_value_parses_or_is_an_input_error(value: object) -> None:
    # The claim comes out of a signed token, but a parser is strict and typed all the same:
    # whatever JSON the token holds, the answer is a (label, state) that round-trips or an
    # InputError, never another exception.
    try:
        label, state = parse_binding_claim(value)
    except InputError:
        return
    assert binding_claim(label, state) == value
    derive_session_binding(NONCE, KEY, label, state)  # and it derives
