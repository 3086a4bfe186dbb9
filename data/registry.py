"""Registry of data modules by DataConfig.name."""
from __future__ import annotations

import pytorch_lightning as pl

from data.config import DataConfig
from data.digits import DigitsDataModule
from data.folder import FolderDataModule
from data.hf import HFDataModule
from data.latents import LatentsDataModule
from data.torchvision_sets import CIFAR10DataModule, MNISTDataModule
from data.toy2d import Toy2DDataModule

DATAMODULES: dict[str, type[pl.LightningDataModule]] = {
    "digits": DigitsDataModule,
    "folder": FolderDataModule,
    "mnist": MNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "hf": HFDataModule,
    "toy2d": Toy2DDataModule,
    "latents": LatentsDataModule,
}


def make_datamodule(cfg: DataConfig) -> pl.LightningDataModule:
    """The data module for cfg.name (cfg is validated by DataConfig.__post_init__)."""
    return DATAMODULES[cfg.name](cfg)
