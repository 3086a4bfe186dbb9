"""Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 2): fidelity and diversity on k-NN manifolds.

The manifold of a set is the union of balls around its points, each ball's radius the distance to that point's k-th
nearest neighbour in the same set. Precision is the share of generated points inside the real manifold (are the
samples realistic?); recall the share of real points inside the generated manifold (is the variety of real data
covered?). The paper uses k = 3.

Recall trusts the generated set's own radii, so samples spread wide by noise draw wide balls and "cover" real data they
do not resemble. Coverage (Naeem et al. 2020, Sec. 3) asks the question with the real set's radii instead: the share
of real points that have at least one generated point inside their own k-NN ball. Noise cannot inflate it.
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


def real_coverage(real: Tensor, fake: Tensor, k: int = 3) -> float:
    """Coverage of `real` (N, D) by `fake` (M, D) (Naeem et al. 2020): the share of real points whose own k-NN ball
    holds at least one fake point."""
    radii = knn_radii(real, k)
    hit = [(_distances(rows, fake) <= r[:, None]).any(1) for rows, r in zip(real.split(CHUNK), radii.split(CHUNK))]
    return float(torch.cat(hit).double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of `fake` (M, D) against `real` (N, D) with k-NN radii (Kynkäänniemi et al. 2019)."""
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall
