"""A real broker log for the key-bundle log-proof tests: a ``LogStore`` signed by a committed
test key, attest entries made as the broker makes them (nonce, binding of that nonce and the
enclave key, the EAR), and the bundle ``log_proof`` bytes an enclave would publish."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.logstore import AppendReceipt, LogStore
from agent.rpc.convert import LogProofIn, key_bundle_log_proof
from attest.binding import derive_binding
from attest.log.entry import BlobRef, LogEntry, attest_entry, release_entry
from attest.log.note import NoteSigner
from sealing.hpke_suite import HpkePrivateKey
from sealing.stream import KeyBundle
from tests.enclave.conftest import make_ear

#: Test seeds are SHA-256 of a label: they guard nothing. Same name, different keys: a forger
#: who names its checkpoints like the real log still cannot sign them.
LOG_SIGNER = NoteSigner("log.lessee.test/stream", hashlib.sha256(b"lessee stream log").digest())
FORGER = NoteSigner("log.lessee.test/stream", hashlib.sha256(b"lessee forged log").digest())
NONCE = b"\x01" * 32  # make_ear's default eat_nonce
POLICY = b'{"policy":"stream-tests"}'


def entry_for(
    key: HpkePrivateKey,
    result: str,
    *,
    nonce: bytes = NONCE,
    binding_key: bytes | None = None,
    release: bool = False,
    evidence: bytes | None = None,
    binding: bytes | None = None,
) -> tuple[LogEntry, list[bytes]]:
    """The broker's entry for ``result`` (and the blobs it references); ``binding_key``: bind
    another key than ``key``'s; ``release``: a release entry instead of an attest entry;
    ``evidence``: the evidence bytes the entry logs (a stand-in by default); ``binding``: the
    logged binding (by default version 1's for the nonce and the attested key)."""
    attested = binding_key if binding_key is not None else key.public_key.encode()
    if binding is None:
        binding = derive_binding(nonce, attested).report_data
    policy = BlobRef.of("policy", "application/json", POLICY)
    common = {
        "at": datetime.now(UTC),
        "nonce": nonce,
        "binding": binding,
        "policy": policy,
        "verifier": "tests",
        "result": result,
    }
    if release:
        digest = hashlib.sha256(key.public_key.encode()).digest()
        entry = release_entry(**common, model_id="m", recipient_key_sha256=digest)  # type: ignore[arg-type]
        return entry, [POLICY]
    evidence = evidence if evidence is not None else b"evidence for " + nonce
    refs = [BlobRef.of("evidence-bundle", "application/json", evidence)]
    return attest_entry(**common, evidence=refs), [POLICY, evidence]  # type: ignore[arg-type]


@dataclass
class Log:
    store: LogStore

    def append(self, entry: LogEntry, blobs: list[bytes]) -> AppendReceipt:
        return self.store.append(entry, blobs)

    def attest(self, key: HpkePrivateKey, **kwargs: object) -> tuple[str, AppendReceipt, bytes]:
        """Log an attest entry for a fresh EAR naming ``key``: (EAR, receipt, entry bytes)."""
        ear = make_ear(key.public_key.encode(), result_id=f"r{self.store.size}")
        entry, blobs = entry_for(key, ear, **kwargs)  # type: ignore[arg-type]
        return ear, self.append(entry, blobs), entry.raw


def proof_bytes(receipt: AppendReceipt, entry: bytes) -> bytes:
    """What the enclave publishes: the Attest reply's proof with the entry (the agent's path)."""
    proof = LogProofIn(
        receipt.index, receipt.tree_size, receipt.inclusion_proof, receipt.checkpoint
    )
    return key_bundle_log_proof(proof, entry)


def logged_bundle(log: Log, key: HpkePrivateKey) -> KeyBundle:
    """A bundle for ``key`` whose EAR is logged, with its real log proof."""
    ear, receipt, entry = log.attest(key)
    return KeyBundle.build(key.public_key, ear.encode(), proof_bytes(receipt, entry))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    with LogStore(tmp_path / "log.db", LOG_SIGNER) as store:
        yield Log(store)
