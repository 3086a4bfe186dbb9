"""DataConfig: which data set to load and how to turn it into (x, y) batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from data.sources import SOURCES
from model.errors import UserError

DATA_NAMES = tuple(SOURCES)
TOY_SHAPES = ("swiss_roll", "moons", "gaussians8", "circles", "checkerboard")


# Values that size memory are checked before anything is allocated: a typo such as an extra digit then fails in one
# line instead of in an allocation of many gigabytes.
MAX_IMAGE_SIZE = 4096  # pixels per side
MAX_BATCH_SIZE = 65_536  # items per batch and process


@dataclass
class DataConfig:
    # digits ships with scikit-learn: trains offline with no files to fetch.
    name: str = "digits"  # a source of data/sources.py: digits, folder, mnist, cifar10, hf, toy2d, latents
    # folder: the image folder; mnist/cifar10: torchvision root (None = ~/.cache/ldm-data);
    # hf: a saved data set directory or a hub name; latents: the folder model.scripts.encode_latents wrote.
    # Unused for digits and toy2d.
    root: Optional[str] = None
    # 32 px keeps a pixel-space UNet small on CPU; raise it for real photos.
    image_size: int = 32
    # 1 (grey, "L") matches digits/MNIST; set 3 for colour data. Every image is converted to this.
    channels: int = 1
    # 64 fits the small models in memory on CPU and on one GPU.
    batch_size: int = 64
    # 0 loads in the main process: simplest and fastest for the small in-memory sets.
    num_workers: int = 0
    # 10 % held out for the validation loss; 0 disables validation.
    val_fraction: float = 0.1
    # Fixes the train/val split (and the subset chosen by max_items).
    seed: int = 0
    # Class labels for class-conditional training; false yields y = -1 (folder: labels = sub-folder names).
    labels: bool = True
    # folder: take each image's class from this field of metadata.jsonl (e.g. the emoji's "subcategory") instead.
    label_field: Optional[str] = None
    # Off: digits and text-like data are not mirror symmetric. Faces and animals may turn it on.
    hflip: bool = False
    # "center" crops to the shorter side (no borders); "pad" keeps the whole image with black borders.
    crop: Literal["center", "pad"] = "center"
    # The split read from a Hugging Face data set.
    hf_split: str = "train"
    # Most image data sets on the hub name their image column "image".
    hf_image_column: str = "image"
    # None: unlabelled (y = -1); set it to use a label column.
    hf_label_column: Optional[str] = None
    # Read a caption per image (folder: metadata.jsonl or <image>.txt; hf: data.hf_caption_column), data/captions.py.
    captions: bool = False
    # The caption column of a Hugging Face data set.
    hf_caption_column: Optional[str] = None
    # An image without a caption: "empty" trains it on the empty prompt, "error" stops naming it.
    on_missing_caption: Literal["empty", "error"] = "empty"
    # A few broken files should not stop a training run; "error" stops at the first one.
    on_corrupt: Literal["skip", "error"] = "skip"
    # The swiss roll is the classic 2-D diffusion demo.
    toy_shape: str = "swiss_roll"
    # 20k points are enough for a smooth density and a stable Chamfer distance.
    toy_num_points: int = 20000
    # None uses everything; a small number makes quick smoke runs.
    max_items: Optional[int] = None

    def __post_init__(self) -> None:
        if self.name not in DATA_NAMES:
            raise UserError(f"data.name must be one of {', '.join(DATA_NAMES)}, got {self.name!r}; set data.name")
        what = SOURCES[self.name].root
        if what and not self.root:
            raise UserError(f"data.root is not set but data.name={self.name} needs it; set data.root to {what}")
        if not 0 < self.image_size <= MAX_IMAGE_SIZE:
            raise UserError(f"data.image_size must be in [1, {MAX_IMAGE_SIZE}], got {self.image_size}; set "
                            f"data.image_size, e.g. 32")
        if self.channels not in (1, 3):
            raise UserError(f"data.channels must be 1 or 3, got {self.channels}; set data.channels 1 (grey) or 3 (RGB)")
        if not 0 < self.batch_size <= MAX_BATCH_SIZE:
            raise UserError(f"data.batch_size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}; set "
                            f"data.batch_size, e.g. 64")
        if self.num_workers < 0:
            raise UserError(f"data.num_workers must be >= 0, got {self.num_workers}; set data.num_workers to 0 or more")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}; set it, e.g. 0.1")
        if self.crop not in ("center", "pad"):
            raise UserError(f"data.crop must be center or pad, got {self.crop!r}; set data.crop")
        if self.on_corrupt not in ("skip", "error"):
            raise UserError(f"data.on_corrupt must be skip or error, got {self.on_corrupt!r}; set data.on_corrupt")
        if self.on_missing_caption not in ("empty", "error"):
            raise UserError(f"data.on_missing_caption must be empty or error, got {self.on_missing_caption!r}; set it")
        if self.captions and self.name == "hf" and not self.hf_caption_column:
            raise UserError("data.captions is true but data.hf_caption_column is not set; name the caption column")
        if self.label_field and (self.name != "folder" or not self.labels):
            raise UserError(f"data.label_field reads classes from a folder's metadata.jsonl; it needs data.name "
                            f"folder and data.labels true, got {self.name} with labels {self.labels}")
        if self.captions and not SOURCES[self.name].captions:
            raise UserError(f"data.name {self.name} has no captions; use a folder or hf source, or set data.captions "
                            f"false")
        if not self.hf_image_column:
            raise UserError("data.hf_image_column is empty; set it to the data set's image column, e.g. image")
        if self.toy_shape not in TOY_SHAPES:
            raise UserError(
                f"data.toy_shape must be one of {', '.join(TOY_SHAPES)}, got {self.toy_shape!r}; set data.toy_shape"
            )
        if self.toy_num_points < 2:
            raise UserError(f"data.toy_num_points must be >= 2, got {self.toy_num_points}; set data.toy_num_points")
        if self.max_items is not None and self.max_items <= 0:
            raise UserError(f"data.max_items must be > 0 or null, got {self.max_items}; set data.max_items or null")
