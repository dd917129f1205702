"""The enclave's replay guard: one request id is accepted at most once.

Without it a relay that replays a request gets further valid responses: it cannot read them,
but with sampling it could pick which one of several different answers to deliver by their
record count and timing. The guard closes that with the pattern of TLS 1.3 0-RTT anti-replay
(RFC 8446 section 8) and OHTTP's date-based anti-replay (RFC 9458 section 6.5):

* the request carries the client's clock, ``sent_at`` (POSIX seconds), inside the ciphertext;
* the enclave accepts a request only while ``|now - sent_at| <= window`` (both sides, default
  120 s), and refuses it as :class:`~sealing.stream.errors.RequestStale` otherwise;
* within the window it remembers the id of every request it accepted (SHA-256 of the request's
  HPKE ``enc``, :func:`~sealing.stream.request.request_id`) and refuses the same id again as
  :class:`~sealing.stream.errors.RequestReplayed`.

An id is forgotten once its request can no longer pass the time check (``now > sent_at +
window``), so a replay is refused either as a repeat or as stale, never accepted. Ids are
recorded only for requests that opened, so nobody without the enclave's public key and a valid
seal can put an id in the cache (a relay's garbage never gets that far); anyone *with* the
public key (it is public) can fill it with valid requests, which is why it has a hard bound:
at ``max_entries`` live ids it refuses new requests (:class:`~sealing.stream.errors.
ReplayCacheFull`, fail closed) rather than evict an id that could still be replayed. That trades
availability, which the host controls anyway, for the guarantee.

Why an in-memory cache suffices: the enclave's HPKE key pair is made in the serving process and
never leaves it. ``EnclaveAgent.start_session`` (``agent/agent.py``) calls ``generate_keypair``
for each attestation session, and ``lessee agent --serve`` serves exactly that session's key
(``Session.enclave_key``, ``agent/cli/agent.py``); nothing writes it out. After a restart the
enclave has a new key and a new bundle, and a request sealed to the old key fails before the
guard (``unknown_key``, the service's ``FAILED_PRECONDITION``): it cannot be opened at all. So
the guard needs to remember ids only while the key lives, which is this process. An embedding
that keeps one key across processes, or serves one key from several services, must share one
guard among them (``EnclaveService(replay_guard=...)``) or persist it.

Time: ``now`` is passed in (the enclave's wall clock, POSIX seconds), and the guard never lets
it run backwards: it judges every request against the latest ``now`` it was given. An enclave's
wall clock is set by a host it does not trust; a host that moves it backwards would otherwise
re-open the window for ids already forgotten. Moving it forwards only makes honest requests look
stale (denial of service, which the host can cause anyway).

Cost: a set of 32-byte ids and one bucket per expiry second (at most ``2 * window + 1``
buckets), purged lazily as the clock advances; amortised O(1) per request. Not thread-safe: the
service calls it from its one event loop, synchronously, so check and record are one step.
"""

from __future__ import annotations

import math

from attest.errors import InputError
from sealing.stream.errors import (
    ReplayCacheFull,
    RequestReplayed,
    RequestStale,
    StaleDirection,
    StreamUsageError,
)
from sealing.stream.request import REQUEST_ID_LEN

__all__ = [
    "DEFAULT_MAX_REPLAY_ENTRIES",
    "DEFAULT_REPLAY_WINDOW_S",
    "MAX_REPLAY_ENTRIES",
    "MAX_REPLAY_WINDOW_S",
    "ReplayGuard",
]

#: Seconds either side of the enclave's clock within which a request's ``sent_at`` is accepted.
#: Two minutes absorbs the skew of NTP-synchronised clocks and the delay of one request through a
#: relay, and bounds how long a relay can hold a request back before it goes stale.
DEFAULT_REPLAY_WINDOW_S = 120
#: Longest window: one hour. A longer one only widens what a relay can hold back, and the memory
#: the ids take.
MAX_REPLAY_WINDOW_S = 3600
#: Live request ids remembered by default: 2^18, about 28 MiB (~110 bytes per id: the 32-byte
#: digest object, its set slot and its bucket slot, measured with tracemalloc). An id lives
#: about one window (until ``sent_at + window``) with synchronised clocks and at most two, so
#: this sustains ~2,000 accepted requests per second (at least ~1,000 with clients at the edge
#: of the window), far above what one enclave's streams serve.
DEFAULT_MAX_REPLAY_ENTRIES = 1 << 18
#: Largest ``max_entries``: 2^22 ids, about 450 MiB.
MAX_REPLAY_ENTRIES = 1 << 22


class ReplayGuard:
    """Remembers the ids of accepted requests for as long as their ``sent_at`` is in the window.

    Call :meth:`check_and_record` once per request that *opened*, before anything is sent back.
    """

    __slots__ = ("_buckets", "_horizon", "_ids", "_latest", "max_entries", "window_seconds")

    def __init__(
        self,
        *,
        window_seconds: int = DEFAULT_REPLAY_WINDOW_S,
        max_entries: int = DEFAULT_MAX_REPLAY_ENTRIES,
    ) -> None:
        for name, value, top in (
            ("window_seconds", window_seconds, MAX_REPLAY_WINDOW_S),
            ("max_entries", max_entries, MAX_REPLAY_ENTRIES),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise InputError(f"{name} must be an integer 1..{top}")
        self.window_seconds = window_seconds
        self.max_entries = max_entries
        #: Live ids (membership is all the check needs).
        self._ids: set[bytes] = set()
        #: Expiry second (``sent_at + window``) -> the ids that expire then.
        self._buckets: dict[int, list[bytes]] = {}
        #: Every bucket of an expiry second below this one has been purged.
        self._horizon: int | None = None
        #: The latest ``now`` seen: the guard's clock, which never runs backwards.
        self._latest = -math.inf

    def __len__(self) -> int:
        """Live ids (those that a replay could still be refused by)."""
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"ReplayGuard(window_seconds={self.window_seconds}, "
            f"max_entries={self.max_entries}, live={len(self._ids)})"
        )

    def check_and_record(self, request_id: bytes, sent_at: int, now: float) -> None:
        """Accept ``request_id`` once, or raise.

        :class:`RequestStale` when ``sent_at`` is more than the window from ``now`` (or from a
        later ``now`` seen before); :class:`RequestReplayed` when the id was accepted within
        the window; :class:`ReplayCacheFull` when ``max_entries`` ids are live. Only an accepted
        id is recorded. ``now`` is POSIX seconds of the enclave's clock.
        """
        if len(request_id) != REQUEST_ID_LEN:
            raise StreamUsageError(f"a request id is {REQUEST_ID_LEN} bytes")
        if not math.isfinite(now):
            raise StreamUsageError("now must be a finite number of POSIX seconds")
        t = self._advance(now)
        window = self.window_seconds
        if sent_at < t - window:
            raise RequestStale(StaleDirection.PAST, window)
        if sent_at > t + window:
            raise RequestStale(StaleDirection.FUTURE, window)
        if request_id in self._ids:
            raise RequestReplayed()
        if len(self._ids) >= self.max_entries:
            raise ReplayCacheFull(self.max_entries)
        # The id must stay while the time check still passes, i.e. while t <= sent_at + window.
        # That is never below the horizon: sent_at >= t - window, so expiry >= t, and expiry is
        # an integer, so expiry >= ceil(t).
        expiry = sent_at + window
        self._ids.add(request_id)
        bucket = self._buckets.get(expiry)
        if bucket is None:
            self._buckets[expiry] = [request_id]
        else:
            bucket.append(request_id)

    def _advance(self, now: float) -> float:
        """Move the guard's clock to ``now`` if that is later, purging what expired; return it."""
        if now > self._latest:
            self._latest = now
            self._purge(math.ceil(now))
        return self._latest

    def _purge(self, horizon: int) -> None:
        """Forget every id whose expiry second is below ``horizon`` (then ``expiry < now``: its
        request fails the time check, so the id is no longer needed)."""
        old = self._horizon
        self._horizon = horizon if old is None else max(old, horizon)
        if old is None or horizon <= old:
            return
        buckets = self._buckets
        if horizon - old <= len(buckets):
            # Walk the seconds passed: as many steps as seconds, at most as many as buckets.
            expired = [second for second in range(old, horizon) if second in buckets]
        else:
            # The clock jumped further than there are buckets: walk the buckets instead.
            expired = [second for second in buckets if second < horizon]
        for second in expired:
            self._ids.difference_update(buckets.pop(second))
