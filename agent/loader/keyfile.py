"""The key file that ``lessee seal --key-out`` writes and ``lessee unseal --key`` reads.

It exists only to carry a freshly made data key from the sealing machine to the broker's key
store (and to debugging tools). JSON, one object::

    {"format": "lessee-sealed-weights-dek", "version": 1, "key_id": "lsw1-...",
     "model_id": "...", "model_version": 3, "manifest_digest": "sha256:...", "dek": "<64 hex>"}

Written with mode 0600 and O_EXCL (never overwrites); refused on read when group or others can
read it, as ssh does for private keys. Python strings cannot be wiped, so the hex text lives on
in memory until collected; the returned DEK is a bytearray the caller can and should wipe.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.loader._files import FileSink, create_private
from attest.errors import InputError
from sealing.weights import DEK_BYTES
from sealing.weights._keys import Buffer, check_dek, wipe

KEY_FILE_FORMAT = "lessee-sealed-weights-dek"
KEY_FILE_VERSION = 1
#: A key file is a few hundred bytes; anything much larger is not one.
MAX_KEY_FILE_BYTES = 4096


@dataclass(frozen=True)
class KeyFile:
    dek: bytearray
    key_id: str
    model_id: str
    model_version: int
    manifest_digest: str


def write_key_file(
    path: str | Path,
    dek: Buffer,
    *,
    key_id: str,
    model_id: str,
    model_version: int,
    manifest_digest: str,
) -> None:
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
    p = Path(path)
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"{p}: key file is accessible by group or others (chmod 600 it)")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise InputError(f"{p}: not a key file (too large)")
        raw = bytearray(os.read(fd, MAX_KEY_FILE_BYTES + 1))
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{p}: not a lessee key file") from exc
    finally:
        wipe(raw)
    if (
        not isinstance(doc, dict)
        or doc.get("format") != KEY_FILE_FORMAT
        or doc.get("version") != KEY_FILE_VERSION
    ):
        raise InputError(f"{p}: not a lessee key file (format/version)")
    try:
        dek = bytearray.fromhex(doc["dek"])
        out = KeyFile(
            dek=dek,
            key_id=str(doc["key_id"]),
            model_id=str(doc["model_id"]),
            model_version=int(doc["model_version"]),
            manifest_digest=str(doc["manifest_digest"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{p}: malformed key file") from exc
    if len(dek) != DEK_BYTES:
        wipe(dek)
        raise InputError(f"{p}: the key must be {DEK_BYTES} bytes")
    return out
