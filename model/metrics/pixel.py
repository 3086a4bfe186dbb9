"""Pixel features that see blur, stroke width and style: images area-downsampled to a small size and projected on
the leading principal components of real images (fitted on real images only).

A classifier's penultimate layer is trained to keep the class and discard the rest, so a blurry or plain sample
scores like a sharp one there. Pixels at the data's native resolution keep exactly what a person compares; the
projection on the leading components of real images keeps the directions real images vary in and makes the
covariance of a few hundred images well conditioned.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.errors import UserError
from model.metrics.fid import images_to_uint8


def pixel_vectors(x: Tensor, size: int) -> Tensor:
    """[-1, 1] images (B, C, H, W) → (B, C * size * size) float64 intensities in [0, 1].

    Quantised to uint8 first (as the PNG files are), then area-downsampled to size x size (the mean of each block
    of pixels, exact for sizes that divide H and W).
    """
    u = images_to_uint8(x).double() / 255.0  # (B, C, H, W) in [0, 1]
    if u.shape[-2:] != (size, size):
        u = F.interpolate(u, size=(size, size), mode="area")  # (B, C, size, size)
    return u.flatten(1)


class PCAProjection(nn.Module):
    """x ↦ (x - mean) @ components: coordinates on the leading principal axes of a reference set, (B, k) float64.

    Not whitened: distances stay in pixel-intensity units, so a direction counts as much as real images vary along it.
    The number of features is `num_features`, which torchmetrics reads instead of probing with a dummy image.
    """

    def __init__(self, mean: Tensor, components: Tensor, explained: float) -> None:
        super().__init__()
        self.register_buffer("mean", mean.double())  # (D,)
        self.register_buffer("components", components.double())  # (D, k)
        self.num_features = components.shape[1]
        self.explained = explained  # share of the reference's variance on these k axes

    @classmethod
    def fit(cls, reference: Tensor, k: int) -> "PCAProjection":
        """The k leading axes of `reference` (N, D), from the SVD of the centred data; each axis' sign fixed so its
        largest entry is positive (the projection is then a function of the data alone)."""
        n, d = reference.shape
        if not 1 <= k <= min(n - 1, d):
            raise UserError(f"the pixel metric's principal components must be in [1, {min(n - 1, d)}] for {n} "
                            f"reference vectors of {d} values, got {k}; pass a smaller --pca-components")
        mean = reference.double().mean(0)  # (D,)
        _, s, vh = torch.linalg.svd(reference.double() - mean, full_matrices=False)  # vh (min(N, D), D)
        axes = vh[:k]  # (k, D)
        signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))  # (k, 1)
        explained = float(s[:k].square().sum() / s.square().sum())
        return cls(mean, (axes * signs).T, explained)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, D) → (B, k)."""
        return (x.double() - self.mean) @ self.components
