"""Record layer: known-answer vectors, the key derivation, and every framing rule."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError
from sealing.stream import ClientStream, StreamAborted, StreamEnd, StreamError, Token
from sealing.stream.response import (
    HEAD_LEN,
    RecordOpener,
    RecordType,
    ResponseKeys,
    decode_head,
    derive_response_keys,
)
from tests.stream.conftest import GEN, load_json

H = bytes.fromhex
KATS = load_json("record_layer.json")


def _hkdf_expand(prk: bytes, info: bytes, n: int) -> bytes:
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:n]


def test_generator_reproduces_the_committed_record_layer() -> None:
    """Drift check: the code still produces the committed bytes (as the generator's --check)."""
    assert GEN.build_record_layer(load_json("requests.json")) == KATS


@pytest.mark.parametrize("kat", KATS, ids=lambda k: k["name"])
def test_key_derivation_matches_an_independent_hkdf(kat: dict[str, object]) -> None:
    secret, enc, nonce = (H(str(kat[k])) for k in ("request_secret", "enc", "response_nonce"))
    prk = hmac.new(enc + nonce, secret, hashlib.sha256).digest()
    assert _hkdf_expand(prk, b"lessee token-stream v1 response key", 32).hex() == kat["key"]
    assert (
        _hkdf_expand(prk, b"lessee token-stream v1 response nonce", 12).hex() == kat["base_nonce"]
    )
    keys = derive_response_keys(secret, enc, nonce)
    assert (keys.key.hex(), keys.base_nonce.hex()) == (kat["key"], kat["base_nonce"])


@pytest.mark.parametrize("kat", KATS, ids=lambda k: k["name"])
def test_kat_records_decrypt_with_plain_aes_gcm(kat: dict[str, object]) -> None:
    """Each record is AES-256-GCM(key, base_nonce XOR seq, aad = 01 || flags) of
    type || len || payload || zeros: checked with raw AESGCM, not with lessee's opener."""
    key, base = H(str(kat["key"])), int(str(kat["base_nonce"]), 16)
    size = int(str(kat["record_size"]))
    records = [H(r) for r in kat["records"]]  # type: ignore[attr-defined]
    for seq, rec in enumerate(records):
        assert len(rec) == 1 + size + 16
        nonce = (base ^ seq).to_bytes(12, "big")
        plain = AESGCM(key).decrypt(nonce, rec[1:], bytes([1, rec[0]]))
        rtype, length = struct.unpack_from(">BH", plain)
        assert not any(plain[3 + length :])
        assert (rec[0] == 1) == (rtype in (RecordType.END, RecordType.ABORT))
    assert records[-1][0] == 1 and all(r[0] == 0 for r in records[:-1])


@pytest.mark.parametrize("kat", KATS, ids=lambda k: k["name"])
def test_kat_stream_opens_to_the_expected_events(kat: dict[str, object]) -> None:
    client = ClientStream(
        H(str(kat["request_secret"])), H(str(kat["enc"])), int(str(kat["record_size"]))
    )
    client.open_head(H(str(kat["head"])))
    events = []
    for r in kat["records"]:  # type: ignore[attr-defined]
        events += client.open_record(H(r))
    expected: list[object] = []
    for e in kat["events"]:  # type: ignore[attr-defined]
        if e[0] == "token":
            expected.append(Token(H(e[1])))
        elif e[0] == "end":
            expected.append(StreamEnd())
        else:
            expected.append(StreamAborted(e[1]))
    assert events == expected
    assert client.finish() == expected[-1]


def test_head_is_strict() -> None:
    nonce = bytes(range(32))
    assert decode_head(b"\x01" + nonce) == nonce
    for bad in (b"", b"\x01" + nonce[:-1], b"\x01" + nonce + b"\x00", b"\x02" + nonce):
        with pytest.raises(ParseError):
            decode_head(bad)
    assert HEAD_LEN == 33


KEYS = ResponseKeys(bytes(range(32)), bytes(12))
SIZE = 16


def _raw_record(seq: int, flags: int, plain: bytes) -> bytes:
    """A record as a buggy (or compromised-key) sealer could make it, bypassing the framing."""
    nonce = (int.from_bytes(KEYS.base_nonce, "big") ^ seq).to_bytes(12, "big")
    return bytes([flags]) + AESGCM(KEYS.key).encrypt(nonce, plain, bytes([1, flags]))


def _frame(rtype: int, payload: bytes, pad: bytes | None = None) -> bytes:
    body = struct.pack(">BH", rtype, len(payload)) + payload
    return body + (pad if pad is not None else bytes(SIZE - len(body)))


@pytest.mark.parametrize(
    ("flags", "plain"),
    [
        (0, _frame(0x09, b"")),  # unknown type
        (0, _frame(RecordType.END, b"")),  # final type without the final flag
        (1, _frame(RecordType.TOKEN_END, b"a")),  # final flag on a token
        (0, _frame(RecordType.TOKEN_END, b"")),  # empty token
        (0, _frame(RecordType.TOKEN_PART, b"abc")),  # a part must be full (13 bytes)
        (0, _frame(RecordType.COVER, b"x")),  # cover carries nothing
        (1, _frame(RecordType.ABORT, b"\x00")),  # abort reason is exactly 2 bytes
        (0, _frame(RecordType.TOKEN_END, b"a", pad=b"\x00" * 11 + b"\x01")),  # non-zero padding
        (0, struct.pack(">BH", RecordType.TOKEN_END, 14) + bytes(13)),  # length > capacity
        (2, _frame(RecordType.TOKEN_END, b"a")),  # unknown flags value
    ],
)
def test_framing_rules_are_enforced_after_decryption(flags: int, plain: bytes) -> None:
    assert len(plain) == SIZE
    opener = RecordOpener(KEYS, SIZE)
    good = _raw_record(0, 0, _frame(RecordType.TOKEN_END, b"a"))
    assert opener.open(0, good) == (RecordType.TOKEN_END, b"a")
    with pytest.raises(StreamError):
        opener.open(0, _raw_record(0, flags, plain))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 5))
def test_random_records_are_refused(data: bytes, seq: int) -> None:
    with pytest.raises(StreamError):
        RecordOpener(KEYS, SIZE).open(seq, data)
