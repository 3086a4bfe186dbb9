"""Hugging Face `datasets`: a saved data set directory (load_from_disk) or a hub name / local files (load_dataset)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.base import BaseDataModule, describe
from data.captions import apply_policy
from data.transforms import ImageTransform
from model.errors import UserError


def _is_saved_dataset(path: str) -> bool:
    """True for a directory written by Dataset.save_to_disk / DatasetDict.save_to_disk."""
    return any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def open_hf_dataset(root: str, split: str):
    """Load one split: load_from_disk for a saved directory, load_dataset(root, split=split) otherwise."""
    import datasets

    path = os.path.expanduser(root)
    try:
        if os.path.isdir(path) and _is_saved_dataset(path):
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset(path, split=split)
    except Exception as err:  # offline hub name, unknown name, unreadable files
        raise UserError(
            f"cannot load Hugging Face data set {root} ({describe(err)}); "
            "set data.root to a save_to_disk directory or a hub name that is cached or reachable"
        ) from err
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"split {split!r} not in {root} (splits: {', '.join(ds.keys())}); set data.hf_split")
        ds = ds[split]
    return ds


def as_pil(value: Any) -> Image.Image:
    """A decoded cell of an image column -> PIL image (Image feature, {'bytes', 'path'} dict or array)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        import io

        return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    return Image.fromarray(np.asarray(value))


class HFImageDataset(Dataset):
    """Rows of a `datasets.Dataset` -> (x, y); only the image column is decoded per item."""

    def __init__(self, ds, column: str, labels: torch.Tensor, transform: ImageTransform) -> None:
        self.ds, self.column, self.labels, self.transform = ds, column, labels, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        try:
            img = as_pil(self.ds[int(i)][self.column])
            x = self.transform(img)
        except OSError as err:
            raise UserError(f"cannot decode image in row {i} of {self.column!r} ({err}); fix or drop that row") from err
        return x, int(self.labels[i])


class HFDataModule(BaseDataModule):
    """Images from data.hf_image_column; labels from data.hf_label_column (ClassLabel names, ints or strings).

    Any size goes through to-square (data.crop) + resize, e.g. the 2000x1328 butterfly photos.
    String labels map to sorted unique values; plain integer labels give classes 0..max. Corrupt images
    are not pre-scanned here (that would decode the whole set): a bad row raises a UserError when read.
    """

    def _load(self) -> int:
        ds = open_hf_dataset(self.cfg.root or "", self.cfg.hf_split)
        if len(ds) == 0:
            raise UserError(f"split {self.cfg.hf_split!r} of {self.cfg.root} has 0 rows; set data.hf_split")
        columns = {"data.hf_image_column": self.cfg.hf_image_column, "data.hf_label_column": self.cfg.hf_label_column,
                   "data.hf_caption_column": self.cfg.hf_caption_column if self.cfg.captions else None}
        for key, col in ((k, c) for k, c in columns.items() if c):
            if col not in ds.column_names:
                raise UserError(
                    f"{key}={col!r} is not a column of {self.cfg.root} "
                    f"(columns: {', '.join(ds.column_names)}); set {key}"
                )
        self._labels = self._read_labels(ds)
        if self.cfg.captions:  # the caption column only; images stay undecoded
            texts = [None if v is None else str(v) for v in ds[self.cfg.hf_caption_column]]
            self._captions = apply_policy(texts, [f"row {i}" for i in range(len(ds))], self.cfg.on_missing_caption,
                                          f"{self.cfg.root} ({self.cfg.hf_caption_column!r})")
        self._ds = ds.select_columns([self.cfg.hf_image_column])
        return len(ds)

    def _read_labels(self, ds) -> torch.Tensor:
        col = self.cfg.hf_label_column
        if not col or not self.cfg.labels:
            self._set_classes([])
            return torch.full((len(ds),), -1, dtype=torch.int64)
        feature = ds.features[col]
        values = ds[col]  # the label column only; images stay undecoded
        if hasattr(feature, "names"):  # datasets.ClassLabel
            self._set_classes(list(feature.names))
            return torch.as_tensor(values, dtype=torch.int64)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            if min(values) < 0:
                raise UserError(f"data.hf_label_column={col!r} has negative labels; use labels 0..K-1 or unset it")
            self._set_classes([str(k) for k in range(max(values) + 1)])
            return torch.as_tensor(values, dtype=torch.int64)
        names = sorted({str(v) for v in values})
        self._set_classes(names)
        index = {name: k for k, name in enumerate(names)}
        return torch.as_tensor([index[str(v)] for v in values], dtype=torch.int64)

    def _dataset(self, train: bool) -> Dataset:
        transform = ImageTransform(self.image_size, self.channels, self.cfg.crop, self.cfg.hflip and train)
        return HFImageDataset(self._ds, self.cfg.hf_image_column, self._labels, transform)
