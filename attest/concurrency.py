"""The shared verification pool.

``cryptography`` releases the GIL while OpenSSL checks an ECDSA signature
(``EllipticCurvePublicKey.verify``), so independent signature checks (the links of a chain,
OCSP responses, a report signature next to the RIMs' Python XML work) run truly in parallel
on a multi-core machine. They run on one small pool shared by every verifier of the process,
created on first use. Each piece of work is a ``Deferred``: whoever needs it first runs it, a
pool thread or the caller itself, so a caller never waits for work nobody has started (no
deadlock when pool threads wait on each other, and no pool at all still gives the sequential
result). Callers read the results in their own fixed order, so the failure they report is
the same whatever the threads' timing.

A thread that must wait for work another thread is running does not sit idle: it runs queued
*leaf* work meanwhile (a single signature check, which never waits for anything itself), so
that at the end of a verification both cores finish the last checks instead of one waiting
for the other. Only leaves are taken this way: a waiting thread that took work which itself
waits could end up waiting, deep in its own stack, for the very work it interrupted.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from attest.errors import InputError

T = TypeVar("T")

#: Pool threads never exceed this: the work is a handful of signatures per verification, and
#: each thread beyond the cores only adds GIL hand-offs.
MAX_POOL_WORKERS = 4


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _PoolState:
    """The process's one verification pool: a queue of offered work and its threads, started
    on first use.

    One lock guards the queue; ``_ready`` wakes pool threads when work is queued, ``_changed``
    wakes threads waiting for a result (see ``Deferred.wait``) when work is queued or done.
    """

    def __init__(self) -> None:
        #: Pool threads: one fewer than the usable cores (the calling thread works too), at
        #: least one on a multi-core machine, none (all work in the caller) on a single core.
        self.workers = min(MAX_POOL_WORKERS, _usable_cpus() - 1)
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self._ready = threading.Condition(self.lock)
        self._changed = threading.Condition(self.lock)
        self._queue: deque[Deferred[Any]] = deque()
        self._waiters = 0
        #: Threads of the current generation; a change of ``workers`` starts a new generation
        #: and the old threads leave once they see it.
        self.threads: list[threading.Thread] = []
        self._generation = 0

    @property
    def started(self) -> bool:
        """Whether pool threads are running (work has been offered since the last change)."""
        return bool(self.threads)

    def submit(self, deferred: Deferred[Any]) -> None:
        """Queue ``deferred`` for a pool thread (no pool: nothing; whoever needs it runs it)."""
        if self.workers <= 0:
            return
        with self.lock:
            if not self.threads:
                self._start_threads()
            self._queue.append(deferred)
            self._ready.notify()
            if self._waiters:
                self._changed.notify_all()

    def _start_threads(self) -> None:
        generation = self._generation
        for n in range(self.workers):
            thread = threading.Thread(
                target=self._work,
                args=(generation,),
                name=f"lessee-verify_{generation}_{n}",
                daemon=True,  # idle between verifications; never holds up interpreter exit
            )
            thread.start()
            self.threads.append(thread)

    def _work(self, generation: int) -> None:
        while True:
            with self.lock:
                while not self._queue and self._generation == generation:
                    self._ready.wait()
                if self._generation != generation:
                    return  # the queue stays for the next generation (or for its askers)
                deferred = self._queue.popleft()
            deferred.run_here()  # already claimed by an asker: returns at once

    def take_leaf(self) -> Deferred[Any] | None:
        """Remove and return the oldest queued leaf nobody has started, if any (lock held)."""
        queue = self._queue
        for i, deferred in enumerate(queue):
            if deferred.leaf and not deferred.claimed:
                del queue[i]
                return deferred
        return None

    def done(self) -> None:
        """Some work finished: wake the threads waiting for results, if any. The count is read
        under the lock: a waiter checks ``finished`` and registers under it, so a completion
        either comes before that check or sees the waiter."""
        with self.lock:
            if self._waiters:
                self._changed.notify_all()

    def wait_for(self, target: Deferred[Any]) -> None:
        """Block until ``target`` is done, running queued leaves meanwhile."""
        while True:
            with self.lock:
                while True:
                    if target.finished:
                        return
                    leaf = self.take_leaf()
                    if leaf is not None:
                        break
                    self._waiters += 1
                    try:
                        self._changed.wait()
                    finally:
                        self._waiters -= 1
            leaf.run_here()

    def set_workers(self, workers: int) -> int:
        with self.lock:
            previous, self.workers = self.workers, min(workers, MAX_POOL_WORKERS)
            self._generation += 1
            self.threads = []
            if self.workers == 0:
                # No thread will take queued work any more; whoever asks runs it (``result``).
                self._queue.clear()
            self._ready.notify_all()
        return previous

    def after_fork_in_child(self) -> None:
        """A forked child has none of the parent's threads, and its copies of the parent's
        queued work belong to callers that do not exist here: it starts afresh."""
        self._reset()


_POOL = _PoolState()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.after_fork_in_child)


def pool_workers() -> int:
    """How many pool threads verification uses (0: none, all work in the calling thread)."""
    return _POOL.workers


def set_pool_workers(workers: int) -> int:
    """Use ``workers`` pool threads from now on (0: run everything in the calling thread);
    return the previous number. For tests, and for hosts that want verification on one core."""
    if workers < 0:
        raise InputError("pool workers must be >= 0")
    return _POOL.set_workers(workers)


class Deferred(Generic[T]):
    """One call, run exactly once: by a pool thread, or by the first caller of ``result()``
    (or ``run_here()``) if no thread has started it yet. Its exception is kept and raised
    by ``result()``, in the caller's thread, at the point where the caller asks.

    ``leaf=True`` promises that the call never waits for other pool work (one signature
    check): a thread waiting for some other result may then run it meanwhile."""

    __slots__ = ("_call", "_claim", "_done", "_error", "_value", "leaf")

    def __init__(self, call: Callable[[], T], *, leaf: bool = False) -> None:
        self._call: Callable[[], T] | None = call
        self._claim = threading.Lock()
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self.leaf = leaf

    @property
    def claimed(self) -> bool:
        """Whether some thread has started (or finished) the call."""
        return self._claim.locked()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def run_here(self) -> None:
        """Run the call in this thread unless someone already started it."""
        if not self._claim.acquire(blocking=False):
            return
        call, self._call = self._call, None
        assert call is not None
        try:
            self._value = call()
        except BaseException as exc:  # kept and re-raised by result(), in the asking thread
            self._error = exc
        finally:
            self._done.set()
            _POOL.done()

    def wait(self) -> None:
        """Block until the call has run (without running it here; queued leaves may run here
        meanwhile)."""
        if not self._done.is_set():
            _POOL.wait_for(self)

    def result(self) -> T:
        """The call's value, or its exception raised here; runs it here if nobody has."""
        self.run_here()
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def offer(deferred: Deferred[T]) -> Deferred[T]:
    """Let a pool thread start ``deferred`` (when there is a pool); returns it."""
    _POOL.submit(deferred)
    return deferred


def defer(call: Callable[[], T], *, leaf: bool = False) -> Deferred[T]:
    """``call`` as a Deferred already offered to the pool."""
    return offer(Deferred(call, leaf=leaf))


def settle(deferreds: Sequence[Deferred[Any]]) -> None:
    """Run here, in order, every one nobody has started, then wait for the others."""
    for d in deferreds:
        d.run_here()
    for d in deferreds:
        d.wait()


def run_all(calls: Sequence[Callable[[], T]]) -> list[Deferred[T]]:
    """Run ``calls`` concurrently (the first one in this thread) and return them settled, in
    the given order; read each with ``result()``. One call (or no pool) runs right here."""
    done = [Deferred(c) for c in calls]
    for d in done[1:]:
        offer(d)
    settle(done)
    return done
