"""The data sources a config can name, with what each one is.

A source is registered once, here, with its data module (imported only when a module is built, so reading a config
imports no Lightning) and its properties; code asks for the properties, never for a name:

- `kind`: "images" (x is (C, H, W) in [-1, 1]), "points" (x is a point in R^d) or "latents" (x is a latent the VAE
  made, read from disk);
- `root`: what `data.root` must name, or None when the source needs no files (or has a default place for them);
- `native_size`: the images' own side in pixels, None when it varies or there are no images;
- `captions`: whether it can give a caption per image (data/captions.py).

Every source yields (x, y) with y the class label, or -1 where `data.labels` is false or it has none.
Adding a data source: its data module in a file of `data/` and one entry here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal, Optional

Kind = Literal["images", "points", "latents"]


@dataclass(frozen=True)
class Source:
    module: str  # "package.module:Class" of its LightningDataModule
    kind: Kind
    root: Optional[str] = None  # what data.root must name, when the source needs it
    native_size: Optional[int] = None
    captions: bool = False

    def data_module(self):
        path, _, name = self.module.partition(":")
        return getattr(importlib.import_module(path), name)


SOURCES: dict[str, Source] = {
    "digits": Source("data.digits:DigitsDataModule", "images", native_size=8),  # bundled with scikit-learn
    "folder": Source("data.folder:FolderDataModule", "images", root="an image folder", captions=True),
    "mnist": Source("data.torchvision_sets:MNISTDataModule", "images", native_size=28),
    "cifar10": Source("data.torchvision_sets:CIFAR10DataModule", "images", native_size=32),
    "hf": Source("data.hf:HFDataModule", "images", root="a saved data set directory or a hub name", captions=True),
    "toy2d": Source("data.toy2d:Toy2DDataModule", "points"),
    "latents": Source("data.latents:LatentsDataModule", "latents",
                      root="a folder written by python -m model.scripts.encode_latents", captions=True),
}


def kind_of(name: str) -> Kind:
    """What the source `name` yields: images, points or latents."""
    return SOURCES[name].kind
