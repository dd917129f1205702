"""``lessee appraise``: appraise an evidence bundle against a policy and print the signed EAR.

The session binding is recomputed from the broker nonce and the enclave public key the bundle
was made for, exactly as the broker does; every device must carry it.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.bounded_read import read_bounded
from agent.cli._common import open_new_file
from agent.cli._keys import load_signing_key
from attest.appraise.common import result_submodules
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import (
    BINDING_CLAIM,
    PROTOCOL_LABEL_V1,
    PROTOCOL_LABEL_V2,
    binding_claim,
    binding_version,
    derive_session_binding,
)
from attest.bundle import load_bundle
from attest.ear import AttestationResult, Status, issue_ear
from attest.errors import InputError
from attest.policy import load_policy
from attest.timeutil import parse_iso8601

#: The largest policy/bundle file read (the parsers bound them again).
MAX_FILE_BYTES = 16 * 1024 * 1024


def _read(path: str) -> bytes:
    return read_bounded(path, MAX_FILE_BYTES, "file")


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InputError(f"{what} must be hex") from None


def _run(args: argparse.Namespace) -> int:
    policy = load_policy(_read(args.policy))
    bundle = load_bundle(_read(args.evidence_bundle))
    key = load_signing_key(args.key)
    at = parse_iso8601(args.at) if args.at else datetime.now(UTC)
    nonce = _hex(args.nonce, "--nonce")
    enclave_key = (
        _read(args.enclave_key)
        if not args.enclave_key_hex
        else _hex(args.enclave_key, "--enclave-key")
    )
    # Version 2 (what a current agent makes) binds the bundle's own CC/DevTools flags and device
    # counts (docs/binding.md); version 1 only on request, for evidence of an older agent.
    label = args.protocol_label or (PROTOCOL_LABEL_V1 if args.binding_v1 else PROTOCOL_LABEL_V2)
    binding = derive_session_binding(nonce, enclave_key, label, bundle.device_state)
    rims = tuple(_read(str(p)) for d in args.rim for p in sorted(Path(d).glob("*")) if p.is_file())
    devices, findings = appraise_bundle(
        bundle, binding, policy, at, context=AppraisalContext(rims=rims)
    )
    result = AttestationResult(
        submods=result_submodules(devices, findings, policy.digest),
        issued_at=int(at.timestamp()),
        expires_at=int((at + timedelta(seconds=policy.freshness.result_ttl_seconds)).timestamp()),
        verifier_build="lessee 0.1.0 (cli)",
        nonce=nonce,
        enclave_key=enclave_key,
        policy_digest=policy.digest,
        result_id=secrets.token_hex(16),
        extra=(
            {BINDING_CLAIM: binding_claim(label, bundle.device_state)}
            if binding_version(label) == 2
            else {}
        )
        | ({"ear.lessee.findings": [f.to_json() for f in findings]} if findings else {}),
    )
    status = result.status  # enclave-level findings count through the ``enclave`` submodule
    print(issue_ear(result, key))
    for name in policy.unsafe_settings():
        print(f"lessee: WARNING: policy turns off a check: {name}", file=sys.stderr)
    for d in devices:
        print(f"{d.name}: {d.status.value}", file=sys.stderr)
        for f in d.findings:
            print(f"  {f.severity.value}: {f}", file=sys.stderr)
    for f in findings:
        print(f"enclave: {f.severity.value}: {f}", file=sys.stderr)
    if args.json_report:
        report = (
            json.dumps(
                {
                    "status": status.value,
                    "devices": [
                        {
                            "name": d.name,
                            "status": d.status.value,
                            "findings": [f.to_json() for f in d.findings],
                        }
                        for d in devices
                    ],
                    "findings": [f.to_json() for f in findings],
                    "policy_digest": policy.digest,
                },
                indent=1,
            )
            + "\n"
        ).encode()
        with open_new_file(args.json_report) as out:  # never overwritten, never through a link
            out.write(report)
    print(f"overall: {status.value}", file=sys.stderr)
    return 0 if status is Status.AFFIRMING else 1


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Verify every device of an evidence bundle (CPU TEE, GPUs, NVSwitches) as of a time, "
        "appraise it against a policy under the session binding, and print the signed EAR on "
        "stdout (findings on stderr). Exit 0 affirming, 1 otherwise, 2 bad input."
    )
    parser.add_argument("--policy", required=True, metavar="FILE", help="lessee policy (JSON)")
    parser.add_argument(
        "--evidence-bundle", required=True, metavar="FILE", help="evidence bundle (JSON)"
    )
    parser.add_argument(
        "--key", required=True, metavar="FILE", help="result signing key (PEM, P-256 or Ed25519)"
    )
    parser.add_argument(
        "--nonce", required=True, metavar="HEX", help="the broker nonce of the session"
    )
    parser.add_argument(
        "--enclave-key",
        required=True,
        metavar="FILE",
        help="enclave public key (file, or hex with --enclave-key-hex)",
    )
    parser.add_argument("--enclave-key-hex", action="store_true", help="--enclave-key is hex text")
    parser.add_argument(
        "--binding-v1",
        action="store_true",
        help="the evidence was made under session binding version 1 (an agent from before "
        "version 2), which binds neither the GPUs' CC/DevTools flags nor their count; the "
        "default is version 2, what current agents make (docs/binding.md)",
    )
    parser.add_argument("--protocol-label", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--rim", action="append", default=[], metavar="DIR", help="extra RIM folder (repeatable)"
    )
    parser.add_argument("--at", metavar="ISO-8601", help="appraisal time (default: now)")
    parser.add_argument(
        "--json-report", metavar="FILE", help="also write a machine-readable report"
    )
    parser.set_defaults(func=_run)
