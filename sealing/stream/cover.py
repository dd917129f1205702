"""Optional timing cover: a fixed cadence of records, with cover records when no token is ready.

Without cover, the relay sees one record (or a few, for a long token) the moment each token is
generated: the inter-record times are the engine's per-token latencies, which leak load, model
size, speculative-decoding hits, and (through a record burst) long tokens. With a cadence of one
record every ``interval`` seconds, the relay sees a metronome until the final record: it learns
only the total duration, i.e. the number of slots.

The trade-off, which is why this is off by default:

* latency: a token waits up to one ``interval`` for its slot;
* throughput: at most ``1 / interval`` records per second, so ``interval`` must be below the
  engine's per-token time or the stream falls behind (the queue grows, and the end of the stream
  is delayed, not revealed);
* bandwidth and enclave CPU: cover records cost the same as token records;
* residual leakage: the stream's length in slots still bounds the number of tokens, and a stall
  longer than the queue can hide shows as a late final record.

This module is pure: the caller passes ``now`` (seconds on any monotonic clock) and emits what
:meth:`CoverSchedule.poll` says; the enclave's gRPC handler owns the clock and the sleeping.
"""

from __future__ import annotations

import enum
import math

from sealing.stream.errors import StreamUsageError

#: Shortest cadence accepted: below 1 ms the schedule is driven by event-loop jitter, not by the
#: interval, and the cover cost (one AEAD record per slot) dominates the enclave's CPU.
MIN_COVER_INTERVAL = 0.001
#: Longest cadence accepted: beyond 10 s per record a stream is unusable interactively.
MAX_COVER_INTERVAL = 10.0


class Emit(enum.Enum):
    """What to send in this slot."""

    WAIT = enum.auto()  # not yet a slot: sleep until next_slot_at()
    TOKEN = enum.auto()  # send the next queued token record
    COVER = enum.auto()  # no token ready: send a cover record


class CoverSchedule:
    """Slots at ``start + k * interval``; one record per slot.

    Missed slots (the driver woke late) are skipped, not made up with a burst: a burst would show
    the stall just as clearly and cost records. :attr:`missed_slots` counts them for monitoring.
    """

    def __init__(self, interval: float, start: float) -> None:
        if not (math.isfinite(interval) and MIN_COVER_INTERVAL <= interval <= MAX_COVER_INTERVAL):
            raise StreamUsageError(
                f"cover interval must be {MIN_COVER_INTERVAL}..{MAX_COVER_INTERVAL} seconds"
            )
        if not math.isfinite(start):
            raise StreamUsageError("start must be a finite time")
        self.interval = interval
        self.start = start
        self._slot = 0  # index of the next slot not yet used
        self._last_now = start
        self.missed_slots = 0

    def next_slot_at(self) -> float:
        """Time of the next slot that :meth:`poll` will fill."""
        return self.start + self._slot * self.interval

    def poll(self, now: float, *, token_ready: bool) -> Emit:
        """Decide what to send at ``now``: a token record, a cover record, or nothing yet."""
        if not math.isfinite(now) or now < self._last_now:
            raise StreamUsageError("now must be finite and must not go backwards")
        self._last_now = now
        if now < self.next_slot_at():
            return Emit.WAIT
        # max(): float rounding may put `now` a hair below the slot it has reached.
        current = max(self._slot, math.floor((now - self.start) / self.interval))
        self.missed_slots += current - self._slot
        self._slot = current + 1
        return Emit.TOKEN if token_ready else Emit.COVER
