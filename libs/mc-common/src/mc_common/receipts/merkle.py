"""RFC 9162 Merkle trees: hashes, roots, inclusion and consistency proofs and their checks.

Pure functions over SHA-256 (leaf = H(0x00 || data), node = H(0x01 || left || right)). A log that
stores the root of every perfect subtree ("full node": level k, index j covers leaves
[j*2^k, (j+1)*2^k)) serves any proof from O(log n) of them: `inclusion_nodes` /
`consistency_nodes` name the full nodes a proof needs, and `inclusion_proof` /
`consistency_proof` assemble it from a mapping of their hashes. Verification follows RFC 9162
sections 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]
"""A full (perfect) subtree (level, index): leaves [index << level, (index + 1) << level)."""


class ProofError(ValueError):
    """A proof that does not verify, or a request for one that cannot exist."""


def leaf_hash(data: bytes) -> bytes:
    """The RFC 9162 hash of a leaf: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 9162 hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash (MTH) of a list of leaf hashes (reference algorithm, O(n))."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


# -- which full nodes a range, a root or a proof needs -------------------------------------------


def range_nodes(start: int, end: int) -> list[Node]:
    """The full nodes whose concatenation is the leaf range [start, end), left to right.

    For a subtree of an RFC 9162 tree (the only ranges proofs use) the nodes have strictly
    decreasing sizes, and the range's hash is the right fold `node_hash(a, node_hash(b, ...))`.
    """
    nodes: list[Node] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a range from its full nodes' hashes, left to right (see `range_nodes`)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """RFC 9162 PATH(m, D[n]) as leaf ranges, bottom-up."""
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return ranges


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """RFC 9162 PROOF(m, D[n]) = SUBPROOF(m, D[n], true) as leaf ranges, bottom-up."""
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new, old, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                ranges.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    ranges.reverse()
    return ranges


def _check_inclusion_args(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")


def _check_consistency_args(old: int, new: int) -> None:
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")


def root_nodes(size: int) -> list[Node]:
    """The full nodes a tree of `size` leaves is the fold of."""
    return range_nodes(0, size)


def inclusion_nodes(index: int, size: int) -> list[Node]:
    """Every full node `inclusion_proof(index, size, ...)` reads."""
    _check_inclusion_args(index, size)
    return [n for lo, hi in _inclusion_ranges(index, size) for n in range_nodes(lo, hi)]


def consistency_nodes(old: int, new: int) -> list[Node]:
    """Every full node `consistency_proof(old, new, ...)` reads."""
    _check_consistency_args(old, new)
    if old in (0, new):
        return []
    return [n for lo, hi in _consistency_ranges(old, new) for n in range_nodes(lo, hi)]


def _assemble(ranges: Iterable[tuple[int, int]], nodes: Mapping[Node, bytes]) -> list[bytes]:
    try:
        return [fold([nodes[n] for n in range_nodes(lo, hi)]) for lo, hi in ranges]
    except KeyError as exc:
        raise ProofError(f"full node {exc.args[0]} is not stored") from exc


def root_from_nodes(size: int, nodes: Mapping[Node, bytes]) -> bytes:
    """The root of a tree of `size` leaves from its `root_nodes`."""
    if size == 0:
        return EMPTY_ROOT
    return _assemble([(0, size)], nodes)[0]


def inclusion_proof(index: int, size: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """The audit path of leaf `index` in a tree of `size`, from the `inclusion_nodes` hashes."""
    _check_inclusion_args(index, size)
    return _assemble(_inclusion_ranges(index, size), nodes)


def consistency_proof(old: int, new: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """The proof that the tree of `old` leaves is a prefix of the one of `new` leaves."""
    _check_consistency_args(old, new)
    if old in (0, new):
        return []
    return _assemble(_consistency_ranges(old, new), nodes)


# -- verification (RFC 9162 2.1.3.2 and 2.1.4.2) -------------------------------------------------


def _check_hashes(*hashes: bytes) -> None:
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ProofError("a hash is not 32 bytes")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` proves leaf hash `leaf` at `index` is included in."""
    _check_inclusion_args(index, size)
    _check_hashes(leaf, *proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise `ProofError` unless `proof` shows leaf hash `leaf` at `index` under `root`."""
    _check_hashes(root)
    if root_from_inclusion_proof(index, size, leaf, proof) != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise `ProofError` unless `proof` shows the tree (old, old_root) is a prefix of (new,
    new_root)."""
    _check_consistency_args(old, new)
    if old == new:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("two different roots for the same tree size")
        return
    if old == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    _check_hashes(old_root, new_root, *proof)
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node of the path
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")


# -- appending: the nodes a new leaf completes, and compact ranges -------------------------------


def completed_nodes(index: int, leaf: bytes, frontier: Sequence[bytes]) -> list[bytes]:
    """The hashes of the full nodes leaf `index` completes, bottom-up, starting with the leaf.

    `frontier` is the compact range of the tree before it (`compact_range`, largest first);
    the result's entry k is full node (k, index >> k).
    """
    out = [leaf]
    h, i, j = leaf, index, len(frontier) - 1
    while i & 1:
        h = node_hash(frontier[j], h)
        out.append(h)
        i, j = i >> 1, j - 1
    return out


def extend_frontier(size: int, frontier: list[bytes], leaf: bytes) -> list[bytes]:
    """The compact range after appending `leaf` to a tree of `size` with compact range
    `frontier` (hashes of `root_nodes(size)`, largest first)."""
    done = completed_nodes(size, leaf, frontier)
    merged = len(done) - 1
    return [*frontier[: len(frontier) - merged], done[-1]]
