"""Fixtures for the token-stream integration tests: a real enclave server, the test relay in
front of it (and optionally a TCP tap in front of the relay), all on 127.0.0.1.

The servers run on an event loop in a background thread (as they would in their own process);
each test drives the real client from the main thread with ``asyncio.run``, so client and
servers never share a loop. Keys are derived from fixed labels (deterministic, committed here);
the broker's EARs are issued relative to the real clock because the CLI uses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.client import EnclaveClient
from agent.enclave import EchoGenerator, EnclaveConfig, EnclaveServer, EnclaveService
from agent.enclave.generator import TokenGenerator
from agent.enclave.service import serve_enclave
from attest.ear import MODEL_ID_CLAIM, AttestationResult, Status, Submodule, issue_ear
from sealing.hpke_suite import HpkePrivateKey, SuiteId, generate_keypair
from sealing.stream import KeyBundle, ReplayGuard
from tests.enclave.relay import ByteTap, Relay

T = TypeVar("T")


def _seeded(label: str) -> Callable[[int], bytes]:
    """A deterministic RNG for test keys: SHA-256 in counter mode over a label."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
            counter += 1
        return out[:n]

    return rng


BROKER = ed25519.Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"lessee test broker").digest()
)
OTHER_BROKER = ed25519.Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"lessee another broker").digest()
)
_KEYS: dict[tuple[SuiteId, str], HpkePrivateKey] = {}


def enclave_key(
    suite: SuiteId = SuiteId.X25519_SHA256_AES256GCM, label: str = "enclave"
) -> HpkePrivateKey:
    if (suite, label) not in _KEYS:
        _KEYS[(suite, label)] = generate_keypair(suite, rng=_seeded(f"{label}/{suite.name}"))
    return _KEYS[(suite, label)]


def make_ear(
    enclave_key_encoded: bytes,
    *,
    broker: ed25519.Ed25519PrivateKey = BROKER,
    status: Status = Status.AFFIRMING,
    ttl_s: int = 3600,
    nonce: bytes = b"\x01" * 32,
    result_id: str = "result-1",
    model_id: str | None = None,
) -> str:
    now = int(time.time())
    result = AttestationResult(
        submods={"cpu0": Submodule(status=status), "gpu0": Submodule(status=status)},
        issued_at=now - 5,
        expires_at=now + ttl_s,
        verifier_build="tests",
        nonce=nonce,
        enclave_key=enclave_key_encoded,
        policy_digest="sha256:" + "00" * 32,
        result_id=result_id,
        extra={MODEL_ID_CLAIM: model_id} if model_id is not None else {},
    )
    return issue_ear(result, broker)


def make_bundle(
    key: HpkePrivateKey,
    *,
    attested: bytes | None = None,
    broker: ed25519.Ed25519PrivateKey = BROKER,
    status: Status = Status.AFFIRMING,
    ttl_s: int = 3600,
) -> KeyBundle:
    """A bundle for ``key`` whose EAR attests ``attested`` (by default, the same key)."""
    ear = make_ear(
        attested if attested is not None else key.public_key.encode(),
        broker=broker,
        status=status,
        ttl_s=ttl_s,
    )
    return KeyBundle.build(key.public_key, ear.encode("ascii"), b"log-proof")


class LoopThread:
    """An event loop in a daemon thread: the servers' home."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Stack:
    """A running enclave, the relay in front of it, and (optionally) a TCP tap before that."""

    loop: LoopThread
    server: EnclaveServer
    relay: Relay
    tap: ByteTap | None
    generator: TokenGenerator
    key: HpkePrivateKey
    stopped: bool = field(default=False)

    @property
    def service(self) -> EnclaveService:
        return self.server.service

    @property
    def target(self) -> str:
        """Where clients connect: the tap if there is one, else the relay."""
        return self.tap.target if self.tap is not None else self.relay.target

    def client(self, **kwargs: Any) -> EnclaveClient:
        kwargs.setdefault("bundle_check", BROKER.public_key())
        kwargs.setdefault("timeout", 20.0)
        return EnclaveClient(self.target, **kwargs)

    def call(self, fn: Callable[[EnclaveClient], Awaitable[T]], **kwargs: Any) -> T:
        """Run ``fn(client)`` on a fresh client in a fresh loop in this thread."""

        async def main() -> T:
            async with self.client(**kwargs) as client:
                return await fn(client)

        return asyncio.run(main())

    def collect(
        self, prompt: str = "hello", **kwargs: Any
    ) -> tuple[list[str], BaseException | None]:
        """The text pieces the client yielded before it ended, and the error it ended with."""
        pieces: list[str] = []
        params = kwargs.pop("params", None)

        async def fn(client: EnclaveClient) -> BaseException | None:
            try:
                async for piece in client.generate(prompt, params=params):
                    pieces.append(piece)
            except Exception as exc:
                return exc
            return None

        return pieces, self.call(fn, **kwargs)


StackFactory = Callable[..., Stack]


@pytest.fixture
def stack_factory() -> Iterator[StackFactory]:
    loop = LoopThread()
    stacks: list[Stack] = []

    def make(
        generator: TokenGenerator | None = None,
        *,
        config: EnclaveConfig | None = None,
        suite: SuiteId = SuiteId.X25519_SHA256_AES256GCM,
        key: HpkePrivateKey | None = None,
        bundle: KeyBundle | None = None,
        tap: bool = False,
        tls: tuple[bytes, bytes] | None = None,
        clock: Callable[[], datetime] | None = None,
        replay_guard: ReplayGuard | None = None,
    ) -> Stack:
        gen = generator if generator is not None else EchoGenerator()
        key = key or enclave_key(suite)
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        service = EnclaveService(
            key,
            bundle or make_bundle(key),
            gen,
            config=config,
            replay_guard=replay_guard,
            **extra,
        )

        async def start() -> Stack:
            server = await serve_enclave(
                service,
                server_cert_chain=tls[0] if tls else None,
                server_private_key=tls[1] if tls else None,
            )
            relay = Relay(server.target)
            await relay.start()
            byte_tap = None
            if tap:
                byte_tap = ByteTap(relay.port)
                await byte_tap.start()
            return Stack(loop, server, relay, byte_tap, gen, key)

        stack = loop.run(start())
        stacks.append(stack)
        return stack

    yield make

    async def stop_all() -> None:
        for s in stacks:
            if s.tap is not None:
                await s.tap.stop()
            await s.relay.stop()
            await s.server.stop(0)

    loop.run(stop_all())
    loop.close()


@pytest.fixture
def stack(stack_factory: StackFactory) -> Stack:
    return stack_factory()
