"""The record layer's per-token fast paths (one record per token, table-driven framing checks)
give the same bytes and refuse the same records as the format says (docs/formats/token-stream.md).

The sealer and opener were rewritten for speed (issue #6); these tests pin them to an
independent construction with plain AES-GCM, so a shortcut cannot change the wire format or
accept a record the general rules refuse.
"""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from sealing.stream import (
    MAX_TOKEN_LEN,
    ClientStream,
    EnclaveStreamSession,
    StreamEnd,
    StreamError,
    Token,
)
from sealing.stream.request import MAX_RECORD_SIZE, MIN_RECORD_SIZE
from sealing.stream.response import (
    RecordOpener,
    RecordSealer,
    RecordType,
    ResponseKeys,
    derive_response_keys,
)

KEYS = ResponseKeys(bytes(range(32)), bytes(range(12)))
FINAL = {RecordType.END, RecordType.ABORT}


def _reference(seq: int, rtype: int, payload: bytes, size: int, flags: int | None = None) -> bytes:
    """A record built from the format description alone (flags | AES-GCM(frame | zero pad))."""
    if flags is None:
        flags = 1 if rtype in FINAL else 0
    nonce = (int.from_bytes(KEYS.base_nonce, "big") ^ seq).to_bytes(12, "big")
    plain = struct.pack(">BH", rtype, len(payload)) + payload
    plain += bytes(size - len(plain))
    return bytes([flags]) + AESGCM(KEYS.key).encrypt(nonce, plain, bytes([1, flags]))


@pytest.mark.parametrize("size", [MIN_RECORD_SIZE, 32, 4099])
@pytest.mark.parametrize("rtype", list(RecordType))
def test_sealer_matches_the_reference_construction(size: int, rtype: RecordType) -> None:
    sealer = RecordSealer(KEYS, size)
    cap = size - 3
    payloads = {
        RecordType.TOKEN_PART: [bytes([7]) * cap],
        RecordType.TOKEN_END: [b"a", bytes(range(256))[: cap // 2 or 1], b"z" * cap],
        RecordType.COVER: [b""],
        RecordType.END: [b""],
        RecordType.ABORT: [b"\x00\x05"],
    }[rtype]
    for seq in (0, 1, 2**24 - 2):
        for payload in payloads:
            record = sealer.seal(seq, rtype, payload)
            assert record == _reference(seq, rtype, payload, size)
            assert RecordOpener(KEYS, size).open(seq, record) == (rtype, payload)


def test_sealer_refuses_a_payload_over_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecordSealer(KEYS, 16).seal(0, RecordType.TOKEN_END, b"x" * 14)


@pytest.mark.parametrize(
    ("rtype", "payload", "flags"),
    [
        (0x00, b"", 0),  # type 0 is not a record type
        (0xFF, b"a", 0),  # nor is 0xFF
        (0x06, b"", 1),  # the next free code, with the final flag
        (RecordType.END, b"x", 1),  # a clean end carries nothing
        (RecordType.ABORT, b"\x00\x01\x02", 1),  # an abort reason is exactly 2 bytes
        (RecordType.ABORT, b"\x00\x01", 0),  # an abort without the final flag
        (RecordType.COVER, b"", 1),  # cover with the final flag
        (RecordType.TOKEN_PART, b"x" * 12, 0),  # a part one byte short of full (cap 13)
    ],
)
def test_opener_refuses_what_the_rules_refuse(rtype: int, payload: bytes, flags: int) -> None:
    with pytest.raises(StreamError):
        RecordOpener(KEYS, 16).open(0, _reference(0, rtype, payload, 16, flags))


@pytest.mark.parametrize("position", [3 + 1, 15])
def test_opener_refuses_any_nonzero_padding_byte(position: int) -> None:
    nonce = (int.from_bytes(KEYS.base_nonce, "big") ^ 0).to_bytes(12, "big")
    plain = bytearray(struct.pack(">BH", RecordType.TOKEN_END, 1) + b"a" + bytes(12))
    plain[position] = 0x80
    record = b"\x00" + AESGCM(KEYS.key).encrypt(nonce, bytes(plain), b"\x01\x00")
    with pytest.raises(StreamError):
        RecordOpener(KEYS, 16).open(0, record)


def test_one_record_token_over_the_token_bound_is_refused() -> None:
    """With the largest records, one TOKEN_END can hold more than MAX_TOKEN_LEN bytes; the
    client's single-record fast path must still refuse it (the enclave never sends one)."""
    secret, enc, nonce = b"s" * 32, b"e" * 32, b"n" * 32
    keys = derive_response_keys(secret, enc, nonce)
    sealer = RecordSealer(keys, MAX_RECORD_SIZE)
    client = ClientStream(secret, enc, MAX_RECORD_SIZE)
    client.open_head(b"\x01" + nonce)
    assert client.open_record(sealer.seal(0, RecordType.TOKEN_END, b"a" * MAX_TOKEN_LEN)) == [
        Token(b"a" * MAX_TOKEN_LEN)
    ]
    with pytest.raises(StreamError):
        client.open_record(sealer.seal(1, RecordType.TOKEN_END, b"a" * (MAX_TOKEN_LEN + 1)))


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(MIN_RECORD_SIZE, 64),
    tokens=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=12),
)
def test_tokens_round_trip_through_both_paths(size: int, tokens: list[bytes]) -> None:
    """Short tokens take the one-record path, long ones the split path, in any mix; the client
    gets back exactly the tokens, and every record has the stream's one wire size."""
    secret, enc, nonce = b"s" * 32, b"e" * 32, b"n" * 32
    enclave = EnclaveStreamSession(secret, enc, nonce, size)
    client = ClientStream(secret, enc, size)
    client.open_head(enclave.head)
    got: list[object] = []
    for token in tokens:
        records = enclave.seal_token(token)
        assert len(records) == -(-len(token) // (size - 3))
        for record in records:
            assert len(record) == enclave.record_len
            got.extend(client.open_record(record))
    got.extend(client.open_record(enclave.close()))
    assert got == [Token(t) for t in tokens] + [StreamEnd()]
    assert client.finish() == StreamEnd()
