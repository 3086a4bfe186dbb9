"""Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 2): fidelity and diversity on k-NN manifolds.

The manifold of a set is the union of balls around its points, each ball's radius the distance to that point's k-th
nearest neighbour in the same set. Precision is the share of generated points inside the real manifold (are the
samples realistic?); recall the share of real points inside the generated manifold (is the variety of real data
covered?). The paper uses k = 3.
"""
from __future__ import annotations

import torch
from torch import Tensor

from model.errors import UserError

CHUNK = 1024  # rows of a distance matrix at once: memory stays O(CHUNK * N) for any set size


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Exact Euclidean distances (len(a), len(b)) in float64 (no matmul shortcut, so d(x, x) is exactly 0)."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance from each point of x (N, D) to its k-th nearest other point (N,); the point itself is skipped."""
    if not 1 <= k < len(x):
        raise UserError(f"precision/recall needs 1 <= k < the set size ({len(x)}), got k={k}; pass a smaller --pr-k")
    return torch.cat([_distances(rows, x).kthvalue(k + 1, dim=1).values for rows in x.split(CHUNK)])


def coverage(queries: Tensor, support: Tensor, radii: Tensor) -> float:
    """The share of `queries` (M, D) that lie in at least one ball (support_j, radii_j)."""
    inside = [(_distances(rows, support) <= radii[None]).any(1) for rows in queries.split(CHUNK)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of `fake` (M, D) against `real` (N, D) with k-NN radii (Kynkäänniemi et al. 2019)."""
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall
