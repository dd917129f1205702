"""``lessee demo [--workdir DIR]``: the end-to-end flow on emulated hardware (see agent.demo).

Exit 0 only if every step had its expected outcome (the good enclave gets the key and loads the
weights; tampered evidence, a replayed nonce, a debug CPU and a non-CC GPU are each refused; the
exported log verifies); 1 otherwise; 2 a ``--workdir`` that is not new, empty or an earlier
demo's (the demo overwrites files there by fixed names), or that (or, reused, a subdirectory the
demo writes into) is not the user's own or is writable by group or others.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(Path(args.workdir) if args.workdir else None, sys.stdout)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep everything the demo makes here (default: a temporary directory, removed); "
        "a new or empty directory, or one an earlier demo run made (it holds a .lessee-demo "
        "file, and the run overwrites what it left): any other non-empty directory, or one "
        "group or others can write, is refused",
    )
    parser.set_defaults(func=_run)
