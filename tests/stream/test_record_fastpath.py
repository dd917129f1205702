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
    StreamAborted,
    StreamEnd,
    StreamError,
    StreamUsageError,
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
    if rtype is RecordType.TOKEN_END:  # frames past the precomputed table, too
        payloads += [b"q" * n for n in (255, 256, 257, cap) if n <= cap]
    for seq in (0, 1, 2**24 - 2):
        for payload in payloads:
            record = sealer.seal(seq, rtype, payload)
            assert record == _reference(seq, rtype, payload, size)
            assert RecordOpener(KEYS, size).open(seq, record) == (rtype, payload)
            if rtype is RecordType.TOKEN_END:
                assert sealer.seal_token_end(seq, payload) == record


def test_sealer_refuses_a_payload_over_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecordSealer(KEYS, 16).seal(0, RecordType.TOKEN_END, b"x" * 14)
    with pytest.raises(ValueError, match="capacity"):
        RecordSealer(KEYS, 16).seal_token_end(0, b"x" * 14)


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
        (RecordType.TOKEN_END, b"", 0),  # a token end carries at least one byte
        (RecordType.TOKEN_END, b"a", 1),  # a token end with the final flag
    ],
)
def test_opener_refuses_what_the_rules_refuse(rtype: int, payload: bytes, flags: int) -> None:
    with pytest.raises(StreamError):
        RecordOpener(KEYS, 16).open(0, _reference(0, rtype, payload, 16, flags))


@pytest.mark.parametrize("position", range(3 + 1, 16))
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


@pytest.mark.parametrize("length", [0, 14, 0x0100, 0xFFFF])
def test_opener_refuses_a_token_end_length_outside_the_record(length: int) -> None:
    """The length field of an authentic TOKEN_END must be 1..capacity (13 here), whatever the
    bytes after it."""
    nonce = int.from_bytes(KEYS.base_nonce, "big").to_bytes(12, "big")
    plain = struct.pack(">BH", RecordType.TOKEN_END, length) + bytes(13)
    record = b"\x00" + AESGCM(KEYS.key).encrypt(nonce, plain, b"\x01\x00")
    with pytest.raises(StreamError):
        RecordOpener(KEYS, 16).open(0, record)


def test_seal_token_fast_path_keeps_the_general_rules() -> None:
    """The one-call path for a one-record token refuses what seal_token always refused: a
    token over MAX_TOKEN_LEN even when the record could hold it, an empty token, a closed
    stream, and the slot kept for the final record."""
    big = EnclaveStreamSession(b"s" * 32, b"e" * 32, b"n" * 32, MAX_RECORD_SIZE)
    with pytest.raises(StreamUsageError):
        big.seal_token(b"a" * (MAX_TOKEN_LEN + 1))
    assert len(big.seal_token(b"a" * MAX_TOKEN_LEN)) == 1
    with pytest.raises(StreamUsageError):
        big.seal_token(b"")
    small = EnclaveStreamSession(b"s" * 32, b"e" * 32, b"n" * 32, 32, max_records=3)
    small.seal_token(b"a")
    small.seal_token(b"b")
    with pytest.raises(StreamUsageError):  # the third slot is the final record's
        small.seal_token(b"c")
    assert small.records_sealed == 2
    small.close()
    with pytest.raises(StreamUsageError):
        small.seal_token(b"d")


def test_seal_token_takes_text_and_byte_like_tokens_alike() -> None:
    records = []
    for token in (" wörld", " wörld".encode(), bytearray(" wörld".encode())):
        session = EnclaveStreamSession(b"s" * 32, b"e" * 32, b"n" * 32, 32)
        records.append(session.seal_token(token))
    assert records[0] == records[1] == records[2]


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(st.binary(min_size=1, max_size=70), max_size=8),
    covers=st.sets(st.integers(0, 8)),
    abort=st.one_of(st.none(), st.integers(0, 0xFFFF)),
    flips=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 48)), max_size=2),
    drop=st.one_of(st.none(), st.integers(0, 1000)),
)
def test_open_token_and_open_record_agree(
    tokens: list[bytes],
    covers: set[int],
    abort: int | None,
    flips: list[tuple[int, int]],
    drop: int | None,
) -> None:
    """The SDK's open_token gives the same tokens, the same outcome and fails at the same
    record as open_record, on honest streams (with covers, split tokens, aborts) and on
    streams with flipped bits or a dropped record."""
    secret, enc, nonce = b"s" * 32, b"e" * 32, b"n" * 32
    session = EnclaveStreamSession(secret, enc, nonce, 32)
    records: list[bytes] = []
    for i, token in enumerate(tokens):
        if i in covers:
            records.append(session.seal_cover())
        records += session.seal_token(token)
    records.append(session.close() if abort is None else session.abort(abort))
    honest = list(records)
    for index, bit in flips:
        i = index % len(records)
        rec = bytearray(records[i])
        rec[bit] ^= 0x01
        records[i] = bytes(rec)
    tampered = [i for i, (a, b) in enumerate(zip(records, honest, strict=True)) if a != b]
    dropped = None
    if drop is not None and len(records) > 1:
        dropped = drop % len(records)
        del records[dropped]

    def run(use_token: bool) -> tuple[list[object], int | None, object]:
        client = ClientStream(secret, enc, 32)
        client.open_head(session.head)
        got: list[object] = []
        for i, record in enumerate(records):
            try:
                if use_token:
                    data = client.open_token(record)
                    if data is not None:
                        got.append(Token(data))
                else:
                    got += [e for e in client.open_record(record) if isinstance(e, Token)]
            except StreamError:
                return got, i, None
        try:
            return got, None, client.finish()
        except StreamError:
            return got, len(records), None

    by_token, by_record = run(True), run(False)
    assert by_token == by_record
    # Every manipulation is caught, at the first record it touched: a changed record fails
    # its tag; after a drop the next record has the wrong nonce, and a dropped final record
    # leaves the stream unfinished (``finish`` fails, reported as index len(records)).
    first_bad = [i for i in tampered if dropped is None or i < dropped]
    if dropped is not None:
        first_bad.append(dropped)
    if first_bad:
        assert by_token[1] == min(first_bad)
        assert by_token[2] is None
    if not flips and drop is None:
        assert by_token == (
            [Token(t) for t in tokens],
            None,
            StreamEnd() if abort is None else StreamAborted(abort),
        )
