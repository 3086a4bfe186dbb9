"""2-D toy point clouds (swiss roll, moons, 8 gaussians, circles, checkerboard) and the Chamfer distance."""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, TensorDataset

from data.base import BaseDataModule
from data.config import DataConfig


def _swiss_roll(n: int, g: torch.Generator) -> torch.Tensor:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))  # angle, 1.5 pi .. 4.5 pi
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)  # (n, 2)
    return x + 0.25 * torch.randn(n, 2, generator=g)


def _moons(n: int, g: torch.Generator) -> torch.Tensor:
    theta = math.pi * torch.rand(n, generator=g)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    return torch.stack([x, y], dim=1) + 0.05 * torch.randn(n, 2, generator=g)  # (n, 2)


def _gaussians8(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g).float() * (math.pi / 4)  # one of 8 angles
    centres = 2.0 * torch.stack([torch.cos(k), torch.sin(k)], dim=1)  # radius 2, (n, 2)
    return centres + 0.1 * torch.randn(n, 2, generator=g)


def _circles(n: int, g: torch.Generator) -> torch.Tensor:
    theta = 2 * math.pi * torch.rand(n, generator=g)
    radius = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, 0.5)
    x = radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)  # (n, 2)
    return x + 0.03 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    x1 = 4 * torch.rand(n, generator=g) - 2  # [-2, 2)
    row = torch.rand(n, generator=g) - 2 * torch.randint(0, 2, (n,), generator=g).float()  # [-2, 1) in 2 bands
    x2 = row + torch.floor(x1) % 2  # shift every other column by one: 8 of the 16 unit squares
    return torch.stack([x1, x2], dim=1)  # (n, 2)


SHAPES = {
    "swiss_roll": _swiss_roll,
    "moons": _moons,
    "gaussians8": _gaussians8,
    "circles": _circles,
    "checkerboard": _checkerboard,
}


def make_points(shape: str, n: int, seed: int) -> torch.Tensor:
    """n points (n, 2) float32 of `shape`, centred and divided by one scalar std (aspect ratio kept, std ~ 1)."""
    x = SHAPES[shape](n, torch.Generator().manual_seed(seed))
    x = x - x.mean(0, keepdim=True)
    return (x / x.std()).float()


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> float:
    """Symmetric Chamfer distance between point sets a (N, D) and b (M, D):

        CD(A, B) = 1/2 * ( mean_{a in A} min_{b in B} ||a - b||_2  +  mean_{b in B} min_{a in A} ||a - b||_2 )

    i.e. the average of the two directed mean nearest-neighbour Euclidean (not squared) distances. It is 0 for
    identical sets, symmetric, at most |d| when one set is the other translated by d, and close to |d| for d
    small against the spacing of the points. Some papers use
    the sum of the two terms (2x this) or squared distances; compare numbers only under the same definition.
    Computed in chunks of `chunk` rows so 20k x 20k needs no N x M matrix.
    """
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)

    def directed(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        # the direct (not matrix-product) mode is exact (0 for identical points) and faster on CPU
        mins = []
        for i in range(0, len(p), chunk):
            dist = torch.cdist(p[i : i + chunk], q, compute_mode="donot_use_mm_for_euclid_dist")  # (chunk, M)
            mins.append(dist.min(dim=1).values)
        return torch.cat(mins).mean()

    return float(0.5 * (directed(a, b) + directed(b, a)))


class Toy2DDataModule(BaseDataModule):
    """2-D points: batches (x (B, 2) float32, y (B,) all -1); channels = 2 (the point dimension), image_size = 0.

    data_shape is (2,). `points()` returns all data.toy_num_points points (the reference set for Chamfer).
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.channels, self.image_size = 2, 0
        self._set_classes([])
        self._points: torch.Tensor | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (2,)

    def points(self) -> torch.Tensor:
        """All generated points (toy_num_points, 2), the same for the same data.seed."""
        if self._points is None:
            self._points = make_points(self.cfg.toy_shape, self.cfg.toy_num_points, self.cfg.seed)
        return self._points

    def _load(self) -> int:
        return len(self.points())

    def _dataset(self, train: bool) -> Dataset:
        x = self.points()
        return TensorDataset(x, torch.full((len(x),), -1, dtype=torch.int64))
