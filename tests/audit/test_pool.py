"""``agent.audit.pool``: a process pool that starts while its owner works.

Real processes (the replay's own ``forkserver`` context), no mocks: readiness only after a
worker ran its initializer, work runs in the workers, a pool whose workers cannot start is never
ready and says why, and closing a pool that is still starting neither hangs nor leaks it.
"""

from __future__ import annotations

import multiprocessing.context
import os
import subprocess
import sys
import threading
import time

import pytest

from agent.audit.pool import BackgroundPool
from agent.audit.replay import _pool_context

_INIT: dict[str, int] = {}


def _init(value: int) -> None:
    _INIT["value"] = value


def _init_fails(value: int) -> None:
    raise RuntimeError("this worker cannot start")


def _initialised_value_and_pid() -> tuple[int, int]:
    return _INIT["value"], os.getpid()


def _wait_ready(pool: BackgroundPool, limit_s: float = 60.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if pool.ready():
            return True
        if pool.error is not None:
            return False
        time.sleep(0.01)
    return False


def test_work_runs_in_initialised_workers() -> None:
    pool = BackgroundPool(2, mp_context=_pool_context(), initializer=_init, initargs=(7,))
    try:
        assert _wait_ready(pool)
        results = [pool.submit(_initialised_value_and_pid).result(60) for _ in range(4)]
    finally:
        pool.close()
    assert {value for value, _ in results} == {7}  # the initializer ran in each worker
    assert os.getpid() not in {pid for _, pid in results}  # and the work ran there, not here
    assert pool.error is None


def test_a_pool_whose_workers_cannot_start_is_never_ready() -> None:
    pool = BackgroundPool(1, mp_context=_pool_context(), initializer=_init_fails, initargs=(1,))
    try:
        pool.wait_started()  # the executor exists; its worker dies in its initializer
        assert not _wait_ready(pool)
        assert pool.error is not None
        assert not pool.ready()
    finally:
        pool.close()


_HOLD = threading.Event()


class _HeldProcess(multiprocessing.context.ForkServerProcess):
    def start(self) -> None:
        assert _HOLD.wait(60), "held start never released"
        super().start()


class _HeldStart(multiprocessing.context.ForkServerContext):
    """Starts workers only once ``_HOLD`` is set: a pool that is, for certain, still starting."""

    Process = _HeldProcess


def test_submit_before_the_pool_exists_is_refused() -> None:
    _HOLD.clear()
    pool = BackgroundPool(1, mp_context=_HeldStart(), initializer=_init, initargs=(3,))
    try:
        assert not pool.ready()
        with pytest.raises(RuntimeError, match="has not started"):
            pool.submit(_initialised_value_and_pid)
        _HOLD.set()
        assert _wait_ready(pool)
        assert pool.submit(_initialised_value_and_pid).result(60)[0] == 3
    finally:
        _HOLD.set()
        pool.close()


def test_closing_waits_for_a_pool_that_is_still_starting() -> None:
    """Closed while its start is held: ``close`` returns only after the pool came up and was
    shut down, so no worker is left half-started when the process exits."""
    _HOLD.clear()
    pool = BackgroundPool(1, mp_context=_HeldStart(), initializer=_init, initargs=(1,))
    releaser = threading.Timer(0.3, _HOLD.set)
    releaser.start()
    try:
        start = time.monotonic()
        pool.close()
        assert time.monotonic() - start >= 0.25  # it waited for the held start
        assert not pool._thread.is_alive()
        executor = pool._executor
        assert executor is not None
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(_initialised_value_and_pid)
    finally:
        _HOLD.set()
        releaser.join()


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BackgroundPool(0, mp_context=_pool_context(), initializer=_init, initargs=(1,))


class _NoProcessesProcess(multiprocessing.context.ForkServerProcess):
    def start(self) -> None:
        raise OSError("no processes here")


class _NoProcesses(multiprocessing.context.ForkServerContext):
    """A start method that cannot start anything (as in a sandbox with a process limit)."""

    Process = _NoProcessesProcess


def test_a_pool_that_cannot_start_keeps_the_error() -> None:
    pool = BackgroundPool(1, mp_context=_NoProcesses(), initializer=_init, initargs=(1,))
    try:
        with pytest.raises(OSError, match="no processes here"):
            pool.wait_started()
        assert not pool.ready()
        assert isinstance(pool.error, OSError)
    finally:
        pool.close()  # nothing to stop; must not raise


_STARTS = {"n": 0}


class _SecondStartFailsProcess(multiprocessing.context.ForkServerProcess):
    def start(self) -> None:
        _STARTS["n"] += 1
        if _STARTS["n"] == 2:
            raise OSError("process limit reached on the second worker")
        super().start()


class _SecondStartFails(multiprocessing.context.ForkServerContext):
    """One worker starts, the next cannot (a process limit, ENOMEM)."""

    Process = _SecondStartFailsProcess


def test_a_half_started_pool_is_stopped_and_reaped() -> None:
    _STARTS["n"] = 0
    pool = BackgroundPool(2, mp_context=_SecondStartFails(), initializer=_init, initargs=(1,))
    try:
        with pytest.raises(OSError, match="second worker"):
            pool.wait_started()
        assert not pool.ready()
        assert isinstance(pool.error, OSError)
    finally:
        pool.close()
    assert _STARTS["n"] == 2
    assert multiprocessing.active_children() == []  # the worker that did start was reaped


def test_the_forkserver_preload_ignores_ctrl_c_only_while_importing() -> None:
    """Imported as the forkserver imports it (the name ``_pool_context`` gives the server):
    while the replay modules load, SIGINT is ignored (a finder that sees their import records
    the handler then); afterwards it is back to Python's default, which the server's workers
    restore, and the modules are loaded."""
    code = (
        "import signal, sys\n"
        "seen = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'agent.audit.replay':\n"
        "            seen.append(signal.getsignal(signal.SIGINT))\n"
        "        return None\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from agent.audit.replay import _pool_context\n"
        "del sys.modules['agent.audit.replay']\n"
        "seen.clear()\n"
        "import multiprocessing.forkserver as fs\n"
        "_pool_context()\n"
        "(name,) = fs._forkserver._preload_modules\n"
        "__import__(name)\n"
        "assert seen == [signal.SIG_IGN], seen\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "assert 'agent.audit.replay' in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "ok"


def test_replay_workers_leave_ctrl_c_to_the_parent() -> None:
    """Review: a Ctrl-C on the terminal reaches every process in the foreground group, and each
    replay worker (Python's default handler) printed its own KeyboardInterrupt traceback. The
    workers' initializer now ignores SIGINT; the parent handles it and stops the pool. Checked
    in real workers of the replay's own pool, and in-process (handler restored after)."""
    import signal

    from cryptography.hazmat.primitives.asymmetric import ed25519

    import agent.audit.replay as replay
    from agent.audit.replay import ReplayConfig, _init_worker, _spki

    config = ReplayConfig(_spki(ed25519.Ed25519PrivateKey.generate().public_key()))
    previous = signal.getsignal(signal.SIGINT)
    pool = BackgroundPool(
        2, mp_context=_pool_context(), initializer=_init_worker, initargs=(config,)
    )
    try:
        assert _wait_ready(pool)
        handlers = [pool.submit(signal.getsignal, signal.SIGINT).result(60) for _ in range(4)]
    finally:
        pool.close()
    assert handlers == [signal.SIG_IGN] * 4
    assert signal.getsignal(signal.SIGINT) is previous  # this process's own is untouched
    try:
        _init_worker(config)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
        replay._WORKER = None
