"""One error family for the whole toolkit.

Three branches follow the three steps every evidence kind goes through (see docs/architecture.md):
malformed input is an ``InputError`` (``ParseError`` for bytes that do not follow the format),
a failed cryptographic or chain check is a ``VerificationError``, and policy failures are never
raised but collected (see ``attest.appraisal``). The CLI maps the first branch to exit code 2
and the second to exit code 1; servers map them to gRPC status codes. Messages never carry
secrets: they name the field, the offset and what was expected.
"""

from __future__ import annotations


class LesseeError(Exception):
    """Base of every error that lessee raises on purpose."""

    def diagnostics(self) -> str:
        """One line for an operator: the error class and its message."""
        return f"{type(self).__name__}: {self}"


class InputError(LesseeError):
    """The input could not be read or decoded (wrong encoding, wrong container, too big)."""


class ParseError(InputError):
    """Bytes that do not follow the format they claim to be in.

    ``offset`` is the byte offset of the offending field when it is known, so a bug report can
    point at the exact byte.
    """

    def __init__(self, message: str, *, offset: int | None = None, field: str | None = None):
        self.offset = offset
        self.field = field
        where = []
        if field is not None:
            where.append(field)
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class VerificationError(LesseeError):
    """A signature, chain, binding or revocation check failed. ``reason`` is a stable code."""

    def __init__(self, message: str, *, reason: str = "verification_failed"):
        self.reason = reason
        super().__init__(message)


class ChainError(VerificationError):
    """An X.509 chain did not lead to the pinned root at the verification time."""


class RevocationError(VerificationError):
    """Revocation data was missing, invalid, stale, or said the certificate is revoked."""
