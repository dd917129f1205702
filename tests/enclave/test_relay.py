"""Client + enclave + test relay on loopback: what the relay sees, and what it cannot do.

Each manipulation the relay can make to the response stream ends in the client's one typed
error (``StreamError``), never in a clean end with different or missing tokens.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.client import (
    ClientClockRefused,
    EnclaveBusy,
    EnclaveClient,
    EnclaveKeyChanged,
    EnclaveUnavailable,
    GenerationAborted,
    KeyRotationUnconfirmed,
    RequestReplayRefused,
)
from agent.enclave import EchoGenerator, EnclaveConfig, ScriptedGenerator
from agent.rpc.v1 import enclave_pb2
from sealing.hpke_suite import SuiteId
from sealing.stream import (
    DEFAULT_RECORD_SIZE,
    AbortReason,
    ClientStream,
    GenerationParams,
    StreamError,
    record_len,
)
from sealing.stream.response import HEAD_LEN
from tests.enclave.conftest import Stack, StackFactory
from tests.enclave.relay import Exchange

PROMPT = "alpha bravo charlie delta echo foxtrot"
EXPECTED = EchoGenerator().tokens_for(PROMPT, GenerationParams())
WIRE = record_len(DEFAULT_RECORD_SIZE)


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)


def test_clean_stream_through_relay(stack: Stack) -> None:
    pieces, err = stack.collect(PROMPT)
    assert err is None
    assert pieces == EXPECTED
    (exchange,) = stack.relay.generate_exchanges()
    records = exchange.received_records
    assert len(records[0]) == HEAD_LEN
    assert len(records) == 1 + len(EXPECTED) + 1  # head, one record per token, final
    assert exchange.forwarded == exchange.received


@pytest.mark.parametrize("suite", list(SuiteId), ids=lambda s: s.name)
def test_both_suites_end_to_end(stack_factory: StackFactory, suite: SuiteId) -> None:
    stack = stack_factory(suite=suite)
    pieces, err = stack.collect(PROMPT)
    assert err is None
    assert "".join(pieces) == "".join(EXPECTED)


def test_relay_never_sees_plaintext(stack_factory: StackFactory) -> None:
    script = ["Quixotic", " zephyr", " 4711", " Ünïcødé", " \U0001f600emoji", " tail-token"]
    stack = stack_factory(ScriptedGenerator(script), tap=True)
    prompt = "Secret prompt: the launch code is PAPAYA-99 and nobody may know"
    pieces, err = stack.collect(prompt)
    assert err is None
    assert pieces == script
    relay_bytes = stack.relay.all_bytes()
    assert stack.tap is not None
    wire = bytes(stack.tap.to_server) + bytes(stack.tap.to_client)
    (exchange,) = stack.relay.generate_exchanges()
    for record in exchange.forwarded_records:  # the tap did see the whole stream
        assert record in stack.tap.to_client
    needles = [prompt, "PAPAYA-99", "launch code", *script]
    for needle in needles:
        for encoding in ("utf-8", "utf-16-le"):
            data = needle.strip().encode(encoding)
            assert data not in relay_bytes, needle
            assert data not in wire, needle


def test_request_size_hides_prompt_length(stack: Stack) -> None:
    for prompt in ("a", "a" * 200, "word " * 80):
        _, err = stack.collect(prompt)
        assert err is None
    sizes = {len(e.request) for e in stack.relay.generate_exchanges()}
    assert len(sizes) == 1  # all three prompts pad to the same 512-byte block


def test_record_sizes_do_not_depend_on_token_length(stack_factory: StackFactory) -> None:
    short = ScriptedGenerator(["a"] * 29)
    long = ScriptedGenerator(["x" * n for n in range(1, 30)])  # 1..29 bytes: one record each
    sizes = []
    for gen in (short, long):
        stack = stack_factory(gen)
        pieces, err = stack.collect("p")
        assert err is None
        assert "".join(pieces) == "".join(str(s) for s in gen.script)
        (exchange,) = stack.relay.generate_exchanges()
        assert {len(r) for r in exchange.received_records[1:]} == {WIRE}
        sizes.append([len(m) for m in exchange.received])
    assert sizes[0] == sizes[1]  # identical message sizes on the wire, message by message


def test_clean_end_and_abort_look_the_same_to_the_relay(stack_factory: StackFactory) -> None:
    script = ["one", " two", " three"]
    clean = stack_factory(ScriptedGenerator(script))
    aborted = stack_factory(ScriptedGenerator([*script, " four"], fail_after=3))
    pieces_a, err_a = clean.collect()
    pieces_b, err_b = aborted.collect()
    assert err_a is None and pieces_a == script
    assert isinstance(err_b, GenerationAborted)
    assert err_b.reason == AbortReason.INTERNAL and pieces_b == script
    seen_a = clean.relay.generate_exchanges()[0].received
    seen_b = aborted.relay.generate_exchanges()[0].received
    assert [len(m) for m in seen_a] == [len(m) for m in seen_b]
    assert seen_a[-1][:3] == seen_b[-1][:3]  # same framing and same clear final flag


def _drop(i: int) -> Callable[[list[bytes]], list[bytes]]:
    return lambda r: r[:i] + r[i + 1 :]


def _swap(i: int, j: int) -> Callable[[list[bytes]], list[bytes]]:
    def f(r: list[bytes]) -> list[bytes]:
        r = list(r)
        r[i], r[j] = r[j], r[i]
        return r

    return f


MANIPULATIONS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "drop_first_record": _drop(1),
    "drop_middle_record": _drop(3),
    "drop_final_record": lambda r: r[:-1],
    "drop_head": lambda r: r[1:],
    "reorder_adjacent": _swap(2, 3),
    "reorder_with_final": _swap(-2, -1),
    "duplicate_record": lambda r: [*r[:3], r[2], *r[3:]],
    "duplicate_final": lambda r: [*r, r[-1]],
    "truncate_to_head": lambda r: r[:1],
    "truncate_to_nothing": lambda r: [],
    "truncate_before_final": lambda r: r[:-1],
    "modify_ciphertext": lambda r: [*r[:2], _flip(r[2], 10), *r[3:]],
    "modify_tag": lambda r: [*r[:2], _flip(r[2], -1), *r[3:]],
    "flip_final_flag_on_token": lambda r: [*r[:2], _flip(r[2], 0), *r[3:]],
    "clear_final_flag": lambda r: [*r[:-1], _flip(r[-1], 0)],
    "modify_head": lambda r: [_flip(r[0], 5), *r[1:]],
    "extend_record": lambda r: [*r[:2], r[2] + b"\x00", *r[3:]],
    "shorten_record": lambda r: [*r[:2], r[2][:-1], *r[3:]],
    "empty_record": lambda r: [*r[:2], b"", *r[3:]],
}


@pytest.mark.parametrize("name", sorted(MANIPULATIONS))
def test_manipulation_is_detected(stack: Stack, name: str) -> None:
    stack.relay.rewrite = MANIPULATIONS[name]
    pieces, err = stack.collect(PROMPT)
    assert isinstance(err, StreamError), (name, err)
    assert pieces == EXPECTED[: len(pieces)]  # whatever came before is the authentic prefix


def test_error_status_after_head_is_truncation(stack: Stack) -> None:
    stack.relay.rewrite = lambda r: r[:3]
    stack.relay.end_status = grpc.StatusCode.UNAVAILABLE
    pieces, err = stack.collect(PROMPT)
    assert isinstance(err, StreamError)
    assert pieces == EXPECTED[:2]


def test_error_status_before_head_is_unavailable_not_an_answer(stack: Stack) -> None:
    stack.relay.rewrite = lambda r: []
    stack.relay.end_status = grpc.StatusCode.INTERNAL
    pieces, err = stack.collect(PROMPT)
    assert isinstance(err, EnclaveUnavailable)
    assert err.code == "INTERNAL" and "unauthenticated" in str(err)
    assert pieces == []


def test_splice_from_another_stream_is_detected(stack: Stack) -> None:
    assert stack.collect(PROMPT) == (EXPECTED, None)
    earlier = stack.relay.generate_exchanges()[0].received_records
    for index in (0, 1, 3, len(earlier) - 1):  # the head, a token, another token, the final
        stack.relay.rewrite = lambda r, i=index: [*r[:i], earlier[i], *r[i + 1 :]]
        pieces, err = stack.collect(PROMPT)
        assert isinstance(err, StreamError), index
        assert pieces == EXPECTED[: len(pieces)]


def test_replayed_response_is_refused(stack: Stack) -> None:
    assert stack.collect(PROMPT) == (EXPECTED, None)
    earlier = stack.relay.generate_exchanges()[0].received_records
    stack.relay.rewrite = lambda r: earlier  # answer the new request with the old response
    pieces, err = stack.collect(PROMPT)
    assert isinstance(err, StreamError)
    assert pieces == []


def _refused_unanswered(exchange: Exchange, code: str) -> None:
    """The enclave refused the relay's copy with ``code`` before any head: no response exists."""
    assert exchange.upstream_status == code
    assert exchange.received == [] and exchange.received_records == []


def test_replayed_request_is_refused_before_any_response(stack: Stack) -> None:
    """The relay replays a request while the original streams: the enclave refuses the copy with
    ALREADY_EXISTS before sending a head, so no second response exists (not even one the relay
    cannot read), and the original stream is untouched."""
    stack.relay.replay_after_head = True
    assert stack.collect(PROMPT) == (EXPECTED, None)
    (original,) = stack.relay.generate_exchanges()
    (replayed,) = stack.relay.replay_exchanges()
    assert replayed.request == original.request
    _refused_unanswered(replayed, "ALREADY_EXISTS")
    assert replayed.upstream_details == "request already received (replayed); seal a new request"
    assert original.forwarded == original.received
    assert len(original.received) == 1 + len(EXPECTED) + 1
    stats = stack.service.stats
    assert (stats.requests, stats.replayed, stats.records_sent) == (2, 1, len(EXPECTED) + 1)


def test_request_replayed_after_the_stream_ended_is_refused(stack: Stack) -> None:
    assert stack.collect(PROMPT) == (EXPECTED, None)
    original = stack.relay.generate_exchanges()[0]
    for _ in range(3):
        replayed = stack.loop.run(stack.relay.replay_exchange(original.request))
        _refused_unanswered(replayed, "ALREADY_EXISTS")
    assert stack.service.stats.replayed == 3
    assert len(stack.service.replay_guard) == 1
    assert stack.collect(PROMPT) == (EXPECTED, None)  # a new request is a new id


def test_relay_replaying_first_leaves_the_client_a_clear_error(stack: Stack) -> None:
    """The relay sends a copy of the request before the original: the copy takes the one
    answer (unreadable to the relay), and the client learns that its request was replayed."""
    stack.relay.replay_first = True
    pieces, err = stack.collect(PROMPT)
    assert pieces == []
    assert isinstance(err, RequestReplayRefused) and err.code == "ALREADY_EXISTS"
    assert "replayed or duplicated on the way" in str(err)
    (copy,) = stack.relay.replay_exchanges()
    (original,) = stack.relay.generate_exchanges()
    assert copy.request == original.request
    assert len(copy.received) == 1 + len(EXPECTED) + 1  # the copy got the only answer
    assert original.received == [] and original.upstream_status == "ALREADY_EXISTS"
    # ... which the relay cannot read: a client without this request's secret fails on it.
    stranger = ClientStream.start(
        stack.call(lambda c: c.key_bundle()), PROMPT, sent_at=int(time.time())
    )
    stranger.open_head(copy.received_records[0])
    with pytest.raises(StreamError):
        stranger.open_record(copy.received_records[1])
    for needle in EXPECTED:
        assert needle.strip().encode() not in b"".join(copy.received)


def test_forged_stale_key_does_not_get_the_relay_a_second_answer(stack: Stack) -> None:
    """The relay has the enclave answer the request (and keeps the answer), then tells the
    client its key is stale. By default the client sends nothing more (``EnclaveKeyChanged``,
    the bundle dropped); with ``retry_on_new_key`` it refetches the bundle, sees the key
    unchanged, and sends nothing more either. A retry to the same key would give the relay a
    second, independently sampled answer to choose between."""
    stack.relay.keep_answer_and_refuse = grpc.StatusCode.FAILED_PRECONDITION
    pieces, err = stack.collect(PROMPT)
    assert pieces == [] and isinstance(err, EnclaveKeyChanged)
    assert [e.method for e in stack.relay.exchanges] == ["GetKeyBundle", "Generate", "Replay"]
    assert stack.service.stats.requests == 1
    stack.relay.exchanges.clear()
    stack.relay.keep_answer_and_refuse = grpc.StatusCode.FAILED_PRECONDITION  # once more
    pieces, err = stack.collect(PROMPT, retry_on_new_key=True)
    assert pieces == []
    assert isinstance(err, KeyRotationUnconfirmed) and err.code == "FAILED_PRECONDITION"
    assert "not sent again" in str(err)
    methods = [e.method for e in stack.relay.exchanges]
    assert methods == ["GetKeyBundle", "Generate", "Replay", "GetKeyBundle"]
    (kept,) = stack.relay.replay_exchanges()
    assert len(kept.received) == 1 + len(EXPECTED) + 1  # the one answer, which the relay kept
    assert stack.service.stats.requests == 2  # one per call: never a second for one prompt


@pytest.mark.parametrize("skew_s", [-121.0, 121.0], ids=["clock-behind", "clock-ahead"])
def test_request_outside_the_time_window_is_refused(
    stack_factory: StackFactory, skew_s: float
) -> None:
    """The enclave's clock differs from the client's by more than the window (either way): the
    request is refused as stale before any head, and the SDK says to check the clock."""
    stack = stack_factory(clock=lambda: datetime.now(UTC) + timedelta(seconds=skew_s))
    pieces, err = stack.collect(PROMPT)
    assert pieces == []
    assert isinstance(err, ClientClockRefused) and err.code == "OUT_OF_RANGE"
    assert "check this machine's clock" in str(err)
    (exchange,) = stack.relay.generate_exchanges()
    _refused_unanswered(exchange, "OUT_OF_RANGE")
    assert stack.service.stats.stale_time == 1 and len(stack.service.replay_guard) == 0


def test_client_clock_within_the_window_is_accepted(stack_factory: StackFactory) -> None:
    """A client clock 100 s ahead (inside the default 120 s) is fine; so is an enclave 100 s
    ahead of real time."""
    client_ahead = stack_factory()
    pieces, err = client_ahead.collect(
        PROMPT, clock=lambda: datetime.now(UTC) + timedelta(seconds=100)
    )
    assert (pieces, err) == (EXPECTED, None)
    enclave_ahead = stack_factory(clock=lambda: datetime.now(UTC) + timedelta(seconds=100))
    assert enclave_ahead.collect(PROMPT) == (EXPECTED, None)


def test_client_clock_far_ahead_is_refused(stack: Stack) -> None:
    """The client's own clock 200 s ahead (its bundle check still passes: the EAR is valid for
    an hour): the enclave refuses the request's time, and the error names it."""
    ahead = datetime.now(UTC) + timedelta(seconds=200)
    pieces, err = stack.collect(PROMPT, clock=lambda: ahead)
    assert pieces == [] and isinstance(err, ClientClockRefused)
    assert ahead.strftime("%Y-%m-%dT%H:%M:%SZ") in str(err)
    assert stack.service.stats.stale_time == 1


def test_requests_that_fail_to_open_do_not_poison_the_replay_cache(stack: Stack) -> None:
    """The relay damages a request (its enc unchanged, a ciphertext byte flipped): refused as
    not opening, and nothing recorded, so the genuine bytes still get their one answer."""
    stack.relay.request_rewrite = lambda req: _flip(req, len(req) - 5)
    pieces, err = stack.collect(PROMPT)
    assert pieces == [] and isinstance(err, EnclaveUnavailable)
    assert err.code == "INVALID_ARGUMENT"
    assert len(stack.service.replay_guard) == 0
    (damaged,) = stack.relay.generate_exchanges()
    genuine = stack.loop.run(stack.relay.replay_exchange(damaged.request))
    assert genuine.upstream_status == "OK" and len(genuine.received) == 1 + len(EXPECTED) + 1
    assert len(stack.service.replay_guard) == 1


def test_full_replay_cache_fails_closed(stack_factory: StackFactory) -> None:
    """At its bound of live ids the guard refuses new requests (RESOURCE_EXHAUSTED, before any
    head) instead of forgetting an id; the remembered request's replay is still refused."""
    stack = stack_factory(config=EnclaveConfig(replay_max_entries=1))
    assert stack.collect(PROMPT) == (EXPECTED, None)
    pieces, err = stack.collect(PROMPT)
    assert pieces == [] and isinstance(err, EnclaveBusy) and err.code == "RESOURCE_EXHAUSTED"
    assert "retry later" in str(err)
    first, second = stack.relay.generate_exchanges()
    _refused_unanswered(second, "RESOURCE_EXHAUSTED")
    replayed = stack.loop.run(stack.relay.replay_exchange(first.request))
    _refused_unanswered(replayed, "ALREADY_EXISTS")
    assert (stack.service.stats.replay_cache_full, stack.service.stats.replayed) == (1, 1)


def test_request_modified_by_relay_is_rejected_and_enclave_survives(stack: Stack) -> None:
    stack.relay.request_rewrite = lambda req: _flip(req, len(req) - 5)
    pieces, err = stack.collect(PROMPT)
    assert pieces == []
    assert isinstance(err, EnclaveUnavailable) and err.code == "INVALID_ARGUMENT"
    assert stack.service.stats.rejected == 1
    stack.relay.request_rewrite = None
    assert stack.collect(PROMPT) == (EXPECTED, None)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["flip", "drop", "dup", "swap", "cut", "junk"]),
            st.integers(0, 20),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_random_manipulations_never_yield_a_wrong_clean_stream(
    stack: Stack, ops: list[tuple[str, int, int]]
) -> None:
    """Any rewrite the relay makes either leaves the stream intact (and then the client gets
    exactly the enclave's tokens) or makes the client fail with the typed error."""

    def rewrite(records: list[bytes]) -> list[bytes]:
        r = list(records)
        for op, pos, val in ops:
            if not r:
                break
            i = pos % len(r)
            if op == "flip":
                rec = bytearray(r[i])
                if rec:
                    rec[val % len(rec)] ^= 1 << (val % 8)
                r[i] = bytes(rec)
            elif op == "drop":
                del r[i]
            elif op == "dup":
                r.insert(i, r[i])
            elif op == "swap":
                j = val % len(r)
                r[i], r[j] = r[j], r[i]
            elif op == "cut":
                r = r[:i]
            else:
                r.insert(i, bytes([val]) * (val % 60))
        return r

    stack.relay.rewrite = rewrite
    pieces, err = stack.collect(PROMPT)
    forwarded = stack.relay.generate_exchanges()[-1]
    if forwarded.forwarded_records == forwarded.received_records:
        assert err is None and pieces == EXPECTED
    else:
        assert isinstance(err, StreamError | EnclaveUnavailable), err
        assert pieces == EXPECTED[: len(pieces)]


def test_client_cancel_stops_the_engine(stack_factory: StackFactory) -> None:
    # The engine would run for ~20 s, far past the wait below: only the cancellation can close
    # it early (on a loaded machine, a 2 s engine could finish before a slow cancel arrived,
    # and a finished engine is not "closed").
    gen = ScriptedGenerator(["tok"] * 2000, delay_s=0.01)
    stack = stack_factory(gen)

    async def first_then_stop(client: EnclaveClient) -> list[str]:
        out = []
        async for piece in client.generate("p", params=GenerationParams(max_new_tokens=2000)):
            out.append(piece)
            break
        return out

    assert stack.call(first_then_stop) == ["tok"]

    async def wait_closed() -> None:
        for _ in range(1000):  # up to ~10 s
            if gen.closed == 1 and stack.service.stats.active == 0:
                return
            await asyncio.sleep(0.01)

    stack.loop.run(wait_closed())
    assert gen.closed == 1
    assert stack.service.stats.active == 0


def test_generation_parameters_travel_encrypted(stack: Stack) -> None:
    """The request message is the sealed request and nothing else: the sampling parameters are
    applied by the enclave (max_new_tokens=3 is honoured) but never appear in the clear."""
    params = GenerationParams(max_new_tokens=3, temperature_milli=1234, top_p_milli=777)
    pieces, err = stack.collect(PROMPT, params=params)
    assert err is None and pieces == EXPECTED[:3]
    (exchange,) = stack.relay.generate_exchanges()
    msg = enclave_pb2.GenerateRequest.FromString(exchange.request)
    assert msg.SerializeToString() == exchange.request
    assert list(msg.DESCRIPTOR.fields_by_name) == ["sealed_request"]
    clear_params = struct.pack(">HIHH", DEFAULT_RECORD_SIZE, 3, 1234, 777)
    assert clear_params not in exchange.request
