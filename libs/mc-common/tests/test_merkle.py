"""RFC 9162 Merkle trees against the transparency-dev/merkle test vectors and sigstore's verifier.

The vectors (leaves, roots of the first 8 prefixes, inclusion and consistency proofs) are the
ones transparency-dev/merkle's proof/verify_test.go checks its Go implementation against.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sigstore._internal import merkle as sigstore_merkle

from mc_common.receipts.merkle import (
    EMPTY_ROOT,
    Node,
    ProofError,
    completed_nodes,
    consistency_nodes,
    consistency_proof,
    extend_frontier,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_from_nodes,
    root_nodes,
    root_of,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
          "5051525354555657", "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]  # fmt: skip
H = {
    "96a2": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f08": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    "bc1a": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "ca85": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "d37e": "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "fac5": "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "6e34": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "0ebc": "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "b086": "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
}
# (leaf index, tree size, proof): the Go file's 1-based leaves made 0-based.
INCLUSION = [
    (0, 8, ["96a2", "5f08", "6b47"]),
    (5, 8, ["bc1a", "ca85", "d37e"]),
    (2, 3, ["fac5"]),
    (1, 5, ["6e34", "5f08", "bc1a"]),
]
CONSISTENCY = [
    (1, 8, ["96a2", "5f08", "6b47"]),
    (6, 8, ["0ebc", "ca85", "d37e"]),
    (2, 5, ["5f08", "bc1a"]),
    (6, 7, ["0ebc", "b086", "d37e"]),
]


def _hashes(names: list[str]) -> list[bytes]:
    return [bytes.fromhex(H[n]) for n in names]


def _full_nodes(leaves: list[bytes]) -> dict[Node, bytes]:
    """Every full node of a tree over `leaves` (leaf hashes), as a log stores them."""
    nodes: dict[Node, bytes] = {}
    frontier: list[bytes] = []
    for i, leaf in enumerate(leaves):
        for level, h in enumerate(completed_nodes(i, leaf, frontier)):
            nodes[(level, i >> level)] = h
        frontier = extend_frontier(i, frontier, leaf)
    return nodes


LEAF_HASHES = [leaf_hash(d) for d in LEAVES]
NODES = _full_nodes(LEAF_HASHES)


def test_roots_match_the_vectors() -> None:
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    for size in range(1, 9):
        assert root_of(LEAF_HASHES[:size]) == ROOTS[size - 1]
        assert root_from_nodes(size, NODES) == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_vectors(index: int, size: int, proof: list[str]) -> None:
    expected = _hashes(proof)
    assert inclusion_proof(index, size, NODES) == expected
    verify_inclusion(index, size, LEAF_HASHES[index], expected, ROOTS[size - 1])
    # sigstore-python's Rekor verifier (an independent implementation) computes the same root.
    inner, border = sigstore_merkle._decomp_inclusion_proof(index, size)
    assert inner + border == len(expected)
    seed = sigstore_merkle._chain_inner(LEAF_HASHES[index], expected[:inner], index)
    assert sigstore_merkle._chain_border_right(seed, expected[inner:]) == ROOTS[size - 1]


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_vectors(old: int, new: int, proof: list[str]) -> None:
    expected = _hashes(proof)
    assert consistency_proof(old, new, NODES) == expected
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], expected)


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_corrupted_inclusion_proofs_fail(index: int, size: int, proof: list[str]) -> None:
    good, root, leaf = _hashes(proof), ROOTS[size - 1], LEAF_HASHES[index]
    some = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    probes = [
        (index - 1, size, leaf, good, root),
        (index + 1, size, leaf, good, root),
        (index ^ 2, size, leaf, good, root),
        (index, size * 2, leaf, good, root),
        (index, size // 2, leaf, good, root),
        (index, size, leaf_hash(b"WrongLeaf"), good, root),
        (index, size, leaf, good, EMPTY_ROOT),
        (index, size, leaf, good, some),
        (index, size, leaf, [*good, b""], root),
        (index, size, leaf, [*good, root], root),
        (index, size, leaf, [b"", *good], root),
        (index, size, leaf, [root, *good], root),
        (index, size, leaf, good[:-1], root),
        (index, size, leaf, [good[0], some, *good[1:]], root),
    ]
    for i in range(len(good)):
        flipped = list(good)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append((index, size, leaf, flipped, root))
    for probe in probes:
        with pytest.raises(ProofError):
            verify_inclusion(*probe)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_corrupted_consistency_proofs_fail(old: int, new: int, proof: list[str]) -> None:
    good, r1, r2 = _hashes(proof), ROOTS[old - 1], ROOTS[new - 1]
    probes = [
        (old - 1, new, r1, r2, good),
        (old + 1, new, r1, r2, good),
        (old ^ 2, new, r1, r2, good),
        (old, new * 2, r1, r2, good),
        (old, new // 2, r1, r2, good),
        (old, new, b"WrongRoot", r2, good),
        (old, new, r1, b"WrongRoot", good),
        (old, new, r2, r1, good),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*good, b""]),
        (old, new, r1, r2, [*good, r1]),
        (old, new, r1, r2, [*good, r2]),
        (old, new, r1, r2, [b"", *good]),
        (old, new, r1, r2, [r1, *good]),
        (old, new, r1, r2, [r2, *good]),
        (old, new, r1, r2, [good[0], *good]),
        (old, new, r1, r2, good[:-1]),
    ]
    for i in range(len(good)):
        flipped = list(good)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        probes.append((old, new, r1, r2, flipped))
    for probe in probes:
        if probe[0] < 0 or probe[0] > probe[1]:
            continue  # not a question a caller can ask (ProofError either way)
        with pytest.raises(ProofError):
            verify_consistency(*probe)


def test_trivial_consistency() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    with pytest.raises(ProofError):
        verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])
    with pytest.raises(ProofError):
        verify_consistency(1, 1, ROOTS[0], ROOTS[0], [EMPTY_ROOT])
    with pytest.raises(ProofError):
        verify_consistency(2, 1, ROOTS[1], ROOTS[0], [])
    with pytest.raises(ProofError):
        root_from_inclusion_proof(0, 0, LEAF_HASHES[0], [])


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 300), data=st.data())
def test_proofs_from_full_nodes_verify_and_read_log_n_nodes(size: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    nodes = _full_nodes(leaves)
    root = root_of(leaves)
    assert root_from_nodes(size, nodes) == root
    assert len(root_nodes(size)) <= size.bit_length()
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, nodes)
    verify_inclusion(index, size, leaves[index], proof, root)
    assert len(inclusion_nodes(index, size)) <= 2 * size.bit_length()
    old = data.draw(st.integers(0, size))
    old_root = root_of(leaves[:old])
    verify_consistency(old, size, old_root, root, consistency_proof(old, size, nodes))
    assert len(consistency_nodes(old, size)) <= 3 * size.bit_length()


def test_extend_frontier_tracks_the_root() -> None:
    frontier: list[bytes] = []
    leaves: list[bytes] = []
    for i in range(40):
        leaf = leaf_hash(bytes([i]))
        frontier = extend_frontier(i, frontier, leaf)
        leaves.append(leaf)
        acc = frontier[-1]
        for h in reversed(frontier[:-1]):
            acc = node_hash(h, acc)
        assert acc == root_of(leaves)
