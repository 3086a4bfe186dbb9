"""The data module of each source of `data/sources.py`, by DataConfig.name (imports them all, and Lightning)."""
from __future__ import annotations

import pytorch_lightning as pl

from data.config import DataConfig
from data.sources import SOURCES
from model.errors import UserError

DATAMODULES: dict[str, type[pl.LightningDataModule]] = {name: src.data_module() for name, src in SOURCES.items()}


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
