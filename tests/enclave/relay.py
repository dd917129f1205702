"""The TEST RELAY: the host owner's position between client and enclave, made concrete.

Two real components on 127.0.0.1, no mocks:

* :class:`Relay`, a ``grpc.aio`` proxy for ``lessee.v1.Enclave``. It handles raw message bytes
  (no deserialisation on the way through), records every message it receives and every message
  it forwards, and can rewrite what it forwards: the key bundle, the sealed request, or the
  response stream (drop, reorder, duplicate, truncate, modify, splice from another stream, end
  with an error status). It can also replay a recorded request to the enclave on its own.
* :class:`ByteTap`, a TCP forwarder that records every byte in both directions (HTTP/2 frames,
  headers and all): what a passive observer of the relay's network sees.

What the relay may look inside is exactly what the host can parse: the protobuf framing of
``StreamRecord`` (public) to get at record boundaries. It never holds a key.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent.client import channel_options
from agent.enclave.service import ENCLAVE_SERVICE, GENERATE_METHOD, GET_KEY_BUNDLE_METHOD
from agent.enclave.tap import ByteTap
from agent.rpc.v1 import enclave_pb2

__all__ = ["ByteTap", "Exchange", "Relay", "Rewrite"]

#: A rewrite of the response stream: record payloads in (index 0 is the head), payloads out.
Rewrite = Callable[[list[bytes]], list[bytes]]


@dataclass
class Exchange:
    """One proxied RPC: raw request bytes and every response message, as received and as sent."""

    method: str
    request: bytes
    received: list[bytes] = field(default_factory=list)
    forwarded: list[bytes] = field(default_factory=list)
    upstream_status: str = "OK"
    upstream_details: str = ""

    @property
    def received_records(self) -> list[bytes]:
        """The ``StreamRecord.record`` payloads the enclave sent (head first)."""
        return [enclave_pb2.StreamRecord.FromString(m).record for m in self.received]

    @property
    def forwarded_records(self) -> list[bytes]:
        return [enclave_pb2.StreamRecord.FromString(m).record for m in self.forwarded]


class Relay:
    """A recording, manipulating gRPC proxy in front of one enclave."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        #: Rewrites the response stream of the next Generate calls (buffers the whole stream).
        self.rewrite: Rewrite | None = None
        #: After forwarding, end the call with this status instead of OK.
        self.end_status: grpc.StatusCode | None = None
        #: Rewrites the serialized KeyBundle message (one call; then reset) or every call.
        self.bundle_rewrite: Callable[[bytes], bytes] | None = None
        self.bundle_rewrite_once = False
        #: Rewrites the sealed request before it goes to the enclave.
        self.request_rewrite: Callable[[bytes], bytes] | None = None
        #: Replay each Generate request to the enclave once the original's head has arrived
        #: (the original stream is then forwarded on), recorded as a "Replay" exchange.
        self.replay_after_head = False
        #: Send a copy of each Generate request to the enclave (and read its whole answer)
        #: *before* forwarding the original, recorded as a "Replay" exchange.
        self.replay_first = False
        #: Once: send the next Generate request to the enclave as the relay itself (its whole
        #: answer kept, as a "Replay" exchange), forward nothing, and end the client's call
        #: with this status (a forged refusal, e.g. a "stale key" to provoke a second request).
        self.keep_answer_and_refuse: grpc.StatusCode | None = None
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def generate_exchanges(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "Generate"]

    def replay_exchanges(self) -> list[Exchange]:
        """The relay's own copies of requests (``replay_after_head``, ``replay_first``,
        :meth:`replay_exchange`): what the enclave answered each."""
        return [e for e in self.exchanges if e.method == "Replay"]

    def all_bytes(self) -> bytes:
        """Every byte the relay received or forwarded, concatenated."""
        parts: list[bytes] = []
        for e in self.exchanges:
            parts += [e.request, *e.received, *e.forwarded]
        return b"".join(parts)

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.upstream, options=channel_options())
        self._server = grpc.aio.server(options=channel_options())
        handler = grpc.method_handlers_generic_handler(
            ENCLAVE_SERVICE,
            {
                "GetKeyBundle": grpc.unary_unary_rpc_method_handler(self._get_key_bundle),
                "Generate": grpc.unary_stream_rpc_method_handler(self._generate),
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
        if self._channel is not None:
            await self._channel.close(None)

    def _upstream_stream(self, request: bytes) -> Any:
        assert self._channel is not None
        return self._channel.unary_stream(GENERATE_METHOD)(request)

    async def _get_key_bundle(self, request: bytes, context: Any) -> bytes:
        assert self._channel is not None
        exchange = Exchange("GetKeyBundle", request)
        self.exchanges.append(exchange)
        try:
            reply: bytes = await self._channel.unary_unary(GET_KEY_BUNDLE_METHOD)(request)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        exchange.received.append(reply)
        if self.bundle_rewrite is not None:
            reply = self.bundle_rewrite(reply)
            if self.bundle_rewrite_once:
                self.bundle_rewrite = None
        exchange.forwarded.append(reply)
        return reply

    async def _generate(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        exchange = Exchange("Generate", request)
        self.exchanges.append(exchange)
        if self.keep_answer_and_refuse is not None:
            status, self.keep_answer_and_refuse = self.keep_answer_and_refuse, None
            await self.replay_exchange(request)
            await context.abort(status, "relay says: stale key")
        if self.request_rewrite is not None:
            msg = enclave_pb2.GenerateRequest.FromString(request)
            request = enclave_pb2.GenerateRequest(
                sealed_request=self.request_rewrite(msg.sealed_request)
            ).SerializeToString()
        if self.replay_first:
            await self.replay_exchange(request)
        call = self._upstream_stream(request)
        # A proxy ends the upstream call when its own call ends, however it ends: on a loaded
        # machine grpc.aio could cancel this handler while it was suspended outside this
        # generator, so neither a CancelledError here nor the generator's finalisation was
        # certain to reach the upstream call, and the enclave kept generating for nobody.
        context.add_done_callback(lambda _: call.cancel())
        rewrite, end_status = self.rewrite, self.end_status
        replay_after_head = self.replay_after_head
        try:
            if rewrite is None:
                async for message in call:
                    exchange.received.append(message)
                    exchange.forwarded.append(message)
                    if replay_after_head and len(exchange.received) == 1:
                        await self.replay_exchange(request)
                    yield message
            else:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for message in call:
                        exchange.received.append(message)
                for payload in rewrite(exchange.received_records):
                    message = enclave_pb2.StreamRecord(record=payload).SerializeToString()
                    exchange.forwarded.append(message)
                    yield message
        except grpc.aio.AioRpcError as exc:
            exchange.upstream_status = exc.code().name
            await context.abort(exc.code(), exc.details() or "")
        if end_status is not None:
            await context.abort(end_status, "relay cut the stream")

    async def replay_exchange(self, request: bytes) -> Exchange:
        """Send raw request bytes to the enclave as the relay itself and record the answer (its
        messages and final status) as a "Replay" exchange; never raises for a status."""
        exchange = Exchange("Replay", request)
        self.exchanges.append(exchange)
        try:
            async for message in self._upstream_stream(request):
                exchange.received.append(message)
        except grpc.aio.AioRpcError as exc:
            exchange.upstream_status = exc.code().name
            exchange.upstream_details = exc.details() or ""
        return exchange
