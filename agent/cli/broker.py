"""``lessee broker``: run the key broker, register sealed models, print its keys, export its log.

* ``serve --state DIR --listen ADDR``: run until SIGTERM/SIGINT (graceful stop); SIGHUP re-reads
  ``--rims`` and ``--amd-crls`` (all or nothing: ``RunningBroker.reload_held_collateral``).
  Plaintext only on loopback; anywhere else ``--tls-cert``/``--tls-key``. ``--client-ca`` +
  ``--admin-listen`` open an admin port that requires client certificates (admin calls are also
  taken from loopback peers unless ``--no-loopback-admin``). ``--rims DIR`` adds
  RIMs the broker holds itself, ``--amd-crls DIR`` the AMD CRLs it holds;
  ``--trust-emulation [PKI_DIR]`` offers this installation's emulation roots as candidates
  (used only by models whose policy pins them). JSON log lines go to stderr.
* ``register --target ADDR --key-file FILE --policy FILE``: store a sealed model's data key
  (from ``lessee seal --key-out``) and its policy. ``--model-id``/``--model-version``/
  ``--manifest-digest`` default to the key file's and must agree with it when given.
* ``keys --state DIR``: print the EAR verifier key (PEM and JWK) and the log's vkey.
* ``export-log --state DIR --out FILE``: write the whole log as an audit bundle for
  ``lessee audit verify``.
* ``fetch-amd-crls --dir DIR [--notify-pid PID]``: fetch AMD's CRLs from KDS into an
  ``--amd-crls`` directory, checked and never rolled back (``agent.amd_crl_fetch``); SIGHUP the
  broker when one changed.

Exit codes follow the CLI contract: 0 done; 1 refused by the broker (or, for fetch-amd-crls,
a list that could not be fetched or was unfit); 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent.cli._common import open_new_file, pid_type, seconds_type
from attest.errors import InputError

if TYPE_CHECKING:
    from agent.rpc.server import RunningBroker

EXIT_OK = 0


def _serve(args: argparse.Namespace) -> int:
    from agent.broker.config import BrokerConfig
    from agent.rpc.server import configure_json_logging, serve_broker

    trust = None
    if args.trust_emulation is not None:
        from agent.emulation.pki import default_pki_dir

        trust = Path(args.trust_emulation) if args.trust_emulation else default_pki_dir()
    config = BrokerConfig(
        state_dir=Path(args.state),
        listen=args.listen,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        client_ca=Path(args.client_ca) if args.client_ca else None,
        admin_listen=args.admin_listen,
        loopback_admin=not args.no_loopback_admin,
        rims_dir=Path(args.rims) if args.rims else None,
        amd_crls_dir=Path(args.amd_crls) if args.amd_crls else None,
        trust_emulation=trust,
        max_workers=args.workers,
        binding_v1=args.binding_v1,
        allow_wrap_format_1=args.allow_wrap_format_1,
    )
    configure_json_logging(sys.stderr)
    stop = threading.Event()
    reload_wanted = threading.Event()
    wake = threading.Event()
    hup = getattr(signal, "SIGHUP", None)  # absent on Windows

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only flags here: the reload reads files and may log, which a signal handler should
        # not do in the middle of whatever the main thread was doing.
        (reload_wanted if signum == hup else stop).set()
        wake.set()

    # Before the broker starts: a SIGHUP (a cron job's fetch-amd-crls --notify-pid) or SIGTERM
    # in the start-up window took the default action and killed a broker already serving. A
    # flag set meanwhile is acted on once it runs (a reload then, a stop at once).
    handled = (signal.SIGTERM, signal.SIGINT) + ((hup,) if hup is not None else ())
    previous = {s: signal.signal(s, on_signal) for s in handled}
    try:
        running = serve_broker(config)
    except BaseException:
        for s, handler in previous.items():
            signal.signal(s, handler)
        raise
    try:
        print(
            f"lessee broker: listening on {running.target}"
            + (" (TLS)" if config.tls_cert else " (plaintext, loopback only)")
            + (f", admin port {running.admin_port} (mutual TLS)" if running.admin_port else "")
            + f"; state in {config.state_dir}",
            flush=True,
        )
        if running.emulation is not None:
            print(
                "lessee broker: emulation roots offered as candidates (trusted only where a "
                "policy pins them): " + json.dumps(running.emulation.fingerprints()),
                flush=True,
            )
        while not stop.is_set():
            wake.wait()
            wake.clear()
            if reload_wanted.is_set() and not stop.is_set():
                reload_wanted.clear()
                _reload(running)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        running.stop(args.grace)
    return EXIT_OK


def _reload(running: RunningBroker) -> None:
    """SIGHUP: hold the RIMs and AMD CRLs now in the ``--rims``/``--amd-crls`` directories.
    A refused reload keeps the broker serving with what it held (and says why)."""
    try:
        report = running.reload_held_collateral()
    except InputError as exc:
        print(f"lessee broker: {exc}", file=sys.stderr, flush=True)
        return
    print(
        f"lessee broker: reloaded {report.rims} RIM(s) and {len(report.amd_crls)} AMD CRL(s)"
        + (
            f"; no longer held: {', '.join(report.amd_crls_dropped)}"
            if report.amd_crls_dropped
            else ""
        ),
        flush=True,
    )


def _fetch_amd_crls(args: argparse.Namespace) -> int:
    """Fetch AMD's CRLs into the broker's --amd-crls directory (checked; never a rollback)."""
    import os

    from cryptography import x509

    from agent.amd_crl_fetch import KINDS, update_crl_directory
    from agent.broker.config import utc_now
    from attest.snp.report import Product, SigningKey

    extra: tuple[x509.Certificate, ...] = ()
    if args.trust_emulation is not None:
        from agent.emulation.pki import default_pki_dir
        from agent.rpc.server import load_emulation_roots

        pki = Path(args.trust_emulation) if args.trust_emulation else default_pki_dir()
        extra = (load_emulation_roots(pki).amd_ark,)
    if args.notify_pid is not None:
        _check_notify_pid(args.notify_pid)  # before anything is fetched or written
    products = [Product(p) for p in args.product] if args.product else list(Product)
    kinds = [SigningKey(k) for k in args.kind] if args.kind else list(KINDS)
    outcomes = update_crl_directory(
        Path(args.dir),
        at=utc_now(),
        products=products,
        kinds=kinds,
        base_url=args.kds_url,
        timeout=args.timeout,
        extra_arks=extra,
    )
    for o in outcomes:
        dates = ""
        if o.this_update is not None and o.next_update is not None:
            dates = f" (thisUpdate {o.this_update:%Y-%m-%dT%H:%MZ}, "
            dates += f"nextUpdate {o.next_update:%Y-%m-%dT%H:%MZ})"
        print(f"{o.name}: {o.status}{dates}" + (f": {o.error}" if o.error else ""))
    if args.notify_pid is not None and any(o.status == "written" for o in outcomes):
        try:
            os.kill(args.notify_pid, signal.SIGHUP)
        except OSError as exc:
            raise InputError(
                f"cannot signal broker pid {args.notify_pid}: {exc.strerror}"
            ) from None
        print(f"sent SIGHUP to {args.notify_pid}: the broker reloads its held lists")
    return 1 if any(o.status == "failed" for o in outcomes) else EXIT_OK


def _check_notify_pid(pid: int) -> None:
    """``--notify-pid`` must name a process that exists and that we may signal: checked with
    signal 0 (nothing is sent) before the lists are fetched, so a typo is exit 2 up front and
    not a SIGHUP that goes nowhere after the directory changed."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise InputError(f"--notify-pid {pid}: no such process") from None
    except PermissionError:
        raise InputError(f"--notify-pid {pid}: not permitted to signal that process") from None


def _register(args: argparse.Namespace) -> int:
    from agent.agent import call_broker, open_channel
    from agent.bounded_read import read_bounded
    from agent.loader.keyfile import read_key_file
    from agent.rpc.v1 import broker_pb2, broker_pb2_grpc
    from attest.policy import MAX_POLICY_BYTES, load_policy
    from sealing.weights._keys import wipe

    try:
        policy_json = read_bounded(args.policy, MAX_POLICY_BYTES, "policy").decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{args.policy}: the policy is not UTF-8 text") from None
    policy = load_policy(policy_json)  # refuse a bad policy before anything leaves this machine
    key = read_key_file(args.key_file)
    try:
        model_id = args.model_id or key.model_id
        version = key.model_version if args.model_version is None else args.model_version
        digest_text = key.manifest_digest.removeprefix("sha256:")
        if args.manifest_digest is not None:
            given = args.manifest_digest.lower().removeprefix("sha256:")
            if given != digest_text:
                raise InputError("--manifest-digest differs from the key file's manifest digest")
        if model_id != key.model_id or version != key.model_version:
            raise InputError(
                f"the key file is for {key.model_id} v{key.model_version}, "
                f"not {model_id} v{version}"
            )
        try:
            digest = bytes.fromhex(digest_text)
        except ValueError:
            raise InputError("manifest digest is not hex") from None
        channel = open_channel(
            args.target,
            tls_ca=Path(args.tls_ca) if args.tls_ca else None,
            client_cert=Path(args.client_cert) if args.client_cert else None,
            client_key=Path(args.client_key) if args.client_key else None,
        )
        with channel:
            stub = broker_pb2_grpc.BrokerAdminStub(channel)  # type: ignore[no-untyped-call]
            request = broker_pb2.RegisterModelRequest(
                model_id=model_id,
                model_version=version,
                data_key=bytes(key.dek),
                policy_json=policy_json,
                manifest_digest=digest,
            )
            reply = call_broker("RegisterModel", stub.RegisterModel, request, args.timeout)
    finally:
        wipe(key.dek)
    unsafe = policy.unsafe_settings()
    print(f"registered {model_id} v{version}")
    print(f"key id: {reply.key_id}")
    print(f"policy digest: {reply.policy_digest}")
    if unsafe:
        print(f"WARNING: the policy turns on: {', '.join(unsafe)}", file=sys.stderr)
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    from agent.broker.config import prepare_state_dir

    keys = prepare_state_dir(Path(args.state), create=False)
    if args.json:
        print(
            json.dumps(
                {
                    "ear_verifier_pem": keys.ear_public_pem().decode(),
                    "ear_verifier_jwk": keys.ear_public_jwk(),
                    "log_vkey": keys.log_vkey(),
                    "log_origin": keys.log_name,
                },
                indent=1,
            )
        )
        return EXIT_OK
    print(
        "# EAR verifier key (pin it: lessee result verify --verifier-key, "
        "lessee agent --broker-key)"
    )
    print(keys.ear_public_pem().decode(), end="")
    print(json.dumps(keys.ear_public_jwk()))
    print("# log verifier key (lessee audit verify --log-key)")
    print(keys.log_vkey())
    return EXIT_OK


def _export_log(args: argparse.Namespace) -> int:
    from agent.broker.config import LOG_DB, prepare_state_dir
    from agent.logstore import LogStore

    state = Path(args.state)
    keys = prepare_state_dir(state, create=False)
    out = Path(args.out)
    with LogStore(state / LOG_DB, keys.log_signer) as log, open_new_file(out) as f:
        try:
            size = log.export_bundle(f)
        except BaseException:
            out.unlink(missing_ok=True)  # this run created it: no half-written bundle is left
            raise
    print(f"exported {size} entries to {out}")
    print(f"verify with: lessee audit verify {out} --log-key {state / 'log.vkey'}")
    return EXIT_OK


def _trust_emulation_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--trust-emulation [PKI_DIR]`` (no value: the default emulation PKI directory)."""
    p.add_argument(
        "--trust-emulation", nargs="?", const="", default=None, metavar="PKI_DIR", help=help_text
    )


def _products() -> list[str]:
    from attest.snp.report import Product

    return [p.value for p in Product]


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("serve", help="run the key broker (gRPC)")
    p.add_argument("--state", required=True, metavar="DIR", help="state directory (made 0700)")
    p.add_argument("--listen", default="127.0.0.1:7443", metavar="ADDR", help="host:port")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--client-ca", metavar="PEM", help="CA of admin client certificates")
    p.add_argument("--admin-listen", metavar="ADDR", help="admin port (mutual TLS)")
    p.add_argument(
        "--no-loopback-admin",
        action="store_true",
        help="accept admin calls only on the admin port (with a client certificate), not from "
        "any loopback peer: use when a local proxy or tunnel fronts the broker",
    )
    p.add_argument("--rims", metavar="DIR", help="RIM files the broker holds itself")
    p.add_argument(
        "--amd-crls",
        metavar="DIR",
        help="AMD CRLs the broker holds itself, named <kind>-<product>.crl (vcek-Milan.crl, "
        "vlek-Genoa.crl, ...): checked instead of the CRL in the evidence for SEV-SNP reports "
        "of that kind and product (the host could send the other list); refresh them before "
        "their nextUpdate, or every such report is refused: replace the files and send the "
        "broker SIGHUP (re-reads --rims and --amd-crls; a bad file or an older list is "
        "refused and the held ones kept)",
    )
    _trust_emulation_arg(
        p, "offer this installation's emulation roots as candidates (a policy must pin them)"
    )
    p.add_argument(
        "--binding-v1",
        action="store_true",
        help="issue and appraise version-1 session bindings, for enclave agents from before "
        "version 2; version 1 does not bind the GPUs' CC and DevTools flags, which a relay "
        "could then flip (docs/binding.md)",
    )
    p.add_argument(
        "--allow-wrap-format-1",
        action="store_true",
        help="release the keys of models registered before data keys were bound to their "
        "model row (listed at start); without it such a release fails until the model is "
        "registered again. Off by default: the format is recorded in the database, so a saved "
        "format-1 key could otherwise be put back beside another policy",
    )
    p.add_argument("--workers", type=int, default=32, help="server threads")
    p.add_argument(
        "--grace",
        type=seconds_type("--grace", allow_zero=True),
        default=5.0,
        help="seconds to finish calls on stop",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "fetch-amd-crls",
        help="fetch AMD's SEV-SNP CRLs into an --amd-crls directory",
        description="Fetch <kind>-<product>.crl from AMD's KDS (<kds-url>/<kind>/v1/<product>"
        "/crl) into DIR. Each answer is checked before it is written: issued and signed by the "
        "product's pinned ARK, current now, DER-strict; a list is never replaced by an older "
        "one, and each file is replaced atomically. A 404 (no such list) is reported as "
        "'absent'. Exit 0 when every list was written, unchanged, kept or absent; 1 when any "
        "failed (its file untouched). Run it from cron well inside the lists' validity, with "
        "--notify-pid to make a running broker reload them.",
    )
    p.add_argument("--dir", required=True, metavar="DIR", help="the broker's --amd-crls directory")
    p.add_argument(
        "--product",
        action="append",
        choices=_products(),
        help="repeatable; default all",
    )
    p.add_argument(
        "--kind", action="append", choices=["vcek", "vlek"], help="repeatable; default both"
    )
    p.add_argument("--kds-url", default="https://kdsintf.amd.com", metavar="URL", help="KDS base")
    p.add_argument(
        "--timeout",
        type=seconds_type("--timeout"),
        default=10.0,
        help="seconds per request (at most a day)",
    )
    _trust_emulation_arg(
        p, "also accept lists signed by this installation's emulated ARK (tests, demos)"
    )
    p.add_argument(
        "--notify-pid",
        type=pid_type("--notify-pid"),
        metavar="PID",
        help="send SIGHUP to this broker's process if a list changed (one process, id 2 or "
        "more; it must exist when the command starts)",
    )
    p.set_defaults(func=_fetch_amd_crls)

    p = sub.add_parser("register", help="register a sealed model's key and policy")
    p.add_argument("--target", required=True, metavar="ADDR", help="broker (admin) address")
    p.add_argument("--key-file", required=True, help="key file from 'lessee seal --key-out'")
    p.add_argument("--policy", required=True, metavar="FILE", help="policy JSON")
    p.add_argument("--model-id", help="defaults to the key file's")
    p.add_argument("--model-version", type=int, help="defaults to the key file's")
    p.add_argument("--manifest-digest", metavar="HEX", help="defaults to the key file's")
    p.add_argument("--tls-ca", metavar="PEM", help="CA of the broker's certificate")
    p.add_argument("--client-cert", metavar="PEM", help="admin client certificate")
    p.add_argument("--client-key", metavar="PEM", help="admin client key")
    p.add_argument(
        "--timeout", type=seconds_type("--timeout"), default=30.0, help="seconds (at most a day)"
    )
    p.set_defaults(func=_register)

    p = sub.add_parser("keys", help="print the broker's public keys")
    p.add_argument("--state", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_keys)

    p = sub.add_parser("export-log", help="export the attestation log as an audit bundle")
    p.add_argument("--state", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=_export_log)
