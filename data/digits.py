"""scikit-learn's bundled 8x8 handwritten digits: 1797 images, 10 classes, no download."""
from __future__ import annotations

import functools

import torch
from torch.utils.data import Dataset

from data.base import BaseDataModule, TensorImageDataset
from data.config import DataConfig


class DigitsDataModule(BaseDataModule):
    """`sklearn.datasets.load_digits` (values 0..16) resized bilinearly (antialiased) to image_size, in [-1, 1].

    One grey channel, repeated to 3 when data.channels is 3. Labels 0..9 (class names "0".."9").
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self._set_classes([str(d) for d in range(10)] if cfg.labels else [])

    def _load(self) -> int:
        images, targets = bundled_digits()
        self._images = images.clone()  # (N, 1, 8, 8) in [0, 1]
        self._labels = targets.clone() if self.cfg.labels else torch.full_like(targets, -1)
        return len(self._images)

    def _dataset(self, train: bool) -> Dataset:
        return TensorImageDataset(self._images, self._labels, self.image_size, self.channels, self.cfg.hflip and train)


@functools.cache  # scikit-learn parses its text file on every call (about 20 ms); a process reads it once
def bundled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 images as (N, 1, 8, 8) floats in [0, 1] and their labels 0..9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    return images.unsqueeze(1), torch.as_tensor(bunch.target, dtype=torch.int64)
