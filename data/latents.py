"""Latents on disk: the stage-1 encodings of a data set, written once by `model.scripts.encode_latents` and read
memory-mapped, shard by shard, so stage 2 neither re-encodes at every start nor holds every latent in RAM.

    DIR/meta.json              format, the VAE's digest and config, the image data config, the latent shape, the
                               per-channel statistics of the training latents, the shards of each split
    DIR/train-00000.pt, ...    {"z": (n, C, h, w) float32 posterior means, "y": (n,) int64 labels, and with
                               captions "text": the n captions}
    DIR/train-flip-00000.pt    the horizontally flipped training images' latents (with --hflip)
    DIR/val-00000.pt, ...

`data.name: "latents"` with `data.root: DIR` gives batches (z, y) of raw latents (the denoiser normalises them),
or (z, y, texts) with `data.captions true` on latents encoded with captions, through the same resumable training
order as every data set.
"""
from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from data.base import BaseDataModule
from data.config import DataConfig
from model.errors import UserError

FORMAT = "latent-diffusion-lightning/latents-1"
META = "meta.json"


def read_meta(root: Path) -> dict[str, Any]:
    path = Path(root) / META
    if not path.is_file():
        raise UserError(f"{root} holds no encoded latents ({META} is missing); write them with python -m "
                        f"model.scripts.encode_latents -cfg <config> --load-vae <vae ckpt> --output {root}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); encode the latents again with python -m "
                        f"model.scripts.encode_latents") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{path} is not a latents folder of this package (format {found!r}); "
                        f"encode the latents again")
    return meta


def open_shard(path: Path, items: int, captions: bool = False) -> dict:
    """One shard, memory-mapped, with the item count meta.json gives it; anything else is a one-line error."""
    again = "write the folder again with python -m model.scripts.encode_latents"
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise UserError(f"the latent shard {path} named in {META} is missing; {again}") from None
    except Exception as err:  # a truncated zip, a foreign pickle: torch raises RuntimeError, UnpicklingError, ...
        raise UserError(f"the latent shard {path} is corrupt or truncated ({type(err).__name__}); {again}") from None
    z, y = (shard.get(key) if isinstance(shard, dict) else None for key in ("z", "y"))
    text = shard.get("text", []) if isinstance(shard, dict) else []
    if not (isinstance(z, torch.Tensor) and isinstance(y, torch.Tensor) and len(z) == len(y) == items
            and (not captions or len(text) == items)):
        raise UserError(f"the latent shard {path} does not hold the {items} latents and labels {META} says it "
                        f"holds; {again}")
    return shard


class ShardDataset(Dataset):
    """The items of several shards as one data set; each shard is memory-mapped when first touched."""

    def __init__(self, paths: list[Path], counts: list[int], captions: bool = False) -> None:
        self.paths, self.captions = paths, captions
        self.starts = [0]
        for n in counts:
            self.starts.append(self.starts[-1] + n)
        self.shards: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def shard(self, k: int) -> dict[str, torch.Tensor]:
        if k not in self.shards:
            self.shards[k] = open_shard(self.paths[k], self.starts[k + 1] - self.starts[k], self.captions)
        return self.shards[k]

    def check(self) -> None:
        """Open every shard once (memory-mapped: no data is read), so a missing, truncated or foreign file is
        refused before training rather than at the first batch that reaches it."""
        for k in range(len(self.paths)):
            self.shard(k)

    def __getitem__(self, i: int) -> tuple:
        k = bisect.bisect_right(self.starts, i) - 1
        shard, j = self.shard(k), i - self.starts[k]
        item = (shard["z"][j], int(shard["y"][j]))
        return (*item, shard["text"][j]) if self.captions else item


class LatentsDataModule(BaseDataModule):
    """Training and validation splits as encoded by `model.scripts.encode_latents` (raw posterior means)."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.root = Path(cfg.root)
        self.meta = read_meta(self.root)
        self._set_classes(list(self.meta["class_names"]))
        if cfg.captions and not self.meta.get("captions"):
            raise UserError(f"the latents in {self.root} were encoded without captions; encode them again from a "
                            f"config with data.captions true, or set data.captions false")

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["latent_shape"])

    def split(self, name: str) -> ShardDataset:
        shards = self.meta["splits"][name]["shards"]
        return ShardDataset([self.root / s["file"] for s in shards], [s["items"] for s in shards], self.cfg.captions)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.split("train"), self.split("val")
            for split in (self.train_set, self.val_set):
                split.check()

    def all_items(self) -> Dataset:
        raise UserError("the quality metrics need images, but data.name is latents; evaluate with the image data "
                        "config the latents were encoded from")

    def source_config(self) -> DataConfig:
        """The data config the latents were encoded from (meta.json keeps it): its real images are what quality
        during training scores samples against (`data.registry.source_images`)."""
        return DataConfig(**self.meta["data"])


def check_vae(meta: dict[str, Any], digest: str, vae_path: str) -> None:
    """Latents are only meaningful with the VAE that made them: refuse another one in one line."""
    if meta["vae_digest"] != digest:
        raise UserError(f"the latents in the data folder were encoded by VAE {meta['vae_digest'][:12]}, but "
                        f"{vae_path} is VAE {digest[:12]}; encode them again with this VAE or load that one")
