"""What the replay's ``forkserver`` imports before it forks any worker.

The server ignores SIGINT only once its preload is done, and the preload (the whole verifier)
takes ~0.3 s: a Ctrl-C in that window printed ``KeyboardInterrupt`` from ``forkserver.py`` on
the auditor's terminal. So SIGINT is ignored during the import and the previous handler put
back right after, before the server records the handlers its workers restore. The workers
themselves ignore SIGINT from their initializer on (``agent.audit.replay._init_worker``): only
the parent handles a Ctrl-C, and stops the pool.
"""

from __future__ import annotations

import signal

_previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    import agent.audit.replay  # noqa: F401  (the preload itself)
finally:
    signal.signal(signal.SIGINT, _previous)
