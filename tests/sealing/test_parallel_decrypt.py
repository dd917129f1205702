"""Decrypting several sealed files in one pass over a thread pool (issue #4's load path).

``SealedModel.load_state_dict`` decrypts every shard of a model as one set of pool tasks
(``read_files_into``): the plan must cover every chunk exactly once, any failing chunk in any
file must wipe every output buffer, and the results must be byte for byte those of the
one-file path.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from agent.loader import SealedModel, seal_model
from attest.errors import InputError
from sealing.errors import DECRYPTION_FAILED, DecryptionError
from sealing.weights import (
    BytesSource,
    FileKind,
    SealedFile,
    _chunks,
    key_fingerprint,
    open_sealed_file,
    read_files_into,
    seal_bytes,
)
from sealing.weights._keys import WIPE_BLOCK_BYTES, wipe
from tests.sealing.helpers import DEK, MODEL_ID, VERSION, Rng

CS = 4096
#: Plaintext lengths: empty, one partial chunk, exact chunks, and several batches plus a part.
LENGTHS = (0, 100, 3 * CS, 11 * CS + 7)


def _sealed(name: str, data: bytes) -> bytes:
    return seal_bytes(
        data,
        DEK,
        kind=FileKind.OTHER,
        name=name,
        model_id=MODEL_ID,
        model_version=VERSION,
        key_id=key_fingerprint(DEK),
        rng=Rng(name.encode()),
        chunk_size=CS,
    )


def _open(name: str, sealed: bytes | bytearray, pool: ThreadPoolExecutor) -> SealedFile:
    return open_sealed_file(
        BytesSource(sealed),
        len(sealed),
        DEK,
        model_id=MODEL_ID,
        model_version=VERSION,
        name=name,
        executor=pool,
    )


def _plaintexts() -> dict[str, bytes]:
    rng = np.random.default_rng(4)
    return {f"f{n}.bin": rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in LENGTHS}


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 4 chunks and a 4-chunk single-chunk tail, so small files exercise both."""
    monkeypatch.setattr(_chunks, "BATCH_BYTES", 4 * CS)
    monkeypatch.setattr(_chunks, "TAIL_BYTES", 4 * CS)


@pytest.mark.usefixtures("small_batches")
def test_plan_covers_every_chunk_once_in_order_with_a_single_chunk_tail() -> None:
    plain = _plaintexts()
    with ThreadPoolExecutor(2) as pool:
        files = [_open(n, _sealed(n, d), pool) for n, d in plain.items()]
        jobs = [(f._cipher, f._source, 0, f.length, memoryview(bytearray(f.length))) for f in files]
        plan = _chunks._plan(jobs)
    covered = [(j, i) for j, batch in plan for i in batch]
    expected = [(j, i) for j, f in enumerate(files) for i in range(-(-f.length // CS))]
    assert covered == expected  # every chunk once, in file order; the empty file has none
    # Whole batches of BATCH_BYTES // CS = 4 chunks per file, then the last TAIL_BYTES (at
    # least; whole batches are split) one chunk per task.
    assert [len(batch) for _, batch in plan] == [1, 3, 4, 4, 1, 1, 1, 1]


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("threads", [1, 2])
def test_read_files_into_matches_each_file_and_reports_progress(threads: int) -> None:
    plain = _plaintexts()
    done: list[int] = []
    with ThreadPoolExecutor(threads) as pool:
        files = [_open(n, _sealed(n, d), pool) for n, d in plain.items()]
        outs = [bytearray(f.length) for f in files]
        read_files_into(
            [(f, memoryview(o)) for f, o in zip(files, outs, strict=True)],
            executor=pool if threads > 1 else None,
            progress=done.append,
        )
    assert [bytes(o) for o in outs] == list(plain.values())
    assert sum(done) == sum(LENGTHS)


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("victim", [2, 3])
def test_a_bad_chunk_in_any_file_wipes_every_output(victim: int) -> None:
    """Never partial plaintext: the files (and chunks) that did authenticate are wiped too."""
    plain = _plaintexts()
    names = list(plain)
    sealed = [bytearray(_sealed(n, plain[n])) for n in names]
    body = int.from_bytes(sealed[victim][12:16], "big")  # header length: chunk 0 follows
    sealed[victim][body + 5] ^= 0x01  # chunk 0: opening (which checks the final chunk) passes
    with ThreadPoolExecutor(2) as pool:
        files = [_open(n, s, pool) for n, s in zip(names, sealed, strict=True)]
        outs = [bytearray(b"\xaa" * f.length) for f in files]
        with pytest.raises(DecryptionError) as exc:
            read_files_into(
                [(f, memoryview(o)) for f, o in zip(files, outs, strict=True)], executor=pool
            )
    assert str(exc.value) == DECRYPTION_FAILED
    assert all(o == bytes(len(o)) for o in outs)


def test_read_files_into_refuses_a_wrong_size_buffer() -> None:
    with ThreadPoolExecutor(2) as pool:
        f = _open("f.bin", _sealed("f.bin", b"x" * 10), pool)
        with pytest.raises(ValueError, match="plaintext length"):
            read_files_into([(f, memoryview(bytearray(9)))], executor=pool)


def test_a_range_outside_the_plaintext_is_an_input_error() -> None:
    """SealedFile.read/read_into once raised bare ValueErrors ("negative count" from
    bytearray, "bad range" from decrypt_ranges); read(0, huge) allocated before refusing."""
    data = b"0123456789" * 1000
    with ThreadPoolExecutor(2) as pool:
        f = _open("f.bin", _sealed("f.bin", data), pool)
        n = f.length
        assert f.read(0, n) == data and f.read(n, n) == b"" and f.read(3, 7) == data[3:7]
        for start, end, what in (
            (10, 5, "negative"),
            (-1, 3, "negative"),
            (-5, -1, "negative"),
            (0, n + 1, "ends past"),
            (n, n + 1, "ends past"),
            (0, 1 << 60, "ends past"),  # refused before a buffer of that size is asked for
        ):
            with pytest.raises(InputError, match=what) as info:
                f.read(start, end)
            assert type(info.value) is InputError and f"[{start}, {end})" in str(info.value)
        for bad in (True, 1.0, "1"):
            with pytest.raises(InputError, match="integer offsets"):
                f.read(bad, 5)  # type: ignore[arg-type]
        out = bytearray(b"\xaa" * 5)
        for start in (n - 4, -1, n + 1):
            with pytest.raises(InputError, match="plaintext range"):
                f.read_into(start, memoryview(out))
        assert out == b"\xaa" * 5  # refused before any decryption touched the buffer
        f.read_into(n - 5, memoryview(out))
        assert out == data[-5:]


def test_model_state_dict_over_many_shards_equals_the_plaintext(tmp_path: Path) -> None:
    """Shards of different sizes (one empty) decrypted in one pass, on 1 and on 2 threads."""
    rng = np.random.default_rng(9)
    plain = tmp_path / "plain"
    plain.mkdir()
    want: dict[str, np.ndarray] = {}
    for s, rows in enumerate((0, 1, 37, 600)):
        tensors = {f"s{s}.w": rng.standard_normal((rows, 33), dtype=np.float32)}
        if s == 2:
            tensors["s2.mask"] = rng.integers(0, 2, 13, dtype=np.uint8).astype(np.bool_)
        (plain / f"model-{s}.safetensors").write_bytes(save(tensors))
        want |= tensors
    seal_model(
        plain,
        tmp_path / "sealed",
        DEK,
        model_id=MODEL_ID,
        model_version=VERSION,
        rng=Rng(b"many"),
        chunk_size=CS,
        threads=1,
    )
    for threads in (1, 2):
        with SealedModel(
            tmp_path / "sealed", DEK, model_id=MODEL_ID, model_version=VERSION, threads=threads
        ) as model:
            got = model.load_state_dict()
        assert set(got) == set(want)
        for name, arr in want.items():
            assert got[name].dtype == arr.dtype
            np.testing.assert_array_equal(got[name], arr)


@pytest.mark.parametrize("size", [0, 1, WIPE_BLOCK_BYTES - 1, 2 * WIPE_BLOCK_BYTES + 5])
def test_wipe_zeroes_every_byte_and_only_the_view(size: int) -> None:
    buf = bytearray(b"\xff" * (size + 6))
    wipe(memoryview(buf)[3 : 3 + size])
    assert buf[:3] == b"\xff" * 3
    assert buf[3 + size :] == b"\xff" * 3
    assert buf[3 : 3 + size] == bytes(size)


class _GatedSource(BytesSource):
    """Holds back the read of one chunk until ``release`` is set, then a little longer: the
    worker decrypting that chunk is still running when the caller's result loop fails."""

    def __init__(self, data: bytes | bytearray, gated_offset: int) -> None:
        super().__init__(data)
        self.gated_offset = gated_offset
        self.armed = False
        self.release = threading.Event()

    def read_exact_at(self, offset: int, buf: memoryview) -> None:
        if self.armed and offset == self.gated_offset:
            assert self.release.wait(10)
            time.sleep(0.2)  # the wipe (microseconds) is long done by now unless _run waits
        super().read_exact_at(offset, buf)


@pytest.mark.parametrize("raised", [KeyboardInterrupt, BrokenPipeError])
def test_a_raising_progress_callback_waits_for_every_worker_before_the_wipe(
    monkeypatch: pytest.MonkeyPatch, raised: type[BaseException]
) -> None:
    """A progress bar that raises (Ctrl-C, a closed pipe) must not let a worker outlive the
    wipe: ``decrypt_into`` writes a chunk's plaintext before it checks the tag, so a worker
    still running after the wipe would leave a tampered chunk's unauthenticated plaintext in
    the caller's buffer."""
    monkeypatch.setattr(_chunks, "BATCH_BYTES", CS)  # one chunk per task
    monkeypatch.setattr(_chunks, "TAIL_BYTES", CS)
    data = np.random.default_rng(5).integers(1, 256, 4 * CS, dtype=np.uint8).tobytes()
    sealed = bytearray(_sealed("f.bin", data))
    header_len = int.from_bytes(sealed[12:16], "big")
    victim = header_len + 1 * (CS + 16)  # chunk 1: not the final chunk, so opening passes
    sealed[victim + 5] ^= 0x01
    source = _GatedSource(sealed, victim)
    calls: list[int] = []

    def progress(done: int) -> None:
        calls.append(done)
        source.release.set()  # the worker on the tampered chunk goes on, then we fail
        raise raised("progress bar gone")

    with ThreadPoolExecutor(2) as pool:
        f = open_sealed_file(
            source,
            len(sealed),
            DEK,
            model_id=MODEL_ID,
            model_version=VERSION,
            name="f.bin",
            executor=pool,
        )
        source.armed = True
        out = bytearray(b"\xaa" * f.length)
        with pytest.raises(raised, match="progress bar gone"):
            f.read_into(0, memoryview(out), progress=progress)
        assert calls == [CS]
        assert out == bytes(len(out))
        time.sleep(0.5)  # a worker that outlived the call would have written by now
        assert out == bytes(len(out))


def test_a_damaged_last_chunk_is_refused_when_the_file_is_opened() -> None:
    """Opening authenticates the final chunk, so a reader that only ever touches the first
    tensor still gets a file whose end is intact (mutation testing: no test failed without
    the open-time check; the damage was caught only when the last chunk was read)."""
    data = _plaintexts()["f45063.bin"]
    sealed = bytearray(_sealed("f45063.bin", data))
    with ThreadPoolExecutor(2) as pool:
        assert _open("f45063.bin", bytes(sealed), pool).length == len(data)
        sealed[-1] ^= 0x01  # the last chunk's tag
        with pytest.raises(DecryptionError):
            _open("f45063.bin", bytes(sealed), pool)
