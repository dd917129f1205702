"""The broker's state directory and configuration: keys made on first start, kept 0600.

One directory holds everything a broker needs to survive a restart:

=====================  ==========================================================  ======
file                   what                                                        mode
=====================  ==========================================================  ======
``broker.db``          nonces, models (wrapped data keys, policies), results,       0600
                       releases (``agent.broker.store``)
``log.db``             the attestation log (``agent.logstore``)                     0600
``master.key``         32 random bytes; wraps every data key at rest                0600
``ear-signing.pem``    P-256 private key (PKCS#8) that signs attestation results     0600
``log-note.key``       the log's Ed25519 note key, Go ``PRIVATE+KEY+...`` form       0600
``ear-verifier.pem``   the EAR verifier (public) key, for relying parties            0644
``ear-verifier.jwk``   the same key as a JWK (RFC 7517, ``kid`` = RFC 7638 print)    0644
``log.vkey``           the log's verifier key (one C2SP vkey line), for auditors     0644
``broker.lock``        empty; the serving broker holds its ``flock`` (one broker    0600
                       per directory: ``agent.rpc.server.lock_state_dir``)
=====================  ==========================================================  ======

Why these choices:

* **Generated on first start, never overwritten.** Private files are created with
  ``O_CREAT|O_EXCL`` and mode 0600, so two brokers starting at once on an empty directory
  cannot end up with different keys (the loser reads the winner's file), and a later start
  never replaces a key that results and checkpoints were signed with.
* **Refused when readable by others.** A key that group or world can read has leaked; the
  broker stops rather than sign with it (``ssh`` does the same for private keys). The same
  holds for ``broker.db`` and ``log.db`` and their ``-wal``/``-shm``/``-journal`` files, which
  must also be regular files (a model's policy in ``broker.db`` is bound to its data key by the
  master key only for keys wrapped in format 2, ``agent.broker.keywrap``). The directory itself must not be writable by group or others, or someone could
  swap a key file.
* **Public keys are exported as files** on every start (derived from the private keys, so they
  can never disagree), for ``lessee result verify --verifier-key``, ``lessee agent
  --broker-key`` and ``lessee audit verify --log-key``.

Nothing here logs or prints private material; ``BrokerKeys`` keeps its keys out of ``repr``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.broker.keywrap import create_private, load_or_create_master_key
from attest.errors import InputError
from attest.log.note import (
    SIG_TYPE_ED25519,
    NoteError,
    NoteSigner,
    b64decode_strict,
    b64encode,
    check_key_name,
    key_id,
)

BROKER_DB = "broker.db"
LOG_DB = "log.db"
#: Held (``flock``) by the broker serving the directory: one broker per state directory.
STATE_LOCK = "broker.lock"
MASTER_KEY = "master.key"
EAR_SIGNING_KEY = "ear-signing.pem"
LOG_NOTE_KEY = "log-note.key"
EAR_VERIFIER_PEM = "ear-verifier.pem"
EAR_VERIFIER_JWK = "ear-verifier.jwk"
LOG_VKEY = "log.vkey"

#: A private key file here is a few hundred bytes; anything much larger is not one of ours.
MAX_KEY_FILE_BYTES = 16 * 1024
#: Prefix of Go's note signer key encoding (golang.org/x/mod/sumdb/note ``NewSigner``).
NOTE_PRIVATE_PREFIX = "PRIVATE+KEY+"
#: Name of a fresh log: unique per installation, so two brokers' checkpoints never share an
#: origin (C2SP tlog-checkpoint asks origins to be unique log identities).
LOG_NAME_PREFIX = "lessee-broker.invalid/log/"
_ED25519_SEED_BYTES = 32


def utc_now() -> datetime:
    """The wall clock, timezone-aware (the broker's default clock)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class BrokerKeys:
    """The broker's long-lived keys. Private parts never appear in ``repr``."""

    result_key: ec.EllipticCurvePrivateKey = field(repr=False)
    log_signer: NoteSigner = field(repr=False)
    master_key: bytes = field(repr=False)

    @property
    def log_name(self) -> str:
        return self.log_signer.name

    def ear_public_pem(self) -> bytes:
        return self.result_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def ear_public_jwk(self) -> dict[str, str]:
        """The EAR verifier key as a JWK, ``kid`` its RFC 7638 thumbprint."""
        numbers = self.result_key.public_key().public_numbers()
        x = _b64u(numbers.x.to_bytes(32, "big"))
        y = _b64u(numbers.y.to_bytes(32, "big"))
        # RFC 7638: the required members, lexicographic order, no whitespace.
        thumb = json.dumps(
            {"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True
        )
        kid = _b64u(hashlib.sha256(thumb.encode()).digest())
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": x,
            "y": y,
            "alg": "ES256",
            "use": "sig",
            "kid": kid,
        }

    def log_vkey(self) -> str:
        return self.log_signer.verifier().vkey()


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_private_file(path: Path) -> bytes:
    """Read a private key file after checking its mode and size."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"{path}: private key file is accessible by group/others (chmod 600)")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise InputError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
        return os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)


def _check_private_db(path: Path) -> None:
    """A database file (or its WAL, shared-memory or journal file), where present, must be a
    regular file that group and others can neither read nor write, as the key files: whoever
    can write ``broker.db`` can change a model's policy (only rows wrapped in format 2 bind it
    to their data key, ``agent.broker.keywrap``), and ``log.db`` is the log before any
    checkpoint commits to it. A database restored from a backup with a loose umask stops the broker
    instead of running with it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (a symlink or device is refused)")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{path}: broker database is accessible by group/others (chmod 600)")


def _create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600) holding ``data``, whole or not at all; False if it already existed
    (``keywrap.create_private``)."""
    return create_private(path, data)


def _write_public(path: Path, data: bytes) -> None:
    """Replace a public export atomically (0644), so readers never see half a key."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def encode_note_private_key(signer: NoteSigner) -> str:
    """Go's note signer key: ``PRIVATE+KEY+<name>+<key id hex>+base64(0x01 || seed)``."""
    return (
        f"{NOTE_PRIVATE_PREFIX}{signer.name}+{signer.key_id.hex()}+"
        f"{b64encode(bytes([SIG_TYPE_ED25519]) + signer.seed)}"
    )


def parse_note_private_key(text: str) -> NoteSigner:
    """Parse Go's note signer key strictly (prefix, name, key id, type byte, seed length)."""
    line = text[:-1] if text.endswith("\n") else text
    if not line.startswith(NOTE_PRIVATE_PREFIX) or "\n" in line:
        raise InputError("log note key: not one 'PRIVATE+KEY+<name>+<id>+<key>' line")
    parts = line[len(NOTE_PRIVATE_PREFIX) :].split("+", 2)  # base64 may hold "+"
    if len(parts) != 3:
        raise InputError("log note key: expected <name>+<key id>+<base64 key>")
    name, kid_hex, b64 = parts
    try:
        check_key_name(name, field="log note key name")
        raw = b64decode_strict(b64, field="log note key")
    except NoteError as exc:
        raise InputError(f"log note key: {exc}") from None
    if len(raw) != 1 + _ED25519_SEED_BYTES or raw[0] != SIG_TYPE_ED25519:
        raise InputError("log note key: not an Ed25519 (type 0x01) 32-byte seed")
    signer = NoteSigner(name=name, seed=raw[1:])
    if kid_hex != key_id(name, SIG_TYPE_ED25519, signer.public_key).hex():
        raise InputError("log note key: key id does not match the key")
    return signer


def _load_or_create_ear_key(path: Path) -> ec.EllipticCurvePrivateKey:
    fresh = ec.generate_private_key(ec.SECP256R1())
    pem = fresh.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if _create_private(path, pem):
        return fresh
    data = _check_private_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # e.g. an unknown curve
        raise InputError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InputError(f"{path}: the EAR signing key must be P-256 (ES256)")
    return key


def _load_or_create_note_key(path: Path) -> NoteSigner:
    fresh = NoteSigner(name=LOG_NAME_PREFIX + secrets.token_hex(8), seed=secrets.token_bytes(32))
    if _create_private(path, (encode_note_private_key(fresh) + "\n").encode()):
        return fresh
    data = _check_private_file(path)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{path}: log note key is not ASCII") from None
    try:
        return parse_note_private_key(text)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def prepare_state_dir(state_dir: Path | str, *, create: bool = True) -> BrokerKeys:
    """Create (0700) or check the state directory; load or generate every key; export publics.

    With ``create=False`` the directory and its keys must exist already (tools that only read
    a broker's state must not mint a new broker identity because of a typo in a path).
    """
    d = Path(state_dir)
    if not create:
        missing = [n for n in (MASTER_KEY, EAR_SIGNING_KEY, LOG_NOTE_KEY) if not (d / n).is_file()]
        if missing:
            raise InputError(
                f"{d}: not a broker state directory (missing {', '.join(missing)}); "
                "start 'lessee broker serve --state' there first"
            )
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{d}: not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InputError(f"{d}: state directory is writable by group/others (chmod 700)")
    master = load_or_create_master_key(d / MASTER_KEY)
    for name in (BROKER_DB, LOG_DB):  # SQLite makes -wal/-shm with the database's mode
        _create_private(d / name, b"")
        for suffix in ("", "-wal", "-shm", "-journal"):
            _check_private_db(d / f"{name}{suffix}")
    keys = BrokerKeys(
        result_key=_load_or_create_ear_key(d / EAR_SIGNING_KEY),
        log_signer=_load_or_create_note_key(d / LOG_NOTE_KEY),
        master_key=master,
    )
    export_public_keys(keys, d)
    return keys


def export_public_keys(keys: BrokerKeys, out_dir: Path) -> dict[str, Path]:
    """Write the public exports (PEM, JWK, vkey) into ``out_dir``; return their paths."""
    paths = {
        "ear_pem": out_dir / EAR_VERIFIER_PEM,
        "ear_jwk": out_dir / EAR_VERIFIER_JWK,
        "log_vkey": out_dir / LOG_VKEY,
    }
    _write_public(paths["ear_pem"], keys.ear_public_pem())
    _write_public(paths["ear_jwk"], (json.dumps(keys.ear_public_jwk(), indent=1) + "\n").encode())
    _write_public(paths["log_vkey"], (keys.log_vkey() + "\n").encode())
    return paths


#: Default worker threads of the gRPC server: enough to keep SQLite's fsyncs and the
#: verifier's native crypto (both release the GIL) overlapped on a small machine.
DEFAULT_MAX_WORKERS = 32
#: Most RPCs in flight before new ones get RESOURCE_EXHAUSTED (bounds memory under a flood).
DEFAULT_MAX_CONCURRENT_RPCS = 512


@dataclass(frozen=True)
class BrokerConfig:
    """Everything ``agent.rpc.server.serve_broker`` needs.

    ``listen`` is ``host:port`` (``[v6]:port`` for IPv6; port 0 picks a free one). Plaintext is
    allowed only when the host is a loopback address; anywhere else ``tls_cert``/``tls_key``
    are required. ``client_ca`` with ``admin_listen`` opens a second port that requires a
    client certificate issued by that CA: admin calls are accepted there, or from loopback
    unless ``loopback_admin`` is off (then only there: a local proxy or tunnel to the broker
    would otherwise make every caller behind it an admin).

    ``trust_emulation`` names an emulation PKI directory whose roots become *candidates*: they
    are used only for a model whose policy pins their SHA-256 in ``roots.extra_trusted_sha256``.

    ``allow_wrap_format_1`` (default off) releases keys of models registered before data keys
    were bound to their model row (``agent.broker.keywrap``); they are listed at start.

    ``binding_v1`` (default off) makes the broker issue and appraise version-1 bindings, for
    enclave agents from before binding version 2 (which refuse a version-2 challenge). Version
    1 does not bind the GPUs' CC and DevTools flags, which no signed report carries: whoever
    relays that evidence could flip them (docs/binding.md, threat T-STREAM-03).
    """

    state_dir: Path
    listen: str = "127.0.0.1:0"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    admin_listen: str | None = None
    loopback_admin: bool = True
    rims_dir: Path | None = None
    #: AMD CRLs the broker holds (``<kind>-<product>.crl``; ``agent.rpc.server.load_amd_crls``).
    amd_crls_dir: Path | None = None
    trust_emulation: Path | None = None
    clock: Callable[[], datetime] = utc_now
    max_workers: int = DEFAULT_MAX_WORKERS
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    binding_v1: bool = False
    allow_wrap_format_1: bool = False

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InputError("--tls-cert and --tls-key go together")
        if self.admin_listen is not None and self.client_ca is None:
            raise InputError(
                "an admin port needs --client-ca (it accepts client certificates only)"
            )
        if self.client_ca is not None and self.admin_listen is None:
            # Only the admin port asks for client certificates; unused, the CA would let an
            # operator believe the enclave-facing port required them.
            raise InputError(
                "--client-ca is used only on the admin port: give --admin-listen too "
                "(the enclave-facing port never asks for client certificates)"
            )
        if not self.loopback_admin and self.admin_listen is None:
            raise InputError(
                "--no-loopback-admin leaves admin calls only to the admin port: give "
                "--admin-listen and --client-ca (or no model could ever be registered)"
            )
        if not 1 <= self.max_workers <= 1024 or not 1 <= self.max_concurrent_rpcs <= 1 << 16:
            raise InputError("max_workers / max_concurrent_rpcs out of range")


__all__ = [
    "BROKER_DB",
    "EAR_SIGNING_KEY",
    "EAR_VERIFIER_JWK",
    "EAR_VERIFIER_PEM",
    "LOG_DB",
    "LOG_NOTE_KEY",
    "LOG_VKEY",
    "MASTER_KEY",
    "BrokerConfig",
    "BrokerKeys",
    "encode_note_private_key",
    "export_public_keys",
    "parse_note_private_key",
    "prepare_state_dir",
    "utc_now",
]
