"""sealing.stream.replay: the enclave's replay guard (window edges, expiry, the bound, its clock)
and how ``EnclaveStreamSession.accept`` uses it."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError, ParseError
from sealing import hpke_suite
from sealing.hpke_suite import SuiteId
from sealing.stream import (
    EnclaveStreamSession,
    ReplayCacheFull,
    ReplayGuard,
    RequestReplayed,
    RequestStale,
    StaleDirection,
    StreamError,
    StreamUsageError,
)
from sealing.stream.replay import (
    DEFAULT_MAX_REPLAY_ENTRIES,
    DEFAULT_REPLAY_WINDOW_S,
    MAX_REPLAY_ENTRIES,
    MAX_REPLAY_WINDOW_S,
)
from sealing.stream.request import request_header, request_info
from tests.stream.conftest import KEYS, SENT_AT, start, verified

W = 120
X = SuiteId.X25519_SHA256_AES256GCM


def rid(n: int | str) -> bytes:
    """A request id (in the service, SHA-256 of a request's enc)."""
    return hashlib.sha256(str(n).encode()).digest()


def test_defaults() -> None:
    guard = ReplayGuard()
    assert (guard.window_seconds, guard.max_entries) == (120, 1 << 18)
    assert (DEFAULT_REPLAY_WINDOW_S, DEFAULT_MAX_REPLAY_ENTRIES) == (120, 1 << 18)
    assert len(guard) == 0 and "live=0" in repr(guard)


@pytest.mark.parametrize(
    ("sent_at", "outcome"),
    [
        (1000 - W, None),  # exactly at the window's old edge: accepted
        (1000 - W - 1, StaleDirection.PAST),  # one second past it: refused
        (1000 + W, None),  # exactly at the future edge: accepted
        (1000 + W + 1, StaleDirection.FUTURE),
        (1000, None),
        (0, StaleDirection.PAST),
        ((1 << 64) - 1, StaleDirection.FUTURE),
    ],
)
def test_window_edges(sent_at: int, outcome: StaleDirection | None) -> None:
    guard = ReplayGuard(window_seconds=W)
    if outcome is None:
        guard.check_and_record(rid(0), sent_at, 1000.0)
        assert len(guard) == 1
        return
    with pytest.raises(RequestStale) as info:
        guard.check_and_record(rid(0), sent_at, 1000.0)
    assert info.value.direction is outcome and info.value.reason == "request_stale"
    assert len(guard) == 0  # a refused request leaves nothing behind


def test_window_edges_with_a_fractional_clock() -> None:
    """``now`` is a float; |now - sent_at| <= window exactly."""
    guard = ReplayGuard(window_seconds=W)
    guard.check_and_record(rid(1), 880, 1000.0)
    with pytest.raises(RequestStale):
        guard.check_and_record(rid(2), 880, 1000.25)
    guard.check_and_record(rid(3), 1120, 1000.25)
    with pytest.raises(RequestStale):
        guard.check_and_record(rid(4), 1121, 1000.5)


def test_a_replay_is_refused_until_it_is_stale_and_never_accepted() -> None:
    guard = ReplayGuard(window_seconds=W)
    guard.check_and_record(rid("a"), 1000, 1000.0)
    for now in (1000.0, 1001.0, 1119.9, 1120.0):  # up to and at the last accepted instant
        with pytest.raises(RequestReplayed) as info:
            guard.check_and_record(rid("a"), 1000, now)
        assert info.value.reason == "request_replayed"
    with pytest.raises(RequestStale):  # past it: stale (the id itself is then forgotten)
        guard.check_and_record(rid("a"), 1000, 1120.001)
    assert len(guard) == 0


def test_expired_ids_are_purged_and_memory_shrinks() -> None:
    guard = ReplayGuard(window_seconds=W)
    for i in range(100):
        guard.check_and_record(rid(i), 1000, 1000.0)
    for i in range(50):
        guard.check_and_record(rid(f"later{i}"), 1060, 1060.0)
    assert len(guard) == 150
    guard.check_and_record(rid("edge"), 1120, 1120.0)  # at 1120 the first hundred still count
    assert len(guard) == 151
    with pytest.raises(RequestStale):  # advancing the clock purges, even on a refusal
        guard.check_and_record(rid("old"), 0, 1120.5)
    assert len(guard) == 51
    with pytest.raises(RequestStale):
        guard.check_and_record(rid("old"), 0, 1180.5)
    assert len(guard) == 1
    with pytest.raises(RequestStale):
        guard.check_and_record(rid("old"), 0, 1240.5)
    assert len(guard) == 0
    assert guard._buckets == {}  # no empty buckets kept either


def test_a_clock_jump_beyond_every_bucket_purges_all() -> None:
    guard = ReplayGuard(window_seconds=W)
    for i in range(2 * W + 1):  # one bucket per expiry second across the whole window
        guard.check_and_record(rid(i), 1000 - W + i, 1000.0)
    assert len(guard._buckets) == 2 * W + 1
    guard.check_and_record(rid("far"), 10**9, 10**9 + 0.5)
    assert len(guard) == 1 and list(guard._buckets) == [10**9 + W]


def test_fail_closed_at_max_entries() -> None:
    """At the bound, new requests are refused; live ids are never evicted, so their replays
    are still refused; once ids expire, there is room again."""
    guard = ReplayGuard(window_seconds=W, max_entries=3)
    for i in range(3):
        guard.check_and_record(rid(i), 1000, 1000.0)
    with pytest.raises(ReplayCacheFull) as info:
        guard.check_and_record(rid(3), 1000, 1000.0)
    assert info.value.max_entries == 3 and "retry later" in str(info.value)
    assert len(guard) == 3
    for i in range(3):
        with pytest.raises(RequestReplayed):
            guard.check_and_record(rid(i), 1000, 1100.0)
    with pytest.raises(ReplayCacheFull):  # a refused id was not recorded: still full, not a replay
        guard.check_and_record(rid(3), 1000, 1100.0)
    guard.check_and_record(rid(3), 1121, 1121.0)  # the first three expired
    assert len(guard) == 1


def test_the_guards_clock_never_runs_backwards() -> None:
    """A host that sets the enclave's clock back cannot re-open the window for a forgotten id:
    the guard judges by the latest time it was given."""
    guard = ReplayGuard(window_seconds=W)
    guard.check_and_record(rid("a"), 1000, 1000.0)
    with pytest.raises(RequestStale):
        guard.check_and_record(rid("b"), 0, 1500.0)  # the clock moves on; "a" is forgotten
    assert len(guard) == 0
    for now in (1000.0, 1100.0, 1379.0):
        with pytest.raises(RequestStale):
            guard.check_and_record(rid("a"), 1000, now)
    guard.check_and_record(rid("c"), 1380, 1000.0)  # judged as of 1500
    assert len(guard) == 1


def test_bad_arguments() -> None:
    for kwargs in (
        {"window_seconds": 0},
        {"window_seconds": MAX_REPLAY_WINDOW_S + 1},
        {"window_seconds": 1.5},
        {"window_seconds": True},
        {"max_entries": 0},
        {"max_entries": MAX_REPLAY_ENTRIES + 1},
    ):
        with pytest.raises(InputError):
            ReplayGuard(**kwargs)  # type: ignore[arg-type]
    guard = ReplayGuard()
    with pytest.raises(StreamUsageError):
        guard.check_and_record(b"short", 1000, 1000.0)
    for now in (math.nan, math.inf, -math.inf):
        with pytest.raises(StreamUsageError):
            guard.check_and_record(rid(0), 1000, now)
    assert len(guard) == 0


_ops = st.lists(
    st.tuples(st.integers(0, 15), st.floats(-50, 400, allow_nan=False)), min_size=1, max_size=60
)


@settings(max_examples=300, deadline=None)
@given(ops=_ops, max_entries=st.integers(1, 6), window=st.integers(1, 60))
def test_matches_a_naive_model_and_accepts_each_id_at_most_once(
    ops: list[tuple[int, float]], max_entries: int, window: int
) -> None:
    """Against a model that keeps every accepted id forever: same decision every time, same
    number of live ids, and no id is ever accepted twice, whatever the clock does (it may run
    backwards). Each id has one send time, as a real request id has."""
    guard = ReplayGuard(window_seconds=window, max_entries=max_entries)
    sent = {n: 20 * n for n in range(16)}  # id n was sealed at 20n
    accepted: dict[bytes, int] = {}  # id -> expiry
    latest = -math.inf
    for n, now in ops:
        latest = max(latest, now)
        live = {i for i, expiry in accepted.items() if expiry >= latest}
        if abs(latest - sent[n]) > window:
            want: type[Exception] | None = RequestStale
        elif rid(n) in live:
            want = RequestReplayed
        elif len(live) >= max_entries:
            want = ReplayCacheFull
        else:
            want = None
        if want is None:
            assert rid(n) not in accepted  # never twice
            guard.check_and_record(rid(n), sent[n], now)
            accepted[rid(n)] = sent[n] + window
            live.add(rid(n))
        else:
            with pytest.raises(want):
                guard.check_and_record(rid(n), sent[n], now)
        assert len(guard) == len(live)


# -- EnclaveStreamSession.accept with a guard -------------------------------------------------


def test_accept_refuses_the_same_request_twice() -> None:
    guard = ReplayGuard()
    client = start(verified(), "p")
    session = EnclaveStreamSession.accept(
        KEYS[X], client.request, replay_guard=guard, now=SENT_AT + 0.5
    )
    assert session.request is not None and session.request.sent_at == SENT_AT
    assert len(guard) == 1
    with pytest.raises(RequestReplayed):
        EnclaveStreamSession.accept(KEYS[X], client.request, replay_guard=guard, now=SENT_AT + 60)
    with pytest.raises(RequestStale):
        EnclaveStreamSession.accept(KEYS[X], client.request, replay_guard=guard, now=SENT_AT + 121)


@pytest.mark.parametrize(("skew", "direction"), [(-121, "future"), (121, "past")])
def test_accept_refuses_a_request_outside_the_window(skew: int, direction: str) -> None:
    guard = ReplayGuard()
    client = start(verified(), "p")
    with pytest.raises(RequestStale) as info:
        EnclaveStreamSession.accept(KEYS[X], client.request, replay_guard=guard, now=SENT_AT + skew)
    assert info.value.direction.value == direction
    assert len(guard) == 0


def test_only_requests_that_open_are_recorded() -> None:
    """A relay cannot fill the cache: bytes that fail to open (same enc, changed ciphertext) or
    open to a malformed plaintext never reach the guard, and the genuine request still goes
    through afterwards."""
    guard = ReplayGuard()
    client = start(verified(), "p")
    wire = client.request
    for i in (len(wire) - 1, len(wire) - 20, 70):
        bad = bytearray(wire)
        bad[i] ^= 1
        with pytest.raises(StreamError):
            EnclaveStreamSession.accept(KEYS[X], bytes(bad), replay_guard=guard, now=SENT_AT)
    pk = KEYS[X].public_key
    header = request_header(X, pk.key_id)
    malformed = header + hpke_suite.seal(pk, request_info(header), b"", bytes(55))
    with pytest.raises(ParseError):
        EnclaveStreamSession.accept(KEYS[X], malformed, replay_guard=guard, now=SENT_AT)
    assert len(guard) == 0
    EnclaveStreamSession.accept(KEYS[X], wire, replay_guard=guard, now=SENT_AT)
    assert len(guard) == 1
