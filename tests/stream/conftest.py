"""Fixtures for the token-stream tests: the committed test keys and helpers to run streams."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from attest.errors import VerificationError
from sealing.hpke_suite import HpkePrivateKey, SuiteId
from sealing.stream import (
    ClientStream,
    EnclaveStreamSession,
    Event,
    KeyBundle,
    ReplayGuard,
    VerifiedKeyBundle,
    verify_bundle,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
STREAM_VECTORS = VECTORS / "stream"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
#: ``NOW`` as the POSIX seconds that requests are stamped with and that enclaves judge them by.
SENT_AT = int(NOW.timestamp())


def load_generator() -> ModuleType:
    """Import tests/vectors/generate_stream.py (a script, not a package module)."""
    name = "generate_stream"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, VECTORS / "generate_stream.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


GEN = load_generator()
KEYS: dict[SuiteId, HpkePrivateKey] = {s: GEN.fixed_key(s) for s in SuiteId}


def load_json(name: str) -> Any:
    return json.loads((STREAM_VECTORS / name).read_text())


def accept_all(bundle: KeyBundle, at: datetime) -> None:
    """Test hook: a bundle is attested when its result names its key id (see test_bundle)."""
    claims = json.loads(bundle.attestation_result)
    if claims.get("enclave_key_id") != bundle.key_id.hex():
        raise VerificationError("result does not attest this key", reason="key_not_attested")


def verified(suite: SuiteId = SuiteId.X25519_SHA256_AES256GCM) -> VerifiedKeyBundle:
    key = KEYS[suite]
    result = json.dumps({"enclave_key_id": key.public_key.key_id.hex()}).encode()
    return verify_bundle(
        KeyBundle.build(key.public_key, result, b"proof"), check=accept_all, at=NOW
    )


@pytest.fixture(params=list(SuiteId), ids=lambda s: s.name)
def suite(request: pytest.FixtureRequest) -> SuiteId:
    return SuiteId(request.param)


def feed(client: ClientStream, head: bytes, records: list[bytes]) -> list[Event]:
    """Run a client over a head and records, then finish(); return all events."""
    client.open_head(head)
    events: list[Event] = []
    for r in records:
        events += client.open_record(r)
    client.finish()
    return events


def accept(key: HpkePrivateKey, request: bytes, **kwargs: Any) -> EnclaveStreamSession:
    """``EnclaveStreamSession.accept`` as of ``NOW``, with a new replay guard unless one is
    given: each call is then an enclave that has not seen the request (the session tests look
    at the record layer; the guard has its own tests, tests/stream/test_replay.py)."""
    kwargs.setdefault("replay_guard", ReplayGuard())
    kwargs.setdefault("now", float(SENT_AT))
    return EnclaveStreamSession.accept(key, request, **kwargs)


def start(bundle: VerifiedKeyBundle, prompt: str, **kwargs: Any) -> ClientStream:
    """``ClientStream.start`` stamped ``NOW`` unless a send time is given."""
    kwargs.setdefault("sent_at", SENT_AT)
    return ClientStream.start(bundle, prompt, **kwargs)


def make_stream(
    tokens: list[bytes],
    *,
    record_size: int = 32,
    suite: SuiteId = SuiteId.X25519_SHA256_AES256GCM,
    covers: frozenset[int] = frozenset(),
    abort: int | None = None,
) -> tuple[ClientStream, EnclaveStreamSession, list[bytes]]:
    """A client and an enclave session over one request, and the enclave's records."""
    client = start(verified(suite), "prompt", record_size=record_size)
    session = accept(KEYS[suite], client.request)
    records: list[bytes] = []
    for i, tok in enumerate(tokens):
        if i in covers:
            records.append(session.seal_cover())
        records += session.seal_token(tok)
    records.append(session.close() if abort is None else session.abort(abort))
    return client, session, records
