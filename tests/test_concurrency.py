"""The shared verification pool (``attest.concurrency``).

Properties the verifiers rely on: every Deferred runs exactly once whoever runs it; errors come
back in the asking thread; with no pool everything runs in the caller; a thread that waits for
work another thread is running runs queued *leaf* work meanwhile, never non-leaf work; nested
waits (a chain check waiting for its link checks, on any number of threads) always finish.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from attest import concurrency
from attest.concurrency import Deferred, defer, offer, pool_workers, run_all, set_pool_workers
from attest.errors import InputError

TIMEOUT = 30.0


@pytest.fixture
def workers() -> Iterator[Callable[[int], int]]:
    before = pool_workers()
    yield set_pool_workers
    set_pool_workers(before)


def _in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a thread and fail (instead of hanging the suite) if it deadlocks."""
    errors: list[BaseException] = []

    def go() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "deadlock: the work did not finish"
    if errors:
        raise errors[0]


def test_negative_workers_refused(workers: Callable[[int], int]) -> None:
    with pytest.raises(InputError):
        workers(-1)


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_runs_exactly_once_and_errors_reach_the_asker(
    workers: Callable[[int], int], n: int
) -> None:
    workers(n)
    calls: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            calls.append(i)
        if i % 7 == 3:
            raise ValueError(f"bad {i}")
        return i * i

    done = run_all([lambda i=i: work(i) for i in range(40)])
    for i, d in enumerate(done):
        if i % 7 == 3:
            with pytest.raises(ValueError, match=f"bad {i}"):
                d.result()
        else:
            assert d.result() == i * i
    assert sorted(calls) == list(range(40))


def test_no_pool_runs_everything_in_the_caller(workers: Callable[[int], int]) -> None:
    workers(0)
    seen: list[threading.Thread] = []
    d = defer(lambda: seen.append(threading.current_thread()))
    assert not d.claimed and not concurrency._POOL.started
    d.result()
    assert seen == [threading.current_thread()]


def test_waiting_thread_runs_queued_leaves_not_other_work(workers: Callable[[int], int]) -> None:
    """One pool thread is held by ``blocker``; the asker waits for it and, meanwhile, runs the
    queued leaf, but not the queued non-leaf work (left for a pool thread or its own asker)."""
    workers(1)
    release = threading.Event()
    started = threading.Event()
    ran_in: dict[str, threading.Thread] = {}

    def blocker() -> str:
        started.set()
        release.wait(TIMEOUT)
        return "blocked"

    def record(name: str) -> Callable[[], str]:
        def call() -> str:
            ran_in[name] = threading.current_thread()
            if name == "leaf":
                release.set()  # the pool thread may now finish the blocker
            return name

        return call

    def scenario() -> None:
        held = defer(blocker)
        assert started.wait(TIMEOUT)
        other = offer(Deferred(record("other")))  # not a leaf: never taken by a waiter
        leaf = offer(Deferred(record("leaf"), leaf=True))
        assert held.result() == "blocked"  # waits; runs the leaf meanwhile
        assert leaf.finished and ran_in["leaf"] is threading.current_thread()
        # not taken while waiting (a pool thread may have run it since, or nobody yet)
        assert ran_in.get("other") is not threading.current_thread()
        assert other.result() == "other"

    _in_thread(scenario)


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_nested_waits_finish_on_any_number_of_threads(
    workers: Callable[[int], int], n: int
) -> None:
    """Chain-like work (waits for its leaves) offered from several threads at once, under
    every pool size: no deadlock, every value right, every leaf run once."""
    workers(n)
    counts: dict[tuple[int, int], int] = {}
    lock = threading.Lock()
    rng = random.Random(n)
    sleeps = [rng.random() / 2000 for _ in range(64)]

    def leaf(job: int, i: int) -> int:
        time.sleep(sleeps[(job * 8 + i) % 64])  # releases the GIL, like a signature check
        with lock:
            counts[(job, i)] = counts.get((job, i), 0) + 1
        return job + i

    def chain(job: int) -> int:
        links = [Deferred(lambda i=i: leaf(job, i), leaf=True) for i in range(5)]
        for link in links[1:]:
            offer(link)
        return sum(link.result() for link in links)

    wrong: list[tuple[int, int]] = []

    def asker(base: int) -> None:
        jobs = [defer(lambda j=j: chain(j)) for j in range(base, base + 6)]
        for j, job in zip(range(base, base + 6), jobs, strict=True):
            value = job.result()
            if value != 5 * j + 10:
                with lock:
                    wrong.append((j, value))

    def scenario() -> None:
        threads = [threading.Thread(target=asker, args=(b * 10,)) for b in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
            assert not t.is_alive()

    _in_thread(scenario)
    assert not wrong
    assert len(counts) == 4 * 6 * 5 and set(counts.values()) == {1}


def test_changing_workers_keeps_queued_work(workers: Callable[[int], int]) -> None:
    workers(1)
    assert defer(lambda: 1).result() == 1
    assert concurrency._POOL.started
    queued = [defer(lambda i=i: i) for i in range(20)]
    workers(2)  # the old thread leaves; anything it had not started is still answered
    assert not concurrency._POOL.started
    assert [d.result() for d in queued] == list(range(20))
    assert defer(lambda: 7).result() == 7 and concurrency._POOL.started


def test_turning_the_pool_off_leaves_queued_work_to_its_askers(
    workers: Callable[[int], int],
) -> None:
    workers(1)
    release = threading.Event()
    held = defer(lambda: release.wait(TIMEOUT))  # keeps the one pool thread busy
    queued = [defer(lambda i=i: i) for i in range(5)]
    workers(0)
    release.set()
    assert held.result() is True
    assert [d.result() for d in queued] == list(range(5))  # run by the asker
    assert not concurrency._POOL.started


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_its_own_pool(workers: Callable[[int], int]) -> None:
    workers(1)
    assert defer(lambda: 1).result() == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            fresh = not concurrency._POOL.started
            ok = run_all([lambda i=i: i for i in range(10)])
            code = 0 if fresh and [d.result() for d in ok] == list(range(10)) else 1
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    status = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert status == b"\x00"
