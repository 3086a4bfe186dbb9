"""Any folder of images, searched recursively; optional class labels from the first-level sub-folders."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from PIL import Image
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from data.base import BaseDataModule
from data.captions import folder_captions, metadata_field
from data.config import DataConfig
from data.transforms import ImageTransform
from model.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def find_images(root: str) -> list[str]:
    """Sorted paths of the image files under root (any depth; extension case ignored; hidden files skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
    found = [p for p in found if not os.path.basename(p).startswith(".")]
    return sorted(found)


def check_image(path: str) -> Optional[str]:
    """None when Pillow can parse the file (Image.verify: header and, for PNG, chunk checksums), else the reason."""
    try:
        with Image.open(path) as img:
            img.verify()
        return None
    except Exception as err:  # Pillow raises many types for broken files
        return f"{type(err).__name__}: {err}"


def class_of(path: str, root: str) -> Optional[str]:
    """Name of the first-level sub-folder holding `path`, or None for a file directly in root."""
    parts = os.path.relpath(path, root).split(os.sep)
    return parts[0] if len(parts) > 1 else None


class ImageFileDataset(Dataset):
    """Image files -> (x, y) through an ImageTransform."""

    def __init__(self, paths: list[str], labels: list[int], transform: ImageTransform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img.load()
                x = self.transform(img)
        except OSError as err:  # damage that Image.verify does not see (e.g. truncated JPEG data)
            raise UserError(f"cannot decode image {path} ({err}); delete or replace the file") from err
        return x, self.labels[i]


class FolderDataModule(BaseDataModule):
    """Images under data.root (.png .jpg .jpeg .webp .bmp, recursive, e.g. FFHQ thumbnails or AFHQ).

    labels=True: class = first-level sub-folder name, classes sorted (AFHQ train/: cat, dog, wild); a flat folder
    is an error then. Corrupt files: every file is verified once in setup (Image.verify, cheap, header-level);
    on_corrupt="skip" drops them and warns once "skipped N corrupt images (first: path)"; "error" raises a
    UserError naming the first one. The skipped paths are kept in `self.skipped`.
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.root = os.path.expanduser(cfg.root or "")
        self.skipped: list[str] = []

    def _load(self) -> int:
        if not os.path.isdir(self.root):
            raise UserError(f"image folder {self.root} does not exist; set data.root to a folder of images")
        paths = find_images(self.root)
        if not paths:
            exts = " ".join(IMAGE_EXTENSIONS)
            raise UserError(f"image folder {self.root} has no images ({exts}); set data.root to a folder of images")
        paths = self._drop_corrupt(paths)
        self._paths = paths
        self._labels = self._label(paths)
        if self.cfg.captions:
            self._captions = folder_captions(self.root, paths, self.cfg.on_missing_caption)
        return len(paths)

    def _drop_corrupt(self, paths: list[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(check_image, paths))
        bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
        if not bad:
            return paths
        if self.cfg.on_corrupt == "error":
            path, why = bad[0]
            raise UserError(
                f"corrupt image {path} ({why}); delete it or set data.on_corrupt skip ({len(bad)} corrupt in all)"
            )
        self.skipped = [p for p, _ in bad]
        rank_zero_warn(f"skipped {len(bad)} corrupt images (first: {bad[0][0]})")
        good = [p for p, why in zip(paths, problems) if why is None]
        if not good:
            raise UserError(f"all {len(paths)} images in {self.root} are corrupt; set data.root to a folder of images")
        return good

    def _label(self, paths: list[str]) -> list[int]:
        if not self.cfg.labels:
            self._set_classes([])
            return [-1] * len(paths)
        if self.cfg.label_field:
            return self._index(metadata_field(self.root, paths, self.cfg.label_field))
        classes = [class_of(p, self.root) for p in paths]
        loose = [p for p, c in zip(paths, classes) if c is None]
        if len(loose) == len(paths):
            raise UserError(
                f"image folder {self.root} has no class sub-folders but data.labels is true; "
                "set data.labels false or put the images in one sub-folder per class"
            )
        if loose:
            raise UserError(
                f"{len(loose)} images lie directly in {self.root} (first: {loose[0]}) outside the class sub-folders; "
                "move them into a class sub-folder or set data.labels false"
            )
        return self._index(classes)  # type: ignore[arg-type]

    def _index(self, classes: list[str]) -> list[int]:
        """Classes sorted by name; each image's index among them."""
        names = sorted(set(classes))
        self._set_classes(names)
        index = {name: k for k, name in enumerate(names)}
        return [index[c] for c in classes]

    def _dataset(self, train: bool) -> Dataset:
        transform = ImageTransform(self.image_size, self.channels, self.cfg.crop, self.cfg.hflip and train)
        return ImageFileDataset(self._paths, self._labels, transform)
