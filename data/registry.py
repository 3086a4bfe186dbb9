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
from model.errors import UserError

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


def source_images(dm: pl.LightningDataModule) -> pl.LightningDataModule:
    """The image data module behind the training batches: itself, the one a latent cache wraps (.images), or the
    one encoded latents on disk were made from (loaded here, checked to hold images)."""
    if hasattr(dm, "images"):
        return dm.images
    if not hasattr(dm, "source_config"):
        return dm
    try:
        source = make_datamodule(dm.source_config())
        source.all_items()
    except UserError as e:
        raise UserError(f"quality during training scores samples against the images the latents in {dm.root} "
                        f"were encoded from, but they cannot be loaded: {e}") from None
    return source
