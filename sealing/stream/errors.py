"""Errors of the token-stream protocol.

A client learns one thing about a manipulated stream: that it was manipulated. Every record,
head or ordering failure raises the same :class:`StreamError` with the same message, so the
error itself can never serve as an oracle (which byte, which check) to whoever tampered.
Structural problems visible before any decryption (wrong version, unknown suite, wrong length of
a request) are ``ParseError``; misuse of a session by its own caller is :class:`StreamUsageError`.
"""

from __future__ import annotations

from attest.errors import InputError, VerificationError


class StreamError(VerificationError):
    """The token stream (or the request) failed authentication or ordering. Opaque on purpose."""

    def __init__(self) -> None:
        super().__init__("token stream rejected", reason="stream_rejected")


class StreamUsageError(InputError):
    """The caller used a session wrongly: sealing after close, an empty token, a record limit hit.

    This is a bug or a configuration error on the side that holds the keys, never a sign of an
    attack, so it says what went wrong.
    """
