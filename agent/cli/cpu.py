"""``lessee cpu inspect|verify``: AMD SEV-SNP attestation reports and Intel TDX quotes.

The format is recognised from the bytes (an SNP report is exactly 1184 bytes with a known
version; a TDX quote starts with version 4 or 5 and TEE type 0x81), so one command serves both.
Each format's work lives in its own module (``cpu_snp``, ``cpu_tdx``) behind two functions:
``run_inspect(data, args) -> int`` and ``run_verify(data, args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Protocol, cast

from agent.bounded_read import read_bounded
from attest.errors import InputError

#: Largest CPU evidence file read (TDX quotes with embedded chains are under 10 KiB).
MAX_CPU_EVIDENCE_BYTES = 1 << 20
SNP_REPORT_SIZE = 1184
_CAPTURE_HELP = (
    "TDX: the file is a capture buffer; zero bytes after the quote are allowed (refused by default)"
)


class _FormatModule(Protocol):
    def run_inspect(self, data: bytes, args: argparse.Namespace) -> int: ...
    def run_verify(self, data: bytes, args: argparse.Namespace) -> int: ...


def read_evidence(path: str) -> bytes:
    """Read a report or quote: raw binary, or hex text (as some tools print it)."""
    data = read_bounded(path, MAX_CPU_EVIDENCE_BYTES, "evidence")
    stripped = b"".join(data.split())
    if (
        stripped
        and all(c in b"0123456789abcdefABCDEF" for c in stripped)
        and len(stripped) % 2 == 0
    ):
        return bytes.fromhex(stripped.decode())
    return data


def detect_format(data: bytes) -> str:
    """'snp' or 'tdx', from the leading bytes; InputError if neither."""
    if len(data) >= 8:
        version = int.from_bytes(data[0:2], "little")
        key_type = int.from_bytes(data[2:4], "little")
        tee_type = int.from_bytes(data[4:8], "little")
        # The attestation key type (2, ECDSA-256-with-P-256) too: an SNP report's first four
        # bytes are its 32-bit VERSION and the next four its GUEST_SVN, which the guest owner
        # picks, so a v5 report with GUEST_SVN 0x81 matched version and TEE type alone.
        if version in (4, 5) and key_type == 2 and tee_type == 0x81:
            return "tdx"
    if len(data) == SNP_REPORT_SIZE and int.from_bytes(data[0:4], "little") in (2, 3, 5):
        return "snp"
    raise InputError("not an AMD SEV-SNP report (1184 bytes) nor an Intel TDX quote (v4/v5)")


def _module(fmt: str) -> _FormatModule:
    return cast(_FormatModule, importlib.import_module(f"agent.cli.cpu_{fmt}"))


def _inspect(args: argparse.Namespace) -> int:
    data = read_evidence(args.evidence)
    return _module(detect_format(data)).run_inspect(data, args)


def _verify(args: argparse.Namespace) -> int:
    data = read_evidence(args.evidence)
    return _module(detect_format(data)).run_verify(data, args)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    ins = sub.add_parser("inspect", help="print the parsed report or quote")
    ins.add_argument("evidence", metavar="EVIDENCE", help="SNP report or TDX quote (binary or hex)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.add_argument("--capture-buffer", action="store_true", help=_CAPTURE_HELP)
    ins.set_defaults(func=_inspect)

    ver = sub.add_parser(
        "verify",
        help="verify signatures, certificate chains, collateral and TCB as of a time",
        description=(
            "Verify an SNP report (signature, VCEK/VLEK chain to the pinned AMD ARK, TCB) or a "
            "TDX quote (quote and QE signatures, PCK chain to the pinned Intel root, collateral "
            "and TCB status). Exit 0 verified, 1 rejected, 2 bad input."
        ),
    )
    ver.add_argument("evidence", metavar="EVIDENCE", help="SNP report or TDX quote (binary or hex)")
    ver.add_argument(
        "--certs",
        action="append",
        default=[],
        metavar="FILE",
        help="SNP: VCEK/VLEK certificate (DER or PEM) and ASK/ARK chain (PEM); repeatable",
    )
    ver.add_argument(
        "--collateral",
        metavar="FILE",
        help="TDX: collateral JSON (TCB info, QE identity, CRLs); SNP: AMD CRL (DER or PEM)",
    )
    ver.add_argument(
        "--skip-revocation",
        action="store_true",
        help=(
            "SNP only: verify without AMD's CRL (offline, say). Without --collateral or this "
            "flag an SNP report is rejected (exit 1): the default policy rejects evidence whose "
            "revocation was not checked. A TDX quote always needs its --collateral"
        ),
    )
    ver.add_argument("--at", metavar="ISO-8601", help="verification time (default: now)")
    ver.add_argument(
        "--report-data", metavar="HEX", help="expected 64-byte report data (the session binding)"
    )
    ver.add_argument("--json", action="store_true", help="machine-readable output")
    ver.add_argument("--capture-buffer", action="store_true", help=_CAPTURE_HELP)
    ver.set_defaults(func=_verify)
