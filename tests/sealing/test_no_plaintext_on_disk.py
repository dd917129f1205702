"""T-WEIGHTS-03's second half: the agent's loading hook decrypts into memory and writes nothing.

Watched with CPython's audit events (PEP 578), which fire for every ``open``/``os.open`` and
``mmap`` whatever library makes the call: while the agent loads the committed sealed vectors,
no file may be opened for writing, created, renamed or memory-mapped writable, and the sealed
directory must be byte-for-byte what it was. The loaded tensors must equal the plaintext ones,
so the test cannot pass by loading nothing.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from agent.agent import load_sealed_model
from tests.sealing.helpers import (
    DEK,
    EXPECTED,
    MODEL_ID,
    SHARD1,
    SHARD2,
    VECTORS,
    VERSION,
    copy_sealed,
)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: The list of (event, args) of the ``_watch()`` block now running, if any: the hook stays
#: installed (audit hooks cannot be removed) but records only inside the block.
_active: list[list[tuple[str, tuple[Any, ...]]]] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _active and (
        event in ("open", "mmap.__new__", "os.rename", "os.replace", "os.link", "os.symlink")
        or event.startswith(("shutil.", "tempfile."))
    ):
        _active[-1].append((event, args))


sys.addaudithook(_hook)


@contextmanager
def _watch() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    seen: list[tuple[str, tuple[Any, ...]]] = []
    _active.append(seen)
    try:
        yield seen
    finally:
        _active.remove(seen)


def _writes(events: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    bad = []
    for event, args in events:
        if event == "open":
            _path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            ):
                bad.append((event, args))
        elif event == "mmap.__new__":
            fileno, _length, access, _offset = args
            if fileno != -1 and access != mmap.ACCESS_READ:
                bad.append((event, args))
        else:  # renames, links, shutil copies, temporary files: none belongs in a load
            bad.append((event, args))
    return bad


def _snapshot(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_agent_loading_hook_writes_nothing_and_loads_the_weights(tmp_path: Path) -> None:
    sealed = copy_sealed(tmp_path)
    before = _snapshot(sealed)
    key = bytearray(DEK)
    digest = bytes.fromhex(EXPECTED["manifest_digest"].removeprefix("sha256:"))
    with _watch() as events:
        loaded = load_sealed_model(
            sealed, key, model_id=MODEL_ID, model_version=VERSION, manifest_digest=digest
        )
    # The hook saw the load: the sealed files were opened (for reading), so a silent hook
    # cannot make this pass.
    opened = {Path(str(a[0])).name for e, a in events if e == "open" and isinstance(a[0], str)}
    assert {f"{SHARD1}.sealed", f"{SHARD2}.sealed"} <= opened
    assert _writes(events) == []
    assert _snapshot(sealed) == before
    assert sorted(tmp_path.iterdir()) == [sealed]
    plain = {**load_file(VECTORS / "plain" / SHARD1), **load_file(VECTORS / "plain" / SHARD2)}
    assert loaded.tensors.keys() == plain.keys() and loaded.tensor_count == len(plain)
    for name, array in plain.items():
        np.testing.assert_array_equal(loaded.tensors[name], array)


def test_the_watch_sees_a_write() -> None:
    """The detector itself: a plain write in the block is reported (else the test above
    would pass whatever the loader did)."""
    with _watch() as events:
        with open(os.devnull, "wb") as f:
            f.write(b"x")
        fd = os.open(os.devnull, os.O_WRONLY)
        os.close(fd)
    assert len(_writes(events)) == 2
