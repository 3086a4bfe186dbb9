"""What the command-line scripts share: the device, the output folder beside a checkpoint, and input images."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from model.sampling import AUTOGUIDANCE_RULE, GRIDS, NOISE_SCALE_RULE, SAMPLERS, autoguidance_ok, noise_scale_ok
from model.errors import UserError
from model.writes import check_writable


def resolve_device(name: str) -> str:
    """`auto` → cuda when a GPU is visible, else cpu; asking for cuda without one is a UserError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no GPU is visible; use --device cpu")
    return name


def output_folder(output: Optional[str], checkpoint: str, default_name: str) -> Path:
    """`--output`, or `<run>/<stage>/<default_name>` beside the checkpoint's `checkpoints/` folder (for an export
    folder, `<export>-<default_name>` beside it, so the export stays as it was made); created."""
    source = Path(checkpoint).resolve()
    default = source.with_name(f"{source.name}-{default_name}") if source.is_dir() else source.parent.parent / default_name
    out = Path(output) if output else default
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file, not a folder; pick a folder path")
    check_writable(out)  # a read-only or full folder is refused before any work
    out.mkdir(parents=True, exist_ok=True)
    return out


def held_out(data):
    """The data module of a checkpoint's data config, set up as its training run split it, with a validation split."""
    from data import make_datamodule

    dm = make_datamodule(data)
    dm.prepare_data()
    dm.setup("fit")
    if len(dm.val_set) == 0:
        raise UserError(f"the validation split of the checkpoint's data ({data.name}) is empty (data.val_fraction "
                        f"is 0); use a checkpoint trained with data.val_fraction > 0")
    return dm


def validation_item(data, index: int) -> tuple[Tensor, int]:
    """Item `index` of the validation split: (1, C, S, S) in [-1, 1] and its label (-1: unlabelled)."""
    val = held_out(data).val_set
    if not 0 <= index < len(val):
        raise UserError(f"--index {index} is out of range: the validation split has {len(val)} items "
                        f"(0..{len(val) - 1}); pass a smaller --index or an --image file")
    x, y = val[index][:2]  # (C, S, S), int
    return x[None], int(y)  # (1, C, S, S)


def image_file(path: str, data) -> Tensor:
    """An image file as the folder data set reads one (data.channels, square by data.crop, data.image_size).

    Returns (1, C, S, S) in [-1, 1].
    """
    from PIL import Image

    from data.base import describe
    from data.transforms import ImageTransform

    file = Path(path)
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "does not exist"
        raise UserError(f"--image {file} {what}; pass the path of an image file (PNG, JPEG, ...)")
    try:
        with Image.open(file) as img:
            img.load()
            return ImageTransform(data.image_size, data.channels, crop=data.crop)(img)[None]  # (1, C, S, S)
    except OSError as err:  # Pillow's UnidentifiedImageError and truncated files are OSErrors
        raise UserError(f"--image {file} is not a readable image ({describe(err)}); pass a PNG or JPEG file") from err


def evenly_spaced(items: list, count: int) -> list:
    """At most `count` items, evenly spaced over the list, the first and the last included."""
    idx = np.unique(np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int))
    return [items[i] for i in idx]


CHECKPOINT_DEFAULTS = {"sampler": "the checkpoint's sampler",
                       "steps": "all T for ddpm, the checkpoint's sample_steps for the others",
                       "spacing": "the checkpoint's sample_spacing"}


def add_sampler_arguments(p, eta: bool = True, defaults: Optional[dict[str, str]] = None) -> None:
    """--sampler, its shorthand --ddim, --steps, --spacing, --s-noise, --autoguidance (and --eta) as the sampling
    commands take them; each defaults to the checkpoint's config (`denoiser.diffusion`), or to what `defaults`
    (flag → text) says."""
    said = {**CHECKPOINT_DEFAULTS, **(defaults or {})}
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                   help="; ".join(f"{name}: {info.display} ({info.paper})" for name, info in SAMPLERS.items())
                   + f" (default: {said['sampler']})")
    p.add_argument("--ddim", action="store_true", help="shorthand for --sampler ddim")
    p.add_argument("--steps", type=int, default=None, help=f"sampling steps (default: {said['steps']})")
    add_spacing_argument(p, said["spacing"])
    p.add_argument("--s-noise", "--s_noise", type=float, default=None, metavar="S",
                   help="scale of the fresh noise of the stochastic samplers (ddpm, ddim with --eta > 0, "
                        "dpmpp_2m_sde; Karras et al. 2022's S_noise): above 1 widens the samples, at some cost in "
                        "fidelity (default: the checkpoint's s_noise, else 1)")
    p.add_argument("--autoguidance", type=float, default=None, metavar="A",
                   help="autoguidance weight a (Karras et al. 2024): guide + (1 + a)(out - guide), the guide the EMA "
                        "weights of an early training step; widens the samples and keeps their class; 0 turns it "
                        "off (default: the checkpoint's autoguidance, else 0)")
    if eta:
        p.add_argument("--eta", type=float, default=None, help="DDIM stochasticity in [0, 1] (0 = deterministic)")


def add_guidance_interval_argument(p) -> None:
    p.add_argument("--guidance-interval", "--guidance_interval", type=float, nargs=2, default=None,
                   metavar=("LO", "HI"), help="guide only for noise levels σ in (LO, HI] (Kynkäänniemi et al. 2024); "
                                              "HI may be inf (default: the checkpoint's, else every level)")


def add_spacing_argument(p, default: str = CHECKPOINT_DEFAULTS["spacing"]) -> None:
    p.add_argument("--spacing", choices=list(GRIDS), default=None,
                   help=f"the grid of noise levels from T to 0 (default: {default})")


def chosen_sampler(args, default: Optional[str] = None) -> Optional[str]:
    """--sampler, else ddim for --ddim, else `default`; --ddim with another --sampler is a UserError."""
    if args.ddim and args.sampler not in (None, "ddim"):
        raise UserError(f"--ddim and --sampler {args.sampler} disagree; pass one of them")
    return args.sampler or ("ddim" if args.ddim else default)


def sampler_spec(args, diffusion, **overrides):
    """The SamplerSpec of the checkpoint's config with the command's flags (those it has) as overrides, checked
    against the table's T; `overrides` (guidance, ...) come from the command itself."""
    from model.sampling import SamplerSpec

    steps = getattr(args, "steps", None)
    if steps is not None and not 0 < steps <= diffusion.T:
        raise UserError(f"--steps must be in [1, T={diffusion.T}], got {steps}")
    eta, clip = getattr(args, "eta", None), getattr(args, "clip_limit", None)
    if eta is not None and not 0 <= eta <= 1:
        raise UserError(f"--eta must be in [0, 1] (0 = deterministic, 1 = DDPM-like), got {eta}")
    s_noise = getattr(args, "s_noise", None)
    if s_noise is not None and not noise_scale_ok(s_noise):
        raise UserError(f"--s-noise must be {NOISE_SCALE_RULE}, got {s_noise}")
    autoguidance = getattr(args, "autoguidance", None)
    if autoguidance is not None and not autoguidance_ok(autoguidance):
        raise UserError(f"--autoguidance must be {AUTOGUIDANCE_RULE}, got {autoguidance}")
    if autoguidance and not getattr(diffusion, "guide_fraction", 0.0):  # no guide (the pipeline's config says so)
        from model.pipeline import no_guide

        raise no_guide(autoguidance)
    if clip is not None and clip <= 0:
        raise UserError(f"--clip_limit must be > 0, got {clip}; leave it out for the checkpoint's")
    flags = dict(sampler=chosen_sampler(args), steps=steps, spacing=getattr(args, "spacing", None), eta=eta,
                 s_noise=s_noise, autoguidance=autoguidance, clip_limit=clip,
                 guidance_interval=getattr(args, "guidance_interval", None))
    return SamplerSpec.from_config(diffusion, **{**flags, **overrides})


def step_number(net_time: float):
    """A level's time on the table as the users know it: the int step k, or a float between two steps."""
    return int(net_time) if float(net_time).is_integer() else round(net_time, 3)


def describe_sampler(sampler: str, steps: int, eta: float = 0.0, spacing: str = "uniform") -> str:
    """e.g. "DDIM 25 steps (eta 0)", "DPM-Solver++(2M) 10 steps, noise-dense", "DDPM 1000 steps"."""
    from model.sampling import SamplerSpec

    return SamplerSpec(sampler, steps, spacing, eta).describe()


def add_pixel_arguments(p, several: bool = False) -> None:
    """The pixel metrics' protocol: the compared side (or sides, when `several`), principal components, k, draws
    and the real pool."""
    if several:
        p.add_argument("--pixel-size", "--pixel_size", type=int, nargs="+", default=None,
                       help="sides the pixel metrics compare at, one error budget each (default: the data's native "
                            "size, digits 8; else <= 32)")
    else:
        p.add_argument("--pixel-size", "--pixel_size", type=int, default=None,
                       help="side the pixel metrics compare at (default: the data's native size, digits 8; else <= 32)")
    p.add_argument("--pca-components", "--pca_components", type=int, default=16,
                   help="principal components of the real reference the pixel features keep (16)")
    p.add_argument("--pr-k", "--pr_k", type=int, default=3, help="k of improved precision/recall (3, as the paper)")
    p.add_argument("--draws", type=int, default=10, help="random floor/reference splits averaged (10)")
    p.add_argument("--real-pool", "--real_pool", type=int, default=10_000,
                   help="real images drawn from the data set (training and validation) for the pixel metrics")


def pixel_protocols(args, dm) -> list:
    """One PixelProtocol per --pixel-size of the parsed arguments (`add_pixel_arguments(several=True)`)."""
    sizes = args.pixel_size or [None]
    return [pixel_protocol(args, dm, size) for size in dict.fromkeys(sizes)]


def pixel_protocol(args, dm, size: Optional[int] = None):
    """The PixelProtocol of the parsed arguments for data module `dm` (at `size`, default --pixel-size);
    out-of-range values are a UserError."""
    from model.evaluation import pixel_size
    from model.metrics.budget import PixelProtocol

    size = size or (args.pixel_size if isinstance(args.pixel_size, int) else None) or pixel_size(dm)
    for flag, value, low in (("--pixel-size", size, 1), ("--pca-components", args.pca_components, 1),
                             ("--pr-k", args.pr_k, 1), ("--draws", args.draws, 1), ("--real-pool", args.real_pool, 4)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if size > dm.image_size:
        raise UserError(f"--pixel-size {size} is larger than the images ({dm.image_size} px); pass at most "
                        f"{dm.image_size}")
    return PixelProtocol(size=size, components=args.pca_components, k=args.pr_k, draws=args.draws, seed=args.seed)
