"""A real broker on loopback for the integration tests: real gRPC, real SQLite, emulated hardware.

Nothing here is mocked: ``serve_broker`` binds a real port, clients use the generated stubs over a
real channel, state lives in a temporary directory. The only thing injected is the broker's clock
(``MutableClock``), so nonce and result expiry can be tested without sleeping.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from agent.agent import EMULATED_LAUNCH_MEASUREMENT, EnclaveAgent, call_broker, open_channel
from agent.broker.config import BrokerConfig, BrokerKeys, prepare_state_dir
from agent.demo import demo_policy
from agent.emulation import (
    EmulatedCpuSource,
    EmulatedGpu,
    EmulatedGpuSource,
    EmulatedSnp,
    EmulationPki,
)
from agent.evidence.sources import CpuEvidenceSource, GpuEvidenceSource
from agent.rpc.server import RunningBroker, serve_broker
from agent.rpc.v1 import broker_pb2, broker_pb2_grpc

MODEL = "m1"
OTHER_MODEL = "m2"
DATA_KEY = bytes(range(32))
OTHER_DATA_KEY = bytes(range(32, 64))
MANIFEST = hashlib.sha256(b"manifest m1").digest()
OTHER_MANIFEST = hashlib.sha256(b"manifest m2").digest()


class MutableClock:
    """The broker's clock: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def snp_emulation_ok(pki: EmulationPki) -> None:
    """Fail fast, with the verifier's own error, if emulated SEV-SNP evidence does not verify.

    The flow tests need an *affirming* result, so the emulated SNP chain must pass
    ``attest.snp.verify`` with the emulation ARK as an extra root. This used to skip on any
    exception while the emulation's CA names (``LESSEE EMULATION SEV-Milan`` / ``... ARK-Milan``)
    were not accepted by ``attest.snp.verify.classify``; ``classify`` now strips
    ``EMULATION_CN_PREFIX``, so that condition no longer exists and nothing is skipped: an error
    here is a verifier or emulation regression, and every test depending on it must fail (a
    skip would hide it), reported once here rather than as a confusing flow failure.
    """
    assert_emulated_snp_verifies(pki)


def assert_emulated_snp_verifies(pki: EmulationPki) -> None:
    """Emulated SEV-SNP evidence passes ``attest.snp.verify`` with the emulation ARK as an extra
    root (the precondition of every flow that needs an affirming result)."""
    from agent.emulation import EmulatedSnp
    from attest.snp.verify import load_amd_certificates, verify_snp_report

    snp = EmulatedSnp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)
    vcek, ask_ark = snp.certificates()
    verified = verify_snp_report(
        snp.report(bytes(64)),
        load_amd_certificates(vcek) + load_amd_certificates(ask_ark),
        at=datetime.now(UTC),
        extra_arks=[pki.ark.cert],
    )
    assert verified.report.measurement == EMULATED_LAUNCH_MEASUREMENT


@dataclass
class Harness:
    """One broker (restartable on the same state directory) and helpers to talk to it."""

    state: Path
    pki_dir: Path
    pki: EmulationPki
    clock: MutableClock = field(default_factory=MutableClock)
    server: RunningBroker | None = None
    channel: grpc.Channel | None = None
    listen: str = "127.0.0.1:0"

    def start(self) -> RunningBroker:
        self.server = serve_broker(
            BrokerConfig(
                state_dir=self.state,
                listen=self.listen,
                trust_emulation=self.pki_dir,
                clock=self.clock,
                max_workers=16,
            )
        )
        self.channel = open_channel(self.server.target)
        return self.server

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.server is not None:
            self.server.stop(1.0)
            self.server = None

    def restart(self) -> RunningBroker:
        self.stop()
        return self.start()

    @property
    def keys(self) -> BrokerKeys:
        return prepare_state_dir(self.state, create=False)

    @property
    def stub(self) -> broker_pb2_grpc.KeyBrokerStub:
        assert self.channel is not None
        return broker_pb2_grpc.KeyBrokerStub(self.channel)  # type: ignore[no-untyped-call]

    def register(
        self,
        model_id: str = MODEL,
        data_key: bytes = DATA_KEY,
        manifest: bytes = MANIFEST,
        model_version: int = 1,
        **policy_overrides: object,
    ) -> broker_pb2.RegisterModelResponse:
        assert self.channel is not None
        policy = demo_policy(list(self.pki.root_fingerprints().values()), manifest.hex())
        policy.update(policy_overrides)
        admin = broker_pb2_grpc.BrokerAdminStub(self.channel)  # type: ignore[no-untyped-call]
        request = broker_pb2.RegisterModelRequest(
            model_id=model_id,
            model_version=model_version,
            data_key=data_key,
            policy_json=json.dumps(policy),
            manifest_digest=manifest,
        )
        reply: broker_pb2.RegisterModelResponse = call_broker(
            "RegisterModel", admin.RegisterModel, request, 30.0
        )
        return reply

    def agent(
        self,
        *,
        cpu: CpuEvidenceSource | None = None,
        gpu: GpuEvidenceSource | None = None,
        pinned: bool = True,
        **kwargs: Any,
    ) -> EnclaveAgent:
        assert self.channel is not None
        keys = self.keys
        return EnclaveAgent(
            self.channel,
            cpu=cpu
            or EmulatedCpuSource(EmulatedSnp(self.pki, measurement=EMULATED_LAUNCH_MEASUREMENT)),
            gpu=gpu or EmulatedGpuSource([EmulatedGpu(self.pki, index=0)]),
            broker_key=keys.result_key.public_key() if pinned else None,
            log_key=keys.log_signer.verifier() if pinned else None,
            clock=self.clock,
            **kwargs,
        )


@pytest.fixture
def plain_harness(tmp_path: Path, pki_dir: Path, pki: EmulationPki) -> Iterator[Harness]:
    """A running broker with the model registered (for tests that need no affirming result)."""
    h = Harness(state=tmp_path / "state", pki_dir=pki_dir, pki=pki)
    h.start()
    h.register()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def harness(
    tmp_path: Path, pki_dir: Path, pki: EmulationPki, snp_emulation_ok: None
) -> Iterator[Harness]:
    h = Harness(state=tmp_path / "state", pki_dir=pki_dir, pki=pki)
    h.start()
    h.register()
    try:
        yield h
    finally:
        h.stop()


def status_of(exc: BaseException) -> grpc.StatusCode:
    code = getattr(exc, "code", None)
    assert code is not None, f"not a gRPC error: {exc!r}"
    value = code() if callable(code) else code
    assert isinstance(value, grpc.StatusCode)
    return value


def reason_of(exc: grpc.RpcError) -> str | None:
    """The broker's ``lessee-reason`` trailing-metadata value of a failed call."""
    items = cast(Sequence[tuple[str, Any]], exc.trailing_metadata() or ())
    for key, value in items:
        if key == "lessee-reason":
            return str(value)
    return None
