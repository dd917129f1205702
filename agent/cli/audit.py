"""``lessee audit verify``: check an exported attestation log bundle offline.

Exit codes follow the CLI contract: 0 the log checks out; 1 any finding (each printed with the
entry or checkpoint it concerns); 2 the bundle, key or checkpoint file cannot be read.

Extension point: each subcommand is one ``(name, add)`` pair in ``SUBCOMMANDS``, where ``add``
receives the subparsers object and sets ``func``. ``replay`` (re-running every appraisal) is
added there by its own module; it should call ``agent.audit.verify.verify_bundle`` first and
work from the returned ``AuditResult``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from agent.audit.verify import verify_bundle_file
from attest.errors import InputError
from attest.log.keys import MAX_VKEY_FILE_BYTES, load_verifier
from attest.log.note import MAX_NOTE_BYTES, NoteVerifier

EXIT_OK, EXIT_FINDINGS = 0, 1


def _read_bounded(path: str, limit: int, what: str) -> bytes:
    p = Path(path)
    if p.stat().st_size > limit:
        raise InputError(f"{path}: {what} larger than {limit} bytes")
    return p.read_bytes()


def read_log_key(path: str) -> NoteVerifier:
    """A vkey file: one line ``<name>+<hash>+<base64>`` (a trailing newline is fine)."""
    raw = _read_bounded(path, MAX_VKEY_FILE_BYTES, "log key")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: log key is not ASCII") from exc
    lines = text.splitlines()
    if len(lines) != 1:
        raise InputError(f"{path}: a log key file holds exactly one vkey line")
    return load_verifier(lines[0])


def _verify(args: argparse.Namespace) -> int:
    log_key = read_log_key(args.log_key)
    previous = [
        (path, _read_bounded(path, MAX_NOTE_BYTES, "checkpoint"))
        for path in args.previous_checkpoint or []
    ]
    result = verify_bundle_file(args.bundle, log_key, previous=previous)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        for finding in result.findings:
            print(finding.line())
        verdict = "OK" if result.ok else f"REJECTED ({len(result.findings)} findings)"
        print(
            f"{verdict}: {result.entries} entries, {result.checkpoints_verified} signed "
            f"checkpoints, tree size {result.tree_size}, root {result.root_hash or '-'}",
            file=sys.stdout,
        )
    return EXIT_OK if result.ok else EXIT_FINDINGS


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="check signatures, consistency, inclusion and blobs of an exported log bundle",
        description=(
            "Check a log bundle: every checkpoint signed by the log key, no forks, every "
            "entry included under the signed roots, no gaps, every blob present and intact, "
            "and consistency with checkpoints seen before. Exit 1 on any finding."
        ),
    )
    p.add_argument("bundle", metavar="BUNDLE", help="audit bundle exported by the broker")
    p.add_argument("--log-key", required=True, metavar="VKEY_FILE", help="the log's vkey")
    p.add_argument(
        "--previous-checkpoint",
        action="append",
        metavar="FILE",
        help="a signed checkpoint seen earlier; the bundle must be consistent with it (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_verify)


SubcommandAdder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
#: Subcommands of ``lessee audit``, in help order.
SUBCOMMANDS: list[tuple[str, SubcommandAdder]] = [("verify", _add_verify)]


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    for _name, add in SUBCOMMANDS:
        add(sub)
