"""A process pool that starts in the background while its owner keeps working.

Why: the replay's workers fork from a ``forkserver`` that first imports the whole verifier,
and ``ProcessPoolExecutor.submit`` blocks until the first worker exists. Measured on the 2-core
development machine, the first ``submit`` returned after ~0.39 s -- longer than replaying 120
one-GPU entries serially (~0.28 s) -- and a two-worker replay of that log took 0.54 s of wall
time against 0.28 s serial. Here the pool is made, and each worker asked to report in, on a
helper thread; the owner asks :meth:`BackgroundPool.ready` between pieces of its own work and
switches to the pool only once a worker has answered. An owner that finishes first hands it no
work; closing still waits until the workers are up and stopped, so none is left half-started.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing.context
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _report_in() -> bool:
    """A worker's first task: once it returns, that worker is running and initialised."""
    return True


class BackgroundPool:
    """``size`` worker processes, started on a helper thread as soon as this is made.

    ``ready()`` is True once the pool exists and at least one worker has run its initializer
    and reported in; only then may :meth:`submit` be called (or after :meth:`wait_started`).
    A pool that could not start, or whose workers died while starting, is never ready and keeps
    the error in :attr:`error`: a caller that works in-process meanwhile simply carries on.
    """

    def __init__(
        self,
        size: int,
        *,
        mp_context: multiprocessing.context.BaseContext,
        initializer: Callable[..., object],
        initargs: tuple[Any, ...],
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one worker")
        self.size = size
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._probes: list[concurrent.futures.Future[bool]] = []
        self._thread = threading.Thread(
            target=self._start,
            args=(mp_context, initializer, initargs),
            name="lessee-pool-start",
            daemon=True,
        )
        self._thread.start()

    def _start(
        self,
        mp_context: multiprocessing.context.BaseContext,
        initializer: Callable[..., object],
        initargs: tuple[Any, ...],
    ) -> None:
        try:
            executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=mp_context,
                initializer=initializer,
                initargs=initargs,
            )
        except Exception as exc:  # not even an executor: work in-process
            self.error = exc.with_traceback(None)
            self._started.set()
            return
        try:
            probes = [executor.submit(_report_in) for _ in range(self.size)]
        except Exception as exc:  # no (more) processes here (a sandbox, a limit, ENOMEM)
            # Workers started before the failure are stopped and reaped here, not left to the
            # garbage collector (the traceback would keep the executor alive).
            executor.shutdown(wait=True, cancel_futures=True)
            self.error = exc.with_traceback(None)
            self._started.set()
            return
        with self._lock:
            self._executor, self._probes = executor, probes
            closed = self._closed
        self._started.set()
        if closed:  # the owner finished before the pool came up (and waits in ``close``)
            executor.shutdown(wait=True, cancel_futures=True)

    def ready(self) -> bool:
        """Whether work may go to the pool now (never blocks)."""
        if not self._started.is_set() or self._executor is None:
            return False
        for probe in self._probes:
            if not probe.done():
                continue
            failure = RuntimeError("pool stopped") if probe.cancelled() else probe.exception()
            if failure is not None:  # a worker died starting: the pool is broken for good
                self.error = self.error or failure
                return False
            return True
        return False

    def wait_started(self) -> None:
        """Block until the pool exists; raise what stopped it from starting."""
        self._started.wait()
        if self.error is not None:
            raise self.error

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Queue ``fn(*args)`` on the pool (call only once :meth:`ready` or
        :meth:`wait_started` said it exists)."""
        executor = self._executor
        if executor is None:
            raise RuntimeError("the pool has not started")
        return executor.submit(fn, *args)

    def close(self) -> None:
        """Stop the pool and reap its processes, waiting for workers that are still starting.

        Waiting matters even for a pool that never got work: a worker the ``forkserver`` is
        still setting up when this process exits finds its queues' semaphores gone and prints a
        traceback (seen on ``audit replay`` of short logs). So a caller that finished first
        still waits here for the pool's start, at most ~0.4 s on the development machine."""
        with self._lock:
            self._closed = True
            executor = self._executor
        if executor is None:
            self._thread.join()  # the helper shuts the pool down as soon as it exists
            return
        executor.shutdown(wait=True, cancel_futures=True)
