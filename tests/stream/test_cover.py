"""The optional fixed-cadence cover schedule (pure: time is an argument)."""

from __future__ import annotations

import math
import random

import pytest

from sealing.stream import CoverSchedule, Emit, StreamUsageError
from tests.stream.conftest import make_stream


def test_one_record_per_slot_token_first() -> None:
    s = CoverSchedule(0.05, start=100.0)
    assert s.poll(100.0, token_ready=False) is Emit.COVER
    assert s.poll(100.01, token_ready=True) is Emit.WAIT
    assert s.next_slot_at() == pytest.approx(100.05)
    assert s.poll(100.05, token_ready=True) is Emit.TOKEN
    assert s.missed_slots == 0


def test_missed_slots_are_skipped_not_burst() -> None:
    s = CoverSchedule(0.1, start=0.0)
    assert s.poll(0.0, token_ready=False) is Emit.COVER
    assert s.poll(0.55, token_ready=False) is Emit.COVER
    assert s.poll(0.56, token_ready=True) is Emit.WAIT  # no catch-up burst
    assert s.missed_slots == 4
    assert s.next_slot_at() == pytest.approx(0.6)


@pytest.mark.parametrize("interval", [0.0, -1.0, 0.0001, 11.0, math.nan, math.inf])
def test_interval_bounds(interval: float) -> None:
    with pytest.raises(StreamUsageError):
        CoverSchedule(interval, start=0.0)


def test_time_must_not_go_backwards() -> None:
    s = CoverSchedule(0.1, start=5.0)
    s.poll(5.2, token_ready=False)
    with pytest.raises(StreamUsageError):
        s.poll(5.1, token_ready=False)
    with pytest.raises(StreamUsageError):
        s.poll(math.nan, token_ready=False)


def test_relay_visible_times_do_not_depend_on_token_timing() -> None:
    """Simulate a driver polling every ms with tokens arriving at random times: the times at
    which records leave are the slot times, identical for two different token processes."""

    def emission_times(seed: int) -> list[float]:
        rng = random.Random(seed)
        arrivals = sorted(rng.uniform(0, 1.0) for _ in range(12))
        s = CoverSchedule(0.1, start=0.0)
        queued, out = 0, []
        for tick in range(0, 1500):
            now = tick / 1000
            while arrivals and arrivals[0] <= now:
                arrivals.pop(0)
                queued += 1
            emit = s.poll(now, token_ready=queued > 0)
            if emit is not Emit.WAIT:
                out.append(round(now, 6))
                queued -= emit is Emit.TOKEN
        return out

    a, b = emission_times(1), emission_times(2)
    assert a == b and len(a) == 15
    # one record per slot, each at most one polling tick after its slot time
    assert all(0 <= t - k * 0.1 <= 0.0011 for k, t in enumerate(a))


def test_cover_records_look_like_token_records() -> None:
    _, _session, records = make_stream([b"ab", b"c"], covers=frozenset({0, 1}))
    assert len({len(r) for r in records}) == 1
    assert {r[0] for r in records[:-1]} == {0}  # same clear flags byte for cover and token
