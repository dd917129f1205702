"""Argument types and small checks shared by the command groups.

Kept free of heavy imports (math only): ``build_parser`` imports the selected group's
module, and a group's ``register`` may use these.

A ``type=`` made here refuses a bad value with ``InputError`` naming the option (argparse lets
any exception but its own pass), which ``agent.cli.main`` prints as the CLI's one line,
``lessee: error: ...``, exit 2: never a ``ValueError``/``OverflowError`` deep inside a command,
nor a misleading refusal from the far end (a negative timeout arrives at the broker as a
deadline already past).
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from attest.errors import InputError

#: The longest timeout or grace period any option takes: a day (``agent.client.MAX_TIMEOUT_S``,
#: the bound ``lessee client generate`` always had; a test keeps the two equal).
MAX_SECONDS = 86_400.0
#: Largest process id taken (Linux's ``pid_max`` is at most 2**22; this is ``pid_t``'s range,
#: so ``os.kill`` never overflows).
MAX_PID = 2**31 - 1


def seconds_type(
    option: str, *, allow_zero: bool = False, maximum: float = MAX_SECONDS
) -> Callable[[str], float]:
    """``type=`` for ``option``: a finite number of seconds, more than 0 (``allow_zero``: 0 or
    more, for a grace period) and at most ``maximum``."""
    bounds = f"from 0 to {maximum:g}" if allow_zero else f"more than 0 and at most {maximum:g}"

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        low_ok = value >= 0.0 if allow_zero else value > 0.0
        if not (math.isfinite(value) and low_ok and value <= maximum):
            raise InputError(f"{option} takes a number of seconds {bounds}, not {text!r}")
        return value

    return seconds


def pid_type(option: str) -> Callable[[str], int]:
    """``type=`` for ``option``: one process's id, 2 or more. ``kill(0, ...)`` signals this
    process's whole group, a negative id another group, -1 every process the caller may
    signal, and 1 is init."""

    def process_id(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"{option} takes a process id, not {text!r}") from None
        if not 2 <= value <= MAX_PID:
            raise InputError(
                f"{option} takes one process's id (2 or more), not {text!r}: 0, 1 and "
                "negative ids would signal init, a process group or every process"
            )
        return value

    return process_id


def open_new_file(path: str | Path, *, mode: int = 0o644) -> IO[bytes]:
    """Create ``path`` for writing, refusing anything already there -- a file, or a symlink,
    dangling or not, which is never followed (``O_EXCL | O_NOFOLLOW``): an output the user
    named must not overwrite something, nor land somewhere else through a planted link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        raise InputError(f"{path}: exists (refusing to overwrite)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: is a symlink (refusing to write through it)") from None
        raise
    return os.fdopen(fd, "wb")
