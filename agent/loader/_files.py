"""File access for the loader: positional reads and writes on descriptors, directory names.

``os.preadv``/``os.pwrite`` release the GIL and take a file position per call, so any number of
threads can read one descriptor at once without seeking. Plaintext only ever goes into memory
here; the only files the loader writes are sealed ones (and, from the debugging ``unseal``
command, plaintext the operator explicitly asked for).
"""

from __future__ import annotations

import os
from pathlib import Path

from sealing.errors import SealedFormatError

#: The manifest's file name inside a sealed model directory.
MANIFEST_NAME = "lessee-manifest.lsm"
#: Suffix of every sealed file; the plaintext name is what precedes it.
SEALED_SUFFIX = ".sealed"
#: Threads used when the caller does not say: AES-GCM scales to the cores, and past 8 the
#: memory bandwidth, not the cipher, is the limit on current servers.
MAX_DEFAULT_THREADS = 8


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores))


class FileSource:
    """``PositionalSource`` over an open file descriptor (the caller owns and closes it)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def read_exact_at(self, offset: int, buf: memoryview) -> None:
        want = buf.nbytes
        got = 0
        while got < want:
            n = os.preadv(self.fd, [buf[got:]], offset + got)
            if n == 0:
                raise SealedFormatError(f"{self.name}: truncated", offset=offset + got)
            got += n


class FileSink:
    """``PositionalSink`` over an open file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write_at(self, offset: int, data: memoryview) -> None:
        done = 0
        while done < data.nbytes:
            done += os.pwrite(self.fd, data[done:], offset + done)


class OpenFile:
    """A read-only descriptor with its size, closed by ``close()`` or ``with``."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.size = os.fstat(self.fd).st_size
        except BaseException:
            os.close(self.fd)
            raise
        self.source = FileSource(self.fd, path.name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_private(path: Path) -> int:
    """Create a new file readable by its owner only; refuses to overwrite anything."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
