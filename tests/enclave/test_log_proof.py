"""The key bundle's log proof, checked by the client with only the log's pinned key: a real
``LogStore`` signs real checkpoints and proofs, the enclave serves the bundle over real gRPC
through the test relay, and every refusal happens before the prompt leaves the client."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.client import (
    broker_ear_check,
    log_inclusion_check,
    verify_bundle_log_proof,
)
from attest.errors import VerificationError
from attest.log.checkpoint import format_checkpoint
from attest.log.entry import decode_entry
from attest.log.entryproof import EntryProof, decode_entry_proof
from attest.log.merkle import MerkleTree, leaf_hash
from attest.log.note import NoteVerifier, format_note
from sealing.hpke_suite import HpkePrivateKey
from sealing.stream import KeyBundle
from tests.enclave.conftest import BROKER, StackFactory, enclave_key, make_ear
from tests.enclave.logproof import (
    FORGER,
    LOG_SIGNER,
    Log,
    entry_for,
    log,
    logged_bundle,
    proof_bytes,
)

__all__ = ["log"]  # the fixture, imported for pytest

KEY = enclave_key()
OTHER_KEY = enclave_key(label="other")


def _check(log_key: NoteVerifier | None = None, origin: str | None = None) -> Callable[..., None]:
    return broker_ear_check(
        BROKER.public_key(),
        log_proof_check=log_inclusion_check(log_key or LOG_SIGNER.verifier(), origin=origin),
    )


def _bundle(ear: str, proof: bytes, key: HpkePrivateKey = KEY) -> KeyBundle:
    return KeyBundle.build(key.public_key, ear.encode(), proof)


def test_a_logged_result_passes_over_grpc(stack_factory: StackFactory, log: Log) -> None:
    log.attest(OTHER_KEY)  # not the first leaf: the proof has hashes to check
    bundle = logged_bundle(log, KEY)
    log.attest(OTHER_KEY)  # and the tree has grown since (the proof is for its own checkpoint)
    stack = stack_factory(bundle=bundle)
    pieces, err = stack.collect("secret prompt", bundle_check=_check())
    assert err is None and "".join(pieces) == "secret prompt"
    entry = verify_bundle_log_proof(bundle, LOG_SIGNER.verifier())
    assert entry.result.encode() == bundle.attestation_result
    assert decode_entry_proof(bundle.log_proof).index == 1


# ---- one bundle per way of lying; each is refused with its reason ---------------------------


def _wrong_log_key(log: Log) -> tuple[KeyBundle, str]:
    return logged_bundle(log, KEY), "wrong_key"


def _forged_checkpoint(log: Log) -> tuple[KeyBundle, str]:
    """A forged tree holding an entry the log never had, its checkpoint signed by a key of the
    same name: the inclusion proof is consistent, the signature is not the log's."""
    ear = make_ear(KEY.public_key.encode(), result_id="forged")
    entry, _ = entry_for(KEY, ear)
    tree = MerkleTree([leaf_hash(b"x"), leaf_hash(entry.raw)])
    text = format_checkpoint(LOG_SIGNER.name, 2, tree.root()).text
    note = format_note(text, [FORGER.sign(text)])
    proof = EntryProof(1, 2, tuple(tree.inclusion_proof(1)), entry.raw, note)
    return _bundle(ear, proof.encode()), "log_checkpoint_signature"


def _tampered_checkpoint_root(log: Log) -> tuple[KeyBundle, str]:
    bundle = logged_bundle(log, KEY)
    p = decode_entry_proof(bundle.log_proof)
    text, _, sigs = p.checkpoint.partition(b"\n\n")
    lines = text.split(b"\n")
    lines[2] = (b"A" if lines[2][:1] != b"A" else b"B") + lines[2][1:]
    forged = EntryProof(p.index, p.tree_size, p.hashes, p.entry, b"\n".join(lines) + b"\n\n" + sigs)
    return _bundle(bundle.attestation_result.decode(), forged.encode()), "log_checkpoint_signature"


def _origin_mismatch(log: Log) -> tuple[KeyBundle, str]:
    return logged_bundle(log, KEY), "origin"


def _proof_for_another_entry(log: Log) -> tuple[KeyBundle, str]:
    """Our entry, with the index and path of another leaf of the same tree."""
    ear, _, entry = log.attest(KEY)
    _, other, _ = log.attest(OTHER_KEY)
    hashes = tuple(log.store.inclusion_proof(other.index, other.tree_size))
    proof = EntryProof(other.index, other.tree_size, hashes, entry, other.checkpoint)
    return _bundle(ear, proof.encode()), "log_inclusion"


def _another_entrys_valid_proof(log: Log) -> tuple[KeyBundle, str]:
    """A genuine proof of a genuine entry, for another result of the same key."""
    ear, _, _ = log.attest(KEY)
    _, receipt, entry = log.attest(KEY)
    return _bundle(ear, proof_bytes(receipt, entry)), "log_entry_mismatch"


def _logged_result_differs(log: Log) -> tuple[KeyBundle, str]:
    """The broker logged one result (same key, same nonce) and handed the enclave another."""
    logged = make_ear(KEY.public_key.encode(), result_id="logged")
    entry, blobs = entry_for(KEY, logged)
    receipt = log.append(entry, blobs)
    handed = make_ear(KEY.public_key.encode(), result_id="handed")
    return _bundle(handed, proof_bytes(receipt, entry.raw)), "log_entry_mismatch"


def _entry_for_another_nonce(log: Log) -> tuple[KeyBundle, str]:
    ear = make_ear(KEY.public_key.encode(), result_id="n")  # eat_nonce NONCE
    entry, blobs = entry_for(KEY, ear, nonce=b"\x02" * 32)
    return _bundle(ear, proof_bytes(log.append(entry, blobs), entry.raw)), "log_entry_nonce"


def _entry_binding_another_key(log: Log) -> tuple[KeyBundle, str]:
    ear = make_ear(KEY.public_key.encode(), result_id="b")
    entry, blobs = entry_for(KEY, ear, binding_key=OTHER_KEY.public_key.encode())
    return _bundle(ear, proof_bytes(log.append(entry, blobs), entry.raw)), "log_entry_binding"


def _release_entry(log: Log) -> tuple[KeyBundle, str]:
    ear = make_ear(KEY.public_key.encode(), result_id="rel")
    entry, blobs = entry_for(KEY, ear, release=True)
    return _bundle(ear, proof_bytes(log.append(entry, blobs), entry.raw)), "log_entry_kind"


def _garbage(log: Log) -> tuple[KeyBundle, str]:
    return _bundle(make_ear(KEY.public_key.encode()), b"log-proof"), "log_proof_malformed"


def _truncated(log: Log) -> tuple[KeyBundle, str]:
    bundle = logged_bundle(log, KEY)
    return _bundle(bundle.attestation_result.decode(), bundle.log_proof[:-1]), (
        "log_proof_malformed"
    )


def _missing(log: Log) -> tuple[KeyBundle, str]:
    return _bundle(make_ear(KEY.public_key.encode()), b""), "log_proof_missing"


def _tree_size_not_the_checkpoints(log: Log) -> tuple[KeyBundle, str]:
    """A proof for the tree of 2 under the checkpoint of 3 leaves."""
    log.attest(OTHER_KEY)
    ear, receipt, entry = log.attest(KEY)
    _, later, _ = log.attest(OTHER_KEY)
    hashes = tuple(log.store.inclusion_proof(receipt.index, 2))
    proof = EntryProof(receipt.index, 2, hashes, entry, later.checkpoint)
    return _bundle(ear, proof.encode()), "log_proof_size"


def _index_shifted(log: Log) -> tuple[KeyBundle, str]:
    """The right entry and path, another index (of the same proof length)."""
    for _ in range(3):
        log.attest(OTHER_KEY)
    ear, receipt, entry = log.attest(KEY)  # index 3 of 4
    p = decode_entry_proof(proof_bytes(receipt, entry))
    proof = EntryProof(2, p.tree_size, p.hashes, p.entry, p.checkpoint)
    return _bundle(ear, proof.encode()), "log_inclusion"


def _entry_edited(log: Log) -> tuple[KeyBundle, str]:
    """One byte of the logged entry changed (still the right result): not the logged leaf."""
    ear, receipt, entry = log.attest(KEY)
    edited = entry.replace(b'"verifier":"tests"', b'"verifier":"tests!"')
    decode_entry(edited)  # still a valid entry
    p = decode_entry_proof(proof_bytes(receipt, entry))
    proof = EntryProof(p.index, p.tree_size, p.hashes, edited, p.checkpoint)
    return _bundle(ear, proof.encode()), "log_inclusion"


CASES = {
    "wrong log key": _wrong_log_key,
    "forged checkpoint": _forged_checkpoint,
    "tampered checkpoint root": _tampered_checkpoint_root,
    "origin mismatch": _origin_mismatch,
    "proof of another leaf": _proof_for_another_entry,
    "another entry's valid proof": _another_entrys_valid_proof,
    "logged result differs": _logged_result_differs,
    "entry for another nonce": _entry_for_another_nonce,
    "entry binds another key": _entry_binding_another_key,
    "release entry": _release_entry,
    "garbage proof": _garbage,
    "truncated proof": _truncated,
    "no proof": _missing,
    "tree size not the checkpoint's": _tree_size_not_the_checkpoints,
    "index shifted": _index_shifted,
    "entry edited": _entry_edited,
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_log_proof_is_refused_before_anything_is_sent(
    stack_factory: StackFactory, log: Log, case: str
) -> None:
    bundle, reason = CASES[case](log)
    key, origin = None, None
    if reason == "wrong_key":
        key, reason = FORGER.verifier(), "log_checkpoint_signature"
    if reason == "origin":
        origin, reason = "log.lessee.test/another", "log_origin_mismatch"
    stack = stack_factory(bundle=bundle)
    pieces, err = stack.collect("secret prompt", bundle_check=_check(key, origin))
    assert pieces == []
    assert isinstance(err, VerificationError), err
    assert err.reason == reason, (err.reason, str(err))
    assert stack.relay.generate_exchanges() == []  # the prompt never left the client


def test_without_a_log_key_the_proof_is_not_checked(stack_factory: StackFactory) -> None:
    """The documented default (docs/streams.md): a pinned broker key alone ignores the proof."""
    bundle = _bundle(make_ear(KEY.public_key.encode()), b"log-proof")
    pieces, err = stack_factory(bundle=bundle).collect("hi")
    assert err is None and "".join(pieces) == "hi"
