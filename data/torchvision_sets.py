"""MNIST and CIFAR-10 through torchvision: the official train split is split into train/val; test is not used."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from data.base import BaseDataModule, TensorImageDataset, describe
from data.config import DataConfig
from model.errors import UserError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def default_root() -> str:
    """Where torchvision data sets live when data.root is unset: $LDM_DATA_ROOT or ~/.cache/ldm-data."""
    return os.path.expanduser(os.environ.get("LDM_DATA_ROOT", "~/.cache/ldm-data"))


class _TorchvisionDataModule(BaseDataModule):
    """Downloads in prepare_data (a no-op when the files are there); reads the train split in setup."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.root = os.path.expanduser(cfg.root) if cfg.root else default_root()

    def _where(self) -> str:
        """What to place where, for the error message."""
        raise NotImplementedError

    def _open(self, download: bool):
        raise NotImplementedError

    def prepare_data(self) -> None:
        try:
            self._open(download=True)
        except Exception as err:  # no network, server down, bad checksum: all end the same way
            raise UserError(
                f"{self.cfg.name} is not under {self.root} and the download failed ({describe(err)}); {self._where()}"
            ) from err

    def _read(self):
        try:
            return self._open(download=False)
        except RuntimeError as err:
            raise UserError(f"{self.cfg.name} is not under {self.root}; {self._where()}") from err

    def _dataset(self, train: bool) -> Dataset:
        return TensorImageDataset(self._images, self._labels, self.image_size, self.channels, self.cfg.hflip and train)

    def _keep_labels(self, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(torch.int64)
        return targets if self.cfg.labels else torch.full_like(targets, -1)


class MNISTDataModule(_TorchvisionDataModule):
    """MNIST digits, 28x28 grey, labels 0..9."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self._set_classes([str(d) for d in range(10)] if cfg.labels else [])

    def _where(self) -> str:
        raw = os.path.join(self.root, "MNIST", "raw")
        names = ", ".join(f + ".gz" for f in MNIST_FILES)
        return f"place {names} in {raw}{os.sep} (e.g. {os.path.join(raw, MNIST_FILES[0] + '.gz')}) or run once online"

    def _open(self, download: bool):
        from torchvision.datasets import MNIST

        return MNIST(self.root, train=True, download=download)

    def _load(self) -> int:
        ds = self._read()
        self._images = ds.data.unsqueeze(1)  # (N, 1, 28, 28) uint8
        self._labels = self._keep_labels(ds.targets)
        return len(self._images)


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10, 32x32 RGB, 10 classes (set data.channels 3 to keep colour)."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self._set_classes(CIFAR10_CLASSES if cfg.labels else [])

    def _where(self) -> str:
        return (
            f"place cifar-10-python.tar.gz in {self.root}{os.sep} or its extracted folder "
            f"{os.path.join(self.root, 'cifar-10-batches-py')}{os.sep} (data_batch_1..5, test_batch, batches.meta), "
            "or run once online"
        )

    def _open(self, download: bool):
        from torchvision.datasets import CIFAR10

        return CIFAR10(self.root, train=True, download=download)

    def _load(self) -> int:
        ds = self._read()
        images = torch.from_numpy(np.ascontiguousarray(ds.data))  # (N, 32, 32, 3) uint8
        self._images = images.permute(0, 3, 1, 2)  # (N, 3, 32, 32)
        self._labels = self._keep_labels(torch.as_tensor(ds.targets))
        return len(self._images)
