"""Errors raised by the sealing formats.

Two families, kept apart on purpose (pyca/cryptography's rule, as in Fernet's ``InvalidToken``):

* ``DecryptionError``: every authentication failure (wrong key, a flipped bit, a reordered,
  dropped, duplicated or spliced chunk, a changed header or manifest). It is one class with one
  fixed message, so that no caller and no remote peer can learn *which* check failed; an oracle
  that says "tag ok but header changed" helps an attacker build forgeries.
* ``SealedFormatError`` (a ``ParseError``): bytes that are not a sealed file at all, or a version
  or algorithm this code does not implement. These are structural and visible without the key,
  so naming the field and offset leaks nothing and helps an operator.

``BindingError`` is raised only *after* authentication succeeded: the data is genuine, but it is
not what the caller asked for (another model, an older version, a shard the manifest does not
list, a manifest whose digest is not the pinned one). Those are the rollback and swap attacks, and
an operator needs to be told which binding failed.
"""

from __future__ import annotations

from attest.errors import InputError, ParseError, VerificationError

#: The only message a DecryptionError ever carries (no oracle, no secrets).
DECRYPTION_FAILED = "sealed data failed authentication (wrong key, or the data was modified)"


class DecryptionError(VerificationError):
    """Authentication of sealed data failed. Deliberately says nothing about why."""

    def __init__(self) -> None:
        super().__init__(DECRYPTION_FAILED, reason="decryption_failed")


class SealedFormatError(ParseError):
    """The bytes are not a well-formed sealed file or manifest (checked without the key)."""


class UnsupportedFormatError(SealedFormatError):
    """A format version or algorithm id that this implementation does not know."""


class BindingError(VerificationError):
    """Authentic sealed data that is not the data the caller expected.

    ``reason`` is one of ``model_mismatch``, ``version_mismatch``, ``manifest_mismatch``,
    ``manifest_digest_mismatch``, ``shard_mismatch``.
    """


class UnsupportedDtypeError(InputError):
    """A tensor dtype that the requested framework cannot represent (e.g. BF16 in numpy)."""
