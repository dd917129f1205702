"""``lessee agent``: the in-enclave agent, run once at enclave boot.

``lessee agent --broker ADDR --model-id ID --sealed DIR [--emulate]`` attests this enclave to
the broker, receives the model's data key sealed to a key pair made in this process, and loads
the sealed weights into memory (reporting how many tensors it loaded). Evidence comes from
configfs-tsm (SEV-SNP/TDX) and NVML (GPUs in CC mode); without that hardware the command says
what is missing and exits 1. ``--emulate`` uses this installation's emulated hardware instead
(``agent.emulation``): evidence a broker accepts only for a policy that pins the emulation roots.
``--amd-crl FILE`` sends AMD's CRL with a real SEV-SNP report (the broker's default policy
refuses the CPU without one); the emulation makes its own. ``--tdx-collateral FILE`` sends
Intel's collateral (QuoteCollateralV3 JSON) with a real TDX quote: the broker verifies a quote
only with it and the guest cannot get it from the hardware, so a TDX guest without it is bad
input. Each is refused on the other vendor's guest, found when the agent starts.

``--serve HOST:PORT --generator ENGINE`` then keeps running as the enclave's inference service
(``lessee.v1.Enclave``: ``GetKeyBundle`` and the end-to-end encrypted ``Generate``) until
SIGTERM or SIGINT: requests are opened with the key the broker's result attests, and the key
bundle it publishes carries that result, its log inclusion proof and the evidence it was
appraised on (a version-2 bundle, so clients that trust no broker can appraise it themselves).
``ENGINE`` is ``echo`` (lessee's toy engine, for trials) or ``MODULE:FACTORY``, a callable given
the loaded model (``agent.agent.LoadedModel``) that returns a ``TokenGenerator``
(docs/streams.md, "Plugging in an engine"). ``--suite x25519`` makes the enclave key classical
instead of X-Wing (ML-KEM-768+X25519, the default). ``--replay-window SECONDS`` sets how far a request's
sealed send time may be from this enclave's clock (default 120 s either side); within it each
request is answered at most once, so a request the relay replays gets no response at all.

Exit codes: 0 attested, key released, model loaded (with ``--serve``: and then stopped by a
signal); 1 refused (findings printed) or hardware
absent; 2 bad input (a file unreadable, oversize or malformed; a supplement for the other TEE;
a TDX guest without ``--tdx-collateral``; with ``--serve``, an engine that cannot be imported,
an address this machine cannot listen on, or TLS files that are not a matching PEM certificate
chain and key: all found before the broker is asked for anything).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.bounded_read import read_bounded
from agent.cli._common import seconds_type
from agent.tls import check_tls_pair
from attest.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.agent import Attested, LoadedModel
    from agent.enclave.generator import TokenGenerator
    from agent.enclave.service import EnclaveConfig

EXIT_OK = 0
EXIT_REJECTED = 1
MAX_KEY_FILE_BYTES = 64 * 1024
#: ``agent.evidence.sources.MAX_TDX_COLLATERAL_BYTES`` in KiB, for ``--help`` without importing
#: the evidence code (a test keeps the two equal).
MAX_TDX_COLLATERAL_KIB = 512


#: ``sealing.stream.replay.MAX_REPLAY_WINDOW_S``, for ``--help`` without importing the stream
#: code (a test keeps the two equal).
MAX_REPLAY_WINDOW_S = 3600
DEFAULT_REPLAY_WINDOW_S = 120

#: ``--suite`` names of the enclave key's HPKE suite (the key release and the token streams).
SUITE_NAMES = ("xwing", "x25519")


def _suites() -> dict[str, Any]:
    from sealing.hpke_suite import SuiteId

    return {
        "xwing": SuiteId.MLKEM768_X25519_SHA256_AES256GCM,
        "x25519": SuiteId.X25519_SHA256_AES256GCM,
    }


#: Seconds in-flight streams get to finish after SIGTERM/SIGINT before the service stops.
SERVE_STOP_GRACE_S = 5.0


def generator_factory(spec: str) -> Callable[[LoadedModel], Any]:
    """The factory ``--generator`` names: ``echo`` (the toy engine) or ``MODULE:FACTORY``,
    imported now. ``_run`` resolves it before it attests, because a release is one-shot (the
    result is spent and logged): a spec that cannot work is bad input (exit 2) while nothing
    has been asked of the broker, not after the data key was released."""
    from agent.enclave.generator import EchoGenerator

    if spec == "echo":
        return lambda _model: EchoGenerator()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"--generator must be 'echo' or MODULE:FACTORY, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"--generator {spec}: cannot import it ({type(exc).__name__})") from None
    if not callable(factory):
        raise InputError(f"--generator {spec}: {attr} is not callable")
    try:
        inspect.signature(factory).bind(None)  # FACTORY(model): one positional argument
    except TypeError:
        raise InputError(
            f"--generator {spec}: {attr} does not take one argument (the loaded model)"
        ) from None
    except ValueError:
        pass  # no signature to read (some builtins): the call itself is guarded
    made: Callable[[LoadedModel], Any] = factory
    return made


def load_generator(
    spec: str, model: LoadedModel, factory: Callable[[LoadedModel], Any] | None = None
) -> TokenGenerator:
    """``FACTORY(model)`` (``factory``, or the one ``spec`` names) must return an object with
    an async ``generate(prompt, params)``; anything else is bad input (exit 2) before the
    service starts, not a failure in the first request."""
    make = factory or generator_factory(spec)
    try:
        engine = make(model)
    except Exception as exc:  # the operator's engine: named by type, its message may quote data
        raise InputError(f"--generator {spec}: the factory failed ({type(exc).__name__})") from None
    if not callable(getattr(engine, "generate", None)):
        raise InputError(f"--generator {spec}: the factory's result has no generate() method")
    generator: TokenGenerator = engine
    return generator


def _serve(
    args: argparse.Namespace,
    attested: Attested,
    evidence: bytes,
    log_proof: bytes,
    generator: TokenGenerator,
    *,
    tls: tuple[bytes | None, bytes | None] = (None, None),
    config: EnclaveConfig | None = None,
) -> None:
    """Serve the enclave's streaming service with the attested key until SIGTERM or SIGINT;
    ``tls``: the PEM certificate chain and key, read by ``_run`` before it attested;
    ``config``: the service settings (``_enclave_config``)."""
    from agent.enclave.service import EnclaveService, serve_enclave
    from sealing.stream import KeyBundle

    session = attested.session
    key = session.enclave_key()
    bundle = KeyBundle.build(
        key.public_key,
        attested.result.encode("ascii"),
        log_proof,
        evidence=evidence,
        nonce=session.nonce,
    )
    cert, tls_key = tls

    async def run() -> None:
        server = await serve_enclave(
            EnclaveService(key, bundle, generator, config=config),
            address=args.serve,
            server_cert_chain=cert,
            server_private_key=tls_key,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        host = args.serve.rsplit(":", 1)[0]
        print(
            f"lessee agent: serving encrypted token streams on {host}:{server.port}"
            + (" (TLS)" if cert else "")
            + f"; key bundle v2, key id {key.public_key.key_id.hex()[:16]}",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await server.stop(SERVE_STOP_GRACE_S)
        print("lessee agent: stopped", flush=True)

    asyncio.run(run())


#: AMD's Key Distribution Service serves each product's CRL here (``<product>``: Milan, Genoa,
#: Turin); lessee fetches nothing, the operator downloads it and passes ``--amd-crl``.
#: AMD's CRLs: ASK revocations for VCEK-signed reports, ASVK revocations for VLEK-signed ones.
AMD_CRL_URL = (
    "https://kdsintf.amd.com/vcek/v1/<product>/crl (for a VLEK-signed report:"
    " .../vlek/v1/<product>/crl)"
)


def read_amd_crl(path: str) -> bytes:
    """The ``--amd-crl`` file, bounded and not empty. Its contents are checked by the broker
    (signed by the ARK, current, the ASK not listed), which is where they count."""
    from attest.snp.verify import MAX_CRL_BYTES

    data = read_bounded(path, MAX_CRL_BYTES, "AMD CRL")
    if not data:
        raise InputError(f"{path}: the AMD CRL file is empty")
    return data


def read_tdx_collateral(path: str) -> bytes:
    """The ``--tdx-collateral`` file, bounded, not empty and structurally TDX collateral in the
    form the broker verifies, so a wrong file is bad input (exit 2) when the agent starts, not a
    refusal after attesting. Signatures and freshness are the broker's checks."""
    from agent.evidence.sources import MAX_TDX_COLLATERAL_BYTES, check_tdx_collateral

    data = read_bounded(path, MAX_TDX_COLLATERAL_BYTES, "TDX collateral")
    if not data:
        raise InputError(f"{path}: the TDX collateral file is empty")
    try:
        return check_tdx_collateral(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _sources(args: argparse.Namespace) -> tuple[Any, Any]:
    if not args.emulate:
        from agent.evidence.sources import NvmlGpuSource, TsmCpuSource

        crl = read_amd_crl(args.amd_crl) if args.amd_crl else None
        collateral = read_tdx_collateral(args.tdx_collateral) if args.tdx_collateral else None
        return TsmCpuSource(crl=crl, tdx_collateral=collateral), NvmlGpuSource()
    if args.amd_crl:
        raise InputError("--amd-crl is for real SEV-SNP hardware; --emulate makes its own CRL")
    if args.tdx_collateral:
        raise InputError("--tdx-collateral is for real TDX hardware; --emulate is SEV-SNP")
    from agent.agent import EMULATED_LAUNCH_MEASUREMENT
    from agent.emulation import (
        EmulatedCpuSource,
        EmulatedGpu,
        EmulatedGpuSource,
        EmulatedSnp,
        EmulationPki,
    )

    pki = EmulationPki.load_or_create(Path(args.emulation_dir) if args.emulation_dir else None)
    measurement = EMULATED_LAUNCH_MEASUREMENT
    if args.measurement:
        try:
            measurement = bytes.fromhex(args.measurement)
        except ValueError:
            raise InputError("--measurement must be hex") from None
    cpu = EmulatedCpuSource(EmulatedSnp(pki, measurement=measurement))
    gpu = EmulatedGpuSource([EmulatedGpu(pki, index=i) for i in range(args.gpus)])
    return cpu, gpu


def _run(args: argparse.Namespace) -> int:
    from agent.agent import (
        AttestationRefusedError,
        EnclaveAgent,
        load_sealed_model,
        open_channel,
        wipe,
    )
    from agent.cli._keys import load_verifying_key
    from agent.cli.audit import read_log_key

    sealed = Path(args.sealed)
    if not sealed.is_dir():
        raise InputError(f"{sealed}: not a sealed model directory")
    if (args.serve is None) != (args.generator is None):
        raise InputError("--serve and --generator go together")
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_cert and not args.serve):
        raise InputError("--tls-cert and --tls-key go together, and with --serve")
    if not 1 <= args.gpus <= 8:
        raise InputError("--gpus must be 1..8")
    if args.replay_window is not None and args.serve is None:
        raise InputError("--replay-window goes with --serve")
    # Everything --serve needs that can fail on the operator's input is read now: after the
    # release the result is spent, so a bad engine or TLS file must stop us before Attest.
    factory = generator_factory(args.generator) if args.generator is not None else None
    tls = (
        read_bounded(args.tls_cert, MAX_KEY_FILE_BYTES, "TLS certificate")
        if args.tls_cert
        else None,
        read_bounded(args.tls_key, MAX_KEY_FILE_BYTES, "TLS key") if args.tls_key else None,
    )
    if tls[0] is not None and tls[1] is not None:
        check_tls_pair(args.tls_cert, tls[0], args.tls_key, tls[1])
    if args.serve is not None:
        check_serve_address(args.serve)
    config = _enclave_config(args.replay_window)
    broker_key = load_verifying_key(args.broker_key) if args.broker_key else None
    log_key = read_log_key(args.log_key) if args.log_key else None
    cpu, gpu = _sources(args)
    out: dict[str, Any] = {"model_id": args.model_id, "emulated": bool(args.emulate)}
    channel = open_channel(args.broker, tls_ca=Path(args.tls_ca) if args.tls_ca else None)
    with channel:
        agent = EnclaveAgent(
            channel,
            cpu=cpu,
            gpu=gpu,
            broker_key=broker_key,
            log_key=log_key,
            suite=_suites()[args.suite],
            timeout=args.timeout,
            allow_binding_v1=args.allow_binding_v1,
            manifest_digests=_manifest_pins(args.manifest_digest),
            min_model_version=args.min_model_version,
        )
        try:
            # The steps of ``agent.attest``, with the evidence kept for the key bundle that
            # ``--serve`` publishes (clients that trust no broker appraise it themselves).
            session = agent.start_session(args.model_id)
            evidence = agent.collect(session)
            attested = agent.check_result(session, agent.send_evidence(session, evidence))
        except AttestationRefusedError as exc:
            out |= {"status": exc.status.value, "devices": exc.devices, "findings": exc.findings}
            _print(out, args.json)
            return EXIT_REJECTED
        out |= {
            "status": attested.status.value,
            "devices": dict(attested.devices),
            "result_verified": attested.result_verified,
            "log_verified": attested.log_verified,
            "log_index": attested.log_index,
        }
        dek, release = agent.release(attested)
        # The key bundle's log proof, while the broker is at hand (``--serve`` publishes it).
        log_proof = agent.key_bundle_log_proof(attested) if args.serve is not None else b""
    try:
        loaded = load_sealed_model(
            sealed,
            dek,
            model_id=args.model_id,
            model_version=release.model_version,
            manifest_digest=release.manifest_digest,
        )
    finally:
        wipe(dek)
    out |= {
        "key_id": release.key_id,
        "model_version": release.model_version,
        "suite": release.suite,
        "release_log_index": release.log_proof.index,
        "release_log_verified": release.log_verified,
        "tensors": loaded.tensor_count,
        "tensor_bytes": loaded.total_bytes,
    }
    _print(out, args.json)
    if args.serve is not None:
        generator = load_generator(args.generator, loaded, factory)
        _serve(args, attested, evidence.to_json(), log_proof, generator, tls=tls, config=config)
    return EXIT_OK


def check_serve_address(address: str) -> None:
    """``--serve`` must be ``host:port`` that this machine can listen on now: the host resolves
    to a local address, and the port is not in use and not privileged for us. Probed with a
    plain socket that is closed again (the service binds after the release; a port taken in
    between is still refused then, as bad input)."""
    import errno
    import os
    import socket

    from agent.rpc.server import split_host_port

    host, port = split_host_port(address, "--serve address")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--serve {address}: cannot resolve {host!r} ({exc})") from None
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                if os.name != "nt":  # as grpc does: a port in TIME_WAIT is free to listen on
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
                probe.listen(1)
        except OSError as exc:
            failures.append(exc)
    in_use = [e for e in failures if e.errno == errno.EADDRINUSE]
    if not in_use and len(failures) < len(infos):
        return
    first = (in_use or failures)[0]
    if first.errno == errno.EADDRINUSE:
        why = "the port is in use"
    elif first.errno == errno.EADDRNOTAVAIL:
        why = f"{host} is not an address of this machine"
    elif first.errno == errno.EACCES:
        why = "not permitted to listen on that port"
    else:
        why = f"cannot listen there ({first.strerror or first})"
    raise InputError(f"--serve {address}: {why}")


def _enclave_config(replay_window: int | None) -> EnclaveConfig | None:
    """The service settings ``--serve`` runs with (None: the defaults); made before Attest, so a
    bad value is refused while the release is still unspent."""
    if replay_window is None:
        return None
    from agent.enclave.service import EnclaveConfig

    if not 1 <= replay_window <= MAX_REPLAY_WINDOW_S:
        raise InputError(f"--replay-window must be 1..{MAX_REPLAY_WINDOW_S} seconds")
    return EnclaveConfig(replay_window_s=replay_window)


def _print(out: dict[str, Any], as_json: bool) -> None:
    from agent.text import printable

    if as_json:
        print(json.dumps(out, indent=1, default=str))
        return
    print(f"model {out['model_id']}: attestation {out['status']}")
    for name, status in sorted(out.get("devices", {}).items()):
        print(f"  {name}: {status}")
    for line in out.get("findings", ()):
        # The broker's text, unauthenticated: escaped, so it cannot forge lines of ours.
        print(f"  finding (from the broker): {printable(line)}", file=sys.stderr)
    if "key_id" in out:
        checks = [
            "result signature verified"
            if out["result_verified"]
            else "result NOT verified (no --broker-key)",
            "log inclusion verified"
            if out["log_verified"]
            else "log proof NOT checked (no --log-key)",
        ]
        if out.get("release_log_verified"):
            checks.append("release logged")
        print(f"  {'; '.join(checks)}")
        print(
            f"key released ({out['suite']}, key id {out['key_id']}); loaded {out['tensors']} "
            f"tensors, {out['tensor_bytes']} bytes, into memory"
        )


def _manifest_pins(texts: list[str] | None) -> tuple[bytes, ...]:
    """``--manifest-digest`` values: ``sha256:`` and 64 hex digits (or the bare hex)."""
    pins = []
    for text in texts or ():
        hexdigits = text.strip().lower().removeprefix("sha256:")
        try:
            digest = bytes.fromhex(hexdigits)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise InputError(f"--manifest-digest {text!r} is not sha256: and 64 hex digits")
        pins.append(digest)
    return tuple(pins)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", required=True, metavar="ADDR", help="broker host:port")
    parser.add_argument("--model-id", required=True, help="the sealed model's id")
    parser.add_argument("--sealed", required=True, metavar="DIR", help="sealed model directory")
    parser.add_argument(
        "--emulate", action="store_true", help="use emulated CC hardware (no hardware present)"
    )
    parser.add_argument("--emulation-dir", metavar="DIR", help="emulation PKI directory")
    parser.add_argument("--gpus", type=int, default=1, help="emulated GPUs (1..8)")
    parser.add_argument("--measurement", metavar="HEX", help="emulated launch measurement")
    supplement = parser.add_mutually_exclusive_group()
    supplement.add_argument(
        "--amd-crl",
        metavar="FILE",
        help=(
            "AMD's CRL for this SEV-SNP CPU's product (DER or PEM, at most 256 KiB), sent with"
            f" the report; AMD publishes it at {AMD_CRL_URL}. Without it the broker's default"
            " policy (missing_revocation: reject) refuses the CPU. It must be current (between"
            " its lastUpdate and nextUpdate) when the broker appraises. Refused on a TDX guest"
        ),
    )
    supplement.add_argument(
        "--tdx-collateral",
        metavar="FILE",
        help=(
            "Intel's collateral for this TDX platform, sent with every quote: one"
            " QuoteCollateralV3 JSON document (the format of 'lessee cpu verify --collateral'"
            f" and docs/tdx.md, at most {MAX_TDX_COLLATERAL_KIB} KiB) from Intel PCS or the"
            " platform's PCCS (TCB Info for its FMSPC, QE Identity, PCK CRL, root CA CRL)."
            " Required on a TDX guest: the broker verifies a quote only with it. Checked"
            " structurally at start; it must be current when the broker appraises. Refused on"
            " a SEV-SNP guest"
        ),
    )
    parser.add_argument("--broker-key", metavar="FILE", help="broker's EAR key (PEM or JWK)")
    parser.add_argument("--log-key", metavar="FILE", help="the log's vkey file")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA of the broker's TLS certificate")
    parser.add_argument(
        "--timeout",
        type=seconds_type("--timeout"),
        default=30.0,
        help="seconds per broker call (at most a day)",
    )
    parser.add_argument(
        "--suite",
        choices=SUITE_NAMES,
        default="xwing",
        help="the enclave key's HPKE suite: xwing (ML-KEM-768+X25519, the default, so a "
        "recorded key release or stream stays confidential against a future quantum computer) "
        "or x25519 (classical, for clients that cannot do ML-KEM)",
    )
    parser.add_argument(
        "--allow-binding-v1",
        action="store_true",
        help="also answer a broker's version-1 challenge (a broker from before binding version "
        "2, or one run with --binding-v1). Off by default: version 1 binds neither the GPUs' CC "
        "and DevTools flags nor their count, and the broker picks the version, so a broker "
        "colluding with the host could otherwise downgrade this agent (docs/binding.md)",
    )
    parser.add_argument(
        "--manifest-digest",
        action="append",
        metavar="sha256:HEX",
        help="load only a sealed model with this manifest digest (repeatable): the broker holds "
        "every version's data key, so without a pin a broker (with the host supplying old "
        "sealed files) could release and have this agent load an older version; with "
        "--log-key such a release is at least in the log",
    )
    parser.add_argument(
        "--min-model-version",
        type=int,
        default=0,
        metavar="N",
        help="refuse a release of a model version below N (a rollback)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    parser.add_argument(
        "--serve",
        metavar="HOST:PORT",
        help="then serve the enclave's encrypted token stream here (port 0: any free port) until "
        "SIGTERM/SIGINT, with the attested key and a key bundle carrying the broker's result "
        "and this enclave's evidence; the relay in front of it sees only ciphertext",
    )
    parser.add_argument(
        "--generator",
        metavar="ENGINE",
        help="with --serve: 'echo' (toy engine) or MODULE:FACTORY, a callable given the loaded "
        "model that returns a TokenGenerator (docs/streams.md)",
    )
    parser.add_argument(
        "--replay-window",
        type=int,
        metavar="SECONDS",
        help="with --serve: accept a request only while the send time the client sealed into it "
        f"is within this many seconds of this enclave's clock, either side (default "
        f"{DEFAULT_REPLAY_WINDOW_S}, at most {MAX_REPLAY_WINDOW_S}); each request is answered "
        "at most once within it, so a replay by the relay gets no response. Wider tolerates "
        "worse client clocks, and lets a relay hold a request back longer",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="with --serve: TLS certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="with --serve: TLS private key")
    parser.set_defaults(func=_run)
