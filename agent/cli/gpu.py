"""``lessee gpu inspect|verify``: NVIDIA GPU and NVSwitch attestation evidence.

EVIDENCE is an NVIDIA SDK evidence JSON (a list of ``{arch, certificate, evidence, nonce}``,
one or many devices), or one report as binary or hex text together with ``--certs`` (its PEM
chain). ``verify`` accepts several EVIDENCE files (a PPCIe system: GPUs and NVSwitches) and
checks them as one set.

This module reads files and talks to the network (NVIDIA's RIM and OCSP services, only when
asked); every decision is made in ``attest.nvidia.verifier``, which is pure. It must stay light:
no grpc, no numpy (``lessee gpu verify`` runs in well under a second).

Exit codes: 0 every check passed (also when the only warnings come from an explicit
``--revocation skip`` or ``--allow-hold``, with a loud line on stderr); 1 rejected or a check
could not be done; 2 unreadable or malformed input, or bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from agent.bounded_read import read_bounded
from agent.cli._revocation import add_revocation_args, revocation_from_args
from attest.errors import InputError
from attest.nvidia.evidence import (
    MAX_EVIDENCE_FILE_BYTES,
    DeviceEvidence,
    chain_arch,
    load_evidence,
    parse_nonce,
)
from attest.nvidia.opaque import DeviceKind, parse_opaque
from attest.nvidia.spdm import parse_report
from attest.timeutil import parse_iso8601
from attest.x509chain import MAX_PEM_CHAIN_BYTES, describe

EXIT_OK = 0
EXIT_REJECTED = 1
#: Evidence files per ``verify`` run: GPU JSON + switch JSON, or a few bare reports.
MAX_EVIDENCE_FILES = 16


def _load(paths: list[str], certs: str | None) -> list[DeviceEvidence]:
    if len(paths) > MAX_EVIDENCE_FILES:
        raise InputError(f"{len(paths)} evidence files; the limit is {MAX_EVIDENCE_FILES}")
    if certs is not None and len(paths) != 1:
        raise InputError("--certs goes with exactly one bare report")
    chain = read_bounded(certs, MAX_PEM_CHAIN_BYTES, "certificate chain") if certs else None
    out: list[DeviceEvidence] = []
    for path in paths:
        for ev in load_evidence(
            read_bounded(path, MAX_EVIDENCE_FILE_BYTES, "evidence"), certs=chain
        ):
            out.append(
                DeviceEvidence(
                    index=len(out),
                    arch=ev.arch,
                    report_bytes=ev.report_bytes,
                    chain=ev.chain,
                    nonce_hint=ev.nonce_hint,
                    declared_driver_version=ev.declared_driver_version,
                    declared_vbios_version=ev.declared_vbios_version,
                )
            )
    return out


# --- inspect ----------------------------------------------------------------------------------


def _kind_for(ev: DeviceEvidence) -> DeviceKind:
    arch = ev.arch or chain_arch(ev.chain)
    return arch.kind if arch is not None else DeviceKind.GPU


def _inspect_one(ev: DeviceEvidence) -> dict[str, object]:
    report = parse_report(ev.report_bytes)
    kind = _kind_for(ev)
    opaque = parse_opaque(report.response.opaque_data, kind)
    arch = ev.arch or chain_arch(ev.chain)
    return {
        "index": ev.index,
        "arch": arch.value if arch else None,
        "kind": kind.value,
        "report_length": len(report.raw),
        "request": {"nonce": report.request.nonce.hex(), "header": report.request.header_json()},
        "response": {"header": report.response.header_json()},
        "measurements": {str(b.index): b.value.hex() for b in report.response.blocks},
        "opaque": opaque.to_json(),
        "opaque_order": [f.name for f in opaque.fields],
        "signature": report.signature.hex(),
        "certificates": [describe(c) for c in ev.chain],
    }


def _cmd_inspect(args: argparse.Namespace) -> int:
    devices = [_inspect_one(ev) for ev in _load(args.evidence, args.certs)]
    if args.json:
        print(json.dumps(devices if len(devices) > 1 else devices[0], indent=2))
        return EXIT_OK
    for d in devices:
        print(f"device {d['index']}: {d['arch']} ({d['kind']}), {d['report_length']} bytes")
        req = d["request"]
        assert isinstance(req, dict)
        print(f"  nonce: {req['nonce']}")
        blocks = d["measurements"]
        assert isinstance(blocks, dict)
        print(f"  measurement blocks: {len(blocks)}")
        opaque = d["opaque"]
        assert isinstance(opaque, dict)
        for name, value in opaque.items():
            text = json.dumps(value)
            print(f"  {name}: {text if len(text) <= 100 else text[:97] + '...'}")
        certs = d["certificates"]
        assert isinstance(certs, list)
        print(f"  certificates: {' <- '.join(certs)}")
    return EXIT_OK


# --- verify -----------------------------------------------------------------------------------


def _rim_source(paths: list[str] | None) -> object:
    from agent import rim_fetch

    if paths:
        source = rim_fetch.DirectoryRimSource(paths)
        for label, reason in source.skipped:
            print(f"lessee: note: RIM input {label} skipped: {reason}", file=sys.stderr)
        return source
    return rim_fetch.OnlineRimSource()


def _print_text(result: object) -> None:
    from attest.nvidia.verifier import EvidenceSetResult

    assert isinstance(result, EvidenceSetResult)
    for d in result.devices:
        print(f"{d.name} ({d.arch or 'unknown'}): {d.status.value}")
        claims = d.claims
        for key in ("x-nvidia-gpu-driver-version", "x-nvidia-gpu-vbios-version"):
            if key in claims:
                print(f"  {key}: {claims[key]}")
        if "x-nvidia-switch-bios-version" in claims:
            print(f"  x-nvidia-switch-bios-version: {claims['x-nvidia-switch-bios-version']}")
        print(f"  measres: {claims.get('measres')}  fwid: {claims.get('x-lessee-fwid-binding')}")
        for f in d.failures:
            print(f"  FAIL {f}")
        for w in d.warnings:
            print(f"  warn {w}")
    if result.topology is not None:
        print(f"topology: {'consistent' if result.topology.ok else 'INCONSISTENT'}")
    for f in result.failures:
        print(f"FAIL {f}")
    print(f"overall: {result.status.value}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from attest.nvidia.verifier import Status, verify_gpu_evidence
    from attest.revocation.ocsp import RevocationMode

    at = parse_iso8601(args.at) if args.at else datetime.now(UTC)
    nonce = parse_nonce(args.nonce, where="--nonce") if args.nonce else None
    mode, ocsp_source = revocation_from_args(args)
    evidence = _load(args.evidence, args.certs)
    rim_source = _rim_source(args.rim)
    result = verify_gpu_evidence(
        evidence,
        at=at,
        expected_nonce=nonce,
        rim_source=rim_source,  # type: ignore[arg-type]
        revocation_mode=mode,
        ocsp_source=ocsp_source,
        allow_hold=args.allow_hold,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_text(result)
    if mode is RevocationMode.SKIP:
        print(
            "lessee: WARNING: certificate revocation was NOT checked (--revocation skip); "
            "this result is at best 'warning'",
            file=sys.stderr,
        )
    if result.status is Status.AFFIRMING:
        return EXIT_OK
    if result.status is Status.WARNING:
        if nonce is None:
            print(
                "lessee: rejected: no --nonce given, so the report's freshness was not checked",
                file=sys.stderr,
            )
            return EXIT_REJECTED
        return EXIT_OK  # only explicitly accepted warnings remain: skip / allowed hold
    first = next((f for d in result.devices for f in d.failures), next(iter(result.failures), None))
    count = sum(len(d.failures) for d in result.devices) + len(result.failures)
    print(f"lessee: rejected: {count} check(s) failed; first: {first}", file=sys.stderr)
    return EXIT_REJECTED


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    evidence_help = (
        "NVIDIA SDK evidence JSON (one or many devices), or one report as binary or hex text"
    )
    ins = sub.add_parser("inspect", help="print the parsed report(s)")
    ins.add_argument("evidence", metavar="EVIDENCE", nargs="+", help=evidence_help)
    ins.add_argument("--certs", metavar="CHAIN", help="PEM certificate chain of a bare report")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=_cmd_inspect)

    ver = sub.add_parser(
        "verify",
        help="verify signature, nonce, chain, revocation, FWID, RIMs and measurements",
        description=(
            "Verify NVIDIA GPU / NVSwitch evidence as of a time. Several EVIDENCE files are "
            "checked as one set (PPCIe: GPUs and NVSwitches, topology included)."
        ),
    )
    ver.add_argument("evidence", metavar="EVIDENCE", nargs="+", help=evidence_help)
    ver.add_argument("--certs", metavar="CHAIN", help="PEM certificate chain of a bare report")
    ver.add_argument("--nonce", metavar="HEX", help="the 32-byte nonce the reports must carry")
    ver.add_argument(
        "--rim",
        metavar="FILE_OR_DIR",
        action="append",
        help="RIM file or folder (repeatable); without it RIMs come from NVIDIA's RIM service",
    )
    ver.add_argument("--at", metavar="ISO-8601", help="verification time (default: now)")
    add_revocation_args(ver)
    ver.add_argument("--json", action="store_true", help="machine-readable output")
    ver.set_defaults(func=_cmd_verify)
