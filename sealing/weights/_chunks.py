"""Chunked AES-256-GCM: the body of a sealed file (private; use ``recipes``).

Chunk ``i`` holds plaintext bytes ``[i*C, min((i+1)*C, L))`` and sits at file offset
``H + i*(C+16)`` as ciphertext followed by its 16-byte tag. Its nonce is ``0^32 || u64be(i)``
and its AAD is ``SHA-256(header) || u64be(i) || final``, where ``final`` is 1 only for the last
chunk. So a chunk moved to another position (nonce differs), to another file (subkey and header
digest differ), or a file cut at a chunk boundary (the new last chunk was not sealed as final)
all fail the tag. This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015)
with the header bound in.

Work is split into batches of whole chunks and run on a thread pool: AES-GCM in ``cryptography``
releases the GIL, and so do ``os.preadv``/``os.pwrite``, so two cores give nearly two times the
throughput. Decryption writes straight into the caller's buffer (``decrypt_into``); only the
first and last chunk of a range that does not start or end on a chunk boundary go through a
scratch buffer.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import Protocol

from cryptography.exceptions import InvalidTag

from attest.errors import InputError
from sealing.errors import DecryptionError
from sealing.weights._format import TAG_BYTES, ShardHeader
from sealing.weights._keys import FileKeys, wipe

#: Bytes of plaintext per task handed to the pool: big enough that the per-task overhead
#: (a future, a queue hop: tens of microseconds) is under 1%, small enough to spread a 100 MB
#: tensor over every thread.
BATCH_BYTES = 8 << 20
#: At least the last this-many plaintext bytes of a decryption (whole batches are split, so up
#: to one batch more) are handed out one chunk per task: when a thread is preempted (a shared
#: machine) or started its last batch late, the others take the remaining chunks one at a time
#: instead of waiting up to a whole batch for it at the end. Every decryption plans this way,
#: a single tensor's range (``decrypt_range``) as well as a whole model's shards.
TAIL_BYTES = BATCH_BYTES

Progress = Callable[[int], None]


class PositionalSource(Protocol):
    """Random-access reads (``os.preadv`` on a file; a buffer in tests)."""

    def read_exact_at(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` entirely from ``offset`` or raise."""


class PositionalSink(Protocol):
    """Random-access writes (``os.pwrite`` on a file)."""

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write all of ``data`` at ``offset`` or raise."""


_scratch = threading.local()


def _scratch_buffer(slot: str, size: int) -> memoryview:
    """A per-thread buffer reused across chunks (no allocation per chunk)."""
    cache: dict[tuple[str, int], bytearray] | None = getattr(_scratch, "bufs", None)
    if cache is None:
        cache = {}
        _scratch.bufs = cache
    buf = cache.get((slot, size))
    if buf is None:
        buf = cache[(slot, size)] = bytearray(size)
    return memoryview(buf)


def nonce(index: int) -> bytes:
    return bytes(4) + index.to_bytes(8, "big")


def aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class ChunkCipher:
    """Encrypts and decrypts the chunks of one file (one header, one subkey)."""

    def __init__(self, keys: FileKeys, header: ShardHeader) -> None:
        self._aead = keys.aead
        self.header_length = header.header_length
        self.chunk_size = header.chunk_size
        self.plaintext_length = header.plaintext_length
        self.count = header.chunk_count
        self._digest = header.digest

    def plain_range(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.plaintext_length)

    def file_offset(self, index: int) -> int:
        return self.header_length + index * (self.chunk_size + TAG_BYTES)

    def _ad(self, index: int) -> tuple[bytes, bytes]:
        return nonce(index), aad(self._digest, index, index == self.count - 1)

    def encrypt_into(self, index: int, plaintext: memoryview, out: memoryview) -> None:
        n, ad = self._ad(index)
        self._aead.encrypt_into(n, plaintext, ad, out)

    def decrypt_into(self, index: int, ciphertext: memoryview, out: memoryview) -> None:
        n, ad = self._ad(index)
        try:
            self._aead.decrypt_into(n, ciphertext, ad, out)
        except InvalidTag:
            raise DecryptionError from None

    def chunks_for(self, start: int, end: int) -> range:
        """Chunk indices covering plaintext ``[start, end)``; an empty range touches none,
        except that the empty file's single (final) chunk is chunk 0."""
        if end <= start:
            return range(0)
        return range(start // self.chunk_size, (end - 1) // self.chunk_size + 1)


#: One decryption job: plaintext ``[start, end)`` of the file ``cipher``/``source`` describe,
#: into ``out`` (exactly ``end - start`` bytes).
DecryptJob = tuple[ChunkCipher, PositionalSource, int, int, memoryview]


def _batches(chunks: range, chunk_size: int) -> Iterator[range]:
    per = max(1, BATCH_BYTES // chunk_size)
    for first in range(chunks.start, chunks.stop, per):
        yield range(first, min(first + per, chunks.stop))


def _plan(jobs: Sequence[DecryptJob]) -> list[tuple[int, range]]:
    """(job index, chunk batch) in file order: whole batches, then single chunks for the last
    ``TAIL_BYTES`` of all the jobs together (see ``TAIL_BYTES``)."""
    plan = [
        (j, batch)
        for j, (cipher, _, start, end, _) in enumerate(jobs)
        for batch in _batches(cipher.chunks_for(start, end), cipher.chunk_size)
    ]
    out: list[tuple[int, range]] = []
    tail = 0
    for j, batch in reversed(plan):
        if tail < TAIL_BYTES:
            out.extend((j, range(i, i + 1)) for i in reversed(batch))
        else:
            out.append((j, batch))
        tail += len(batch) * jobs[j][0].chunk_size
    out.reverse()
    return out


def _run(
    tasks: Sequence[Callable[[], int]],
    executor: Executor | None,
    progress: Progress | None,
    cancel: threading.Event,
) -> None:
    """Run tasks (inline or on the pool), report progress, and re-raise the first failure only
    after every task has stopped (so no thread still writes into a buffer being wiped).

    Any exception in the result loop counts, not only a task's: a progress callback may raise
    (Ctrl-C, a broken pipe under a progress bar), and the caller wipes the output buffers as soon
    as this returns by raising. A task still running would then keep writing into the wiped
    buffer, and ``decrypt_into`` writes a chunk's plaintext *before* it checks the tag, so the
    unauthenticated plaintext of a tampered chunk could be left there. So: cancel, wait for
    every future, then raise.
    """
    if executor is None or len(tasks) == 1:
        for task in tasks:
            done = task()
            if progress is not None:
                progress(done)
        return
    futures: list[Future[int]] = []
    first: BaseException | None = None
    try:
        for task in tasks:
            futures.append(executor.submit(task))
        for fut in futures:
            try:
                done = fut.result()
            except BaseException as exc:  # collected, re-raised below once all tasks are done
                cancel.set()
                first = first or exc
                continue
            if progress is not None and first is None:
                progress(done)
    except BaseException as exc:  # progress callback, submit, or an interrupt while waiting
        cancel.set()
        first = first or exc
    if first is not None:
        cancel.set()
        _wait_all(futures)
        raise first


def _wait_all(futures: Sequence[Future[int]]) -> None:
    """Block until every future has finished (or was cancelled before it started).

    Pending tasks are cancelled outright; running ones see ``cancel`` at their next chunk. A
    second interrupt while waiting does not cut the wait short: returning early is exactly
    what would let a worker write into a buffer after it was wiped.
    """
    for fut in futures:
        fut.cancel()
    for fut in futures:
        while True:
            try:
                fut.exception()
            except BaseException:  # CancelledError, or an interrupt: keep waiting
                if fut.done():
                    break
                continue
            break


def check_range(start: int, end: int, length: int) -> None:
    """Refuse a plaintext range ``[start, end)`` that is not inside ``0..length``.

    The offsets come from the caller (``SealedFile.read``/``read_into``, a tensor's offsets), so
    a bad one is an ``InputError`` that says what was asked and what exists, not a bare
    ``ValueError``; ``SealedFile.read`` checks before it allocates the output buffer.
    """
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (start, end)):
        raise InputError("a plaintext range must be given as integer offsets")
    if not 0 <= start <= end:
        raise InputError(f"plaintext range [{start}, {end}) is negative (need 0 <= start <= end)")
    if end > length:
        raise InputError(f"plaintext range [{start}, {end}) ends past the file's {length} bytes")


def decrypt_range(
    cipher: ChunkCipher,
    source: PositionalSource,
    start: int,
    end: int,
    out: memoryview,
    *,
    executor: Executor | None,
    progress: Progress | None = None,
) -> None:
    """Decrypt plaintext ``[start, end)`` into ``out`` (exactly ``end - start`` bytes).

    Every chunk that overlaps the range is authenticated in full. On any failure ``out`` is
    wiped before ``DecryptionError`` propagates: the caller never sees partial plaintext. A
    range outside the plaintext is an ``InputError`` (:func:`check_range`), before any work.
    """
    decrypt_ranges([(cipher, source, start, end, out)], executor=executor, progress=progress)


def decrypt_ranges(
    jobs: Sequence[DecryptJob],
    *,
    executor: Executor | None,
    progress: Progress | None = None,
) -> None:
    """``decrypt_range`` for several ranges (of one file or of many) as one set of pool tasks.

    Loading a model file by file leaves a thread idle at the end of every file while the other
    finishes the last batch; one queue for all files keeps every thread busy until the last
    chunk of the model. On any failure every ``out`` is wiped before the error propagates.
    """
    for cipher, _, start, end, out in jobs:
        check_range(start, end, cipher.plaintext_length)
        if out.nbytes != end - start:  # the callers size ``out`` from the range: a bug if not
            raise ValueError(f"output buffer is {out.nbytes} bytes, the range {end - start}")
    cancel = threading.Event()
    tasks = [functools.partial(_decrypt_batch, jobs[j], cancel, batch) for j, batch in _plan(jobs)]
    try:
        _run(tasks, executor, progress, cancel)
    except BaseException:
        for job in jobs:
            wipe(job[4])
        raise


def _decrypt_batch(job: DecryptJob, cancel: threading.Event, batch: range) -> int:
    """Read and decrypt the chunks ``batch`` of one range; returns the plaintext bytes done.

    Ciphertext goes through a private per-thread scratch buffer, never straight from a shared
    mapping of the file: AES-GCM reads its input twice (once for the tag, once for the
    keystream XOR), and a mapping could change between the two reads.
    """
    cipher, source, start, end, out = job
    done = 0
    cs = cipher.chunk_size
    ct_buf = _scratch_buffer("ct", cs + TAG_BYTES)
    for i in batch:
        if cancel.is_set():
            return done
        c_start, c_end = cipher.plain_range(i)
        ct = ct_buf[: c_end - c_start + TAG_BYTES]
        source.read_exact_at(cipher.file_offset(i), ct)
        lo, hi = max(c_start, start), min(c_end, end)
        if lo == c_start and hi == c_end:
            cipher.decrypt_into(i, ct, out[lo - start : hi - start])
        else:
            pt = _scratch_buffer("pt", cs)[: c_end - c_start]
            try:
                cipher.decrypt_into(i, ct, pt)
                out[lo - start : hi - start] = pt[lo - c_start : hi - c_start]
            finally:
                wipe(pt)
        done += hi - lo
    return done


def verify_chunks(cipher: ChunkCipher, source: PositionalSource, chunks: range) -> None:
    """Authenticate whole chunks without keeping their plaintext (e.g. the final chunk)."""
    ct_buf = _scratch_buffer("ct", cipher.chunk_size + TAG_BYTES)
    pt_buf = _scratch_buffer("pt", cipher.chunk_size)
    for i in chunks:
        c_start, c_end = cipher.plain_range(i)
        ct = ct_buf[: c_end - c_start + TAG_BYTES]
        source.read_exact_at(cipher.file_offset(i), ct)
        pt = pt_buf[: c_end - c_start]
        try:
            cipher.decrypt_into(i, ct, pt)
        finally:
            wipe(pt)


def encrypt_all(
    cipher: ChunkCipher,
    source: PositionalSource,
    sink: PositionalSink,
    *,
    executor: Executor | None,
    progress: Progress | None = None,
) -> None:
    """Read every plaintext chunk from ``source``, write its ciphertext and tag to ``sink``."""
    cancel = threading.Event()
    cs = cipher.chunk_size

    def task(batch: range) -> int:
        done = 0
        pt_buf = _scratch_buffer("pt", cs)
        ct_buf = _scratch_buffer("ct", cs + TAG_BYTES)
        try:
            for i in batch:
                if cancel.is_set():
                    return done
                c_start, c_end = cipher.plain_range(i)
                pt = pt_buf[: c_end - c_start]
                ct = ct_buf[: c_end - c_start + TAG_BYTES]
                source.read_exact_at(c_start, pt)
                cipher.encrypt_into(i, pt, ct)
                sink.write_at(cipher.file_offset(i), ct)
                done += c_end - c_start
        finally:
            wipe(pt_buf)
        return done

    tasks = [functools.partial(task, b) for b in _batches(range(cipher.count), cs)]
    _run(tasks, executor, progress, cancel)
