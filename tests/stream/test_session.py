"""Both ends together: honest streams, every manipulation, fixed record sizes, replay, limits."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealing.hpke_suite import SuiteId
from sealing.stream import (
    AbortReason,
    ClientStream,
    EnclaveStreamSession,
    Event,
    StreamAborted,
    StreamEnd,
    StreamError,
    StreamUsageError,
    Token,
    record_len,
)
from sealing.stream.response import RecordSealer, RecordType, derive_response_keys, encode_head
from tests.stream.conftest import KEYS, accept, feed, make_stream, start, verified

tokens_st = st.lists(st.binary(min_size=1, max_size=80), max_size=10)


def _expected(tokens: list[bytes], abort: int | None) -> list[Event]:
    end: Event = StreamEnd() if abort is None else StreamAborted(abort)
    return [*(Token(t) for t in tokens), end]


def test_end_to_end_both_suites(suite: SuiteId) -> None:
    tokens = [b"Hello", b",", " wörld".encode(), b"x" * 100]
    client, session, records = make_stream(tokens, suite=suite, covers=frozenset({1, 3}))
    assert session.request is not None and session.request.prompt == "prompt"
    assert feed(client, session.head, records) == _expected(tokens, None)
    assert client.finish() == StreamEnd()


def test_abort_is_told_apart_from_a_clean_end() -> None:
    client, session, records = make_stream([b"a"], abort=AbortReason.CONTENT_POLICY)
    events = feed(client, session.head, records)
    assert events[-1] == StreamAborted(AbortReason.CONTENT_POLICY)
    outcome = client.finish()
    assert isinstance(outcome, StreamAborted) and outcome.reason == 4


def test_abort_after_a_token_part_drops_the_partial_token() -> None:
    """seal_token is atomic, but the format allows an abort after a part (an engine failing
    mid-token); the client then drops the incomplete token and reports the abort."""
    secret, enc, nonce = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    sealer = RecordSealer(derive_response_keys(secret, enc, nonce), 32)
    client = ClientStream(secret, enc, 32)
    client.open_head(encode_head(nonce))
    assert client.open_record(sealer.seal(0, RecordType.TOKEN_PART, b"y" * 29)) == []
    assert client.open_record(sealer.seal(1, RecordType.ABORT, b"\x00\x01")) == [StreamAborted(1)]
    # ...whereas a clean end, or a cover, in the middle of a token is refused
    for rtype, payload in ((RecordType.END, b""), (RecordType.COVER, b"")):
        c = ClientStream(secret, enc, 32)
        c.open_head(encode_head(nonce))
        c.open_record(sealer.seal(0, RecordType.TOKEN_PART, b"y" * 29))
        with pytest.raises(StreamError):
            c.open_record(sealer.seal(1, rtype, payload))


@settings(max_examples=100, deadline=None)
@given(tokens=tokens_st, size=st.sampled_from([16, 32, 64]), covers=st.sets(st.integers(0, 9)))
def test_every_record_has_the_same_size(tokens: list[bytes], size: int, covers: set[int]) -> None:
    """Whatever the tokens, covers and ending, every record of a stream is record_len bytes."""
    _, session, records = make_stream(tokens, record_size=size, covers=frozenset(covers))
    assert {len(r) for r in records} == {record_len(size)} == {session.record_len}


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(1, 29), min_size=1, max_size=20))
def test_tokens_within_one_bucket_give_one_record_each(lengths: list[int]) -> None:
    """With the default bucket, tokens up to 29 bytes are indistinguishable: one 49-byte record
    each, so the relay sees the token count but no token length."""
    _, _, records = make_stream([b"t" * n for n in lengths])
    assert len(records) == len(lengths) + 1
    assert {len(r) for r in records} == {49}


@settings(max_examples=150, deadline=None)
@given(tokens=tokens_st, abort=st.one_of(st.none(), st.integers(0, 0xFFFF)))
def test_honest_streams_deliver_exactly_the_tokens(tokens: list[bytes], abort: int | None) -> None:
    client, session, records = make_stream(tokens, abort=abort)
    assert feed(client, session.head, records) == _expected(tokens, abort)


def _manipulate(records: list[bytes], other: list[bytes], data: st.DataObject) -> list[bytes]:
    """Apply one relay manipulation to the record list (never the identity)."""
    n = len(records)
    kind = data.draw(
        st.sampled_from(["reorder", "drop", "duplicate", "truncate", "modify", "splice", "extra"])
    )
    out = list(records)
    if kind == "reorder" and n >= 2:
        i, j = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        out[i], out[j] = out[j], out[i]
    elif kind == "drop":
        del out[data.draw(st.integers(0, n - 1))]
    elif kind == "duplicate":
        i = data.draw(st.integers(0, n - 1))
        out.insert(data.draw(st.integers(0, n)), records[i])
    elif kind == "truncate":
        out = out[: data.draw(st.integers(0, n - 1))]
    elif kind == "splice":
        i = data.draw(st.integers(0, min(n, len(other)) - 1))
        out[i] = other[i]
    elif kind == "extra":
        out.append(data.draw(st.sampled_from([*records, *other])))
    else:  # modify (also the fallback for a reorder of a single record)
        i = data.draw(st.integers(0, n - 1))
        j = data.draw(st.integers(0, len(out[i]) - 1))
        rec = bytearray(out[i])
        rec[j] ^= data.draw(st.integers(1, 255))
        out[i] = bytes(rec)
    assert out != records
    return out


@settings(max_examples=300, deadline=None)
@given(tokens=tokens_st, abort=st.one_of(st.none(), st.integers(0, 9)), data=st.data())
def test_every_manipulation_is_detected(
    tokens: list[bytes], abort: int | None, data: st.DataObject
) -> None:
    """Reordered, dropped, duplicated, truncated, modified, spliced (from a stream of the same
    request accepted a second time, by an enclave whose replay guard has not seen it: the
    closest possible relative) or extended streams all end in StreamError, at the bad record or
    at finish()."""
    client, session, records = make_stream(tokens, abort=abort)
    replayed = accept(KEYS[SuiteId.X25519_SHA256_AES256GCM], client.request)
    other = [r for t in tokens for r in replayed.seal_token(t)] + [replayed.close()]
    bad = _manipulate(records, other, data)
    with pytest.raises(StreamError):
        feed(client, session.head, bad)
    with pytest.raises(StreamError):  # and the stream stays failed
        client.finish()


def test_head_from_another_response_is_detected() -> None:
    client, session, records = make_stream([b"a", b"b"])
    replayed = accept(KEYS[SuiteId.X25519_SHA256_AES256GCM], client.request)
    assert replayed.head != session.head
    with pytest.raises(StreamError):
        feed(client, replayed.head, records)


def test_replayed_request_gives_keys_the_relay_cannot_use() -> None:
    """Defence in depth behind the replay guard: were a request accepted twice (two guards),
    the second answer is under a fresh response nonce. Without the request secret (only inside
    the HPKE ciphertext) the relay opens nothing; its best guess of the secret fails like any
    other."""
    client, _, _ = make_stream([])
    replay = accept(KEYS[SuiteId.X25519_SHA256_AES256GCM], client.request)
    records = [*replay.seal_token(b"secret token"), replay.close()]
    relay = ClientStream(os.urandom(32), client.request[34:66], 32)
    relay.open_head(replay.head)
    with pytest.raises(StreamError):
        relay.open_record(records[0])


def test_streams_with_an_injected_rng_are_reproducible_and_fresh_otherwise() -> None:
    client, _, _ = make_stream([])
    key = KEYS[SuiteId.X25519_SHA256_AES256GCM]

    def fixed(n: int) -> bytes:
        return b"\x07" * n

    a = accept(key, client.request, rng=fixed)
    b = accept(key, client.request, rng=fixed)
    assert a.head == b.head and a.seal_token(b"t") == b.seal_token(b"t")
    c = accept(key, client.request)
    assert c.head != a.head


def test_state_errors() -> None:
    client, _session, records = make_stream([b"a"])
    with pytest.raises(StreamError):  # record before head
        client.open_record(records[0])
    client2, session2, _records2 = make_stream([b"a"])
    client2.open_head(session2.head)
    with pytest.raises(StreamError):  # head twice
        client2.open_head(session2.head)
    client3, session3, _ = make_stream([])
    with pytest.raises(StreamError):  # bad head
        client3.open_head(session3.head[:-1])


def test_enclave_usage_errors() -> None:
    _, session, _ = make_stream([])  # make_stream already closed it
    assert session.closed
    for call in (lambda: session.seal_token(b"a"), session.seal_cover, session.close):
        with pytest.raises(StreamUsageError):
            call()
    with pytest.raises(StreamUsageError):
        session.abort(1)
    client = start(verified(), "p")
    fresh = accept(KEYS[SuiteId.X25519_SHA256_AES256GCM], client.request)
    with pytest.raises(StreamUsageError):
        fresh.seal_token(b"")
    with pytest.raises(StreamUsageError):
        fresh.seal_token(b"x" * 4097)
    with pytest.raises(StreamUsageError):
        fresh.abort(0x10000)


def test_record_limit_reserves_the_final_record() -> None:
    client = start(verified(), "p", max_records=4)
    session = accept(KEYS[SuiteId.X25519_SHA256_AES256GCM], client.request, max_records=4)
    records = [session.seal_cover(), *session.seal_token(b"a"), session.seal_cover()]
    with pytest.raises(StreamUsageError):
        session.seal_cover()
    records.append(session.abort(AbortReason.LIMIT_REACHED))
    assert feed(client, session.head, records) == [Token(b"a"), StreamAborted(5)]
    # a client with a lower limit refuses a longer stream
    small = ClientStream(b"\x00" * 32, b"", 32, max_records=2)
    big = EnclaveStreamSession(b"\x00" * 32, b"", b"\x01" * 32, 32)
    small.open_head(big.head)
    small.open_record(big.seal_cover())
    small.open_record(big.seal_cover())
    with pytest.raises(StreamError):
        small.open_record(big.close())
    with pytest.raises(StreamUsageError):
        ClientStream(b"\x00" * 32, b"", 32, max_records=1 << 30)


def test_secrets_stay_out_of_reprs() -> None:
    client, session, _ = make_stream([b"tok"])
    assert client._secret.hex() not in repr(client)
    assert session.request is not None
    assert session.request.request_secret.hex() not in repr(session.request)
