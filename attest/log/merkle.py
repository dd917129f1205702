"""RFC 6962 / RFC 9162 Merkle trees: hashing, roots, inclusion and consistency proofs.

Why this shape: the log is only as good as an auditor's ability to check it with nothing but a
signed root. Leaves and interior nodes are hashed with different one-byte prefixes (0x00 and
0x01, RFC 9162 §2.1.1) so that an interior node can never be passed off as a leaf (the
second-preimage attack on plain Merkle trees). Proof *generation* follows the recursive
definitions of RFC 9162 §2.1.3.1 and §2.1.4.1; proof *verification* follows the iterative
algorithms of §2.1.3.2 and §2.1.4.2, after a strict check that the proof has exactly the length
the sizes imply (a proof with one node too many or too few is malformed, not "maybe fine").

Semantics match transparency-dev/merkle (its test vectors are our test vectors): a consistency
proof from size 0 is refused as meaningless (the caller knows any tree extends the empty one),
and two trees of equal size are consistent iff the proof is empty and the roots are equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from attest.errors import InputError, VerificationError

#: SHA-256 output size; every leaf hash, node hash and proof element is exactly this long.
HASH_SIZE = 32
#: Tree sizes and indices are uint64 on the wire (checkpoints, tiles, RFC 6962 STHs).
MAX_TREE_SIZE = (1 << 64) - 1
#: A tree of fewer than 2**64 leaves has depth <= 64, so no inclusion proof is longer than 64
#: and no consistency proof longer than 65 nodes. Anything longer is refused before hashing.
MAX_PROOF_NODES = 65

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
#: MTH({}) = SHA-256() (RFC 9162 §2.1.1): the root of the empty tree.
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(VerificationError):
    """A Merkle proof did not verify, or could not be checked as given.

    ``reason`` is one of: ``index_out_of_range``, ``size_order``, ``empty_tree``,
    ``proof_length``, ``hash_length``, ``root_mismatch``.
    """


def leaf_hash(data: bytes) -> bytes:
    """MTH of a one-leaf tree: SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """k with k < n <= 2k (n >= 2), the split point of RFC 9162 §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_size(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TREE_SIZE:
        raise InputError(f"{name} must be an integer in [0, 2**64)")


def _check_hash(value: bytes, name: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(
            f"{name} is {len(value)} bytes, expected {HASH_SIZE}", reason="hash_length"
        )


def _check_proof_nodes(proof: Sequence[bytes]) -> None:
    if len(proof) > MAX_PROOF_NODES:
        raise ProofError(
            f"proof has {len(proof)} nodes, more than any tree allows ({MAX_PROOF_NODES})",
            reason="proof_length",
        )
    for i, node in enumerate(proof):
        _check_hash(node, f"proof[{i}]")


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a whole list of leaf hashes (RFC 9162 §2.1.1), without keeping the tree."""
    if not hashes:
        return EMPTY_ROOT
    # A stack of (height, hash) for the perfect subtrees on the right frontier.
    stack: list[tuple[int, bytes]] = []
    for h in hashes:
        _check_hash(h, "leaf hash")
        height, cur = 0, h
        while stack and stack[-1][0] == height:
            _, left = stack.pop()
            cur = node_hash(left, cur)
            height += 1
        stack.append((height, cur))
    _, root = stack.pop()
    while stack:
        _, left = stack.pop()
        root = node_hash(left, root)
    return root


def inclusion_proof_length(index: int, size: int) -> int:
    """The exact number of nodes in the inclusion proof of ``index`` in a tree of ``size``."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner + border


def consistency_proof_length(size1: int, size2: int) -> int:
    """The exact number of nodes in a consistency proof for 0 < size1 < size2."""
    inner = ((size1 - 1) ^ (size2 - 1)).bit_length()
    border = ((size1 - 1) >> inner).bit_count()
    shift = (size1 & -size1).bit_length() - 1
    start = 0 if size1 == 1 << shift else 1
    return start + inner - shift + border


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 §2.1.3.2 steps 1-4)."""
    _check_size(index, "leaf index")
    _check_size(size, "tree size")
    if index >= size:
        raise ProofError(
            f"leaf index {index} is not below tree size {size}", reason="index_out_of_range"
        )
    _check_hash(leaf, "leaf hash")
    _check_proof_nodes(proof)
    want = inclusion_proof_length(index, size)
    if len(proof) != want:
        raise ProofError(
            f"inclusion proof has {len(proof)} nodes, expected {want} for index {index} of {size}",
            reason="proof_length",
        )
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:  # unreachable after the length check; kept as the RFC writes it
            raise ProofError("inclusion proof is too long", reason="proof_length")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short", reason="proof_length")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows leaf hash ``leaf`` at ``index`` under ``root``.

    Raises instead of returning a bool: ignoring a failed proof must take effort.
    """
    calculated = root_from_inclusion_proof(index, size, leaf, proof)
    if calculated != root:
        raise ProofError(
            f"inclusion proof for index {index} of {size} leads to a different root",
            reason="root_mismatch",
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows the tree (size2, root2) extends (size1, root1).

    RFC 9162 §2.1.4.2, preceded by the edge cases: size2 < size1 is refused, size1 == 0 is
    refused (a proof from the empty tree proves nothing; callers special-case it), equal sizes
    need an empty proof and byte-equal roots.
    """
    _check_size(size1, "first tree size")
    _check_size(size2, "second tree size")
    if size2 < size1:
        raise ProofError(f"second tree size {size2} < first {size1}", reason="size_order")
    if size1 == 0:
        raise ProofError(
            "consistency proof from the empty tree is meaningless", reason="empty_tree"
        )
    if size1 == size2:
        if proof:
            raise ProofError("equal tree sizes need an empty proof", reason="proof_length")
        if root1 != root2:
            raise ProofError("equal tree sizes with different roots", reason="root_mismatch")
        return
    _check_hash(root1, "first root")
    _check_hash(root2, "second root")
    _check_proof_nodes(proof)
    want = consistency_proof_length(size1, size2)
    if len(proof) != want:
        raise ProofError(
            f"consistency proof has {len(proof)} nodes, expected {want} for {size1} -> {size2}",
            reason="proof_length",
        )
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is an exact power of two
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long", reason="proof_length")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short", reason="proof_length")
    if fr != root1:
        raise ProofError(
            f"consistency proof does not lead to the root of size {size1}", reason="root_mismatch"
        )
    if sr != root2:
        raise ProofError(
            f"consistency proof does not lead to the root of size {size2}", reason="root_mismatch"
        )


class MerkleTree:
    """An append-only tree that keeps every perfect subtree hash, for O(log n) proofs.

    ``levels[h][i]`` is the hash of the perfect subtree of height ``h`` covering leaves
    ``[i * 2**h, (i + 1) * 2**h)``; it exists once all of those leaves do. Appending costs
    amortised two hashes; a root or proof for any size up to the current one costs O(log n)
    look-ups plus O(log n) hashes along the right border. Memory is about 2n hashes; the log
    store rebuilds this from the stored leaf hashes at start-up.
    """

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; return its index."""
        _check_hash(leaf, "leaf hash")
        levels = self._levels
        levels[0].append(leaf)
        index = len(levels[0]) - 1
        height, i = 0, index
        while i & 1:
            parent = node_hash(levels[height][i - 1], levels[height][i])
            height += 1
            if len(levels) == height:
                levels.append([])
            levels[height].append(parent)
            i >>= 1
        return index

    def truncate(self, size: int) -> None:
        """Forget every leaf from ``size`` on (used to undo appends whose commit failed)."""
        if not 0 <= size <= self.size:
            raise InputError(f"cannot truncate a tree of {self.size} to {size}")
        for height, level in enumerate(self._levels):
            del level[size >> height :]

    def _subtree(self, start: int, end: int) -> bytes:
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            height = n.bit_length() - 1
            return self._levels[height][start >> height]
        k = _largest_power_of_two_below(n)
        return node_hash(self._subtree(start, start + k), self._subtree(start + k, end))

    def _require_size(self, size: int) -> None:
        _check_size(size, "tree size")
        if size > self.size:
            raise InputError(f"tree size {size} is beyond the tree ({self.size} leaves)")

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = self.size if size is None else size
        self._require_size(size)
        return EMPTY_ROOT if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1."""
        size = self.size if size is None else size
        self._require_size(size)
        if not 0 <= index < size:
            raise InputError(f"leaf index {index} is not below tree size {size}")
        out: list[bytes] = []
        start, end, m = 0, size, index
        # Iterative form of the recursion; collect from the top, then reverse (leaf first).
        while end - start > 1:
            k = _largest_power_of_two_below(end - start)
            if m - start < k:
                out.append(self._subtree(start + k, end))
                end = start + k
            else:
                out.append(self._subtree(start, start + k))
                start += k
        out.reverse()
        return out

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """PROOF(size1, D[0:size2]) of RFC 9162 §2.1.4.1 (0 < size1 <= size2)."""
        size2 = self.size if size2 is None else size2
        self._require_size(size2)
        if not 0 < size1 <= size2:
            raise InputError(f"consistency proof needs 0 < size1 <= size2 (got {size1}, {size2})")
        out: list[bytes] = []
        start, end, m, complete = 0, size2, size1, True
        while True:
            n = end - start
            if m == n:
                if not complete:
                    out.append(self._subtree(start, end))
                break
            k = _largest_power_of_two_below(n)
            if m <= k:
                out.append(self._subtree(start + k, end))
                end = start + k
            else:
                out.append(self._subtree(start, start + k))
                start, m, complete = start + k, m - k, False
        out.reverse()
        return out
