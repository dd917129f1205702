"""``lessee threats``: show the threat model, or check it (as CI does)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attest.errors import InputError
from threat_model.check import check_model
from threat_model.model import load_threat_model
from threat_model.render import to_markdown, to_terminal


def _run(args: argparse.Namespace) -> int:
    model = load_threat_model()
    if args.check:
        if not Path(args.root).is_dir():
            raise InputError(f"--root {args.root}: not a directory (the repository to check)")
        problems = check_model(model, Path(args.root))
        for p in problems:
            print(f"threat model: {p}", file=sys.stderr)
        print(f"{len(model.threats)} threats, {len(problems)} problems")
        return 1 if problems else 0
    sys.stdout.write(to_markdown(model) if args.markdown else to_terminal(model))
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--markdown", action="store_true", help="print Markdown (for docs/threat-model.md)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check that every mitigation module and test named in the model exists (CI runs this)",
    )
    parser.add_argument("--root", default=".", help="repository root for --check (default: .)")
    parser.set_defaults(func=_run)
