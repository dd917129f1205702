"""The key file that ``lessee seal --key-out`` writes and ``lessee unseal --key`` reads.

It exists only to carry a freshly made data key from the sealing machine to the broker's key
store (and to debugging tools). JSON, one object::

    {"format": "lessee-sealed-weights-dek", "version": 1, "key_id": "lsw1-...",
     "model_id": "...", "model_version": 3, "manifest_digest": "sha256:...", "dek": "<64 hex>"}

Written with mode 0600 and O_EXCL (never overwrites); refused on read when group or others can
read it, as ssh does for private keys. Python strings cannot be wiped, so the hex text lives on
in memory until collected; the returned DEK is a bytearray the caller can and should wipe.

Every field is checked, never converted: the recorded model version becomes the version
``lessee unseal`` and ``lessee broker register`` expect (their rollback and registration
checks), so ``3.9``, ``true`` or ``"7"`` must not quietly turn into one. ``model_id`` and
``key_id`` follow the sealed-weights rules (``validate_model_id``/``validate_key_id``),
``model_version`` is an integer in ``0..MAX_MODEL_VERSION``, ``manifest_digest`` is
``sha256:`` and 64 lowercase hex digits (what ``lessee seal`` writes) and ``dek`` is exactly 64
lowercase hex digits. The writer checks the same, so it never writes a file the reader refuses.
Other members are ignored. No error message, cause or context carries the file's text: it
holds the key.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from agent.loader._files import FileSink, create_private
from attest.errors import InputError
from attest.jsonutil import load_json
from sealing.errors import SealedFormatError
from sealing.weights import DEK_BYTES
from sealing.weights._format import validate_key_id, validate_model_id, validate_model_version
from sealing.weights._keys import Buffer, check_dek, wipe
from sealing.weights._manifest import DIGEST_PREFIX

KEY_FILE_FORMAT = "lessee-sealed-weights-dek"
KEY_FILE_VERSION = 1
#: A key file is a few hundred bytes; anything much larger is not one.
MAX_KEY_FILE_BYTES = 4096


#: ``manifest_digest``: what ``sealing.weights.manifest_digest`` returns, nothing looser.
_DIGEST_RE = re.compile(re.escape(DIGEST_PREFIX) + r"[0-9a-f]{64}")
#: ``dek``: ``bytes.hex()`` of the 32-byte key (``bytearray.fromhex`` alone would also take
#: spaces, upper case and any length).
_DEK_HEX_RE = re.compile(rf"[0-9a-f]{{{2 * DEK_BYTES}}}")


@dataclass(frozen=True)
class KeyFile:
    """A read key file. ``dek`` is left out of ``repr``/``str``: a ``KeyFile`` printed in a log
    line or shown in a traceback's locals must not print the key."""

    dek: bytearray = field(repr=False)
    key_id: str
    model_id: str
    model_version: int
    manifest_digest: str


def _check_fields(
    *, key_id: object, model_id: object, model_version: object, manifest_digest: object
) -> tuple[str, str, int, str]:
    """The non-secret fields, checked (``InputError`` naming the field), never converted."""
    try:
        validate_key_id(key_id)  # type: ignore[arg-type]  # checks the type itself
        validate_model_id(model_id)  # type: ignore[arg-type]
        validate_model_version(model_version)  # type: ignore[arg-type]
    except SealedFormatError as exc:
        # names the field; the values are public labels, and nothing secret is chained
        raise InputError(str(exc)) from None
    if not isinstance(manifest_digest, str) or not _DIGEST_RE.fullmatch(manifest_digest):
        raise InputError(
            f"manifest_digest must be {DIGEST_PREFIX} and 64 lowercase hex digits (manifest_digest)"
        )
    # the validators above refuse every other type
    return cast(str, key_id), cast(str, model_id), cast(int, model_version), manifest_digest


def write_key_file(
    path: str | Path,
    dek: Buffer,
    *,
    key_id: str,
    model_id: str,
    model_version: int,
    manifest_digest: str,
) -> None:
    """Write a new key file (mode 0600, never over an existing file).

    The fields are checked as :func:`read_key_file` checks them, before the file is created:
    a key file that cannot be read back would strand the only copy of a fresh key.
    """
    _check_fields(
        key_id=key_id,
        model_id=model_id,
        model_version=model_version,
        manifest_digest=manifest_digest,
    )
    doc = {
        "format": KEY_FILE_FORMAT,
        "version": KEY_FILE_VERSION,
        "key_id": key_id,
        "model_id": model_id,
        "model_version": model_version,
        "manifest_digest": manifest_digest,
        "dek": bytes(check_dek(dek)).hex(),
    }
    data = bytearray(json.dumps(doc, indent=1).encode() + b"\n")
    fd = create_private(Path(path))
    try:
        FileSink(fd).write_at(0, memoryview(data))
        os.fsync(fd)
    finally:
        os.close(fd)
        wipe(data)


def read_key_file(path: str | Path) -> KeyFile:
    """Read and check a key file; ``InputError`` (naming the field) for anything malformed.

    The errors are raised outside the ``except`` blocks that detect them, so neither
    ``__cause__`` nor ``__context__`` holds a decoder exception: ``JSONDecodeError.doc`` and
    ``UnicodeDecodeError.object`` are the whole file, DEK hex included.
    """
    p = Path(path)
    # Non-blocking, so that a FIFO given by mistake is refused below instead of waiting for a
    # writer; the mode is checked on the open descriptor, so nothing can swap the file between.
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: not a regular file (a key file from 'lessee seal --key-out')")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"{p}: key file is accessible by group or others (chmod 600 it)")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise InputError(f"{p}: not a key file (too large)")
        raw = bytearray(os.read(fd, MAX_KEY_FILE_BYTES + 1))
    finally:
        os.close(fd)
    doc: Any = None
    problem: str | None = None
    try:
        doc = load_json(raw.decode("utf-8"), what="key file")
    except UnicodeDecodeError:
        problem = "not UTF-8"
    except InputError:  # load_json's message may quote the text: replaced, not chained
        problem = "not valid JSON"
    finally:
        wipe(raw)
    if problem is not None:
        raise InputError(f"{p}: not a lessee key file ({problem})")
    if not isinstance(doc, dict):
        raise InputError(f"{p}: not a lessee key file (not a JSON object)")
    version = doc.get("version")
    if (
        doc.get("format") != KEY_FILE_FORMAT
        or isinstance(version, bool)
        or not isinstance(version, int)
        or version != KEY_FILE_VERSION
    ):
        raise InputError(f"{p}: not a lessee key file (format/version)")
    missing = [
        name
        for name in ("key_id", "model_id", "model_version", "manifest_digest", "dek")
        if name not in doc
    ]
    if missing:
        raise InputError(f"{p}: malformed key file (missing {', '.join(missing)})")
    try:
        key_id, model_id, model_version, manifest_digest = _check_fields(
            key_id=doc["key_id"],
            model_id=doc["model_id"],
            model_version=doc["model_version"],
            manifest_digest=doc["manifest_digest"],
        )
    except InputError as exc:
        raise InputError(f"{p}: malformed key file: {exc}") from None
    dek_hex = doc["dek"]
    if not isinstance(dek_hex, str) or not _DEK_HEX_RE.fullmatch(dek_hex):
        # never quote the value: it is (most of) the key
        raise InputError(
            f"{p}: malformed key file: dek must be {2 * DEK_BYTES} lowercase hex digits (dek)"
        )
    return KeyFile(
        dek=bytearray.fromhex(dek_hex),
        key_id=key_id,
        model_id=model_id,
        model_version=model_version,
        manifest_digest=manifest_digest,
    )
