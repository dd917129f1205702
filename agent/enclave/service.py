"""The enclave's inference service: ``lessee.v1.Enclave`` over ``grpc.aio``, ciphertext only.

``GetKeyBundle`` publishes the attested key bundle (enclave HPKE key, the broker's EAR naming it,
the log proof). ``Generate`` takes one HPKE-sealed request and answers with the response head and
then fixed-size AEAD records (``docs/formats/token-stream.md``): one per token, a final END on a
clean finish, a final ABORT when the engine fails, the stream runs past its time limit, the
record limit is reached or the enclave is overloaded. The relay in front (run by the host owner)
forwards bytes it cannot read.

Why the errors look the way they do. A caller who cannot produce a valid request learns one
thing: *malformed* (``INVALID_ARGUMENT`` naming the clear-header field that is wrong) or *rejected*
(``INVALID_ARGUMENT``, one fixed message for every ciphertext that does not open, so no oracle),
or *stale key* (``FAILED_PRECONDITION``: the key id in the clear header is not ours; the client
should fetch the bundle again). A request that opens is then admitted by the replay guard
(``sealing.stream.replay``), still before any head: a request id accepted before within the
window is *replayed* (``ALREADY_EXISTS``); a request whose authenticated send time is outside the
window is *stale* (``OUT_OF_RANGE``: a clock or a delay, which fixing the clock can cure, unlike
the malformed input of ``INVALID_ARGUMENT``; not ``FAILED_PRECONDITION``, on which the SDK
refetches the bundle); a guard at its bound of live ids refuses new requests
(``RESOURCE_EXHAUSTED``, fail closed). So a replayed request yields no response at all, not even
one the relay cannot read. After the head has gone out, every problem is reported *inside* the
encrypted stream as an ABORT record, which the relay can neither forge nor tell apart from a
clean end. Nothing the service logs or returns contains a prompt, a token, or key material:
log lines carry counts, durations and outcome names only (a replay refusal is logged by its
kind, without the request id).

Cancellation: when the client disconnects or its deadline passes, ``grpc.aio`` cancels the
handler; the engine's iterator is then closed (``aclose``) so the engine stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AioHealthServicer
from grpc_reflection.v1alpha import reflection

from agent.enclave.generator import TokenGenerator
from agent.rpc.v1 import enclave_pb2, evidence_pb2
from attest.errors import InputError, ParseError, VerificationError
from sealing.hpke_suite import AEAD_TAG_LEN, SUITE_PARAMS, HpkePrivateKey, Rng
from sealing.stream import (
    MAX_TOKEN_LEN,
    AbortReason,
    CoverSchedule,
    Emit,
    EnclaveStreamSession,
    GenerationParams,
    KeyBundle,
    ReplayCacheFull,
    ReplayGuard,
    RequestReplayed,
    RequestStale,
    StreamError,
    StreamUsageError,
)
from sealing.stream.bundle import MAX_BUNDLE_LEN
from sealing.stream.replay import DEFAULT_MAX_REPLAY_ENTRIES, DEFAULT_REPLAY_WINDOW_S
from sealing.stream.request import HEADER_LEN, MAX_RECORD_SIZE, MAX_REQUEST_PLAINTEXT
from sealing.stream.response import record_len

__all__ = [
    "ENCLAVE_SERVICE",
    "MAX_GENERATE_REQUEST_MESSAGE",
    "MAX_RESPONSE_MESSAGE",
    "EnclaveConfig",
    "EnclaveServer",
    "EnclaveService",
    "StreamOutcome",
    "serve_enclave",
]

#: The service's logger (counts, durations, outcome names and refusals; never a secret).
ENCLAVE_LOGGER = "lessee.enclave"
_log = logging.getLogger(ENCLAVE_LOGGER)

#: Full name of the gRPC service (checked against the generated descriptor at import time).
ENCLAVE_SERVICE = "lessee.v1.Enclave"
GET_KEY_BUNDLE_METHOD = f"/{ENCLAVE_SERVICE}/GetKeyBundle"
GENERATE_METHOD = f"/{ENCLAVE_SERVICE}/Generate"
if enclave_pb2.DESCRIPTOR.services_by_name["Enclave"].full_name != ENCLAVE_SERVICE:
    raise ImportError("generated enclave service name drifted from ENCLAVE_SERVICE")

#: Slack for protobuf framing around the one bytes field of a message (tag + varint length).
_PROTO_SLACK = 16
#: Largest ``GenerateRequest``: the biggest valid sealed request (X-Wing ``enc``, 1 MiB of padded
#: plaintext, the tag, the clear header) plus framing. gRPC refuses anything larger with
#: RESOURCE_EXHAUSTED before a byte of it reaches the handler.
MAX_GENERATE_REQUEST_MESSAGE = (
    HEADER_LEN
    + max(p.enc_len for p in SUITE_PARAMS.values())
    + MAX_REQUEST_PLAINTEXT
    + AEAD_TAG_LEN
    + _PROTO_SLACK
)
#: Room for the structured ``LogProof`` next to the bundle in ``KeyBundle``: 64 hashes of 32
#: bytes (RFC 9162 proofs for trees below 2^64) plus a signed checkpoint note (< 8 KiB).
_LOG_PROOF_MESSAGE_MAX = 16 * 1024
#: Largest message either side sends or accepts from the other: the key bundle with its proof, or
#: one record of the largest bucket, whichever is bigger.
MAX_RESPONSE_MESSAGE = (
    max(MAX_BUNDLE_LEN + _LOG_PROOF_MESSAGE_MAX, record_len(MAX_RECORD_SIZE)) + _PROTO_SLACK
)

#: Concurrent streams one enclave serves by default. An 8-GPU engine batches a few hundred
#: sequences; beyond the configured bound a request gets an authenticated OVERLOADED abort.
DEFAULT_MAX_CONCURRENT_STREAMS = 256
#: Hard bound on ``max_concurrent_streams`` (each stream holds a task and a queue).
MAX_CONCURRENT_STREAMS = 4096
#: Default wall-clock bound of one stream. 2^20 tokens at a realistic 50 tokens/s would take
#: hours; ten minutes covers long answers, and a stream that exceeds it ends with an
#: authenticated LIMIT_REACHED abort instead of holding the enclave's resources forever.
DEFAULT_MAX_STREAM_SECONDS = 600.0
#: Hard bound on ``max_stream_seconds``: one day.
MAX_STREAM_SECONDS = 86_400.0
#: Tokens the cover mode buffers ahead of the cadence. When the engine is faster than the
#: cadence the queue fills and the engine is paused (back-pressure) instead of buffering
#: without bound.
COVER_BACKLOG = 1024
#: Seconds a stream may stay open past ``max_stream_seconds`` so its last records (the ABORT
#: among them) can drain to a slow reader. A client that reads nothing for this long has stalled
#: the writes under HTTP/2 flow control; its RPC is then cancelled, freeing the stream slot.
#: Without it, ``max_concurrent_streams`` clients that stop reading hold every slot forever
#: (measured: a stream with a 2 s limit was still held after 9 s; docs/security.md).
DEFAULT_STALLED_WRITE_GRACE_S = 10.0
#: Hard bound on ``stalled_write_grace_s``.
MAX_STALLED_WRITE_GRACE_S = 600.0
#: Default age (seconds) at which a client connection is told to go away (HTTP/2 GOAWAY): new
#: calls then take a new connection, and the calls still open on the old one are cut off once
#: the grace below has passed. It bounds how long any call can hold one of the server's RPC
#: slots -- a call whose request never arrives, a GetKeyBundle reader that stops reading --,
#: which nothing else does: such calls once held every slot for as long as their connection
#: lived (the broker's server does the same, ``agent.rpc.server``).
DEFAULT_MAX_CONNECTION_AGE_S = 60.0
#: Hard bound on ``max_connection_age_s``: one day.
MAX_CONNECTION_AGE_S = 86_400.0
#: Added to a stream's own time limit and drain grace to make the connection-age grace, so a
#: stream started just before GOAWAY always ends (or is cut off by its own hard stop) first.
CONNECTION_GRACE_MARGIN_S = 1.0
#: Seconds ``EnclaveServer.stop`` waits for running streams before cancelling them.
DEFAULT_STOP_GRACE_S = 5.0


class StreamOutcome(enum.Enum):
    """How a stream ended, for logs and monitoring (never sent in the clear)."""

    CLOSED = "closed"
    ENGINE_ERROR = "engine_error"
    TIME_LIMIT = "time_limit"
    RECORD_LIMIT = "record_limit"
    OVERLOADED = "overloaded"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class EnclaveConfig:
    """Service settings. ``cover_interval`` (seconds) turns on fixed-cadence timing cover; it is
    off by default because it adds up to one interval of latency per token and caps throughput
    at one record per interval (``docs/streams.md``).

    ``replay_window_s``: a request is accepted only while its send time is within this many
    seconds of the enclave's clock, either side; ``replay_max_entries``: the replay guard's bound
    of live request ids, past which new requests are refused (``sealing.stream.replay``).

    ``max_connection_age_s``: connections are told to go away at this age and closed once the
    streams running on them could have run their course (``connection_grace_s``), which bounds
    how long any call can hold a server slot."""

    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS
    cover_interval: float | None = None
    stalled_write_grace_s: float = DEFAULT_STALLED_WRITE_GRACE_S
    replay_window_s: int = DEFAULT_REPLAY_WINDOW_S
    replay_max_entries: int = DEFAULT_MAX_REPLAY_ENTRIES
    max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrent_streams <= MAX_CONCURRENT_STREAMS:
            raise InputError(f"max_concurrent_streams must be 1..{MAX_CONCURRENT_STREAMS}")
        if not 0 < self.max_stream_seconds <= MAX_STREAM_SECONDS:
            raise InputError(f"max_stream_seconds must be in (0, {MAX_STREAM_SECONDS}]")
        if not 0 < self.stalled_write_grace_s <= MAX_STALLED_WRITE_GRACE_S:
            raise InputError(f"stalled_write_grace_s must be in (0, {MAX_STALLED_WRITE_GRACE_S}]")
        if not 0 < self.max_connection_age_s <= MAX_CONNECTION_AGE_S:
            raise InputError(f"max_connection_age_s must be in (0, {MAX_CONNECTION_AGE_S}]")
        if self.cover_interval is not None:
            CoverSchedule(self.cover_interval, 0.0)  # validates the interval bounds
        self.replay_guard()  # validates the window and the bound

    @property
    def connection_grace_s(self) -> float:
        """How long calls may still run on a connection told to go away: a stream's time limit,
        its drain grace and a margin, so honest streams are never cut off by the age."""
        return self.max_stream_seconds + self.stalled_write_grace_s + CONNECTION_GRACE_MARGIN_S

    def replay_guard(self) -> ReplayGuard:
        """A new, empty replay guard with these settings."""
        return ReplayGuard(window_seconds=self.replay_window_s, max_entries=self.replay_max_entries)


@dataclass
class ServiceStats:
    """Counters for monitoring; none of them depends on content."""

    requests: int = 0
    malformed: int = 0
    rejected: int = 0
    stale_key: int = 0
    replayed: int = 0
    stale_time: int = 0
    replay_cache_full: int = 0
    active: int = 0
    outcomes: dict[StreamOutcome, int] = field(default_factory=dict)
    records_sent: int = 0


_MALFORMED = "malformed request"
_REJECTED = "request rejected"
_STALE_KEY = "request is for another enclave key; fetch the key bundle again"
_REPLAYED = "request already received (replayed); seal a new request"
_STALE_TIME = "request time outside the enclave's window; check the client's clock"
_REPLAY_CACHE_FULL = "enclave busy (replay cache full); retry later"
_INTERNAL = "internal error"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# Sentinels the cover-mode producer puts on its queue after the last token.
_END = object()
_FAIL = object()


def _pieces(piece: str | bytes) -> list[bytes]:
    """One engine piece as token payloads: UTF-8 bytes, split at MAX_TOKEN_LEN (the client's
    incremental decoder rejoins a character split across the cut); empty pieces vanish.

    Anything but text or bytes is a ``TypeError`` (``bytes(5)`` would silently be five zero
    bytes); the callers treat it, like a ``UnicodeEncodeError``, as the engine failing."""
    if isinstance(piece, str):
        data = piece.encode("utf-8")
    elif isinstance(piece, bytes | bytearray | memoryview):
        data = bytes(piece)
    else:
        raise TypeError("an engine must yield str or bytes pieces")
    if len(data) <= MAX_TOKEN_LEN:
        return [data] if data else []
    return [data[i : i + MAX_TOKEN_LEN] for i in range(0, len(data), MAX_TOKEN_LEN)]


class _EngineDeadline:
    """One timer per stream (not one per token, as ``asyncio.timeout`` around each ``anext``
    would cost): when it fires while the handler awaits the engine (:attr:`waiting`), the task
    is cancelled and the handler's ``except CancelledError`` asks :meth:`caused` whether the
    cancel was the deadline's; when it fires while a record is being written, :attr:`expired`
    is seen before the next engine call. An outside cancellation (the client went away) is
    left alone and propagates.
    """

    __slots__ = ("_handle", "_task", "expired", "waiting")

    def __init__(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        #: True while the handler awaits the engine; set inline around the ``await`` in the
        #: per-token loop (a wrapper coroutine would cost an object per token).
        self.waiting = False
        self.expired = False
        self._handle = loop.call_at(loop.time() + seconds, self._fire)

    def _fire(self) -> None:
        self.expired = True
        if self.waiting and self._task is not None:
            self._task.cancel()

    def caused(self) -> bool:
        """Call on a ``CancelledError`` caught while :attr:`waiting`: True (and the cancel is
        consumed) when it was this deadline's, False when it came from outside."""
        return self.expired and self._task is not None and self._task.uncancel() == 0

    def cancel(self) -> None:
        self._handle.cancel()


class _FailedStart:
    """Stands in for an engine whose ``generate()`` raised before returning its iterator: the
    first ``anext`` raises that exception, so the per-token loop's engine-failure handling (an
    authenticated ABORT, a log line with the type only) covers it too, with no extra frame
    per token."""

    __slots__ = ("_exc",)

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def __aiter__(self) -> _FailedStart:
        return self

    async def __anext__(self) -> str | bytes:
        raise self._exc


def _engine_stream(
    generator: TokenGenerator, prompt: str, params: GenerationParams
) -> AsyncIterator[str | bytes]:
    """The engine's iterator for one request; an engine whose ``generate()`` call itself raises
    (say, it validates the prompt first) fails at the first token instead (``_FailedStart``):
    its message may quote the prompt, so it must not reach grpc's default handler, which would
    send it as the call's status, in the clear, through the relay."""
    try:
        return generator.generate(prompt, params)
    except Exception as exc:
        return _FailedStart(exc)


@contextlib.asynccontextmanager
async def _closing(
    it: AsyncIterator[str | bytes],
) -> AsyncGenerator[AsyncIterator[str | bytes], None]:
    """Close an engine's iterator however the stream ends, so a cancelled stream also stops the
    engine (an async generator has ``aclose``; a bare async iterator may not). An engine that
    fails while closing is logged by type only (its message may quote the prompt) and the
    stream's outcome stands: every record sent was already sealed and counted."""
    try:
        yield it
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception as exc:
                _log.warning("engine failed while closing: %s", type(exc).__name__)


class EnclaveService:
    """Holds the enclave private key, the encoded key bundle and the engine; serves both RPCs.

    The private key never leaves this object: it is used only by ``EnclaveStreamSession.accept``.
    ``clock`` is the enclave's wall clock, which the replay guard compares each request's send
    time with. The guard is new and empty (from ``config``) unless ``replay_guard`` is given: a
    guard shared by every service of the same key, since a request id must be accepted once per
    key, not once per service.
    """

    def __init__(
        self,
        private_key: HpkePrivateKey,
        bundle: KeyBundle,
        generator: TokenGenerator,
        *,
        config: EnclaveConfig | None = None,
        log_proof: evidence_pb2.LogProof | None = None,
        rng: Rng = os.urandom,
        clock: Callable[[], datetime] = _utcnow,
        replay_guard: ReplayGuard | None = None,
    ) -> None:
        if bundle.public_key.encode() != private_key.public_key.encode():
            # Serving a bundle for another key would make every client seal to a key we lack.
            raise InputError("the key bundle attests another key than this enclave's")
        self._key = private_key
        self._bundle_message = enclave_pb2.KeyBundle(bundle=bundle.raw, log_proof=log_proof)
        self._generator = generator
        self.config = config or EnclaveConfig()
        self._rng = rng
        self._clock = clock
        self.replay_guard = replay_guard if replay_guard is not None else self.config.replay_guard()
        self.stats = ServiceStats()

    # -- RPC: GetKeyBundle -------------------------------------------------------------------

    async def get_key_bundle(
        self,
        request: enclave_pb2.GetKeyBundleRequest,
        context: grpc.aio.ServicerContext[enclave_pb2.GetKeyBundleRequest, enclave_pb2.KeyBundle],
    ) -> enclave_pb2.KeyBundle:
        """The bundle exactly as built (its bytes are what the EAR's key claim was checked on)."""
        return self._bundle_message

    # -- RPC: Generate -----------------------------------------------------------------------

    async def generate(
        self,
        request: enclave_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[enclave_pb2.GenerateRequest, enclave_pb2.StreamRecord],
    ) -> AsyncIterator[enclave_pb2.StreamRecord]:
        """Open the request, send the head, then one record per token and a final record."""
        self.stats.requests += 1
        session = await self._accept(request.sealed_request, context)
        stream_request = session.request
        if stream_request is None:  # accept() always sets it; keeps the type checker honest
            await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL)
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = StreamOutcome.CANCELLED
        # The engine deadline ends a stream with an authenticated ABORT, but only a reader can
        # receive it: a client that stops reading stalls the writes under HTTP/2 flow control,
        # and the handler would wait forever holding its stream slot. The hard stop cancels
        # the RPC once the stream's time and the drain grace have both passed.
        task = asyncio.current_task()
        hard_stop = loop.call_later(
            self.config.max_stream_seconds + self.config.stalled_write_grace_s,
            task.cancel if task is not None else (lambda: None),
        )
        try:
            yield enclave_pb2.StreamRecord(record=session.head)
            if self.stats.active >= self.config.max_concurrent_streams:
                outcome = StreamOutcome.OVERLOADED
                yield self._final(session, outcome)
                self._log_end(outcome, session, started)
                return
            self.stats.active += 1
            try:
                prompt, params = stream_request.prompt, stream_request.params
                if self.config.cover_interval is not None:
                    records = self._cover_records(
                        session, prompt, params, self.config.cover_interval
                    )
                    async with contextlib.aclosing(records) as it:
                        async for item in it:
                            if isinstance(item, StreamOutcome):
                                outcome = item
                                break
                            self.stats.records_sent += 1
                            yield enclave_pb2.StreamRecord(record=item)
                else:
                    # Inlined rather than a nested generator: this loop runs once per token, and
                    # every generator level costs about a microsecond per record.
                    guard = _EngineDeadline(self.config.max_stream_seconds)
                    result = StreamOutcome.CLOSED
                    produced = 0
                    try:
                        async with _closing(
                            _engine_stream(self._generator, prompt, params)
                        ) as engine:
                            while produced < params.max_new_tokens:
                                if guard.expired:
                                    result = StreamOutcome.TIME_LIMIT
                                    break
                                guard.waiting = True
                                try:
                                    # The piece is encoded here, inside the engine's error
                                    # handling: a piece that cannot be encoded (a str with a
                                    # lone surrogate, a non-text object) is the engine failing,
                                    # so an authenticated ABORT, not a stream cut that the
                                    # client must blame on the relay, and no log line quoting
                                    # the piece (UnicodeEncodeError's message holds characters).
                                    tokens = _pieces(await anext(engine))
                                except StopAsyncIteration:
                                    break
                                except asyncio.CancelledError:
                                    if guard.caused():
                                        result = StreamOutcome.TIME_LIMIT
                                        break
                                    raise
                                except Exception as exc:  # engine failed: abort, log only the type
                                    _log.warning("engine failed: %s", type(exc).__name__)
                                    result = StreamOutcome.ENGINE_ERROR
                                    break
                                finally:
                                    guard.waiting = False
                                produced += 1
                                for token in tokens:
                                    try:
                                        sealed = session.seal_token(token)
                                    except StreamUsageError:
                                        result = StreamOutcome.RECORD_LIMIT
                                        break
                                    self.stats.records_sent += len(sealed)
                                    for record in sealed:
                                        yield enclave_pb2.StreamRecord(record=record)
                                if result is not StreamOutcome.CLOSED:
                                    break
                    finally:
                        guard.cancel()
                    outcome = result
                yield self._final(session, outcome)
            finally:
                self.stats.active -= 1
                self._log_end(outcome, session, started)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            # A bug, not an engine failure (those end in an authenticated ABORT above): the
            # fixed status text, never grpc's default "Unexpected <type>: <message>", which
            # would carry whatever the message quotes through the relay in the clear.
            _log.error("stream failed: internal error %s", type(exc).__name__)
            await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL)
        finally:
            hard_stop.cancel()

    async def _accept(
        self,
        sealed_request: bytes,
        context: grpc.aio.ServicerContext[enclave_pb2.GenerateRequest, enclave_pb2.StreamRecord],
    ) -> EnclaveStreamSession:
        """Open the sealed request and admit it through the replay guard, or end the RPC with a
        status that reveals nothing secret. Nothing has been sent yet: a refused request gets no
        head, so no response of any kind exists for it."""
        try:
            return EnclaveStreamSession.accept(
                self._key,
                sealed_request,
                replay_guard=self.replay_guard,
                now=self._clock().timestamp(),
                rng=self._rng,
            )
        except StreamError:  # ciphertext did not open: one message for every cause
            self.stats.rejected += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _REJECTED)
        except RequestReplayed:  # opened, and accepted once before within the window
            self.stats.replayed += 1
            _log.warning("request refused: replayed")
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, _REPLAYED)
        except RequestStale:  # opened, but its send time is outside the window
            self.stats.stale_time += 1
            _log.info("request refused: send time outside the window")
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, _STALE_TIME)
        except ReplayCacheFull:  # fail closed rather than forget a live id
            self.stats.replay_cache_full += 1
            _log.warning("request refused: replay cache full (%d ids)", len(self.replay_guard))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _REPLAY_CACHE_FULL)
        except ParseError as exc:  # clear header, or a plaintext that breaks the format
            self.stats.malformed += 1
            where = f" ({exc.field})" if exc.field else ""
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _MALFORMED + where)
        except VerificationError:  # unknown_key: the key id in the clear header is not ours
            self.stats.stale_key += 1
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, _STALE_KEY)
        except InputError:
            self.stats.malformed += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _MALFORMED)
        except Exception as exc:  # a bug: the fixed text, not grpc's default (see generate)
            _log.error("request failed: internal error %s", type(exc).__name__)
            await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL)

    def _final(
        self, session: EnclaveStreamSession, outcome: StreamOutcome
    ) -> enclave_pb2.StreamRecord:
        self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
        self.stats.records_sent += 1
        if outcome is StreamOutcome.CLOSED:
            return enclave_pb2.StreamRecord(record=session.close())
        reason = {
            StreamOutcome.ENGINE_ERROR: AbortReason.INTERNAL,
            StreamOutcome.TIME_LIMIT: AbortReason.LIMIT_REACHED,
            StreamOutcome.RECORD_LIMIT: AbortReason.LIMIT_REACHED,
            StreamOutcome.OVERLOADED: AbortReason.OVERLOADED,
        }.get(outcome, AbortReason.INTERNAL)
        return enclave_pb2.StreamRecord(record=session.abort(reason))

    def _log_end(
        self, outcome: StreamOutcome, session: EnclaveStreamSession, started: float
    ) -> None:
        if outcome is StreamOutcome.CANCELLED:
            self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
        _log.info(
            "stream ended: outcome=%s records=%d duration_ms=%d",
            outcome.value,
            session.records_sealed,
            int((asyncio.get_running_loop().time() - started) * 1000),
        )

    async def _cover_records(
        self,
        session: EnclaveStreamSession,
        prompt: str,
        params: GenerationParams,
        interval: float,
    ) -> AsyncGenerator[bytes | StreamOutcome, None]:
        """One record per slot of a fixed cadence: the next token record when one is queued,
        a cover record otherwise; the final record in the first slot after the engine is done.

        Records are sealed at send time, so sequence numbers follow the send order; the records
        of one multi-record token go out in consecutive slots with no cover between them (the
        client refuses cover inside a token).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | object] = asyncio.Queue(maxsize=COVER_BACKLOG)
        producer = asyncio.create_task(self._produce(prompt, params, queue))
        deadline = loop.time() + self.config.max_stream_seconds
        schedule = CoverSchedule(interval, loop.time())
        pending: list[bytes] = []  # remaining records of the token being sent
        final: StreamOutcome | None = None
        try:
            while True:
                now = loop.time()
                # Not while a token's records are half sent: they were sealed already, and the
                # abort must follow them in sequence (they go out in the next few slots).
                if now >= deadline and not pending:
                    yield StreamOutcome.TIME_LIMIT
                    return
                wait = schedule.next_slot_at() - now
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if not pending and final is None and not queue.empty():
                    item = queue.get_nowait()
                    if item is _END:
                        final = StreamOutcome.CLOSED
                    elif item is _FAIL:
                        final = StreamOutcome.ENGINE_ERROR
                    elif isinstance(item, bytes):
                        try:
                            pending = session.seal_token(item)
                        except StreamUsageError:
                            final = StreamOutcome.RECORD_LIMIT
                emit = schedule.poll(loop.time(), token_ready=bool(pending) or final is not None)
                if emit is Emit.WAIT:
                    continue
                if emit is Emit.TOKEN and pending:
                    yield pending.pop(0)
                elif emit is Emit.TOKEN and final is not None:
                    yield final
                    return
                else:
                    try:
                        cover = session.seal_cover()
                    except StreamUsageError:
                        yield StreamOutcome.RECORD_LIMIT
                        return
                    yield cover
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _produce(
        self, prompt: str, params: GenerationParams, queue: asyncio.Queue[bytes | object]
    ) -> None:
        """Cover mode's engine driver: token payloads onto the bounded queue, then a sentinel."""
        produced = 0
        try:
            async with _closing(_engine_stream(self._generator, prompt, params)) as engine:
                async for piece in engine:
                    for data in _pieces(piece):
                        await queue.put(data)
                    produced += 1
                    if produced >= params.max_new_tokens:
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.warning("engine failed: %s", type(exc).__name__)
            await queue.put(_FAIL)
            return
        await queue.put(_END)


def _handlers(service: EnclaveService) -> grpc.GenericRpcHandler[Any, Any]:
    """The typed method handlers of ``lessee.v1.Enclave`` (the generated registration helper is
    untyped; building the handlers here keeps the service edge checked by mypy)."""
    get_key_bundle: Callable[..., Awaitable[enclave_pb2.KeyBundle]] = service.get_key_bundle
    return grpc.method_handlers_generic_handler(
        ENCLAVE_SERVICE,
        {
            "GetKeyBundle": grpc.unary_unary_rpc_method_handler(
                get_key_bundle,
                request_deserializer=enclave_pb2.GetKeyBundleRequest.FromString,
                response_serializer=enclave_pb2.KeyBundle.SerializeToString,
            ),
            "Generate": grpc.unary_stream_rpc_method_handler(
                service.generate,
                request_deserializer=enclave_pb2.GenerateRequest.FromString,
                response_serializer=enclave_pb2.StreamRecord.SerializeToString,
            ),
        },
    )


@dataclass
class EnclaveServer:
    """A started server: where it listens, and how to stop it."""

    server: grpc.aio.Server
    port: int
    address: str
    health: AioHealthServicer
    service: EnclaveService

    @property
    def target(self) -> str:
        """``host:port`` for clients (IPv6 hosts in brackets, as gRPC targets need)."""
        host = self.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = DEFAULT_STOP_GRACE_S) -> None:
        """Report NOT_SERVING, let running streams finish for ``grace`` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def server_options(config: EnclaveConfig | None = None) -> list[tuple[str, int]]:
    """Channel arguments of the enclave server: the message-size bounds above; no port sharing
    (grpc sets ``SO_REUSEPORT`` by default on Linux): a second enclave started on the same port
    would silently take half the connections, with another key and its own replay guard; it
    must fail to bind instead, as the broker does; and the connection age and its grace from
    ``config`` (``EnclaveConfig.max_connection_age_s``)."""
    config = config or EnclaveConfig()
    return [
        ("grpc.max_receive_message_length", MAX_GENERATE_REQUEST_MESSAGE),
        ("grpc.max_send_message_length", MAX_RESPONSE_MESSAGE),
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(config.connection_grace_s * 1000)),
    ]


async def serve_enclave(
    service: EnclaveService,
    *,
    address: str = "127.0.0.1:0",
    server_cert_chain: bytes | None = None,
    server_private_key: bytes | None = None,
) -> EnclaveServer:
    """Start a ``grpc.aio`` server with the enclave service, gRPC health checking and reflection.

    ``address`` defaults to loopback on a free port: the service is meant to sit behind the
    host's relay, and binding to every interface should be a deliberate choice. TLS (PEM
    ``server_cert_chain`` and ``server_private_key``, both or neither) protects the metadata
    and the bundle fetch in transit; the prompts and tokens are end-to-end encrypted either way.
    """
    if (server_cert_chain is None) != (server_private_key is None):
        raise InputError("TLS needs both the server certificate chain and its private key")
    server = grpc.aio.server(
        options=server_options(service.config),
        maximum_concurrent_rpcs=2 * service.config.max_concurrent_streams + 16,
    )
    server.add_generic_rpc_handlers((_handlers(service),))
    health_servicer = AioHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            ENCLAVE_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        if server_cert_chain is not None and server_private_key is not None:
            creds = grpc.ssl_server_credentials([(server_private_key, server_cert_chain)])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind to address ...": bad input, not a crash
        raise InputError(
            f"cannot listen on {address}: not host:port, in use, not an address of this "
            "machine, not permitted"
            + (", or the TLS certificate and key were refused" if server_cert_chain else "")
        ) from None
    if port == 0:
        raise InputError(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set(ENCLAVE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return EnclaveServer(server, port, address, health_servicer, service)
