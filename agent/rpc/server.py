"""``serve_broker(config)``: the key broker's gRPC server, started and ready.

What the server adds around the servicers (``agent.rpc.broker_service``):

* **Transport security by default.** A listen address that is not a loopback address needs a
  server certificate and key; plaintext is accepted only on loopback (``127.0.0.0/8``, ``::1``,
  ``localhost``), where nothing crosses a network. With ``client_ca`` and ``admin_listen`` a
  second port requires and verifies client certificates; admin calls are accepted there or
  from loopback, never from the enclave-facing port of a remote peer.
* **Bounded messages.** The receive limit is the largest request any method accepts (an
  Attest with a full evidence bundle); each method then checks its own, smaller bound. The
  send limit covers the largest answer (a page of log entries). ``maximum_concurrent_rpcs``
  turns a flood into ``RESOURCE_EXHAUSTED`` instead of unbounded queues.
* **One broker per port.** ``SO_REUSEPORT`` is off, so a second broker on the same port fails
  to start instead of silently sharing the traffic (and the nonce space) of the first.
* **Standard health checking and reflection** (``grpc.health.v1``, server reflection), so
  ``grpcurl`` and load balancers work unchanged.
* **Structured JSON logs** (``JsonFormatter``): one object per line, events and codes only;
  nothing that could carry a key, a token or evidence is ever a log field.
* **Graceful shutdown.** ``stop(grace)`` reports NOT_SERVING, lets running calls finish for
  ``grace`` seconds, then closes the log (its writer drains first) and the state store.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.bounded_read import read_bounded
from agent.broker.appraiser import CompositeAppraiser, ReloadReport, composite_appraiser
from agent.broker.config import (
    BROKER_DB,
    LOG_DB,
    STATE_LOCK,
    BrokerConfig,
    prepare_state_dir,
)
from agent.broker.keywrap import KeyWrapper
from agent.broker.service import Broker
from agent.broker.store import SqliteBrokerStore
from agent.logstore import LogStore
from agent.rpc.broker_service import (
    ATTESTATION_LOG_SERVICE,
    BROKER_ADMIN_SERVICE,
    KEY_BROKER_SERVICE,
    MAX_ATTEST_REQUEST_BYTES,
    MAX_ENTRIES_RESPONSE_BYTES,
    AttestationLogServicer,
    BrokerAdminServicer,
    KeyBrokerServicer,
    default_admin_check,
    generic_handlers,
    has_verified_client_certificate,
    log_event,
)
from agent.tls import check_ca_bundle, check_tls_pair
from attest.appraise.composite import AppraisalContext
from attest.binding import PROTOCOL_LABEL_V1, PROTOCOL_LABEL_V2
from attest.errors import InputError
from attest.snp.report import Product, SigningKey
from attest.snp.verify import MAX_CRL_BYTES, load_held_crl, parse_held_crl_name

#: The largest request (Attest with a full bundle); smaller per-method bounds apply after.
MAX_RECEIVE_MESSAGE_BYTES = MAX_ATTEST_REQUEST_BYTES
#: The largest answer: a page of log entries plus framing.
MAX_SEND_MESSAGE_BYTES = MAX_ENTRIES_RESPONSE_BYTES + 1024 * 1024
#: Oldest a client connection gets: then the server sends GOAWAY (clients reconnect without
#: failing a call). This is the only bound on a call whose request never completes: the sync
#: server gives each call a worker thread as soon as its headers arrive, and a client that then
#: dribbles (or never sends) the message and sets no deadline holds that thread indefinitely;
#: ``max_workers`` such calls starve every method, health checks included (docs/security.md).
MAX_CONNECTION_AGE_S = 60.0
#: Seconds calls still running at GOAWAY get before the connection is closed and they are
#: cancelled. Broker calls are unary and short (an Attest appraises in well under a second on
#: loopback); 30 s leaves room for an 8 MiB evidence upload over a slow link.
MAX_CONNECTION_AGE_GRACE_S = 30.0
#: Seconds running calls get to finish on shutdown.
DEFAULT_STOP_GRACE_S = 5.0
#: RIM files the broker loads from ``--rims`` (one per driver and VBIOS version in use).
MAX_RIM_FILES = 256
#: One RIM document is ~20 KiB; NVIDIA's largest are under 200 KiB.
MAX_RIM_FILE_BYTES = 1024 * 1024
#: An emulation root certificate PEM is ~1-2 KiB.
MAX_ROOT_PEM_BYTES = 64 * 1024
#: TLS certificate / key / CA files.
MAX_TLS_FILE_BYTES = 1024 * 1024

SERVICES = (KEY_BROKER_SERVICE, BROKER_ADMIN_SERVICE, ATTESTATION_LOG_SERVICE)


# ---- addresses ----------------------------------------------------------------------------


def split_host_port(address: str, what: str = "listen address") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); InputError when malformed, naming the
    address as ``what`` (a server's "listen address", a client's "target")."""
    host, sep, port_text = address.rpartition(":")
    if not (sep and host and port_text.isascii() and port_text.isdigit()) or not (
        0 <= int(port_text) <= 65535
    ):
        raise InputError(f"{what} {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InputError(f"{what} {address!r}: put an IPv6 host in brackets")
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """Loopback IP literals and the name ``localhost`` (no other name is trusted to be local)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- logging ------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, event, and the record's ``lessee`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields = getattr(record, "lessee", None)
        if isinstance(fields, dict):
            doc.update({k: v for k, v in fields.items() if v is not None})
        return json.dumps(doc, separators=(",", ":"), default=str)


def configure_json_logging(stream: TextIO = sys.stderr, level: int = logging.INFO) -> None:
    """Send the broker's logger to ``stream`` as JSON lines (the CLI calls this)."""
    logger = logging.getLogger("lessee.broker")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


# ---- collateral and roots -----------------------------------------------------------------


def load_rims(directory: Path) -> tuple[bytes, ...]:
    """Every ``*.xml`` / ``*.swidtag`` file of ``directory`` (bounded count and size)."""
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory of RIMs")
    files = sorted(
        p for p in directory.iterdir() if p.suffix in (".xml", ".swidtag") and p.is_file()
    )
    if len(files) > MAX_RIM_FILES:
        raise InputError(f"{directory}: more than {MAX_RIM_FILES} RIM files")
    return tuple(read_bounded(p, MAX_RIM_FILE_BYTES, "RIM") for p in files)


def load_amd_crls(directory: Path) -> dict[tuple[SigningKey, Product], bytes]:
    """AMD CRLs the broker holds itself, one file per list: ``<kind>-<product>.crl``, the two
    path parts of its KDS address (``vcek-Milan.crl`` from
    ``https://kdsintf.amd.com/vcek/v1/Milan/crl``; ``vlek-Genoa.crl`` from ``.../vlek/v1/Genoa/crl``).

    Why the broker's own: the VCEK and VLEK lists are both signed by the product's ARK and look
    alike, so a CRL in the evidence proves only that it is *an* AMD list; the host could send
    the one that does not name its revoked ASVK or ASK. A held list is checked instead of the
    evidence's for reports of its kind and product, and archived with every log entry.
    Every file must be such a list (DER or PEM, bounded, issued by ``ARK-<product>``); any other
    file is an error, so a misnamed CRL never sits there unused. Hidden files (``.name``) are
    not read: a temporary of ``lessee broker fetch-amd-crls`` interrupted mid-write is one.
    """
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory of AMD CRLs")
    out: dict[tuple[SigningKey, Product], bytes] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue  # hidden: a writer's temporary (fetch-amd-crls), an editor's swap file
        key = parse_held_crl_name(path.name.removesuffix(".crl")) if path.suffix == ".crl" else None
        if key is None or not path.is_file():
            raise InputError(
                f"{path}: not an AMD CRL file; name them <kind>-<product>.crl, kind vcek or "
                f"vlek, product {', '.join(p.value for p in Product)} (e.g. vcek-Milan.crl)"
            )
        out[key] = load_held_crl(read_bounded(path, MAX_CRL_BYTES, "AMD CRL"), *key)
    return out


@dataclass(frozen=True)
class EmulationRoots:
    """The public roots of one emulation installation, offered as *candidate* trust anchors."""

    nvidia_device_root: x509.Certificate
    nvidia_rim_root: x509.Certificate
    amd_ark: x509.Certificate

    def fingerprints(self) -> dict[str, str]:
        from cryptography.hazmat.primitives import hashes

        return {
            "gpu_device_root": self.nvidia_device_root.fingerprint(hashes.SHA256()).hex(),
            "rim_root": self.nvidia_rim_root.fingerprint(hashes.SHA256()).hex(),
            "snp_ark": self.amd_ark.fingerprint(hashes.SHA256()).hex(),
        }


def load_emulation_roots(pki_dir: Path) -> EmulationRoots:
    """Read only the three root certificates of an emulation PKI (never its private keys) and
    check them against the fingerprints its ``manifest.json`` recorded at creation. The
    directory must be this user's and not writable by others (``check_pki_directory``)."""
    from agent.emulation.pki import EmulationPkiError, check_pki_directory

    try:
        check_pki_directory(pki_dir)
    except EmulationPkiError as exc:
        raise InputError(str(exc)) from None
    try:
        manifest = json.loads(
            read_bounded(pki_dir / "manifest.json", MAX_ROOT_PEM_BYTES, "manifest")
        )
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{pki_dir}/manifest.json is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "lessee-emulation-pki":
        raise InputError(f"{pki_dir}: not a lessee emulation PKI")

    def cert(rel: str) -> x509.Certificate:
        data = read_bounded(pki_dir / rel, MAX_ROOT_PEM_BYTES, "root certificate")
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError:
            raise InputError(f"{pki_dir / rel}: not a PEM certificate") from None

    roots = EmulationRoots(cert("gpu/root.pem"), cert("rim/root.pem"), cert("snp/ark.pem"))
    if manifest.get("roots_sha256") != roots.fingerprints():
        raise InputError(f"{pki_dir}: root certificates differ from those in manifest.json")
    return roots


def appraisal_context(
    *,
    rims: Sequence[bytes] = (),
    amd_crls: Mapping[tuple[SigningKey, Product], bytes] | None = None,
    emulation: EmulationRoots | None = None,
) -> AppraisalContext:
    """The appraisal context of a broker, or of a client that appraises an enclave's evidence
    itself (``lessee client generate --policy``): held RIMs and AMD CRLs, and the emulation
    roots offered as *candidates* (trusted only where the policy pins their SHA-256)."""
    return AppraisalContext(
        rims=tuple(rims),
        candidates=(
            {
                "nvidia_device_root": emulation.nvidia_device_root,
                "nvidia_rim_root": emulation.nvidia_rim_root,
            }
            if emulation
            else {}
        ),
        amd_extra_arks=(emulation.amd_ark,) if emulation else (),
        amd_crls=dict(amd_crls or {}),
    )


# ---- the server ---------------------------------------------------------------------------


def _tls_file(path: Path) -> bytes:
    return read_bounded(path, MAX_TLS_FILE_BYTES, "TLS file")


def server_options() -> list[tuple[str, int]]:
    """Channel arguments of the broker's server (the bounds above; read at call time)."""
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_age_ms", int(MAX_CONNECTION_AGE_S * 1000)),
        ("grpc.max_connection_age_grace_ms", int(MAX_CONNECTION_AGE_GRACE_S * 1000)),
    ]


@dataclass
class _Resources:
    store: SqliteBrokerStore
    log: LogStore
    health: health.HealthServicer
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The open ``broker.lock`` of a serving broker (``flock`` held until closed), else None.
    state_lock: int | None = None

    def close(self) -> None:
        self.log.close()
        self.store.close()
        if self.state_lock is not None:
            os.close(self.state_lock)  # releases the flock
            self.state_lock = None


class RunningBroker(grpc.Server):
    """A started broker: a ``grpc.Server`` that also knows its port, its ``Broker`` and how to
    close its stores. ``stop`` is graceful (see the module docstring)."""

    def __init__(
        self,
        server: grpc.Server,
        *,
        broker: Broker,
        resources: _Resources,
        host: str,
        port: int,
        admin_port: int | None,
        emulation: EmulationRoots | None,
        config: BrokerConfig | None = None,
    ) -> None:
        self._server = server
        self.broker = broker
        self._res = resources
        self._config = config
        self.host = host
        self.port = port
        self.admin_port = admin_port
        self.emulation = emulation

    @property
    def target(self) -> str:
        """``host:port`` for a client (IPv6 hosts bracketed, as gRPC targets need)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def log_store(self) -> LogStore:
        return self._res.log

    # grpc.Server interface, delegated
    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_insecure_port(self, address: str) -> int:
        raise InputError("ports are configured by serve_broker only")

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        raise InputError("ports are configured by serve_broker only")

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float | None = DEFAULT_STOP_GRACE_S) -> threading.Event:
        """NOT_SERVING, wait up to ``grace`` for running calls, then close the stores."""
        res = self._res
        with res.lock:
            if res.closed:
                done = threading.Event()
                done.set()
                return done
            res.closed = True
        res.health.enter_graceful_shutdown()
        event = self._server.stop(grace)
        event.wait()
        res.close()
        log_event("broker_stopped", port=self.port)
        return event

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def reload_held_collateral(self) -> ReloadReport:
        """Re-read the ``--rims`` and ``--amd-crls`` directories and hold what they contain from
        now on (``lessee broker serve`` does this on SIGHUP): a held CRL past its nextUpdate
        refuses every report of its kind and product, so lists are refreshed while serving.

        All or nothing, and logged either way: a directory that would stop the broker at start
        (a misnamed, malformed, oversized or wrongly issued file, an unreadable directory) or
        a CRL older than the one held for the same kind and product leaves everything as it was
        and raises ``InputError``. Calls running meanwhile finish with what they started with.
        """
        config = self._config
        appraiser = self.broker.appraiser
        if config is None or not isinstance(appraiser, CompositeAppraiser):
            raise InputError("this broker was not started with reloadable collateral")
        try:
            rims = load_rims(config.rims_dir) if config.rims_dir is not None else ()
            crls = load_amd_crls(config.amd_crls_dir) if config.amd_crls_dir is not None else {}
            report = appraiser.reload(rims=rims, amd_crls=crls)
        except (InputError, OSError) as exc:
            text = str(exc)  # an InputError's text, or errno, reason and path: never bytes
            log_event("held_collateral_reload_failed", error=text)
            raise InputError(
                f"reload refused, the previous collateral is still held: {text}"
            ) from None
        log_event(
            "held_collateral_reloaded",
            rims=report.rims,
            amd_crls=report.amd_crls,
            amd_crls_dropped=list(report.amd_crls_dropped),
            amd_crls_stale=stale_held_crls(report, config.clock()),
        )
        return report


def stale_held_crls(report: ReloadReport, now: datetime) -> list[str]:
    """Held lists already past their nextUpdate (or without one) at ``now``: every SEV-SNP
    report of that kind and product is refused (``crl_stale``) until the list is refreshed."""
    return [
        name
        for name, (_, next_update) in report.amd_crls.items()
        if next_update is None or datetime.fromisoformat(next_update) < now
    ]


def lock_state_dir(state_dir: Path) -> int:
    """Take ``broker.lock`` in the state directory (``flock``, exclusive, not waiting) and
    return its descriptor: the lock lasts until it is closed or the process ends, however it
    ends. One broker serves a state directory: two would each keep their own view of the log's
    tree and sign checkpoints that fork it, and a release claim by another broker process
    could not be told from one a stopped process left behind."""
    path = state_dir / STATE_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(
            f"{state_dir}: another broker is serving this state directory (it holds "
            f"{STATE_LOCK}); one broker per state directory"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def build_broker(
    config: BrokerConfig, *, lock: bool = False
) -> tuple[Broker, _Resources, EmulationRoots | None]:
    """Open the state directory and make a ``Broker`` over it (no network). ``lock``: hold
    the state directory's lock (``lock_state_dir``) for as long as the resources are open, as
    a serving broker must."""
    keys = prepare_state_dir(config.state_dir)
    state_lock = lock_state_dir(config.state_dir) if lock else None
    rims = load_rims(config.rims_dir) if config.rims_dir is not None else ()
    amd_crls = load_amd_crls(config.amd_crls_dir) if config.amd_crls_dir is not None else {}
    emulation = (
        load_emulation_roots(config.trust_emulation) if config.trust_emulation is not None else None
    )
    context = appraisal_context(rims=rims, amd_crls=amd_crls, emulation=emulation)
    try:
        store = SqliteBrokerStore(config.state_dir / BROKER_DB)
    except BaseException:
        if state_lock is not None:
            os.close(state_lock)
        raise
    try:
        log = LogStore(config.state_dir / LOG_DB, keys.log_signer)
    except BaseException:
        store.close()
        if state_lock is not None:
            os.close(state_lock)
        raise
    old = store.models_wrapped_in_format(1)
    if old:
        log_event(
            "models_wrapped_in_format_1",
            models=old[:100],
            count=len(old),
            released=config.allow_wrap_format_1,
            hint="register them again (their keys are then bound to the model row)"
            if not config.allow_wrap_format_1
            else "released: --allow-wrap-format-1",
        )
    broker = Broker(
        store=store,
        wrapper=KeyWrapper(keys.master_key, allow_format_1=config.allow_wrap_format_1),
        log=log,
        result_key=keys.result_key,
        appraiser=composite_appraiser(context),
        clock=config.clock,
        protocol_label=PROTOCOL_LABEL_V1 if config.binding_v1 else PROTOCOL_LABEL_V2,
    )
    return broker, _Resources(store, log, health.HealthServicer(), state_lock=state_lock), emulation


def serve_broker(config: BrokerConfig) -> RunningBroker:
    """Open the state, bind the port(s), start serving; return the running server.

    Raises ``InputError`` for a configuration that would expose plaintext or admin calls off
    loopback, unreadable TLS files, or a port that cannot be bound.
    """
    host, _ = split_host_port(config.listen)
    loopback = is_loopback_host(host)
    if not loopback and config.tls_cert is None:
        raise InputError(
            f"{config.listen} is not a loopback address: TLS is required "
            "(--tls-cert and --tls-key); plaintext is allowed on loopback only"
        )
    if config.admin_listen is not None:
        split_host_port(config.admin_listen)
        if config.tls_cert is None:
            raise InputError("the admin port needs --tls-cert and --tls-key")
    creds = None
    admin_creds = None
    if config.tls_cert is not None and config.tls_key is not None:
        pair = (_tls_file(config.tls_key), _tls_file(config.tls_cert))
        check_tls_pair(str(config.tls_cert), pair[1], str(config.tls_key), pair[0])
        creds = grpc.ssl_server_credentials([pair])
        if config.client_ca is not None:
            client_ca = _tls_file(config.client_ca)
            check_ca_bundle(str(config.client_ca), client_ca)
            admin_creds = grpc.ssl_server_credentials(
                [pair], root_certificates=client_ca, require_client_auth=True
            )

    broker, res, emulation = build_broker(config, lock=True)
    try:
        server = grpc.server(
            ThreadPoolExecutor(config.max_workers, thread_name_prefix="lessee-broker"),
            options=server_options(),
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers(
            generic_handlers(
                KeyBrokerServicer(broker),
                BrokerAdminServicer(
                    broker,
                    default_admin_check
                    if config.loopback_admin
                    else has_verified_client_certificate,
                ),
                AttestationLogServicer(res.log),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(res.health, server)
        reflection.enable_server_reflection(
            (
                *SERVICES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            port = (
                server.add_secure_port(config.listen, creds)
                if creds is not None
                else server.add_insecure_port(config.listen)
            )
            admin_port = None
            if config.admin_listen is not None and admin_creds is not None:
                admin_port = server.add_secure_port(config.admin_listen, admin_creds)
        except RuntimeError as exc:
            raise InputError(f"cannot listen on {config.listen}: {exc}") from None
        if port == 0 or admin_port == 0:
            raise InputError(f"cannot listen on {config.listen} (in use, or not an address here)")
        server.start()
    except BaseException:
        res.close()
        raise
    for name in ("", *SERVICES):
        res.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningBroker(
        server,
        broker=broker,
        resources=res,
        host=host,
        port=port,
        admin_port=admin_port,
        emulation=emulation,
        config=config,
    )
    held = broker.appraiser.describe() if isinstance(broker.appraiser, CompositeAppraiser) else None
    log_event(
        "broker_started",
        listen=config.listen,
        port=port,
        tls=creds is not None,
        admin_port=admin_port,
        log_size=res.log.size,
        emulation_candidates=emulation is not None,
        at=time.time(),
        held_rims=held.rims if held else 0,
        held_amd_crls=held.amd_crls if held else {},
        held_amd_crls_stale=stale_held_crls(held, config.clock()) if held else [],
    )
    return running


__all__ = [
    "DEFAULT_STOP_GRACE_S",
    "MAX_RECEIVE_MESSAGE_BYTES",
    "MAX_SEND_MESSAGE_BYTES",
    "EmulationRoots",
    "JsonFormatter",
    "RunningBroker",
    "build_broker",
    "configure_json_logging",
    "is_loopback_host",
    "load_emulation_roots",
    "load_rims",
    "serve_broker",
    "server_options",
    "split_host_port",
]
