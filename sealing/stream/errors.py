"""Errors of the token-stream protocol.

A client learns one thing about a manipulated stream: that it was manipulated. Every record,
head or ordering failure raises the same :class:`StreamError` with the same message, so the
error itself can never serve as an oracle (which byte, which check) to whoever tampered.
Structural problems visible before any decryption (wrong version, unknown suite, wrong length of
a request) are ``ParseError``; misuse of a session by its own caller is :class:`StreamUsageError`.

A request that *opened* (so it is authentic and was sealed to this enclave's key) can still be
refused by the enclave's replay guard (``replay.py``): :class:`RequestReplayed`,
:class:`RequestStale`, or :class:`ReplayCacheFull` when the guard is at its bound. These say
what happened, because they are about a valid request and reveal nothing secret; the service
turns each into one fixed gRPC status.
"""

from __future__ import annotations

import enum

from attest.errors import InputError, LesseeError, VerificationError


class StreamError(VerificationError):
    """The token stream (or the request) failed authentication or ordering. Opaque on purpose."""

    def __init__(self) -> None:
        super().__init__("token stream rejected", reason="stream_rejected")


class StreamUsageError(InputError):
    """The caller used a session wrongly: sealing after close, an empty token, a record limit hit.

    This is a bug or a configuration error on the side that holds the keys, never a sign of an
    attack, so it says what went wrong.
    """


class RequestRefused(VerificationError):  # noqa: N818 (an outcome, named as one)
    """Base of the replay guard's refusals of a request that opened."""


class RequestReplayed(RequestRefused):
    """This request id was accepted before, within the window: a replay (or a double send)."""

    def __init__(self) -> None:
        super().__init__("request already accepted once (replayed)", reason="request_replayed")


class StaleDirection(enum.Enum):
    """Which side of the enclave's window a refused ``sent_at`` fell on."""

    PAST = "past"
    FUTURE = "future"


class RequestStale(RequestRefused):
    """The request's ``sent_at`` is further than the window from the enclave's clock: the
    client's clock is off, or the request was held back (by the relay) past the window."""

    def __init__(self, direction: StaleDirection, window_seconds: int) -> None:
        self.direction = direction
        self.window_seconds = window_seconds
        where = "before" if direction is StaleDirection.PAST else "after"
        super().__init__(
            f"request time is more than {window_seconds} s {where} the enclave's clock",
            reason="request_stale",
        )


class ReplayCacheFull(LesseeError):  # noqa: N818 (a state, named as one)
    """The replay guard holds its maximum of live request ids: it refuses new requests rather
    than forget an id that could still be replayed (fail closed). An overload, not an attack on
    this request; retry later."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        super().__init__(f"replay cache full ({max_entries} live request ids); retry later")
