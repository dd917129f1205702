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
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """The process's one verification pool, created on first use."""

    def __init__(self) -> None:
        #: Pool threads: one fewer than the usable cores (the calling thread works too), at
        #: least one on a multi-core machine, none (all work in the caller) on a single core.
        self.workers = min(MAX_POOL_WORKERS, _usable_cpus() - 1)
        self.pool: ThreadPoolExecutor | None = None
        self.lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor | None:
        if self.workers <= 0:
            return None
        pool = self.pool
        if pool is None:
            with self.lock:
                if self.pool is None:
                    self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lessee-verify")
                pool = self.pool
        return pool

    def after_fork_in_child(self) -> None:
        """A forked child has none of the parent's threads: it starts its own pool if needed."""
        self.pool, self.lock = None, threading.Lock()


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
    with _POOL.lock:
        previous, _POOL.workers = _POOL.workers, min(workers, MAX_POOL_WORKERS)
        old, _POOL.pool = _POOL.pool, None
    if old is not None:
        old.shutdown(wait=False)
    return previous


class Deferred(Generic[T]):
    """One call, run exactly once: by a pool thread, or by the first caller of ``result()``
    (or ``run_here()``) if no thread has started it yet. Its exception is kept and raised
    by ``result()``, in the caller's thread, at the point where the caller asks."""

    __slots__ = ("_call", "_claim", "_done", "_error", "_value")

    def __init__(self, call: Callable[[], T]) -> None:
        self._call: Callable[[], T] | None = call
        self._claim = threading.Lock()
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

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

    def wait(self) -> None:
        """Block until the call has run (without running it here)."""
        self._done.wait()

    def result(self) -> T:
        """The call's value, or its exception raised here; runs it here if nobody has."""
        self.run_here()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def offer(deferred: Deferred[T]) -> Deferred[T]:
    """Let a pool thread start ``deferred`` (when there is a pool); returns it."""
    pool = _POOL.get()
    if pool is not None:
        with contextlib.suppress(RuntimeError):  # shutting down: whoever needs it runs it
            pool.submit(deferred.run_here)
    return deferred


def defer(call: Callable[[], T]) -> Deferred[T]:
    """``call`` as a Deferred already offered to the pool."""
    return offer(Deferred(call))


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
