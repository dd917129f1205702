"""Reading a file the user or the operator names, never more than a bound.

Every file a command or the broker reads (keys, certificates, CRLs, evidence, RIMs, log keys)
has a size it cannot sensibly exceed. Reading at most ``limit + 1`` bytes refuses a larger one
without reading it whole, and also holds for what ``stat`` cannot size (a FIFO, ``/dev/stdin``).
"""

from __future__ import annotations

from pathlib import Path

from attest.errors import InputError


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``; ``InputError`` naming ``what`` if it holds more than ``limit``."""
    with Path(path).open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path}: {what} larger than {limit} bytes")
    return data
