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


def _share(hits: Tensor) -> float:
    return float(hits.double().mean())


def precision_recall_coverage(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float, float]:
    """(precision, recall, coverage) of `fake` (M, D) against `real` (N, D) with k-NN radii, from one pass over the
    fake-to-real distances: precision, the share of fake points inside some real ball; recall, of real points inside
    some fake ball (Kynkäänniemi et al. 2019); coverage, of real points whose own ball holds a fake (Naeem et al.)."""
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    precise = []
    recalled = torch.zeros(len(real), dtype=torch.bool)
    covered = torch.zeros(len(real), dtype=torch.bool)
    for rows, radii in zip(fake.split(CHUNK), fake_radii.split(CHUNK)):
        d = _distances(rows, real)  # (chunk, N)
        in_real_ball = d <= real_radii[None]
        precise.append(in_real_ball.any(1))
        covered |= in_real_ball.any(0)
        recalled |= (d <= radii[:, None]).any(0)
    return _share(torch.cat(precise)), _share(recalled), _share(covered)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of `fake` (M, D) against `real` (N, D) (Kynkäänniemi et al. 2019)."""
    return precision_recall_coverage(real, fake, k)[:2]


def real_coverage(real: Tensor, fake: Tensor, k: int = 3) -> float:
    """Coverage of `real` (N, D) by `fake` (M, D) (Naeem et al. 2020): the share of real points whose own k-NN ball
    holds at least one fake point."""
    return precision_recall_coverage(real, fake, k)[2]
