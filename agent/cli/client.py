"""``lessee client generate``: send one prompt to an attested enclave, end to end encrypted.

The command verifies the enclave's key bundle before the prompt leaves the machine, in one of
two modes, prints the answer as it streams in, and ends with exit 0 only after the enclave's
authenticated clean end:

* ``--broker-key FILE``: the broker's EAR in the bundle must verify under this pinned key, be
  affirming and unexpired, and attest exactly the bundle's key;
* ``--policy FILE`` (zero trust in the broker): the enclave's own evidence, which a version-2
  bundle carries, is appraised here with ``attest/`` under this policy, against the binding of
  the bundle's nonce and exactly its key (``agent.client.evidence_check``).

With either, ``--log-key VKEY_FILE`` (the log's signed-note vkey, as ``lessee audit verify``
takes) also requires the bundle's log proof to verify: the result is the logged attest entry,
included under a checkpoint that key signed, for this nonce and this key. Without it the log
proof is not checked.

Exit 1: the bundle was rejected, the stream was manipulated or truncated, the enclave could not
be reached, or it refused the request before answering (one line says which: replayed on the way,
so someone sent a copy first; its send time outside the enclave's window, so check this
machine's clock; or busy, so retry later). Exit 2: bad arguments or files. Exit 3: the enclave
itself ended the stream early with an authenticated abort: what was printed is authentic but
incomplete (a relay cannot forge this, so a script can tell it from a manipulated stream, which
is exit 1).

There is deliberately no option to skip the attestation check.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.bounded_read import read_bounded
from agent.cli._common import seconds_type
from attest.ear import VerifyingKey, public_key_from_jwk
from attest.errors import InputError
from attest.jsonutil import load_json
from attest.policy import MAX_POLICY_BYTES
from sealing.stream.bundle import MAX_BUNDLE_LEN

if TYPE_CHECKING:
    from sealing.stream import GenerationParams, KeyAttestationCheck

#: The enclave aborted the stream (authenticated): the printed answer is authentic, incomplete.
EXIT_ABORTED = 3

#: Largest broker key file read: a PEM public key or JWK is a few hundred bytes.
MAX_KEY_FILE_BYTES = 64 * 1024
#: Largest bundle file read: the bundle format's own bound (a version-2 bundle carries evidence).
MAX_BUNDLE_FILE_BYTES = MAX_BUNDLE_LEN
#: Largest TLS root file read (a PEM bundle of a few CAs).
MAX_CA_FILE_BYTES = 1024 * 1024


def load_broker_key(path: str) -> VerifyingKey:
    """The broker's EAR verification key: a PEM public key (Ed25519 or P-256) or a JWK."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = read_bounded(path, MAX_KEY_FILE_BYTES, "broker key")
    text = data.strip()
    if text.startswith(b"{"):
        # The strict reader: typed errors for deep nesting, huge numbers, duplicate keys.
        jwk = load_json(text, what=f"{path}: JSON Web Key")
        if not isinstance(jwk, dict):
            raise InputError(f"{path}: not a JSON Web Key")
        return public_key_from_jwk(jwk)
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # e.g. an unknown curve
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


def _bundle_check(args: argparse.Namespace) -> KeyAttestationCheck | VerifyingKey:
    """The pinned broker key, or (``--policy``) the check that appraises the evidence here;
    either with the log proof checked too under ``--log-key``."""
    log_key = None
    if args.log_key is not None:
        from agent.cli.audit import read_log_key

        log_key = read_log_key(args.log_key)
    if args.policy is None:
        if args.trust_emulation is not None or args.rims is not None:
            raise InputError("--trust-emulation and --rims go with --policy (zero trust)")
        if args.trust_relayed_cc_state:
            raise InputError("--trust-relayed-cc-state goes with --policy (zero trust)")
        broker_key = load_broker_key(args.broker_key)
        if log_key is None and args.model_id is None:
            return broker_key
        from agent.client import broker_ear_check, log_inclusion_check

        return broker_ear_check(
            broker_key,
            log_proof_check=log_inclusion_check(log_key) if log_key is not None else None,
            model_id=args.model_id,
        )
    if args.model_id is not None:
        raise InputError(
            "--model-id goes with --broker-key (with --policy, the policy decides what passes)"
        )
    from agent.client import evidence_check
    from agent.rpc.server import appraisal_context, load_emulation_roots, load_rims
    from attest.policy import load_policy

    policy = load_policy(read_bounded(args.policy, MAX_POLICY_BYTES, "policy"))
    emulation = None
    if args.trust_emulation is not None:
        from agent.emulation.pki import default_pki_dir

        pki = Path(args.trust_emulation) if args.trust_emulation else default_pki_dir()
        emulation = load_emulation_roots(pki)
    rims = load_rims(Path(args.rims)) if args.rims is not None else ()
    return evidence_check(
        policy,
        context=appraisal_context(rims=rims, emulation=emulation),
        log_key=log_key,
        trust_relayed_cc_state=args.trust_relayed_cc_state,
    )


async def _generate(args: argparse.Namespace) -> int:
    import grpc

    from agent.client import EnclaveClient, GenerationAborted

    check = _bundle_check(args)
    bundle = read_bounded(args.bundle, MAX_BUNDLE_FILE_BYTES, "bundle") if args.bundle else None
    credentials = None
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_bounded(args.tls_ca, MAX_CA_FILE_BYTES, "CA file")
        )
    params = _params(args)
    async with EnclaveClient(
        args.target,
        bundle_check=check,
        bundle=bundle,
        credentials=credentials,
        timeout=args.timeout,
        retry_on_new_key=args.retry_on_new_key,
    ) as client:
        out = sys.stdout
        printed = False
        try:
            async for piece in client.generate(args.prompt, params=params):
                out.write(piece)
                out.flush()
                printed = True
        except GenerationAborted as exc:
            aborted: GenerationAborted | None = exc
        else:
            aborted = None
        finally:
            if printed:  # end the line, so an error message after it starts on its own
                out.write("\n")
                out.flush()
    if aborted is not None:
        print(
            f"lessee: {aborted} -- the answer above is authentic but incomplete",
            file=sys.stderr,
        )
        return EXIT_ABORTED
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
            "Verify the enclave's key bundle, seal the prompt to that key, and print the "
            "decrypted tokens as they arrive. Two ways to verify, one required: --broker-key "
            "(the broker's EAR must verify under this key and attest exactly the bundle's key) "
            "or --policy (zero trust in the broker: the enclave's own evidence, carried in its "
            "bundle, is appraised here under this policy and must carry the binding of the "
            "session nonce and exactly the bundle's key; evidence does not expire, so freshness "
            "rests on revocation data and the policy, see docs/streams.md). With --log-key, "
            "the bundle's log proof must verify as well; without it, the log proof is not "
            "checked. The request carries this machine's clock: the enclave refuses it if that "
            "is more than its window (two minutes by default) off, and refuses any copy of a "
            "request it already answered. Exit codes: 0 the enclave's authenticated clean end; "
            "1 the bundle was rejected, the stream was manipulated or truncated, the enclave "
            "could not be reached, or it refused the request (replayed, clock off, busy); "
            "2 bad arguments or files; 3 the enclave aborted the stream itself "
            "(authenticated: the printed answer is authentic but incomplete)."
        ),
    )
    gen.add_argument("--target", required=True, metavar="HOST:PORT", help="the enclave (or relay)")
    mode = gen.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--broker-key",
        metavar="FILE",
        help="the broker's EAR verification key (PEM public key, Ed25519 or P-256, or a JWK)",
    )
    mode.add_argument(
        "--policy",
        metavar="FILE",
        help="zero trust in the broker: appraise the enclave's evidence under this policy "
        "(JSON, the broker's format; only an affirming verdict lets the prompt go)",
    )
    gen.add_argument(
        "--trust-emulation",
        nargs="?",
        const="",
        default=None,
        metavar="PKI_DIR",
        help="with --policy: offer this installation's emulation roots (no value: the default "
        "emulation PKI) as candidates; they count only where the policy pins them",
    )
    gen.add_argument(
        "--rims",
        metavar="DIR",
        help="with --policy: NVIDIA RIMs (*.xml, *.swidtag) to use besides any in the evidence",
    )
    gen.add_argument(
        "--log-key",
        metavar="VKEY_FILE",
        help="the broker log's vkey (as lessee audit verify --log-key takes): the bundle's log "
        "proof must then show its attestation result logged, included under a checkpoint this "
        "key signed, for this nonce and key. Without it the log proof is NOT checked",
    )
    gen.add_argument(
        "--model-id",
        metavar="ID",
        help="with --broker-key: the broker's result must have been issued for this model (a "
        "broker serving several models appraises each under its own policy)",
    )
    gen.add_argument(
        "--trust-relayed-cc-state",
        action="store_true",
        help="with --policy: accept the GPUs' CC mode and DevTools mode as version-1 evidence "
        "states them (only for an enclave agent from before binding version 2). They are in no "
        "signed report (NVML reports them): evidence made under binding version 2 (a current "
        "agent) binds them into its reports and needs no flag; version-1 evidence with GPUs is "
        "refused unless this is given, --log-key or not (a broker colluding with the host can "
        "log flipped flags)",
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
    gen.add_argument(
        "--timeout",
        type=seconds_type("--timeout"),
        default=600.0,
        metavar="SECONDS",
        help="for the whole call (at most a day)",
    )
    gen.add_argument(
        "--retry-on-new-key",
        action="store_true",
        help="if the enclave says the prompt was sealed to a key it no longer holds (it "
        "restarted), fetch its bundle again and, if that names another attested key, send the "
        "prompt again at once. Off by default: the claim is unauthenticated, and a host that "
        "can run a second attested enclave then gets a second answer to choose from; without "
        "it the command fails (exit 1) and the next run fetches the new key",
    )
    gen.set_defaults(func=_run_generate)
