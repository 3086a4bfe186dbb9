"""Shared LightningDataModule logic: seeded train/val split, data loaders, lazily known classes.

A subclass implements `_load()` (read the source once, return the number of items, set the classes) and
`_dataset(train)` (a Dataset over all items returning (x, y)); the base class splits and loads.
"""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from data.captions import Captioned
from data.config import DataConfig
from data.sources import SOURCES
from data.resumable import ResumableLoader, batches_done
from data.transforms import random_hflip, tensor_to_model_range
from model.errors import UserError


def describe(err: BaseException) -> str:
    """One line for an error message: `Type: first line of the message`."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def split_indices(
    n: int, val_fraction: float, seed: int, max_items: Optional[int] = None
) -> tuple[list[int], list[int]]:
    """Seeded random split of range(n) into (train, val) index lists.

    A torch.Generator seeded with `seed` permutes the items; `max_items` keeps the first max_items of that
    permutation (a random subset); the first round(m * val_fraction) items are validation (at least one when
    val_fraction > 0 and m >= 2; never all of them). The same (n, val_fraction, seed, max_items) gives the same split.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    if max_items is not None:
        perm = perm[:max_items]
    m = len(perm)
    n_val = int(round(m * val_fraction))
    if val_fraction > 0 and m >= 2:
        n_val = min(max(n_val, 1), m - 1)
    return perm[n_val:].tolist(), perm[:n_val].tolist()


class TensorImageDataset(Dataset):
    """In-memory square images (N, C, H, W), uint8 or float in [0, 1], with labels (N,) -> (x, y) in model range."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int, channels: int, hflip: bool) -> None:
        self.images, self.labels = images, labels
        self.image_size, self.channels, self.hflip = image_size, channels, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = tensor_to_model_range(self.images[i], self.image_size, self.channels)  # (C, S, S)
        return (random_hflip(x) if self.hflip else x), int(self.labels[i])


class BaseDataModule(pl.LightningDataModule):
    """Base for every data module: exposes channels, image_size, data_shape, num_classes, class_names.

    `num_classes` / `class_names` are read lazily: when the subclass could not set them in __init__ (folder, hf),
    reading them runs prepare_data() and setup() first. Batches are (x, y): x float32 (B, C, H, W) in [-1, 1],
    y int64 (B,) in [0, num_classes - 1], or -1 everywhere when unlabelled.

    Small data: the train loader keeps an epoch's last partial batch (drop_last=False), but a training split must
    hold at least one full batch: a smaller one is refused before training (`check_one_batch` in
    model/lightning/trainer.py), since every step would silently run at a smaller batch size than configured.
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.channels = cfg.channels
        self.image_size = cfg.image_size
        self._num_classes: Optional[int] = None
        self._class_names: Optional[list[str]] = None
        self._captions: Optional[list[str]] = None  # one per item when data.captions is on (data/captions.py)
        self.train_set: Optional[Subset] = None
        self.val_set: Optional[Subset] = None

    # ---- to implement -------------------------------------------------------------------------------------
    def _load(self) -> int:
        """Read the source once; set the classes with `_set_classes`; return the number of items."""
        raise NotImplementedError

    def _dataset(self, train: bool) -> Dataset:
        """All items as a Dataset of (x, y); `train` turns on training-only augmentation (hflip)."""
        raise NotImplementedError

    # ---- classes ------------------------------------------------------------------------------------------
    def _set_classes(self, names: list[str]) -> None:
        """Set class names (empty list = unlabelled, num_classes 0)."""
        self._class_names = list(names)
        self._num_classes = len(names)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one x: (C, H, W) for images."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._ensure_setup()
        assert self._num_classes is not None
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._ensure_setup()
        assert self._class_names is not None
        return self._class_names

    @property
    def native_size(self) -> Optional[int]:
        """Side of the source images when they all share one (digits: 8), else None (data/sources.py)."""
        return SOURCES[self.cfg.name].native_size

    # ---- captions -----------------------------------------------------------------------------------------
    def captions(self, split: str = "all") -> list[str]:
        """The caption of every item of a split ("train", "val" or "all", in `all_items` order), "" where it has
        none; only with data.captions on."""
        if not self.cfg.captions:
            raise UserError(f"the captions of data.name {self.cfg.name} are not read; set data.captions true")
        self._ensure_setup()
        assert self._captions is not None
        order = {"train": self.train_set.indices, "val": self.val_set.indices,
                 "all": list(self.train_set.indices) + list(self.val_set.indices)}[split]
        return [self._captions[i] for i in order]

    # ---- Lightning hooks ----------------------------------------------------------------------------------
    def _ensure_setup(self) -> None:
        if self.train_set is None:
            self.prepare_data()
            self.setup("fit")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:  # Lightning calls setup once per stage; the split is made once
            return
        n = self._load()
        if n == 0:
            raise UserError(f"data set {self.cfg.name} has 0 items; check data.root and data.max_items")
        train_idx, val_idx = split_indices(n, self.cfg.val_fraction, self.cfg.seed, self.cfg.max_items)
        self.train_set = Subset(self._items(train=True), train_idx)
        self.val_set = Subset(self._items(train=False), val_idx)

    def _items(self, train: bool) -> Dataset:
        """`_dataset`, with each item's caption appended, (x, y, text), when data.captions is on."""
        ds = self._dataset(train)
        return Captioned(ds, self._captions) if self.cfg.captions else ds

    def split_items(self, split: str) -> Dataset:
        """The items of one split ("train" or "val") without augmentation, in the split's order."""
        self._ensure_setup()
        return Subset(self._items(train=False), (self.train_set if split == "train" else self.val_set).indices)

    def all_items(self) -> Dataset:
        """Every item of the split, training and validation, without augmentation (data.max_items applies): the
        real images the quality metrics use."""
        self._ensure_setup()
        return Subset(self._items(train=False), list(self.train_set.indices) + list(self.val_set.indices))

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        nw = self.cfg.num_workers
        common = dict(batch_size=self.cfg.batch_size, num_workers=nw, persistent_workers=nw > 0,
                      pin_memory=torch.cuda.is_available())
        if train:  # an order a resumed run rebuilds exactly (data/resumable.py)
            return ResumableLoader(ds, seed=self.cfg.seed, batches_done=lambda: batches_done(self.trainer), **common)
        # a generator of its own: iterating validation must not draw from the global stream training uses
        return DataLoader(ds, shuffle=False, generator=torch.Generator().manual_seed(self.cfg.seed), **common)

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        assert self.train_set is not None
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Held-out split (no augmentation); empty when data.val_fraction is 0."""
        self._ensure_setup()
        assert self.val_set is not None
        return self._loader(self.val_set, train=False)
