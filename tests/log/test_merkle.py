"""RFC 6962/9162 Merkle hashing and proofs against every transparency-dev/merkle vector."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import InputError, LesseeError
from attest.log import merkle
from attest.log.merkle import MerkleTree, ProofError
from tests.conftest import AUDIT

TESTDATA = AUDIT / "transparency-dev-merkle" / "testdata"
INCLUSION = sorted((TESTDATA / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((TESTDATA / "consistency").rglob("*.json"))


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


def test_vector_counts() -> None:
    # 196 files in the snapshot (PROVENANCE.md); every one is exercised below.
    assert len(INCLUSION) + len(CONSISTENCY) == 196
    assert len(INCLUSION) > 50
    assert len(CONSISTENCY) > 50


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b(p) for p in v["proof"] or []]
    args = (v["leafIdx"], v["treeSize"], _b(v["leafHash"]), proof, _b(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b(p) for p in v["proof"] or []]
    args = (v["size1"], v["size2"], proof, _b(v["root1"]), _b(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


# The reference tree of RFC 6962 / transparency-dev: 8 leaves, the 8 roots for sizes 1..8.
LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_reference_tree_roots() -> None:
    tree = MerkleTree([merkle.leaf_hash(x) for x in LEAVES])
    for size, want in enumerate(ROOTS, start=1):
        assert tree.root(size).hex() == want
    assert tree.root(0) == hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT


def test_generated_proofs_match_vectors() -> None:
    """Our generator produces exactly the proofs in the happy-path vectors."""
    tree = MerkleTree([merkle.leaf_hash(x) for x in LEAVES])
    checked = 0
    for path in INCLUSION:
        v = json.loads(path.read_text())
        if path.stem == "happy-path" and v["treeSize"] <= 8 and path.parent.name.isdigit():
            got = tree.inclusion_proof(v["leafIdx"], v["treeSize"])
            assert got == [_b(p) for p in v["proof"] or []], path
            checked += 1
    assert checked == 5  # a lost or renamed vector directory must not pass silently
    checked = 0
    for path in CONSISTENCY:
        v = json.loads(path.read_text())
        if path.stem == "happy-path" and path.parent.name.isdigit():
            assert tree.consistency_proof(v["size1"], v["size2"]) == [
                _b(p) for p in v["proof"] or []
            ]
            checked += 1
    assert checked == 5


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 written recursively, as the independent reference."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return merkle.leaf_hash(leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def test_domain_separation() -> None:
    # A leaf whose data is two child hashes must not hash to their interior node.
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.leaf_hash(a + b) != merkle.node_hash(a, b)
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()


def test_all_proofs_small_trees() -> None:
    for n in range(1, 40):
        data = [b"leaf %d" % i for i in range(n)]
        hashes = [merkle.leaf_hash(d) for d in data]
        tree = MerkleTree(hashes)
        assert tree.root() == _mth(data) == merkle.root_from_leaf_hashes(hashes)
        for i in range(n):
            proof = tree.inclusion_proof(i)
            assert len(proof) == merkle.inclusion_proof_length(i, n)
            merkle.verify_inclusion(i, n, hashes[i], proof, tree.root())
            if proof:  # flipping any bit of any node breaks it
                bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
                with pytest.raises(ProofError):
                    merkle.verify_inclusion(i, n, hashes[i], bad, tree.root())
        for m in range(1, n + 1):
            proof = tree.consistency_proof(m)
            merkle.verify_consistency(m, n, proof, tree.root(m), tree.root())
            if m < n:
                with pytest.raises(ProofError):
                    merkle.verify_consistency(m, n, proof, tree.root(m), _mth([*data[:-1], b"x"]))


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_tree_matches_reference(n: int, data: st.DataObject) -> None:
    leaves = [b"%d" % i for i in range(n)]
    tree = MerkleTree([merkle.leaf_hash(x) for x in leaves])
    size = data.draw(st.integers(1, n))
    index = data.draw(st.integers(0, size - 1))
    assert tree.root(size) == _mth(leaves[:size])
    merkle.verify_inclusion(
        index, size, tree.leaf(index), tree.inclusion_proof(index, size), tree.root(size)
    )
    merkle.verify_consistency(size, n, tree.consistency_proof(size), tree.root(size), tree.root())


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(0, 2**64 - 1),
    size=st.integers(0, 2**64 - 1),
    proof=st.lists(st.binary(min_size=0, max_size=40), max_size=70),
    leaf=st.binary(max_size=40),
    root=st.binary(max_size=40),
)
def test_random_inclusion_inputs_only_typed_errors(
    index: int, size: int, proof: list[bytes], leaf: bytes, root: bytes
) -> None:
    with pytest.raises(LesseeError):
        merkle.verify_inclusion(index, size, leaf, proof, root)


@settings(max_examples=200, deadline=None)
@given(
    s1=st.integers(0, 2**64 - 1),
    s2=st.integers(0, 2**64 - 1),
    proof=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70),
    r1=st.binary(min_size=32, max_size=32),
    r2=st.binary(min_size=32, max_size=32),
)
def test_random_consistency_inputs_only_typed_errors(
    s1: int, s2: int, proof: list[bytes], r1: bytes, r2: bytes
) -> None:
    with pytest.raises(LesseeError):
        merkle.verify_consistency(s1, s2, proof, r1, r2)


def test_bounds_and_truncate() -> None:
    with pytest.raises(InputError):
        merkle.verify_inclusion(-1, 1, bytes(32), [], bytes(32))
    with pytest.raises(InputError):
        merkle.verify_inclusion(0, 2**64, bytes(32), [], bytes(32))
    with pytest.raises(ProofError) as exc:
        merkle.verify_inclusion(0, 2, bytes(32), [bytes(32)] * 66, bytes(32))
    assert exc.value.reason == "proof_length"
    tree = MerkleTree([merkle.leaf_hash(b"%d" % i) for i in range(13)])
    root7 = tree.root(7)
    tree.truncate(7)
    assert tree.size == 7 and tree.root() == root7
    tree.append(merkle.leaf_hash(b"7"))
    assert tree.root() == _mth([b"%d" % i for i in range(8)])
    with pytest.raises(InputError):
        tree.root(9)


def test_out_of_range_index_and_reversed_sizes_are_refused_for_what_they_are() -> None:
    """Checked before the proof is walked, with their own reasons (mutation testing: without
    the checks no test failed; the walk alone must not be what refuses them)."""
    tree = MerkleTree([bytes([i]) * 32 for i in range(8)])
    proof = tree.inclusion_proof(7, 8)
    for index in (8, 9):
        with pytest.raises(ProofError) as err:
            merkle.root_from_inclusion_proof(index, 8, tree.leaf(7), proof)
        assert err.value.reason == "index_out_of_range"
    with pytest.raises(ProofError) as err:
        merkle.verify_consistency(8, 4, tree.consistency_proof(4, 8), tree.root(8), tree.root(4))
    assert err.value.reason == "size_order"
