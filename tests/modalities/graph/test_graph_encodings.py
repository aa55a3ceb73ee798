"""Positional and structural encodings against closed forms on path and cycle graphs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from graph_helpers import cycle_graph, path_graph

from modalities.graph.encodings import (canonical_signs, hop_distances, laplacian_pe, num_codes, random_walk_pe,
                                        structure_codes)


def sym_laplacian(ei: torch.Tensor, n: int) -> np.ndarray:
    a = np.zeros((n, n))
    a[ei[0], ei[1]] = a[ei[1], ei[0]] = 1
    d = a.sum(1)
    return np.eye(n) - a / np.sqrt(np.outer(d, d))


@pytest.mark.parametrize("n", [5, 12])
def test_laplacian_pe_on_path_matches_closed_form(n):
    """Path P_n, normalised Laplacian: eigenvalues 1 - cos(pi k / (n-1)); eigenvectors D^1/2 cos(pi k i / (n-1))."""
    dims = 4
    vec, val = laplacian_pe(path_graph(n), n, dims)
    k = np.arange(1, dims + 1)
    np.testing.assert_allclose(val.numpy(), 1 - np.cos(np.pi * k / (n - 1)), atol=1e-9)
    i = np.arange(n)
    deg = np.where((i == 0) | (i == n - 1), 1.0, 2.0)
    for j, kk in enumerate(k):
        ref = np.sqrt(deg) * np.cos(np.pi * kk * i / (n - 1))
        ref /= np.linalg.norm(ref)
        got = vec[:, j].numpy()
        assert min(np.abs(got - ref).max(), np.abs(got + ref).max()) < 1e-8


def test_laplacian_pe_on_cycle_solves_the_eigenproblem():
    """Cycle C_n: eigenvalues 1 - cos(2 pi k / n), each twice; vectors are unit, orthogonal, L v = lambda v."""
    n, dims = 10, 6
    ei = cycle_graph(n)
    vec, val = laplacian_pe(ei, n, dims, invariant=False)
    expected = np.sort(np.array([1 - np.cos(2 * np.pi * k / n) for k in (1, 1, 2, 2, 3, 3)]))
    np.testing.assert_allclose(val.numpy(), expected, atol=1e-9)
    lap = sym_laplacian(ei, n)
    v = vec.numpy()
    np.testing.assert_allclose(lap @ v, v * val.numpy(), atol=1e-9)
    np.testing.assert_allclose(v.T @ v, np.eye(dims), atol=1e-9)
    # the invariant default zeroes these 2-d eigenspaces (their basis depends on node order) and keeps
    # the single eigenvalue 2 (alternating signs) of an even cycle
    inv, _ = laplacian_pe(ei, n, n - 1)
    assert (inv[:, :-1] == 0).all()
    alt = np.array([(-1) ** i for i in range(n)]) / np.sqrt(n)
    assert min(np.abs(inv[:, -1].numpy() - alt).max(), np.abs(inv[:, -1].numpy() + alt).max()) < 1e-9


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_graphs_are_padded_with_zeros(n):
    """Fewer nodes than encoding dimensions (torch-geometric's transform refuses these): zero columns."""
    vec, _ = laplacian_pe(path_graph(n), n, 8)
    assert vec.shape == (n, 8)
    assert torch.isfinite(vec).all()
    assert (vec[:, max(n - 1, 0):] == 0).all()
    if n >= 2:
        assert (vec[:, : n - 1].abs().sum(0) > 0).all()
    rw = random_walk_pe(path_graph(n), n, 8)
    assert rw.shape == (n, 8) and torch.isfinite(rw).all()


def test_random_walk_pe_on_cycle_and_path():
    """Return probability on a long cycle after k steps: C(k, k/2) / 2^k for even k, 0 for odd k."""
    n, steps = 21, 8
    rw = random_walk_pe(cycle_graph(n), n, steps)
    for k in range(1, steps + 1):
        expected = math.comb(k, k // 2) / 2**k if k % 2 == 0 else 0.0
        np.testing.assert_allclose(rw[:, k - 1].numpy(), expected, atol=1e-12)
    # path: against dense matrix powers of D^-1 A
    ei = path_graph(6)
    a = np.zeros((6, 6))
    a[ei[0], ei[1]] = a[ei[1], ei[0]] = 1
    p = a / a.sum(1, keepdims=True)
    rw = random_walk_pe(ei, 6, 4).numpy()
    for k in range(1, 5):
        np.testing.assert_allclose(rw[:, k - 1], np.diag(np.linalg.matrix_power(p, k)), atol=1e-12)


def test_hop_distances_and_codes():
    ei = path_graph(9)
    d = hop_distances(ei, 9, max_distance=5)
    i = torch.arange(9)
    assert torch.equal(d, (i[:, None] - i[None, :]).abs().clamp(max=6))
    # two components: unreachable pairs get the "far" code
    ei2 = torch.tensor([[0, 2], [1, 3]])
    assert hop_distances(ei2, 4, 3)[0, 2] == 4
    types = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    c = structure_codes(ei, 9, 5, types)
    assert c[0, 1] == c[1, 0] == 5 + 2 + 0 and c[3, 4] == 5 + 2 + 3
    assert c[0, 2] == 2 and c[0, 0] == 0
    assert int(c.max()) < num_codes(5, 4)


def test_canonical_signs_are_node_order_free():
    g = torch.Generator().manual_seed(0)
    n = 14
    a = (torch.rand(n, n, generator=g) < 0.3).triu(1)
    ei = a.nonzero().t()
    perm = torch.randperm(n, generator=g)
    inv = torch.argsort(perm)
    v1, _ = laplacian_pe(ei, n, 6)
    v2, _ = laplacian_pe(inv[ei], n, 6)  # node perm[j] becomes node j
    assert torch.allclose(v1[perm], v2, atol=1e-6)
    flipped = canonical_signs(-v1)
    assert torch.allclose(flipped, v1, atol=1e-9)
