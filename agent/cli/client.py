"""``lessee client generate``: send one prompt to an attested enclave, end to end encrypted.

The command verifies the enclave's key bundle with the broker's pinned key before the prompt
leaves the machine, prints the answer as it streams in, and ends with exit 0 only after the
enclave's authenticated clean end. Exit 1: the bundle was rejected, the stream was manipulated
or truncated, the enclave aborted, or it could not be reached. Exit 2: bad arguments or files.

There is deliberately no option to skip the attestation check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import TYPE_CHECKING

from agent.bounded_read import read_bounded
from attest.ear import VerifyingKey, public_key_from_jwk
from attest.errors import InputError

if TYPE_CHECKING:
    from sealing.stream import GenerationParams

#: Largest broker key file read: a PEM public key or JWK is a few hundred bytes.
MAX_KEY_FILE_BYTES = 64 * 1024
#: Largest bundle file read: the bundle format's own bound, rounded up.
MAX_BUNDLE_FILE_BYTES = 256 * 1024
#: Largest TLS root file read (a PEM bundle of a few CAs).
MAX_CA_FILE_BYTES = 1024 * 1024


def load_broker_key(path: str) -> VerifyingKey:
    """The broker's EAR verification key: a PEM public key (Ed25519 or P-256) or a JWK."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = read_bounded(path, MAX_KEY_FILE_BYTES, "broker key")
    text = data.strip()
    if text.startswith(b"{"):
        try:
            jwk = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path}: not a JSON Web Key") from None
        if not isinstance(jwk, dict):
            raise InputError(f"{path}: not a JSON Web Key")
        return public_key_from_jwk(jwk)
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise InputError(f"{path}: not a PEM public key or JWK") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InputError(f"{path}: the broker key must be Ed25519 or P-256")


def _params(args: argparse.Namespace) -> GenerationParams:
    from sealing.stream import GenerationParams

    def milli(value: float, name: str) -> int:
        if not (math.isfinite(value) and 0.0 <= value <= 1e6):
            raise InputError(f"--{name} out of range")
        return round(value * 1000)

    return GenerationParams(
        max_new_tokens=args.max_new_tokens,
        temperature_milli=milli(args.temperature, "temperature"),
        top_p_milli=milli(args.top_p, "top-p"),
    )


async def _generate(args: argparse.Namespace) -> int:
    import grpc

    from agent.client import EnclaveClient

    broker_key = load_broker_key(args.broker_key)
    bundle = read_bounded(args.bundle, MAX_BUNDLE_FILE_BYTES, "bundle") if args.bundle else None
    credentials = None
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_bounded(args.tls_ca, MAX_CA_FILE_BYTES, "CA file")
        )
    params = _params(args)
    async with EnclaveClient(
        args.target,
        bundle_check=broker_key,
        bundle=bundle,
        credentials=credentials,
        timeout=args.timeout,
    ) as client:
        out = sys.stdout
        printed = False
        try:
            async for piece in client.generate(args.prompt, params=params):
                out.write(piece)
                out.flush()
                printed = True
        finally:
            if printed:  # end the line, so an error message after it starts on its own
                out.write("\n")
                out.flush()
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    return asyncio.run(_generate(args))


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    gen = sub.add_parser(
        "generate",
        help="send a prompt to an attested enclave and stream the answer",
        description=(
            "Verify the enclave's key bundle (the broker's EAR must attest exactly its key), "
            "seal the prompt to that key, and print the decrypted tokens as they arrive."
        ),
    )
    gen.add_argument("--target", required=True, metavar="HOST:PORT", help="the enclave (or relay)")
    gen.add_argument(
        "--broker-key",
        required=True,
        metavar="FILE",
        help="the broker's EAR verification key (PEM public key, Ed25519 or P-256, or a JWK)",
    )
    gen.add_argument("--prompt", required=True, metavar="TEXT")
    gen.add_argument(
        "--bundle",
        metavar="FILE",
        help="use this key bundle (fetched out of band) instead of asking the enclave; "
        "it is verified all the same",
    )
    gen.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    gen.add_argument("--temperature", type=float, default=1.0, metavar="T")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P")
    gen.add_argument(
        "--tls-ca", metavar="FILE", help="connect with TLS, trusting these PEM root certificates"
    )
    gen.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS")
    gen.set_defaults(func=_run_generate)
