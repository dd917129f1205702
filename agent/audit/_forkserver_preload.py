"""What the replay's ``forkserver`` imports before it forks any worker.

The server ignores SIGINT only once its preload is done, and the preload (the whole verifier)
takes ~0.3 s: a Ctrl-C in that window printed ``KeyboardInterrupt`` from ``forkserver.py`` on
the auditor's terminal. So SIGINT is ignored during the import and the previous handler put
back right after, before the server records the handlers its workers restore (workers keep
Python's default and stop on Ctrl-C as before).
"""

from __future__ import annotations

import signal

_previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    import agent.audit.replay  # noqa: F401  (the preload itself)
finally:
    signal.signal(signal.SIGINT, _previous)
