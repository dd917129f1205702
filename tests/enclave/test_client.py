"""The client SDK: bundle verification before anything is sent, pinned bundles, custom checks,
key rotation, timeouts, the blocking wrapper. Real gRPC on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from agent.client import (
    BundleError,
    EnclaveClient,
    EnclaveKeyChanged,
    EnclaveUnavailable,
    GenerationTimeout,
    SyncEnclaveClient,
    broker_ear_check,
)
from agent.enclave import EchoGenerator, ScriptedGenerator
from agent.enclave.service import ENCLAVE_SERVICE
from agent.rpc.v1 import enclave_pb2
from attest.ear import AttestationResult, EarError, Status
from attest.errors import InputError, ParseError, VerificationError
from sealing.stream import KeyBundle, StreamError
from tests.enclave.conftest import (
    BROKER,
    OTHER_BROKER,
    LoopThread,
    Stack,
    StackFactory,
    enclave_key,
    make_bundle,
    make_ear,
)


def _reason(err: BaseException | None) -> str | None:
    return getattr(err, "reason", None)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"attested": enclave_key(label="other").public_key.encode()}, "ear_key"),
        ({"broker": OTHER_BROKER}, "ear_signature"),
        ({"status": Status.WARNING}, "ear_not_affirming"),
        ({"status": Status.CONTRAINDICATED}, "ear_not_affirming"),
        ({"ttl_s": -3600}, "ear_expired"),
    ],
)
def test_bad_bundle_is_refused_before_anything_is_sent(
    stack_factory: StackFactory, kwargs: dict[str, object], reason: str
) -> None:
    key = enclave_key()
    stack = stack_factory(bundle=make_bundle(key, **kwargs))  # type: ignore[arg-type]
    pieces, err = stack.collect("secret prompt")
    assert pieces == []
    assert isinstance(err, VerificationError) and _reason(err) == reason
    assert stack.relay.generate_exchanges() == []  # the prompt never left the client


def test_relay_swapping_the_bundle_is_refused(stack: Stack) -> None:
    """The relay substitutes a bundle for a key it controls: it cannot get the broker to sign
    it, so it reuses the enclave's genuine EAR, which names the genuine key."""
    mine = enclave_key(label="relay-owned")
    genuine = KeyBundle.decode(enclave_pb2.KeyBundle.FromString(stack.call(_fetch_raw)).bundle)
    forged = KeyBundle.build(mine.public_key, genuine.attestation_result, genuine.log_proof)
    stack.relay.bundle_rewrite = lambda _: enclave_pb2.KeyBundle(
        bundle=forged.raw
    ).SerializeToString()
    pieces, err = stack.collect("secret prompt")
    assert pieces == []
    assert isinstance(err, EarError) and err.reason == "ear_key"
    assert stack.relay.generate_exchanges() == []


async def _fetch_raw(client: EnclaveClient) -> bytes:
    await client.key_bundle()
    assert client._fetched is not None
    return enclave_pb2.KeyBundle(bundle=client._fetched.raw).SerializeToString()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: enclave_pb2.KeyBundle(bundle=b"LSKB").SerializeToString(),
        lambda raw: enclave_pb2.KeyBundle(bundle=b"").SerializeToString(),
        lambda raw: raw[:-20] + bytes([raw[-20] ^ 1]) + raw[-19:],  # in the EAR's signature
        lambda raw: raw[:100] + bytes([raw[100] ^ 1]) + raw[101:],  # in the EAR's claims
        lambda raw: raw[:50] + bytes([raw[50] ^ 1]) + raw[51:],  # in the public key
    ],
    ids=["truncated", "empty", "ear-signature", "ear-claims", "public-key"],
)
def test_corrupted_bundle_is_refused(stack: Stack, mangle: object) -> None:
    stack.relay.bundle_rewrite = mangle  # type: ignore[assignment]
    pieces, err = stack.collect("secret prompt")
    assert pieces == []
    assert isinstance(err, VerificationError), err
    assert _reason(err) in {"bundle_malformed", "ear_malformed", "ear_signature"}
    if _reason(err) == "bundle_malformed":
        assert isinstance(err, BundleError)
    assert stack.relay.generate_exchanges() == []


def test_custom_check_for_zero_trust_in_the_broker(stack: Stack) -> None:
    """A caller-supplied check replaces the broker key (e.g. one that appraises evidence)."""
    seen: list[bytes] = []

    def evidence_check(bundle: KeyBundle, at: datetime) -> None:
        seen.append(bundle.key_id)
        if bundle.key_id != stack.key.public_key.key_id:
            raise VerificationError("not the key I measured", reason="key_not_attested")

    assert stack.collect("a b", bundle_check=evidence_check) == (["a", " b"], None)
    assert seen == [stack.key.public_key.key_id]

    def predicate(bundle: KeyBundle, at: datetime) -> bool:  # a mistake: returns instead of raising
        return True

    pieces, err = stack.collect("a b", bundle_check=predicate)
    assert pieces == [] and _reason(err) == "key_not_attested"


def test_pinned_bundle_is_used_and_still_verified(stack: Stack) -> None:
    good = make_bundle(stack.key)
    assert stack.collect("x y", bundle=good.raw) == (["x", " y"], None)
    assert [e.method for e in stack.relay.exchanges] == ["Generate"]  # no bundle fetch
    stale = make_bundle(stack.key, ttl_s=-3600)
    pieces, err = stack.collect("x y", bundle=stale.raw)
    assert pieces == [] and _reason(err) == "ear_expired"
    with pytest.raises(ParseError):
        EnclaveClient("127.0.0.1:1", bundle_check=BROKER.public_key(), bundle=b"junk")


def test_bundle_is_reverified_against_the_clock(stack: Stack) -> None:
    later = datetime.now(UTC) + timedelta(hours=3)
    pieces, err = stack.collect("x", clock=lambda: later)
    assert pieces == [] and _reason(err) == "ear_expired"


def test_key_rotation_refetches_the_bundle_once_when_told_to_retry(
    stack_factory: StackFactory,
) -> None:
    """The client holds a bundle for a key the enclave no longer has (it restarted): the
    enclave answers FAILED_PRECONDITION; with ``retry_on_new_key`` the client fetches and
    verifies the new bundle once and sends the prompt again, sealed to the new key."""
    stack = stack_factory(key=enclave_key(label="new"))
    old = make_bundle(enclave_key(label="old"))
    stack.relay.bundle_rewrite = lambda _: enclave_pb2.KeyBundle(bundle=old.raw).SerializeToString()
    stack.relay.bundle_rewrite_once = True
    assert stack.collect("p q", retry_on_new_key=True) == (["p", " q"], None)
    assert [e.method for e in stack.relay.exchanges] == [
        "GetKeyBundle",
        "Generate",
        "GetKeyBundle",
        "Generate",
    ]
    assert stack.service.stats.stale_key == 1


def test_key_rotation_is_reported_and_the_next_call_uses_the_new_key(
    stack_factory: StackFactory,
) -> None:
    """By default the unauthenticated "stale key" status is not acted on with the prompt: the
    call raises ``EnclaveKeyChanged`` having sent it once, and the same client's next call
    fetches the bundle anew and is answered under the new key."""
    stack = stack_factory(key=enclave_key(label="new"))
    old = make_bundle(enclave_key(label="old"))
    stack.relay.bundle_rewrite = lambda _: enclave_pb2.KeyBundle(bundle=old.raw).SerializeToString()
    stack.relay.bundle_rewrite_once = True

    async def twice(client: EnclaveClient) -> tuple[BaseException | None, str]:
        try:
            await client.generate_text("p q")
        except EnclaveKeyChanged as exc:
            first: BaseException | None = exc
        else:
            first = None
        return first, await client.generate_text("p q")

    err, text = stack.call(twice)
    assert isinstance(err, EnclaveKeyChanged) and err.code == "FAILED_PRECONDITION"
    assert "not sent again" in str(err)
    assert text == "p q"
    assert [e.method for e in stack.relay.exchanges] == [
        "GetKeyBundle",
        "Generate",
        "GetKeyBundle",
        "Generate",
    ]
    assert stack.service.stats.stale_key == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_enclave() -> None:
    async def run() -> None:
        async with EnclaveClient(
            f"127.0.0.1:{_closed_port()}", bundle_check=BROKER.public_key(), timeout=2
        ) as client:
            await client.generate_text("p")

    with pytest.raises(EnclaveUnavailable) as info:
        asyncio.run(run())
    assert info.value.code in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def test_client_deadline_mid_stream(stack_factory: StackFactory) -> None:
    stack = stack_factory(ScriptedGenerator(["a", "b"], stall_at=1, stall_s=5.0))
    pieces, err = stack.collect(timeout=0.5)
    assert pieces == ["a"]
    assert isinstance(err, GenerationTimeout)


def test_timeout_bounds() -> None:
    for bad in (0, -1, 1e9):
        with pytest.raises(InputError):
            EnclaveClient("127.0.0.1:1", bundle_check=BROKER.public_key(), timeout=bad)


def test_log_proof_check_is_composed(stack: Stack) -> None:
    calls: list[tuple[bytes, str | None]] = []

    def proof_check(bundle: KeyBundle, result: AttestationResult, at: datetime) -> None:
        calls.append((bundle.log_proof, result.result_id))
        if bundle.log_proof != b"log-proof":
            raise VerificationError("no inclusion proof", reason="log_proof")

    check = broker_ear_check(BROKER.public_key(), log_proof_check=proof_check)
    assert stack.collect("a", bundle_check=check) == (["a"], None)
    assert calls == [(b"log-proof", "result-1")]
    stack.relay.bundle_rewrite = lambda raw: raw[:-1] + bytes([raw[-1] ^ 1])  # in the proof
    pieces, err = stack.collect("a", bundle_check=check)
    assert pieces == [] and _reason(err) == "log_proof"


def test_broker_ear_check_directly() -> None:
    key = enclave_key()
    check = broker_ear_check(BROKER.public_key())
    now = datetime.now(UTC)
    assert check(make_bundle(key), now) is None
    not_ascii = KeyBundle.build(key.public_key, "é".encode(), b"")
    with pytest.raises(VerificationError) as info:
        check(not_ascii, now)
    assert info.value.reason == "ear_malformed"
    with pytest.raises(EarError):
        broker_ear_check(OTHER_BROKER.public_key())(make_bundle(key), now)


def test_broker_ear_check_for_one_model() -> None:
    """With ``model_id`` the result must have been issued for that model: a broker serving
    several models appraises each under its own policy, and an enclave attested for another
    (under a laxer policy) must not pass for this one."""
    key = enclave_key()
    now = datetime.now(UTC)

    def bundle(model_id: str | None) -> KeyBundle:
        ear = make_ear(key.public_key.encode(), model_id=model_id)
        return KeyBundle.build(key.public_key, ear.encode("ascii"), b"")

    check = broker_ear_check(BROKER.public_key(), model_id="llama-70b")
    assert check(bundle("llama-70b"), now) is None
    for other in ("demo-model", None):
        with pytest.raises(VerificationError) as info:
            check(bundle(other), now)
        assert info.value.reason == "ear_model" and "llama-70b" in str(info.value)
    assert broker_ear_check(BROKER.public_key())(bundle("demo-model"), now) is None


def test_sync_client(stack: Stack) -> None:
    with SyncEnclaveClient(stack.target, bundle_check=BROKER.public_key(), timeout=5) as client:
        assert client.key_bundle().public_key == stack.key.public_key
        pieces = list(client.generate("one two three"))
        assert pieces == EchoGenerator().tokens_for("one two three", _params())
        assert client.generate_text("four five") == "four five"
        gen = client.generate("six seven eight")
        assert next(gen) == "six"
        gen.close()  # breaking off early cancels the stream
    assert [e.method for e in stack.relay.exchanges].count("Generate") == 3


def _params():  # type: ignore[no-untyped-def]
    from sealing.stream import GenerationParams

    return GenerationParams()


class _GarbageEnclave:
    """A party in the relay's position that answers with bytes that are not protobuf: as the
    bundle reply, or as a stream message after a well-formed head."""

    def __init__(self, loop: LoopThread, *, bundle: bytes | None) -> None:
        self.loop = loop
        self.bundle = bundle
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def _get_key_bundle(self, request: bytes, context: object) -> bytes:
        if self.bundle is None:
            return b"\xff\xff\xff"
        return enclave_pb2.KeyBundle(bundle=self.bundle).SerializeToString()

    async def _generate(self, request: bytes, context: object) -> AsyncIterator[bytes]:
        yield enclave_pb2.StreamRecord(record=b"\x01" + bytes(32)).SerializeToString()
        yield b"\xff\xff\xff"

    async def start(self) -> None:
        self.server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            ENCLAVE_SERVICE,
            {
                "GetKeyBundle": grpc.unary_unary_rpc_method_handler(self._get_key_bundle),
                "Generate": grpc.unary_stream_rpc_method_handler(self._generate),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()


@pytest.mark.parametrize("where", ["bundle", "stream", "stream-first-message"])
def test_garbage_protobuf_from_the_relay_is_a_typed_error(where: str) -> None:
    """grpc hands the caller ``None`` for a message its deserializer refused; that must end in
    the SDK's typed errors (BundleError, StreamError), never an AttributeError."""
    loop = LoopThread()
    fake = _GarbageEnclave(
        loop, bundle=None if where == "bundle" else make_bundle(enclave_key()).raw
    )
    if where == "stream-first-message":

        async def first(request: bytes, context: object) -> AsyncIterator[bytes]:
            yield b"\xff\xff\xff"

        fake._generate = first  # type: ignore[method-assign]
    try:
        loop.run(fake.start())

        async def run() -> str:
            async with EnclaveClient(
                f"127.0.0.1:{fake.port}", bundle_check=BROKER.public_key(), timeout=5
            ) as client:
                return await client.generate_text("secret prompt")

        with pytest.raises(VerificationError) as info:
            asyncio.run(run())
        if where == "bundle":
            assert isinstance(info.value, BundleError)
            assert info.value.reason == "bundle_malformed"
        else:
            assert isinstance(info.value, StreamError)

        async def tokens() -> list[bytes]:
            async with EnclaveClient(
                f"127.0.0.1:{fake.port}", bundle_check=BROKER.public_key(), timeout=5
            ) as client:
                return [t.data async for t in client.generate_tokens("secret prompt")]

        with pytest.raises(BundleError if where == "bundle" else StreamError):
            asyncio.run(tokens())
    finally:
        if fake.server is not None:
            loop.run(fake.server.stop(0))
        loop.close()
