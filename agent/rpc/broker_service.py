"""Thin gRPC servicers over ``Broker`` and ``LogStore``: decode, call, encode, map errors.

Each RPC is a raw-bytes handler built by ``_unary``. Taking the request as bytes (rather than
letting gRPC deserialize it) is deliberate: a message that is not valid protobuf then gets
``INVALID_ARGUMENT`` with a fixed text, where gRPC's own deserializer would answer
``INTERNAL``; and the per-method size bound is checked before any parsing.

Errors are mapped in one table, ``ERROR_STATUS`` (first match wins, most specific first):

=====================================  ======================  ===============================
exception                              status                  why
=====================================  ======================  ===============================
``RequestTooLargeError``               ``RESOURCE_EXHAUSTED``  gRPC's own code for size limits
``OutOfRangeError``                    ``OUT_OF_RANGE``        reading past the log's end
``UnknownModelError``                  ``NOT_FOUND``           no such model registered
``InputError`` / ``ParseError``        ``INVALID_ARGUMENT``    malformed request or evidence
``NonceError``                         ``FAILED_PRECONDITION`` unknown, expired or used nonce
``ReleaseRefusedError`` / ``EarError`` ``PERMISSION_DENIED``   no key for this result
``AdminDeniedError``                   ``PERMISSION_DENIED``   admin call from outside
anything else                          ``INTERNAL``            fixed text; type logged only
=====================================  ======================  ===============================

Messages are the typed errors' own texts, which name fields and limits and never carry key
material (the modules that raise them promise that). The stable ``reason`` code of a
``VerificationError`` goes into the trailing metadata key ``lessee-reason`` for programs.
For ``INTERNAL`` the caller learns nothing but the fixed text; the broker's log records the
exception *type* only, because an exception's text could hold anything.

Deadlines: a call whose deadline has already passed when it reaches the handler is answered
``DEADLINE_EXCEEDED`` before any state changes, in particular before a nonce is consumed.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from agent.broker.service import Broker, ReleaseRefusedError, UnknownModelError
from agent.broker.store import NonceError
from agent.logstore import MAX_ENTRIES_PER_READ, LogStore
from agent.rpc import convert
from agent.rpc.v1 import broker_pb2, log_pb2
from attest.ear import MAX_TOKEN_BYTES, EarError
from attest.errors import InputError, LesseeError, VerificationError
from attest.policy import MAX_POLICY_BYTES

KEY_BROKER_SERVICE = "lessee.v1.KeyBroker"
BROKER_ADMIN_SERVICE = "lessee.v1.BrokerAdmin"
ATTESTATION_LOG_SERVICE = "lessee.v1.AttestationLog"

#: Largest Attest request: the evidence bundle's own limit plus room for the other fields.
MAX_ATTEST_REQUEST_BYTES = 8 * 1024 * 1024 + 64 * 1024
#: A ReleaseKey request is one EAR token and a model id.
MAX_RELEASE_REQUEST_BYTES = MAX_TOKEN_BYTES + 1024
#: A RegisterModel request is a policy document, a 32-byte key and a few ids.
MAX_REGISTER_REQUEST_BYTES = MAX_POLICY_BYTES + 4096
#: Challenge and log reads carry a model id or a few integers.
MAX_SMALL_REQUEST_BYTES = 1024
#: Most entries one GetEntries answer carries (the log store reads at most this many).
MAX_ENTRIES_PER_CALL = MAX_ENTRIES_PER_READ
#: Most entry bytes in one GetEntries answer: keeps answers well under the send limit; a
#: reader pages on with ``start = start + len(entries)``.
MAX_ENTRIES_RESPONSE_BYTES = 4 * 1024 * 1024
#: Text of every INTERNAL answer (nothing about the cause leaves the broker).
INTERNAL_MESSAGE = "internal error in the key broker"
#: Trailing-metadata key carrying a VerificationError's stable reason code.
REASON_METADATA_KEY = "lessee-reason"
#: Longest error text sent to a caller (typed messages are short; this bounds the rest).
MAX_DETAIL_CHARS = 512

log = logging.getLogger("lessee.broker")


class RequestTooLargeError(InputError):
    """A request larger than its method's bound."""


class OutOfRangeError(InputError):
    """A log read past the end of the signed log."""


class AdminDeniedError(LesseeError):
    """An admin call from neither loopback nor a verified client certificate."""


#: Exception type -> status code; first match wins (subclasses before their bases).
ERROR_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (RequestTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (UnknownModelError, grpc.StatusCode.NOT_FOUND),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NonceError, grpc.StatusCode.FAILED_PRECONDITION),
    (ReleaseRefusedError, grpc.StatusCode.PERMISSION_DENIED),
    (EarError, grpc.StatusCode.PERMISSION_DENIED),
    (AdminDeniedError, grpc.StatusCode.PERMISSION_DENIED),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str | None]:
    """(status code, safe message, reason code) for an exception raised by a handler."""
    for cls, code in ERROR_STATUS:
        if isinstance(exc, cls):
            text = " ".join(str(exc).split())[:MAX_DETAIL_CHARS]
            reason = exc.reason if isinstance(exc, VerificationError) else None
            return code, text, reason
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, None


def log_event(event: str, **fields: Any) -> None:
    """One structured log record (rendered as JSON by ``agent.rpc.server.JsonFormatter``)."""
    log.info(event, extra={"lessee": fields})


def peer_is_loopback(peer: str) -> bool:
    """True for a gRPC peer string naming a loopback address: ``ipv4:127.0.0.1:5``, and IPv6
    as gRPC spells it, brackets percent-encoded (``ipv6:%5B::1%5D:5``; also ``ipv6:[::1]:5``),
    including an IPv4-mapped loopback (``::ffff:127.0.0.1``, an IPv4 client of a dual-stack
    listener). Anything else, a Unix socket included, is not."""
    if peer.startswith("ipv4:"):
        host = peer[5:].rsplit(":", 1)[0]
    elif peer.startswith("ipv6:"):
        host = urllib.parse.unquote(peer[5:]).rsplit(":", 1)[0]
        if not (host.startswith("[") and host.endswith("]")):
            return False
        host = host[1:-1]
    else:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def has_verified_client_certificate(context: grpc.ServicerContext) -> bool:
    """True if the TLS handshake verified a client certificate.

    Only the admin port asks for client certificates, and it requires and verifies them
    against the configured client CA; on every other port the auth context has none.
    """
    auth = context.auth_context()
    return bool(auth.get("x509_pem_cert") or auth.get("x509_common_name"))


def default_admin_check(context: grpc.ServicerContext) -> bool:
    return peer_is_loopback(context.peer()) or has_verified_client_certificate(context)


# ---- servicers ----------------------------------------------------------------------------


class KeyBrokerServicer:
    """``lessee.v1.KeyBroker``: the enclave-facing calls."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def Challenge(  # noqa: N802 (gRPC method name)
        self, request: broker_pb2.ChallengeRequest, context: grpc.ServicerContext
    ) -> broker_pb2.ChallengeResponse:
        model = convert.challenge_request_from_proto(request)
        return convert.challenge_to_proto(self._broker.challenge(model))

    def Attest(  # noqa: N802
        self, request: broker_pb2.AttestRequest, context: grpc.ServicerContext
    ) -> broker_pb2.AttestResponse:
        args = convert.attest_request_from_proto(request)
        _check_deadline(context)  # before the nonce is consumed
        outcome = self._broker.attest(
            nonce=args.nonce,
            enclave_public_key=args.enclave_public_key,
            model_id=args.model_id,
            bundle=args.bundle,
        )
        return convert.attest_to_proto(outcome)

    def ReleaseKey(  # noqa: N802
        self, request: broker_pb2.ReleaseKeyRequest, context: grpc.ServicerContext
    ) -> broker_pb2.ReleaseKeyResponse:
        args = convert.release_request_from_proto(request)
        _check_deadline(context)
        return convert.release_to_proto(
            self._broker.release_key(result=args.result, model_id=args.model_id)
        )


class BrokerAdminServicer:
    """``lessee.v1.BrokerAdmin``: allowed from loopback or with a verified client certificate."""

    def __init__(
        self,
        broker: Broker,
        admin_allowed: Callable[[grpc.ServicerContext], bool] = default_admin_check,
    ) -> None:
        self._broker = broker
        self._allowed = admin_allowed

    def RegisterModel(  # noqa: N802
        self, request: broker_pb2.RegisterModelRequest, context: grpc.ServicerContext
    ) -> broker_pb2.RegisterModelResponse:
        if not self._allowed(context):
            raise AdminDeniedError(
                "admin calls are accepted from loopback or with a client certificate only"
            )
        a = convert.register_request_from_proto(request)
        record = self._broker.register_model(
            model_id=a.model_id,
            model_version=a.model_version,
            data_key=a.data_key,
            policy_json=a.policy_json,
            manifest_digest=a.manifest_digest,
        )
        return broker_pb2.RegisterModelResponse(
            key_id=record.key_id, policy_digest=record.policy_digest
        )


class AttestationLogServicer:
    """``lessee.v1.AttestationLog``: the read side of the log, for auditors."""

    def __init__(self, store: LogStore) -> None:
        self._log = store

    def GetCheckpoint(  # noqa: N802
        self, request: log_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> log_pb2.Checkpoint:
        return log_pb2.Checkpoint(note=self._log.latest_checkpoint().decode("utf-8"))

    def GetEntries(  # noqa: N802
        self, request: log_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetEntriesResponse:
        size = self._log.size
        if request.start >= request.end:
            raise InputError("start must be below end")
        if request.start >= size:
            raise OutOfRangeError(f"start {request.start} is at or past the log size {size}")
        end = min(request.end, size, request.start + MAX_ENTRIES_PER_CALL)
        out: list[bytes] = []
        total = 0
        for entry in self._log.entries(request.start, end):
            if out and total + len(entry) > MAX_ENTRIES_RESPONSE_BYTES:
                break  # the caller pages on from start + len(entries)
            out.append(entry)
            total += len(entry)
        return convert.entries_to_proto(out)

    def GetInclusionProof(  # noqa: N802
        self, request: log_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> log_pb2.InclusionProof:
        size = request.tree_size or self._log.size  # 0: the newest signed size
        if size > self._log.size:
            raise OutOfRangeError(f"tree size {size} is past the signed log ({self._log.size})")
        if request.index >= size:
            raise InputError(f"index {request.index} is not below tree size {size}")
        hashes = self._log.inclusion_proof(request.index, size)
        return log_pb2.InclusionProof(index=request.index, tree_size=size, hashes=hashes)

    def GetConsistencyProof(  # noqa: N802
        self, request: log_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> log_pb2.ConsistencyProof:
        second = request.second or self._log.size  # 0: the newest signed size
        if second > self._log.size:
            raise OutOfRangeError(f"size {second} is past the signed log ({self._log.size})")
        if not 0 < request.first <= second:
            raise InputError("need 0 < first <= second")
        hashes = self._log.consistency_proof(request.first, second)
        return log_pb2.ConsistencyProof(first=request.first, second=second, hashes=hashes)


# ---- handlers -----------------------------------------------------------------------------


def _check_deadline(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise _DeadlinePassedError()


class _DeadlinePassedError(Exception):
    """The caller's deadline passed before the handler changed any state."""


@dataclass(frozen=True)
class _Method:
    service: str
    name: str
    request_cls: type[Message]
    limit: int
    impl: Callable[[Any, grpc.ServicerContext], Message]


def _unary(m: _Method) -> grpc.RpcMethodHandler[Any, Any]:
    full = f"/{m.service}/{m.name}"

    def behavior(raw: bytes, context: grpc.ServicerContext) -> bytes:
        start = time.perf_counter()
        code, detail, reason = grpc.StatusCode.OK, "", None
        try:
            if len(raw) > m.limit:
                raise RequestTooLargeError(f"request larger than {m.limit} bytes")
            request = convert.decode(m.request_cls, raw, limit=m.limit)
            response = m.impl(request, context).SerializeToString()
        except _DeadlinePassedError:
            code, detail = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before processing"
        except Exception as exc:  # every failure becomes a status; nothing else escapes
            code, detail, reason = status_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log_event("rpc_internal_error", method=full, exception=type(exc).__name__)
        ms = round((time.perf_counter() - start) * 1000, 2)
        log_event("rpc", method=full, code=code.name, ms=ms, reason=reason)
        if code is grpc.StatusCode.OK:
            return response
        if reason is not None:
            context.set_trailing_metadata(((REASON_METADATA_KEY, reason),))
        context.abort(code, detail)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return grpc.unary_unary_rpc_method_handler(behavior)


def generic_handlers(
    key_broker: KeyBrokerServicer,
    admin: BrokerAdminServicer,
    log_service: AttestationLogServicer,
) -> tuple[grpc.GenericRpcHandler[Any, Any], ...]:
    """The three services as raw-bytes generic handlers (see the module docstring)."""
    methods = [
        _Method(KEY_BROKER_SERVICE, "Challenge", broker_pb2.ChallengeRequest,
                MAX_SMALL_REQUEST_BYTES, key_broker.Challenge),
        _Method(KEY_BROKER_SERVICE, "Attest", broker_pb2.AttestRequest,
                MAX_ATTEST_REQUEST_BYTES, key_broker.Attest),
        _Method(KEY_BROKER_SERVICE, "ReleaseKey", broker_pb2.ReleaseKeyRequest,
                MAX_RELEASE_REQUEST_BYTES, key_broker.ReleaseKey),
        _Method(BROKER_ADMIN_SERVICE, "RegisterModel", broker_pb2.RegisterModelRequest,
                MAX_REGISTER_REQUEST_BYTES, admin.RegisterModel),
        _Method(ATTESTATION_LOG_SERVICE, "GetCheckpoint", log_pb2.GetCheckpointRequest,
                MAX_SMALL_REQUEST_BYTES, log_service.GetCheckpoint),
        _Method(ATTESTATION_LOG_SERVICE, "GetEntries", log_pb2.GetEntriesRequest,
                MAX_SMALL_REQUEST_BYTES, log_service.GetEntries),
        _Method(ATTESTATION_LOG_SERVICE, "GetInclusionProof", log_pb2.GetInclusionProofRequest,
                MAX_SMALL_REQUEST_BYTES, log_service.GetInclusionProof),
        _Method(ATTESTATION_LOG_SERVICE, "GetConsistencyProof",
                log_pb2.GetConsistencyProofRequest, MAX_SMALL_REQUEST_BYTES,
                log_service.GetConsistencyProof),
    ]  # fmt: skip
    by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for m in methods:
        by_service.setdefault(m.service, {})[m.name] = _unary(m)
    return tuple(
        grpc.method_handlers_generic_handler(service, handlers)
        for service, handlers in by_service.items()
    )


__all__ = [
    "ATTESTATION_LOG_SERVICE",
    "BROKER_ADMIN_SERVICE",
    "ERROR_STATUS",
    "INTERNAL_MESSAGE",
    "KEY_BROKER_SERVICE",
    "REASON_METADATA_KEY",
    "AdminDeniedError",
    "AttestationLogServicer",
    "BrokerAdminServicer",
    "KeyBrokerServicer",
    "OutOfRangeError",
    "RequestTooLargeError",
    "default_admin_check",
    "generic_handlers",
    "has_verified_client_certificate",
    "log_event",
    "peer_is_loopback",
    "status_for",
]
