"""``lessee rim verify``: check one NVIDIA RIM on its own, as of a time.

Schema (strict parse), signer chain to the pinned NVIDIA RIM root, XML signature, and the
revocation of the signer chain (OCSP: ``online``, ``stapled`` with ``--ocsp FILE``, or ``skip``,
which can at best give a warning). Prints the RIM's identity, version and active measurements.

Exit codes: 0 every check passed (or passed with a warning the user asked for: ``skip``, an
allowed certificate hold); 1 rejected or a check could not be done; 2 unreadable or malformed RIM
or bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.cli._revocation import add_revocation_args, revocation_from_args
from attest.errors import InputError, VerificationError
from attest.nvidia.rim import MAX_RIM_BYTES, Rim, VerifiedRim, parse_rim, verify_rim
from attest.revocation import (
    OcspCheck,
    RevocationMode,
    check_chain_revocation,
    nvidia_rim_ocsp_indices,
)
from attest.timeutil import parse_iso8601
from attest.x509chain import describe

EXIT_OK = 0
EXIT_REJECTED = 1


def read_rim_file(path: str) -> bytes:
    """Read a RIM file, refusing anything larger than a RIM can be."""
    with Path(path).open("rb") as f:
        data = f.read(MAX_RIM_BYTES + 1)
    if len(data) > MAX_RIM_BYTES:
        raise InputError(f"{path}: larger than {MAX_RIM_BYTES} bytes; not a RIM")
    return data


def _cert_json(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": describe(cert),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def rim_json(rim: Rim) -> dict[str, Any]:
    """Identity, version and active measurements of a RIM (hex values)."""
    return {
        "tag_id": rim.tag_id,
        "name": rim.name,
        "kind": rim.kind,
        "version": rim.version,
        "product": rim.product,
        "edition": rim.edition,
        "revision": rim.revision,
        "manufacturer": rim.manufacturer,
        "manufacturer_id": rim.manufacturer_id,
        "platform_model": rim.platform_model,
        "firmware_manufacturer": rim.firmware_manufacturer,
        "firmware_manufacturer_id": rim.firmware_manufacturer_id,
        "entity": rim.entity_name,
        "measurement_count": len(rim.measurements),
        "active_measurements": [
            {
                "index": m.index,
                "block_index": m.block_index,
                "name": m.name,
                "size": m.size,
                "alternatives": [v.hex() for v in m.alternatives],
            }
            for m in rim.active_measurements
        ],
    }


def _check_json(check: OcspCheck) -> dict[str, Any]:
    return {
        "subject": check.subject,
        "serial": format(check.serial, "x"),
        "status": check.status,
        "ok": check.ok,
        "code": check.code,
        "detail": check.detail,
        "this_update": check.this_update.isoformat() if check.this_update else None,
        "next_update": check.next_update.isoformat() if check.next_update else None,
    }


def _print_text(out: dict[str, Any]) -> None:
    rim = out["rim"]
    print(f"RIM {rim['name']} {rim['version']} ({rim['kind']})")
    print(f"  tag id        {rim['tag_id']}")
    print(f"  product       {rim['product']}  edition {rim['edition']}  revision {rim['revision']}")
    print(f"  manufacturer  {rim['manufacturer']} (id {rim['manufacturer_id']})")
    print(f"  checked at    {out['checked_at']}")
    chain = out.get("chain")
    if chain is not None:
        names = " <- ".join(c["subject"] for c in (*chain["certificates"], chain["root"]))
        print(f"  signer chain  {names}")
        print(f"  chain valid   {chain['valid_from']} .. {chain['valid_until']}")
        print("  signature     ok (ecdsa-sha384, SHA-384, C14N 1.1, whole document)")
    rev = out.get("revocation")
    if rev is not None:
        print(f"  revocation    mode {rev['mode']}")
        for c in rev["checks"]:
            print(f"    {c['subject']}: {c['status']} ({c['detail']})")
    active = rim["active_measurements"]
    print(f"  active measurements: {len(active)} of {rim['measurement_count']}")
    for m in active:
        alts = m["alternatives"]
        head = f"    index {m['index']:3d} (block {m['block_index']:3d}) {m['name']}: "
        print(head + alts[0])
        for alt in alts[1:]:
            print(" " * len(head) + alt)
    line = f"status: {out['status']}"
    if out.get("reason"):
        line += f" ({out['reason']})"
    print(line)


def _verify(args: argparse.Namespace) -> int:
    at = parse_iso8601(args.at) if args.at else datetime.now(UTC)
    mode, source = revocation_from_args(args)
    rim = parse_rim(read_rim_file(args.rim))
    out: dict[str, Any] = {"checked_at": at.isoformat(), "rim": rim_json(rim)}
    try:
        verified: VerifiedRim = verify_rim(rim, at=at)
    except VerificationError as exc:
        out.update(status="rejected", reason=exc.reason, message=str(exc))
        _emit(args, out)
        print(f"lessee: rejected: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    chain = verified.chain
    out["chain"] = {
        "certificates": [_cert_json(c) for c in chain.certs],
        "root": _cert_json(chain.root),
        "valid_from": chain.valid_from.isoformat(),
        "valid_until": chain.valid_until.isoformat(),
    }
    full = (*chain.certs, chain.root)
    checks = check_chain_revocation(
        full,
        indices=nvidia_rim_ocsp_indices(len(full)),
        mode=mode,
        source=source,
        at=at,
        allow_hold=args.allow_hold,
    )
    out["revocation"] = {"mode": mode.value, "checks": [_check_json(c) for c in checks]}
    if mode == RevocationMode.SKIP:
        out.update(status="warning", reason="revocation_skipped")
        _emit(args, out)
        print(
            "lessee: WARNING: revocation of the RIM signer chain was NOT checked "
            "(--revocation skip); a revoked signer would pass",
            file=sys.stderr,
        )
        return EXIT_OK
    failed = [c for c in checks if not c.ok]
    if failed:
        first = failed[0]
        out.update(status="rejected", reason=f"rim_revocation_{first.status}")
        _emit(args, out)
        print(
            f"lessee: rejected: revocation of '{first.subject}': {first.status} ({first.detail})",
            file=sys.stderr,
        )
        return EXIT_REJECTED
    if any(c.is_warning for c in checks):
        out.update(status="warning", reason="certificate_hold")
        _emit(args, out)
        print("lessee: WARNING: a RIM signer chain certificate is on hold", file=sys.stderr)
        return EXIT_OK
    out.update(status="ok", reason=None)
    _emit(args, out)
    return EXIT_OK


def _emit(args: argparse.Namespace, out: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        _print_text(out)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    ver = sub.add_parser(
        "verify",
        help="check one RIM: schema, signer chain, XML signature, revocation",
        description=(
            "Check one NVIDIA RIM (SWID .swidtag/.xml) on its own as of a time: strict schema, "
            "signer chain to the pinned NVIDIA RIM root, XML-DSig (ECDSA-SHA384, whole "
            "document), and OCSP for the signer chain. Prints identity, version and active "
            "measurements. Exit 0 ok (or a warning you asked for), 1 rejected, 2 bad input."
        ),
    )
    ver.add_argument("rim", metavar="RIM", help="the RIM file")
    ver.add_argument("--at", metavar="ISO-8601", help="verification time (default: now)")
    add_revocation_args(ver)
    ver.add_argument("--json", action="store_true", help="machine-readable output")
    ver.set_defaults(func=_verify)
