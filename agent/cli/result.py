"""``lessee result verify``: check a signed attestation result (EAR) with a pinned key."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.bounded_read import read_bounded
from agent.cli._keys import load_verifying_key
from attest.ear import Status, verify_ear
from attest.errors import InputError
from attest.timeutil import parse_iso8601

MAX_TOKEN_FILE_BYTES = 1024 * 1024


def _token(arg: str) -> str:
    if arg.count(".") == 2 and "/" not in arg and len(arg) > 255:
        return arg  # too long to be a file name: a token given inline
    if arg.count(".") == 2 and "/" not in arg and not Path(arg).exists():
        return arg
    data = read_bounded(arg, MAX_TOKEN_FILE_BYTES, "token file")
    if not data.isascii():
        raise InputError(f"{arg}: not a token (a compact JWS is ASCII text)")
    return data.decode("ascii").strip()


def _verify(args: argparse.Namespace) -> int:
    key = load_verifying_key(args.verifier_key)
    at = parse_iso8601(args.at) if args.at else datetime.now(UTC)
    result = verify_ear(_token(args.token), key, at=at, require_lessee_profile=not args.any_profile)
    claims = result.to_claims()
    if args.json:
        print(json.dumps(claims, indent=1, sort_keys=True))
    else:
        print(f"profile: {result.profile}")
        print(f"issued: {datetime.fromtimestamp(result.issued_at, UTC).isoformat()}")
        if result.expires_at is not None:
            print(f"expires: {datetime.fromtimestamp(result.expires_at, UTC).isoformat()}")
        if result.enclave_key is not None:
            print(
                f"enclave key: {result.enclave_key.hex()[:64]}... ({len(result.enclave_key)} bytes)"
            )
        if result.policy_digest:
            print(f"policy: {result.policy_digest}")
        for name, sub in result.submods.items():
            print(f"{name}: {sub.status.value} {dict(sub.trust_vector)}")
        print(f"overall: {result.status.value}")
    if result.status is not Status.AFFIRMING:
        print(f"lessee: rejected: result status is {result.status.value}", file=sys.stderr)
        return 1
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    v = sub.add_parser(
        "verify",
        help="verify an EAR's signature with a pinned key and print it",
        description=(
            "Verify a signed attestation result with the verifier's pinned public key (a key in "
            "the token header is never trusted). Exit 0 valid and affirming, 1 otherwise, 2 bad input."
        ),
    )
    v.add_argument("token", metavar="TOKEN", help="the EAR JWT, or a file holding it")
    v.add_argument("--verifier-key", required=True, metavar="FILE", help="pinned key (PEM or JWK)")
    v.add_argument("--at", metavar="ISO-8601", help="verification time (default: now)")
    v.add_argument(
        "--any-profile", action="store_true", help="accept EARs of other profiles (e.g. Veraison)"
    )
    v.add_argument("--json", action="store_true", help="print the claims as JSON")
    v.set_defaults(func=_verify)
