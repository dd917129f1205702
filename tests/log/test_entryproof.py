"""The key bundle's log-proof format (``attest.log.entryproof``): canonical round trip, strict
framing, and only the typed error on arbitrary or mutated bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import VerificationError
from attest.log.checkpoint import format_checkpoint
from attest.log.entryproof import (
    MAX_ENCODED_LEN,
    EntryProof,
    EntryProofError,
    decode_entry_proof,
)
from attest.log.merkle import MerkleTree, leaf_hash
from attest.log.note import format_note
from sealing.stream.bundle import MAX_LOG_PROOF_LEN
from tests.log.helpers import LOG_SIGNER, OTHER_SIGNER, make_entry

ENTRIES = [make_entry(i)[0].raw for i in range(5)]
TREE = MerkleTree([leaf_hash(e) for e in ENTRIES])


def _proof(index: int = 2, signer: object = LOG_SIGNER) -> EntryProof:
    text = format_checkpoint(LOG_SIGNER.name, TREE.size, TREE.root()).text
    note = format_note(text, [signer.sign(text)])  # type: ignore[attr-defined]
    return EntryProof(index, TREE.size, tuple(TREE.inclusion_proof(index)), ENTRIES[index], note)


GOOD = _proof().encode()


def test_round_trip_and_verify() -> None:
    proof = decode_entry_proof(GOOD)
    assert proof == _proof() and proof.encode() == GOOD
    assert proof.verify(LOG_SIGNER.verifier()).raw == ENTRIES[2]


def test_the_bundle_bound_admits_the_largest_proof() -> None:
    assert MAX_ENCODED_LEN <= MAX_LOG_PROOF_LEN


def test_another_key_is_refused() -> None:
    with pytest.raises(VerificationError) as info:
        _proof(signer=OTHER_SIGNER).verify(LOG_SIGNER.verifier())
    assert info.value.reason == "log_checkpoint_signature"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (GOOD[:-1], "checkpoint"),
        (GOOD + b"\x00", "checkpoint"),
        (b"XXXX" + GOOD[4:], "magic"),
        (GOOD[:4] + b"\x02" + GOOD[5:], "version"),
        (GOOD[:5] + struct.pack(">Q", 5) + GOOD[13:], "index"),  # index == tree_size
        (GOOD[:13] + struct.pack(">Q", 0) + GOOD[21:], "tree_size"),
        (GOOD[:21] + b"\x02" + GOOD[22:], "hash_count"),  # not the length 2 of 5 implies
        (GOOD[:21] + b"\x41" + GOOD[22:], "hash_count"),
        (b"", "header"),
    ],
)
def test_strict_framing(data: bytes, field: str) -> None:
    with pytest.raises(EntryProofError) as info:
        decode_entry_proof(data)
    assert info.value.field is not None and field in info.value.field


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_the_typed_error(data: bytes) -> None:
    try:
        proof = decode_entry_proof(data)
    except EntryProofError:
        return
    assert proof.encode() == data


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD) * 8 - 1), st.integers(0, len(GOOD)))
def test_flips_and_cuts_are_refused_or_fail_verification(bit: int, cut: int) -> None:
    """A flipped bit or a cut either does not decode (typed), or decodes to a proof that is
    not the original and does not verify: one bit anywhere is never the same statement."""
    data = bytearray(GOOD)
    data[bit // 8] ^= 1 << (bit % 8)
    for mutant in (bytes(data), GOOD[:cut]):
        if mutant == GOOD:
            continue
        try:
            proof = decode_entry_proof(mutant)
        except EntryProofError:
            continue
        assert proof.encode() == mutant
        with pytest.raises(VerificationError):
            proof.verify(LOG_SIGNER.verifier())
