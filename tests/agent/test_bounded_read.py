"""``agent.bounded_read``: what every command and the broker use to read a named file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent.bounded_read import read_bounded
from attest.errors import InputError


def test_exactly_the_limit_is_read_one_more_byte_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert read_bounded(f, 10, "thing") == b"x" * 10
    with pytest.raises(InputError, match=f"{f}: thing larger than 9 bytes"):
        read_bounded(str(f), 9, "thing")


def test_a_fifo_that_never_ends_is_refused_at_the_bound(tmp_path: Path) -> None:
    """``stat`` cannot size a FIFO; the read itself stops one byte past the limit."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with fifo.open("wb") as w:
            try:
                w.write(b"y" * 4096)
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=write)
    writer.start()
    with pytest.raises(InputError, match="larger than 100 bytes"):
        read_bounded(fifo, 100, "pipe")
    writer.join(10)
    assert not writer.is_alive()
