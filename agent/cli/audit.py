"""``lessee audit verify`` and ``lessee audit replay``: check an exported log bundle offline.

``verify`` checks the log's structure; ``replay`` runs ``verify`` and then re-runs every logged
decision (``agent.audit.replay``). Exit codes follow the CLI contract: 0 the log checks out;
1 any finding (each printed with the entry or checkpoint it concerns); 2 the bundle, a key,
a candidate root or a checkpoint file cannot be read.

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

from agent.audit.bundle import Bundle
from agent.audit.replay import (
    MAX_CANDIDATE_FILE_BYTES,
    MAX_WORKERS,
    ROOT_ROLES,
    RootCandidate,
    default_workers,
    load_root_candidates,
    parse_candidate_arg,
    replay_bundle,
)
from agent.audit.verify import check_witness_keys, verify_bundle_file
from agent.bounded_read import read_bounded
from agent.cli._keys import load_verifying_key
from agent.cli._progress import Progress
from attest.binding import DEFAULT_PROTOCOL_LABEL
from attest.errors import InputError
from attest.log.keys import MAX_VKEY_FILE_BYTES, load_verifier
from attest.log.note import MAX_NOTE_BYTES, NoteVerifier

EXIT_OK, EXIT_FINDINGS = 0, 1


def read_log_key(path: str) -> NoteVerifier:
    """A vkey file: one line ``<name>+<hash>+<base64>`` (a trailing newline is fine)."""
    raw = read_bounded(path, MAX_VKEY_FILE_BYTES, "log key")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: log key is not ASCII") from exc
    lines = text.splitlines()
    if len(lines) != 1:
        raise InputError(f"{path}: a log key file holds exactly one vkey line")
    return load_verifier(lines[0])


def read_witness_keys(paths: list[str] | None) -> list[NoteVerifier]:
    """``--witness-key`` files: one tlog-cosignature (type 0x04) vkey each. A key of another
    type is refused here (exit 2) rather than left to match nothing."""
    witnesses = [read_log_key(path) for path in paths or []]
    check_witness_keys(witnesses)
    return witnesses


def _add_witness_key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--witness-key",
        action="append",
        metavar="VKEY_FILE",
        help=(
            "a witness's tlog-cosignature vkey; its cosignatures on the checkpoints are "
            "verified where present, and a bad one is a finding (repeatable)"
        ),
    )


def _verify(args: argparse.Namespace) -> int:
    log_key = read_log_key(args.log_key)
    witnesses = read_witness_keys(args.witness_key)
    previous = [
        (path, read_bounded(path, MAX_NOTE_BYTES, "checkpoint"))
        for path in args.previous_checkpoint or []
    ]
    result = verify_bundle_file(args.bundle, log_key, previous=previous, witnesses=witnesses)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        for finding in result.findings:
            print(finding.line())
        verdict = "OK" if result.ok else f"REJECTED ({len(result.findings)} findings)"
        print(
            f"{verdict}: {result.entries} entries, {result.checkpoints_verified} signed "
            f"checkpoints ({result.witness_cosignatures} witness cosignatures), "
            f"tree size {result.tree_size}, root {result.root_hash or '-'}",
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
    _add_witness_key(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_verify)


class _EntryProgress(Progress):
    """The shared progress line, counting entries instead of bytes."""

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self._start, 1e-9)
        pct = f"{100 * self.done / self.total:5.1f}% " if self.total else ""
        return f"{self.label}: {pct}{self.done}/{self.total} entries {rate:.0f}/s"


def _read_candidates(args: list[str]) -> list[RootCandidate]:
    out: list[RootCandidate] = []
    for arg in args:
        role, path = parse_candidate_arg(arg)
        data = read_bounded(path, MAX_CANDIDATE_FILE_BYTES, "trust-root candidate file")
        try:
            out.extend(load_root_candidates(data, role=role))
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from exc
    return out


def _replay(args: argparse.Namespace) -> int:
    log_key = read_log_key(args.log_key)
    verifier_key = load_verifying_key(args.verifier_key)
    witnesses = read_witness_keys(args.witness_key)
    candidates = _read_candidates(args.trust_root_candidates or [])
    previous = [
        (path, read_bounded(path, MAX_NOTE_BYTES, "checkpoint"))
        for path in args.previous_checkpoint or []
    ]
    workers = args.workers if args.workers is not None else default_workers()
    if not 1 <= workers <= MAX_WORKERS:
        raise InputError(f"--workers must be 1..{MAX_WORKERS}")
    with Bundle(args.bundle) as bundle:
        progress = _EntryProgress("replay", len(bundle.records), quiet=args.quiet)
        report = replay_bundle(
            bundle,
            log_key,
            verifier_key,
            previous=previous,
            witnesses=witnesses,
            candidates=candidates,
            protocol_label=args.protocol_label,
            workers=workers,
            on_progress=progress.advance,
        )
        progress.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for finding in report.all_findings:
            print(finding.line())
        s = report.summary()
        verdict = "OK" if report.ok else f"REJECTED ({s['findings']} findings)"
        print(
            f"{verdict}: {s['entries']} entries ({s['attest']} attest, {s['release']} release, "
            f"{s['release_refused']} refused), "
            f"{s['verdicts_reproduced']}/{s['attest']} verdicts reproduced, "
            f"{report.audit.checkpoints_verified} signed checkpoints, "
            f"root {report.audit.root_hash or '-'}"
        )
    return EXIT_OK if report.ok else EXIT_FINDINGS


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="re-run every logged appraisal offline and check results, releases and nonces",
        description=(
            "Everything 'audit verify' checks, then for every entry: re-derive the binding, "
            "re-run parse, verify and appraise as of the logged time with the archived "
            "evidence, collateral and policy, check the logged result's signature and that it "
            "equals the recomputed verdict; every release must follow an affirming result for "
            "the same enclave key, model and binding, once; no nonce used twice. "
            "Exit 1 on any finding, 2 for unreadable input. See docs/log.md."
        ),
    )
    p.add_argument("bundle", metavar="BUNDLE", help="audit bundle exported by the broker")
    p.add_argument("--log-key", required=True, metavar="VKEY_FILE", help="the log's vkey")
    p.add_argument(
        "--verifier-key",
        required=True,
        metavar="KEY_FILE",
        help="the broker's result-signing public key (PEM or JWK), pinned",
    )
    p.add_argument(
        "--trust-root-candidates",
        nargs="+",
        action="extend",
        metavar="[ROLE=]FILE",
        help=(
            "PEM root certificates a logged policy may trust by SHA-256 (roots.extra_trusted_"
            f"sha256), used only for entries whose policy lists them; ROLE is one of {', '.join(ROOT_ROLES)} "
            "(guessed from the subject when left out)"
        ),
    )
    p.add_argument(
        "--previous-checkpoint",
        action="append",
        metavar="FILE",
        help="a signed checkpoint seen earlier; the bundle must be consistent with it (repeatable)",
    )
    _add_witness_key(p)
    p.add_argument(
        "--protocol-label",
        default=DEFAULT_PROTOCOL_LABEL,
        help="the broker's version-1 binding label, for results without an ear.lessee.binding "
        f"claim (entries from before binding version 2; default {DEFAULT_PROTOCOL_LABEL}); a "
        "version-2 result names its own label and device state (docs/binding.md)",
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="worker processes (default: one per CPU)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=_replay)


SubcommandAdder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
#: Subcommands of ``lessee audit``, in help order.
SUBCOMMANDS: list[tuple[str, SubcommandAdder]] = [("verify", _add_verify), ("replay", _add_replay)]


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    for _name, add in SUBCOMMANDS:
        add(sub)
