"""Both ends of one token stream, as pure state machines (bytes in, bytes or events out).

:class:`EnclaveStreamSession` opens a request inside the enclave and seals tokens into records;
:class:`ClientStream` seals the request from a *verified* key bundle and turns records back into
tokens, refusing any manipulation with one opaque :class:`StreamError`:

* modified record (any byte): AEAD tag fails;
* reordered, dropped or duplicated record: the seq-th nonce does not match, tag fails;
* record spliced from another stream (another request, or the same request replayed to the
  enclave): different response keys, tag fails;
* request replayed to the enclave: :meth:`EnclaveStreamSession.accept` refuses it through the
  enclave's :class:`~sealing.stream.replay.ReplayGuard` before any response exists (and were it
  accepted twice, the two responses would have unrelated keys, as above);
* truncation (the relay stops forwarding): :meth:`ClientStream.finish` sees no final record;
* record after the final one, record before the head: refused by state;
* a flipped final flag: the flag is in the AAD and must agree with the encrypted type.

After the first failure a ``ClientStream`` stays failed: a stream is either intact or refused.
Neither class touches a socket or a clock (times are arguments); the gRPC service and client SDK
drive them.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from attest.errors import ParseError
from sealing.hpke_suite import HpkePrivateKey, Rng
from sealing.stream.bundle import VerifiedKeyBundle
from sealing.stream.errors import StreamError, StreamUsageError
from sealing.stream.replay import ReplayGuard
from sealing.stream.request import (
    DEFAULT_RECORD_SIZE,
    DEFAULT_REQUEST_PAD_BLOCK,
    MAX_RECORD_SIZE,
    MIN_RECORD_SIZE,
    GenerationParams,
    StreamRequest,
    open_request,
    seal_request,
)
from sealing.stream.response import (
    MAX_RECORDS_PER_STREAM,
    RecordOpener,
    RecordSealer,
    RecordType,
    decode_head,
    derive_response_keys,
    encode_head,
    new_response_nonce,
    record_len,
)

#: Longest token (in UTF-8 bytes) a stream carries. Real vocabularies top out below 256 bytes;
#: 4 KiB also admits engines that emit detokenised chunks, and bounds the client's buffer for
#: a token split over many records.
MAX_TOKEN_LEN = 4096


class AbortReason(enum.IntEnum):
    """Well-known abort codes (u16 on the wire). Unknown codes are still delivered as integers."""

    INTERNAL = 1
    OVERLOADED = 2
    CANCELLED = 3
    CONTENT_POLICY = 4
    LIMIT_REACHED = 5


@dataclass(frozen=True)
class Token:
    """One generated token, as the engine's bytes (possibly a partial UTF-8 sequence for
    byte-level vocabularies: the SDK decodes incrementally)."""

    data: bytes


@dataclass(frozen=True)
class StreamEnd:
    """The enclave closed the stream cleanly: every token it generated has arrived."""


@dataclass(frozen=True)
class StreamAborted:
    """The enclave aborted the stream; tokens already delivered are authentic but incomplete."""

    reason: int


Event = Token | StreamEnd | StreamAborted
Outcome = StreamEnd | StreamAborted


def _token_bytes(token: str | bytes) -> bytes:
    return token.encode("utf-8") if isinstance(token, str) else bytes(token)


def _check_max_records(max_records: int) -> int:
    if not 2 <= max_records <= MAX_RECORDS_PER_STREAM:
        raise StreamUsageError(f"max_records must be 2..{MAX_RECORDS_PER_STREAM}")
    return max_records


class EnclaveStreamSession:
    """The enclave side of one stream. Send :attr:`head` first, then the records in order."""

    def __init__(
        self,
        request_secret: bytes,
        enc: bytes,
        response_nonce: bytes,
        record_size: int,
        *,
        max_records: int = MAX_RECORDS_PER_STREAM,
        request: StreamRequest | None = None,
    ) -> None:
        """Low-level constructor from key material (known-answer tests, or an engine that opened
        the request itself). Normal code calls :meth:`accept`."""
        if not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
            raise StreamUsageError(f"record_size must be {MIN_RECORD_SIZE}..{MAX_RECORD_SIZE}")
        self.request = request
        self.head = encode_head(response_nonce)
        self._sealer = RecordSealer(
            derive_response_keys(request_secret, enc, response_nonce), record_size
        )
        self._max = _check_max_records(max_records)
        #: Longest token that goes out as one record: the record capacity, or less when the
        #: largest buckets hold more than a token may be long.
        self._one_record_max = min(self._sealer.capacity, MAX_TOKEN_LEN)
        self._seq = 0
        self._closed = False

    @classmethod
    def accept(
        cls,
        private_key: HpkePrivateKey,
        request: bytes,
        *,
        replay_guard: ReplayGuard,
        now: float,
        rng: Rng = os.urandom,
        max_records: int = MAX_RECORDS_PER_STREAM,
    ) -> EnclaveStreamSession:
        """Open ``request`` with the enclave key, admit it through ``replay_guard`` as of ``now``
        (the enclave's clock, POSIX seconds), and draw a fresh response nonce from ``rng``.

        The guard is required: it is what makes a replayed request yield nothing at all
        (:class:`~sealing.stream.errors.RequestReplayed`, or ``RequestStale`` once outside the
        window), and it records the id only after the request opened, so bytes that do not open
        never enter it. Use one guard per enclave key. The fresh nonce is defence in depth: the
        same request accepted twice (by two guards) gives two unrelated key sets, both derived
        from a secret the relay lacks.
        """
        opened = open_request(private_key, request)
        replay_guard.check_and_record(opened.request_id, opened.sent_at, now)
        return cls(
            opened.request_secret,
            opened.enc,
            new_response_nonce(rng),
            opened.record_size,
            max_records=max_records,
            request=opened,
        )

    @property
    def record_len(self) -> int:
        """Bytes on the wire of every record of this stream."""
        return self._sealer.wire_len

    @property
    def records_sealed(self) -> int:
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    def _next(self, rtype: RecordType, payload: bytes) -> bytes:
        record = self._sealer.seal(self._seq, rtype, payload)
        self._seq += 1
        return record

    def _reserve(self, count: int) -> None:
        if self._closed:
            raise StreamUsageError("stream already closed")
        # One slot stays free so that close() or abort() always succeeds.
        if self._seq + count > self._max - 1:
            raise StreamUsageError("record limit of this stream key reached; abort the stream")

    def seal_token(self, token: str | bytes) -> list[bytes]:
        """Seal one token: one record if it fits the record capacity, else several (all full
        ``TOKEN_PART`` records and a final ``TOKEN_END``), each of the same wire size."""
        data = token if type(token) is bytes else _token_bytes(token)
        n = len(data)
        seq = self._seq
        if 0 < n <= self._one_record_max and seq < self._max - 1 and not self._closed:
            # The common case (one record per token), in one call: the same checks as the
            # general path below (non-empty, open, a slot left besides the final one's) and
            # the same record. It runs once per token with the caches cold.
            record = self._sealer.seal_token_end(seq, data)
            self._seq = seq + 1
            return [record]
        if not 1 <= n <= MAX_TOKEN_LEN:
            raise StreamUsageError(f"a token must be 1..{MAX_TOKEN_LEN} bytes")
        cap = self._sealer.capacity
        count = -(-n // cap)
        self._reserve(count)
        out = [
            self._next(RecordType.TOKEN_PART, data[i : i + cap])
            for i in range(0, (count - 1) * cap, cap)
        ]
        out.append(self._next(RecordType.TOKEN_END, data[(count - 1) * cap :]))
        return out

    def seal_cover(self) -> bytes:
        """A cover record: indistinguishable on the wire from a token record."""
        self._reserve(1)
        return self._next(RecordType.COVER, b"")

    def close(self) -> bytes:
        """The final record of a clean stream."""
        if self._closed:
            raise StreamUsageError("stream already closed")
        self._closed = True
        return self._next(RecordType.END, b"")

    def abort(self, reason_code: int) -> bytes:
        """The final record of an aborted stream, carrying ``reason_code`` (u16)."""
        if self._closed:
            raise StreamUsageError("stream already closed")
        if not 0 <= reason_code <= 0xFFFF:
            raise StreamUsageError("reason_code must fit in 16 bits")
        self._closed = True
        return self._next(RecordType.ABORT, struct.pack(">H", reason_code))


class _State(enum.Enum):
    AWAIT_HEAD = 1
    OPEN = 2
    DONE = 3
    FAILED = 4


class ClientStream:
    """The client side of one stream: holds the request secret, opens the response."""

    def __init__(
        self,
        request_secret: bytes,
        enc: bytes,
        record_size: int,
        *,
        request: bytes = b"",
        sent_at: int = 0,
        max_records: int = MAX_RECORDS_PER_STREAM,
    ) -> None:
        """Low-level constructor from key material (known-answer tests). Normal code calls
        :meth:`start`, which seals the request to a verified bundle."""
        if not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
            raise StreamUsageError(f"record_size must be {MIN_RECORD_SIZE}..{MAX_RECORD_SIZE}")
        #: The request bytes to send to the enclave.
        self.request = request
        #: The send time sealed into :attr:`request` (POSIX seconds; 0 when built from keys).
        self.sent_at = sent_at
        self._secret = request_secret
        self._enc = enc
        self._record_size = record_size
        self._max = _check_max_records(max_records)
        self._opener: RecordOpener | None = None
        self._state = _State.AWAIT_HEAD
        self._seq = 0
        self._partial = bytearray()
        self._outcome: Outcome | None = None

    def __repr__(self) -> str:
        return f"ClientStream(state={self._state.name}, records={self._seq})"

    @classmethod
    def start(
        cls,
        bundle: VerifiedKeyBundle,
        prompt: str,
        *,
        sent_at: int,
        params: GenerationParams | None = None,
        record_size: int = DEFAULT_RECORD_SIZE,
        pad_block: int = DEFAULT_REQUEST_PAD_BLOCK,
        rng: Rng = os.urandom,
        max_records: int = MAX_RECORDS_PER_STREAM,
    ) -> ClientStream:
        """Seal ``prompt`` to the verified enclave key, stamped ``sent_at`` (POSIX seconds of the
        client's clock, which the enclave compares with its own); send :attr:`request`, then
        feed the response head to :meth:`open_head` and each record to :meth:`open_record`."""
        if not isinstance(bundle, VerifiedKeyBundle):
            raise TypeError("ClientStream.start needs a VerifiedKeyBundle (see verify_bundle)")
        sealed = seal_request(
            bundle.public_key,
            prompt,
            sent_at=sent_at,
            params=params,
            record_size=record_size,
            pad_block=pad_block,
            rng=rng,
        )
        return cls(
            sealed.request_secret,
            sealed.enc,
            record_size,
            request=sealed.wire,
            sent_at=sealed.sent_at,
            max_records=max_records,
        )

    @property
    def record_len(self) -> int:
        """The only record size this stream accepts."""
        return record_len(self._record_size)

    def _fail(self) -> StreamError:
        self._state = _State.FAILED
        self._partial.clear()
        return StreamError()

    def open_head(self, head: bytes) -> None:
        """Take the response head (the enclave's response nonce) and derive the response keys."""
        if self._state is not _State.AWAIT_HEAD:
            raise self._fail()
        try:
            nonce = decode_head(head)
        except ParseError:
            raise self._fail() from None
        keys = derive_response_keys(self._secret, self._enc, nonce)
        self._opener = RecordOpener(keys, self._record_size)
        self._state = _State.OPEN

    def open_record(self, record: bytes) -> list[Event]:
        """Open the next record; return the events it completes (at most one).

        Cover records and token parts return ``[]``; a token end returns ``[Token]``; the final
        record returns ``[StreamEnd()]`` or ``[StreamAborted(reason)]``.
        """
        data = self.open_token(record)
        if data is not None:
            return [Token(data)]
        # open_token only opens in the OPEN state, so DONE now means this record was the final.
        if self._state is _State.DONE and self._outcome is not None:
            return [self._outcome]
        return []

    def open_token(self, record: bytes) -> bytes | None:
        """Open the next record, as :meth:`open_record` with the same checks, but return the
        bytes of the token it completes, or ``None`` (a cover record, a token part, or the final
        record, whose outcome :meth:`finish` then returns).

        The SDK's per-token path: one call per record and no event objects, because it runs
        between two gRPC reads with the caches cold.
        """
        opener = self._opener
        seq = self._seq
        if self._state is not _State.OPEN or opener is None or seq >= self._max:
            raise self._fail()
        try:
            rtype, payload = opener.open(seq, record)
        except StreamError:
            raise self._fail() from None
        self._seq = seq + 1
        if rtype is RecordType.TOKEN_END and not self._partial and len(payload) <= MAX_TOKEN_LEN:
            # The common case (a token in one record): no copy through the reassembly buffer.
            # (A record may hold more than MAX_TOKEN_LEN bytes; such a token takes the general
            # path below, which refuses it.)
            return payload
        if rtype is RecordType.TOKEN_PART or rtype is RecordType.TOKEN_END:
            if len(self._partial) + len(payload) > MAX_TOKEN_LEN:
                raise self._fail()
            self._partial += payload
            if rtype is RecordType.TOKEN_PART:
                return None
            token = bytes(self._partial)
            self._partial.clear()
            return token
        if rtype is RecordType.COVER:
            if self._partial:  # the enclave never interleaves cover inside a token
                raise self._fail()
            return None
        if rtype is RecordType.END:
            if self._partial:  # a clean end cannot cut a token in half
                raise self._fail()
            outcome: Outcome = StreamEnd()
        else:  # ABORT: a partial token is dropped, the abort says the output is incomplete
            self._partial.clear()
            outcome = StreamAborted(struct.unpack(">H", payload)[0])
        self._state = _State.DONE
        self._outcome = outcome
        return None

    def finish(self) -> Outcome:
        """Call when the transport ends. Raises :class:`StreamError` unless a final record
        arrived (truncation) and nothing failed before; returns how the enclave ended."""
        if self._state is not _State.DONE or self._outcome is None:
            raise self._fail()
        return self._outcome
