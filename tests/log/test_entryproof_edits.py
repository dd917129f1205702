"""Multi-edit fuzzing of an LSLP log proof (``attest.log.entryproof``) against the genuine
checkpoint key.

``test_entryproof.py`` flips one bit or cuts the tail of one proof. Here proofs of several
shapes (a one-leaf tree with no hashes, inner and last leaves of odd-sized trees) get one to
four edits each: overwritten, inserted or deleted bytes anywhere, and header integers or
length prefixes rewritten with values near their bounds, so the framing is often still
consistent and the later checks (signature, size, inclusion, entry) must do the refusing.
Whatever the edits, the bytes verify under the genuine log key only if they *are* the genuine
proof; every refusal is the typed ``EntryProofError`` (decoding) or ``VerificationError``.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import VerificationError
from attest.log.checkpoint import format_checkpoint
from attest.log.entryproof import EntryProof, EntryProofError, decode_entry_proof
from attest.log.merkle import MerkleTree, leaf_hash
from attest.log.note import format_note
from tests.log.helpers import LOG_SIGNER, make_entry, make_refusal_entry

_ENTRIES = [make_entry(i)[0].raw for i in range(6)] + [make_refusal_entry(6)[0].raw]


def _proof(index: int, size: int) -> bytes:
    entries = _ENTRIES[:size]
    tree = MerkleTree([leaf_hash(e) for e in entries])
    text = format_checkpoint(LOG_SIGNER.name, tree.size, tree.root()).text
    note = format_note(text, [LOG_SIGNER.sign(text)])
    hashes = tuple(tree.inclusion_proof(index))
    return EntryProof(index, size, hashes, entries[index], note).encode()


#: (index, tree_size): no hashes; inner and last leaves of odd trees; a refusal entry.
GENUINE = [_proof(i, n) for i, n in ((0, 1), (2, 5), (4, 5), (3, 7), (6, 7))]
VERIFIER = LOG_SIGNER.verifier()
#: Offsets of the header's integers (index u64 at 5, tree_size u64 at 13, hash_count u8 at 21).
_HEADER_FIELDS = ((5, ">Q"), (13, ">Q"), (21, ">B"))


def _near(width: int) -> st.SearchStrategy[int]:
    top = (1 << (8 * width)) - 1
    return st.integers(0, 9) | st.integers(top - 3, top) | st.integers(0, top)


@st.composite
def edit(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    kind = draw(st.sampled_from(["set", "insert", "delete", "header", "length", "splice"]))
    at = draw(st.integers(0, len(out)))
    if kind == "set" and out:
        i = min(at, len(out) - 1)
        out[i] = draw(st.integers(0, 255).filter(lambda b: b != out[i]))
    elif kind == "insert":
        out[at:at] = draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
        del out[at : at + draw(st.integers(1, 40))]
    elif kind == "header" and len(out) >= 22:
        off, fmt = draw(st.sampled_from(_HEADER_FIELDS))
        struct.pack_into(fmt, out, off, draw(_near(struct.calcsize(fmt))))
    elif kind == "length" and len(out) >= 4:
        # Rewrite a u32 anywhere (the entry_len and checkpoint_len prefixes among them).
        i = min(at, len(out) - 4)
        struct.pack_into(">I", out, i, draw(_near(4)))
    elif kind == "splice":
        # Bytes of another genuine proof at the same offset: valid pieces in the wrong place.
        other = draw(st.sampled_from(GENUINE))
        n = draw(st.integers(1, 64))
        out[at : at + n] = other[at : at + n]
    return bytes(out)


@st.composite
def mutants(draw: st.DrawFn) -> tuple[bytes, bytes]:
    good = draw(st.sampled_from(GENUINE))
    data = good
    for _ in range(draw(st.integers(1, 4))):
        data = draw(edit(data))
    return good, data


@settings(max_examples=800, deadline=None)
@given(case=mutants())
def test_edited_proofs_verify_only_when_unchanged(case: tuple[bytes, bytes]) -> None:
    good, data = case
    try:
        proof = decode_entry_proof(data)
    except EntryProofError:
        return
    assert proof.encode() == data  # one proof, one encoding
    try:
        entry = proof.verify(VERIFIER)
    except VerificationError as exc:
        assert exc.reason is not None and exc.reason.startswith("log_")
        return
    # Verified under the genuine key: only a genuine proof may (a splice can rebuild one).
    assert data in GENUINE, f"edited proof verifies: {data!r} (from {good[:22].hex()})"
    assert entry.raw == proof.entry == _ENTRIES[proof.index]


def test_genuine_proofs_verify() -> None:
    for data in GENUINE:
        proof = decode_entry_proof(data)
        assert proof.verify(VERIFIER).raw == _ENTRIES[proof.index]
