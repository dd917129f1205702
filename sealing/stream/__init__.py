"""End-to-end encrypted token streams between a client and an attested enclave.

The format is specified byte by byte in ``docs/formats/token-stream.md``. The pieces:

* :mod:`.bundle`: the enclave's attested key bundle and its verification hook;
* :mod:`.request`: the HPKE-sealed request (request secret, send time, parameters, padded
  prompt);
* :mod:`.replay`: the enclave's replay guard (each request id accepted once, within a window);
* :mod:`.response`: response keys (OHTTP-style) and fixed-size AEAD records;
* :mod:`.session`: the two state machines, :class:`EnclaveStreamSession` and :class:`ClientStream`;
* :mod:`.cover`: the optional fixed-cadence cover schedule.
"""

from sealing.stream.bundle import KeyAttestationCheck, KeyBundle, VerifiedKeyBundle, verify_bundle
from sealing.stream.cover import CoverSchedule, Emit
from sealing.stream.errors import (
    ReplayCacheFull,
    RequestRefused,
    RequestReplayed,
    RequestStale,
    StaleDirection,
    StreamError,
    StreamUsageError,
)
from sealing.stream.replay import ReplayGuard
from sealing.stream.request import (
    DEFAULT_RECORD_SIZE,
    DEFAULT_REQUEST_PAD_BLOCK,
    GenerationParams,
    StreamRequest,
)
from sealing.stream.response import MAX_RECORDS_PER_STREAM, RecordType, record_len
from sealing.stream.session import (
    MAX_TOKEN_LEN,
    AbortReason,
    ClientStream,
    EnclaveStreamSession,
    Event,
    Outcome,
    StreamAborted,
    StreamEnd,
    Token,
)

__all__ = [
    "DEFAULT_RECORD_SIZE",
    "DEFAULT_REQUEST_PAD_BLOCK",
    "MAX_RECORDS_PER_STREAM",
    "MAX_TOKEN_LEN",
    "AbortReason",
    "ClientStream",
    "CoverSchedule",
    "Emit",
    "EnclaveStreamSession",
    "Event",
    "GenerationParams",
    "KeyAttestationCheck",
    "KeyBundle",
    "Outcome",
    "RecordType",
    "ReplayCacheFull",
    "ReplayGuard",
    "RequestRefused",
    "RequestReplayed",
    "RequestStale",
    "StaleDirection",
    "StreamAborted",
    "StreamEnd",
    "StreamError",
    "StreamRequest",
    "StreamUsageError",
    "Token",
    "VerifiedKeyBundle",
    "record_len",
    "verify_bundle",
]
