"""The canonical, versioned log entry encoding."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError, LesseeError
from attest.log.entry import (
    MAX_ENTRY_BYTES,
    BlobRef,
    EntryError,
    EntryKind,
    decode_entry,
)
from tests.log.helpers import EAR, POLICY, T0, make_entry

ATTEST, _ = make_entry(0)
RELEASE, _ = make_entry(1)


def test_roundtrip_and_exact_bytes() -> None:
    for entry in (ATTEST, RELEASE):
        again = decode_entry(entry.raw)
        assert again == entry and again.raw == entry.raw
    obj = json.loads(ATTEST.raw)
    assert list(obj) == sorted(obj)  # keys sorted
    assert obj["v"] == 1 and obj["kind"] == "attest"
    assert obj["time"] == "2026-11-28T12:00:00.123456Z"
    assert b'": ' not in ATTEST.raw and b', "' not in ATTEST.raw  # no insignificant whitespace
    assert ATTEST.raw == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert RELEASE.kind is EntryKind.RELEASE and RELEASE.model_id == "example/model-7b"
    assert [r.role for r in ATTEST.blob_refs()] == ["policy", "cpu0.report"]
    assert ATTEST.policy == BlobRef.of("policy", "application/json", POLICY)


def test_time_normalised_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    e = make_entry(0)[0]
    shifted = type(e)(
        **{
            **{
                f: getattr(e, f)
                for f in (
                    "kind",
                    "nonce",
                    "binding",
                    "policy",
                    "verifier",
                    "result",
                    "evidence",
                    "collateral",
                )
            },
            "time": T0.astimezone(plus2),
        }
    )
    assert shifted.raw == e.raw
    with pytest.raises(InputError):
        type(e)(
            **{
                **{
                    f: getattr(e, f)
                    for f in (
                        "kind",
                        "nonce",
                        "binding",
                        "policy",
                        "verifier",
                        "result",
                        "evidence",
                    )
                },
                "time": datetime(2026, 1, 1),
            }
        )  # naive


def _mutate(raw: bytes, **changes: object) -> bytes:
    obj = json.loads(raw)
    for k, v in changes.items():
        if v is None:
            del obj[k]
        else:
            obj[k] = v
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "data",
    [
        _mutate(ATTEST.raw, v=2),
        _mutate(ATTEST.raw, v=True),
        _mutate(ATTEST.raw, kind="audit"),
        _mutate(ATTEST.raw, extra=1),
        _mutate(ATTEST.raw, collateral=None),
        _mutate(ATTEST.raw, evidence=[]),
        _mutate(ATTEST.raw, model_id="m"),
        _mutate(ATTEST.raw, time="2026-11-28T12:00:00Z"),
        _mutate(ATTEST.raw, time="2026-02-30T12:00:00.000000Z"),
        _mutate(ATTEST.raw, nonce="00" * 8),
        _mutate(ATTEST.raw, nonce="AB" * 16),
        _mutate(ATTEST.raw, binding="00" * 31),
        _mutate(ATTEST.raw, result="not a jwt"),
        _mutate(ATTEST.raw, verifier=""),
        _mutate(ATTEST.raw, verifier="caf\u00e9"),
        _mutate(ATTEST.raw, policy={"role": "policy"}),
        _mutate(RELEASE.raw, recipient_key_sha256="00" * 31),
        _mutate(RELEASE.raw, model_id=None),
        _mutate(RELEASE.raw, evidence=[]),
        ATTEST.raw.replace(b'"v":1', b'"v":1.0'),
        ATTEST.raw.replace(b"{", b"{ ", 1),  # not canonical
        ATTEST.raw + b"\n",  # trailing data
        ATTEST.raw.replace(b'"v":1', b'"v":1,"v":1'),  # duplicate key
        ATTEST.raw.replace(b'"kind":"attest"', b'"kind":"att\\u0065st"'),  # escaped spelling
        b"[]",
        b"",
        b'{"v":NaN}',
        b"\xff",
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(EntryError):
        decode_entry(data)


def test_duplicate_roles_and_size_bound() -> None:
    ref = ATTEST.evidence[0]
    with pytest.raises(EntryError):
        type(ATTEST)(
            kind=EntryKind.ATTEST,
            time=T0,
            nonce=ATTEST.nonce,
            binding=ATTEST.binding,
            policy=ATTEST.policy,
            verifier="v",
            result=EAR,
            evidence=(ref, ref),
        )
    with pytest.raises(EntryError):
        decode_entry(b" " * (MAX_ENTRY_BYTES + 1))


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(ATTEST.raw) - 1), value=st.integers(0, 255))
def test_single_byte_changes(pos: int, value: int) -> None:
    data = bytearray(ATTEST.raw)
    if data[pos] == value:
        return
    data[pos] = value
    try:
        entry = decode_entry(bytes(data))
    except EntryError:
        return
    # A change that still decodes must be a different, canonical entry (e.g. another digit).
    assert entry.raw == bytes(data) and entry != ATTEST


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(RELEASE.raw) - 1))
def test_truncation(cut: int) -> None:
    with pytest.raises(EntryError):
        decode_entry(RELEASE.raw[:cut])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(LesseeError):
        decode_entry(data)


@settings(max_examples=200, deadline=None)
@given(
    nonce=st.binary(min_size=16, max_size=64),
    binding=st.binary(min_size=32, max_size=64),
    seconds=st.integers(0, 10**9),
    micro=st.integers(0, 999_999),
    model=st.from_regex(r"[ -~]{1,128}", fullmatch=True),
)
def test_release_roundtrip(
    nonce: bytes, binding: bytes, seconds: int, micro: int, model: str
) -> None:
    at = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=micro)
    e = type(RELEASE)(
        kind=EntryKind.RELEASE,
        time=at,
        nonce=nonce,
        binding=binding,
        policy=RELEASE.policy,
        verifier="lessee 0.1.0",
        result=EAR,
        model_id=model,
        recipient_key_sha256=bytes(32),
    )
    again = decode_entry(e.raw)
    assert again == e and again.time == at
