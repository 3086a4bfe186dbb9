"""Reimagine an image (sheet 001, bonus): noise its latent to t_s = round(s·T), then denoise it with DDPM and DDIM.

    python -m model.scripts.reimagine --load runs/digits-1/denoiser/checkpoints/last.ckpt --index 0
    python -m model.scripts.reimagine --load <ckpt> --image face.png --strengths 0.25 0.5 0.75 1 --ddim-steps 10 50 100
    python -m model.scripts.reimagine --load <ckpt> --index 3 --class 5 --cfg-scale 2 --seed 1 --output reimagined/

The image is a file (`--image`, converted to the checkpoint's data.channels and made square and resized to
data.image_size by the folder data module's `ImageTransform`) or item I of the checkpoint data set's validation
split (`--index`, default 0). It is encoded to the normalised latent z0 = normalise(encode_mean(x)) (pixel-space
models: z0 = x). One seeded eps ~ N(0, I) is drawn, and for each strength s in [0, 1]:

- t_s = round(s·T) (rounded half up) and z_t = q_sample(z0, t_s, eps) = sqrt(ab_t) z0 + sqrt(1 − ab_t) eps;
  the same eps at every strength and the same z_t for every sampler, so the comparison is fair.
- DDPM (Ho et al. 2020, Alg. 2) from x_T = z_t at t_start = t_s, every one of the t_s steps, ancestral noise from
  a generator seeded by --seed (the same noise stream at every strength).
- DDIM (Song et al. 2021, eta 0) from the same z_t for each n in --ddim-steps. n counts steps over the full T, so
  strength s uses max(1, round(n·s)) of them (rounded half up), capped at t_s: the convention of diffusers' img2img,
  where strength s runs that fraction of the n inference steps (diffusers truncates n·s instead of rounding).
- Strength 0 is t_s = 0: no noise and no sampling; every reconstruction is z0 itself, so the row shows the input
  (exactly for a pixel model, the VAE reconstruction for a latent model).

The condition is --class K on a class-conditional model, else the validation item's own label, else (a file) the
null class, i.e. unconditional; a text model also takes --prompt (default: the empty prompt) and --negative-prompt;
--cfg-scale w applies classifier-free guidance. The predicted x0 is clamped to the
checkpoint's denoiser.diffusion.clip_limit, as `sample` does by default. Written to the output folder (default:
`reimagine/` beside the checkpoint's `checkpoints/` folder):

- `reimagine.png`: one row per strength, columns original | noised (decoded z_t) | DDPM | DDIM-n for each n.
- `reimagine.json`: the image, the condition and, per strength, t_s, the steps each sampler used and the MSE in pixel
  space ([−1, 1], images clamped as in the PNGs) of each reconstruction (and of the noised image) against the
  original; `intermediates` lists the times of the frames in intermediates.png.
- `intermediates.png`: at --intermediates-strength, the decoded states x_t (not the x0 predictions) at about
  STRIP_FRAMES evenly spaced times t = t_s, t_s − n, …, 0: top row DDPM, bottom row the first DDIM setting (padded
  with white frames when it has fewer states). The first frame is the noised image, the last the reconstruction.

A short table (strength, t, MSE per sampler) goes to stdout. The same --seed gives identical files. The 2-D toy is
refused: it has no images to reimagine.

Inpainting, `--mask PNG` (white = regenerate, the image's size): the masked region is generated from pure noise at
T while the rest is put back at every step at the step's noise level (`model.inpainting`), by DDPM (all T steps)
and by DDIM with each n of --ddim-steps; `--resample-steps R` repeats every step R times (RePaint), `--blend` pastes
the original pixels back outside the mask at the end (without it, the known region is the VAE's reconstruction).
Writes `inpaint.png` (original | mask, grey = regenerate | masked input | one column per sampler) and `inpaint.json` (the MSE against
the original inside and outside the mask, and outside against the VAE round trip).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from model import base
from model.sampling import SAMPLERS, SamplerSpec, make_grid
from model.errors import ArgParser, UserError, cli_entry
from model.writes import write_text
from model.scripts.common import (evenly_spaced, image_file, output_folder, resolve_device, step_number,
                                  validation_item)
from model.scripts.sample import class_labels

STRIP_FRAMES = 10  # frames per row of intermediates.png (t = t_s, ..., 0)
BLANK = 1.0  # padding frame of intermediates.png: white in [-1, 1], like the grid's background
DDPM = "DDPM"


@dataclass(frozen=True)
class Sampler:
    """A column of the comparison: DDPM (ddim_steps None, all t_s steps) or the stepped sampler `kind` (DDIM unless
    --sampler says otherwise) with n steps over the full T."""

    name: str
    ddim_steps: Optional[int] = None
    kind: str = "ddim"

    @property
    def ddim(self) -> bool:
        """Stepped (n steps over T), not DDPM's every step."""
        return self.ddim_steps is not None

    def spec(self, pipe, steps: int, cfg_scale: float) -> SamplerSpec:
        """Its sampling spec: uniform spacing on the table (the steps t_s, t_s - n, ..., 0), eta 0, the checkpoint's
        clip limit."""
        return SamplerSpec.from_config(pipe.diff, sampler=self.kind if self.ddim else "ddpm", steps=steps,
                                       spacing="uniform", eta=0.0, guidance=cfg_scale)


@dataclass
class Reimagining:
    """One strength: its start time, the noised latent and, per sampler name, the steps, result and kept frames."""

    strength: float
    t_start: int
    z_t: Tensor  # (1, C, h, w) normalised latent at t_start
    steps: dict[str, int]
    z0_hat: dict[str, Tensor]  # (1, C, h, w) each
    frames: dict[str, list[tuple[int, Tensor]]]  # (t, x_t) at the kept times, t descending


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.reimagine", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="denoiser checkpoint (.ckpt) or export folder (model.scripts.export)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--image", default=None, help="an image file to reimagine")
    source.add_argument("--index", type=int, default=None, help="item I of the validation split (default 0)")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                   help="noise strengths s in [0, 1]; t_s = round(s·T)")
    p.add_argument("--sampler", choices=[name for name in SAMPLERS if name != "ddpm"], default="ddim",
                   help="the stepped sampler beside DDPM (default ddim; every registered one works)")
    p.add_argument("--ddim-steps", "--ddim_steps", type=int, nargs="+", default=[10, 50, 100],
                   help="DDIM steps over the full T; strength s uses max(1, round(n·s)), at most t_s")
    p.add_argument("--intermediates-strength", "--intermediates_strength", type=float, default=0.5,
                   help="the strength whose reverse process intermediates.png shows")
    p.add_argument("--class", dest="class_", type=int, default=None,
                   help="condition on class K (default: the validation item's label, else unconditional)")
    p.add_argument("--prompt", default=None, help="a text model's prompt (default: the empty prompt)")
    p.add_argument("--negative-prompt", "--negative_prompt", default=None,
                   help="a text model's unconditional branch of guidance (default: the empty prompt)")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, default=0.0,
                   help="classifier-free guidance w: (1+w)·cond − w·uncond")
    p.add_argument("--seed", type=int, default=0, help="seeds eps and the DDPM noise")
    p.add_argument("--mask", default=None,
                   help="inpaint instead: a PNG of the image's size, white where the image is regenerated")
    p.add_argument("--resample-steps", "--resample_steps", type=int, default=1,
                   help="with --mask: run every step this many times (RePaint resampling; 1 = off)")
    p.add_argument("--blend", action="store_true",
                   help="with --mask: keep the original pixels outside the mask (else the VAE's reconstruction)")
    p.add_argument("--output", default=None, help="output folder (default: reimagine/ beside the run's checkpoints)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--debug", action="store_true")
    return p


def check_args(args) -> None:
    """The numbers on the command line, before anything is loaded."""
    for s in [*args.strengths, args.intermediates_strength]:
        if not 0.0 <= s <= 1.0:
            raise UserError(f"strength {s} is outside [0, 1]; pass --strengths (and --intermediates-strength) "
                            f"between 0 (no noise) and 1 (t = T)")
    bad = [n for n in args.ddim_steps if n <= 0]
    if bad:
        raise UserError(f"--ddim-steps must be > 0, got {bad[0]}; pass step counts such as 10 50 100")
    if len(set(args.ddim_steps)) < len(args.ddim_steps):
        raise UserError(f"--ddim-steps lists a number twice ({args.ddim_steps}); give each step count once")
    if args.index is not None and args.index < 0:
        raise UserError(f"--index must be >= 0, got {args.index}; pass the position of a validation item")
    if args.resample_steps < 1:
        raise UserError(f"--resample-steps must be >= 1 (1 = no resampling), got {args.resample_steps}")
    if args.mask is None and (args.resample_steps != 1 or args.blend):
        raise UserError("--resample-steps and --blend belong to inpainting; pass --mask PNG too")
    if args.resample_steps > 1 and SAMPLERS[args.sampler].multistep:
        raise UserError(f"--sampler {args.sampler} keeps a history of its steps, which --resample-steps would repeat; "
                        f"pass one of {', '.join(n for n, s in SAMPLERS.items() if not s.multistep and n != 'ddpm')}")


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def start_time(strength: float, T: int) -> int:
    """t_s = round(s·T), rounded half up: 0 at strength 0 (the data), T at strength 1 (pure noise)."""
    return round_half_up(strength * T)


def sampler_steps(sampler: Sampler, strength: float, t_start: int) -> int:
    """DDPM: all t_s steps. DDIM: max(1, round(n·s)) of n steps over the full T, capped at t_s (0 when t_s = 0)."""
    if not sampler.ddim:
        return t_start
    return min(t_start, max(1, round_half_up(sampler.ddim_steps * strength)))


def sampler_times(schedule: base.Schedule, t_start: int, steps: int) -> list[int]:
    """The descending steps a sampler visits, [t_s, ..., 0] on the uniform grid; [0] when t_s = 0 (nothing to
    denoise)."""
    if t_start == 0:
        return [0]
    return [step_number(level.net_time) for level in make_grid(schedule, "uniform", steps, t_start)]


# ----- inpainting ---------------------------------------------------------------------------------------------
def read_mask(path: str, source_size: tuple[int, int], data) -> Tensor:
    """The mask (1, 1, S, S) in {0, 1} (1 = regenerate): white (> 127) pixels of a grey or colour PNG of the input
    image's size, made square and resized like the image (nearest, so it stays binary)."""
    from PIL import Image

    from data.base import describe
    from data.transforms import to_square

    file = Path(path)
    if not file.is_file():
        raise UserError(f"--mask {file} does not exist; pass a PNG of the image's size, white where to regenerate")
    try:
        with Image.open(file) as img:
            img.load()
            grey = img.convert("L")
    except OSError as err:
        raise UserError(f"--mask {file} is not a readable image ({describe(err)}); pass a PNG") from err
    if grey.size != source_size:
        raise UserError(f"--mask {file} is {grey.size[0]}x{grey.size[1]} but the image is {source_size[0]}x"
                        f"{source_size[1]}; draw the mask at the image's size")
    square = to_square(grey, data.crop).resize((data.image_size, data.image_size), Image.NEAREST)
    mask = (torch.from_numpy(np.asarray(square).copy()) > 127).float()[None, None]  # (1, 1, S, S)
    if not bool(mask.any()):
        raise UserError(f"--mask {file} is all black: nothing to regenerate; paint the region to regenerate white")
    return mask


def source_size(args, data) -> tuple[int, int]:
    """(width, height) of the input image as given: the file's, or the data's image size for a validation item."""
    if args.image is None:
        return data.image_size, data.image_size
    from PIL import Image

    with Image.open(args.image) as img:
        return img.size


def inpaint_all(pipe, x: Tensor, mask: Tensor, samplers: list[Sampler], label: Optional[int], args) -> dict:
    """Every sampler's inpainting of x (images in [-1, 1], blended when --blend), from one seed each."""
    from model.inpainting import blend, inpaint, latent_mask

    z0 = encode(pipe, x)
    mask_z = latent_mask(mask, tuple(z0.shape[-2:])).to(z0)
    labels = None if label is None else torch.tensor([label])
    prompts = prompt_kw(args)
    c = pipe.condition(labels, prompts["prompts"], 1)
    uncond = pipe.conditioner.unconditional(1, prompts["negative_prompts"], pipe.device)
    out = {}
    for sampler in samplers:
        spec = sampler.spec(pipe, sampler.ddim_steps, args.cfg_scale)
        z = inpaint(pipe.denoiser.bind_spec(c, spec, z0.device, uncond), z0, mask_z, pipe.schedule, spec,
                    resample=args.resample_steps, generator=torch.Generator().manual_seed(args.seed))
        image = to_image(pipe, z)
        out[sampler.name] = blend(image, x, mask) if args.blend else image
    return out


def inpaint_record(x: Tensor, trip: Tensor, mask: Tensor, results: dict) -> dict:
    """Per sampler: the MSE against the original inside and outside the mask, and outside against the round trip."""
    def mse(a: Tensor, b: Tensor, where: Tensor) -> float:
        return float(((a - b).pow(2) * where).sum() / where.sum().clamp_min(1) / a.shape[1])

    outside = 1 - mask
    return {name: {"mse_inside": mse(img, x, mask), "mse_outside": mse(img, x, outside),
                   "mse_outside_vs_round_trip": mse(img, trip, outside)} for name, img in results.items()}


def run_inpainting(args, pipe, x: Tensor, label: Optional[int], why: str, source: str, out: Path) -> None:
    from model.images import save_grid

    mask = read_mask(args.mask, source_size(args, pipe.cfg.data), pipe.cfg.data).to(x)
    samplers = make_samplers(args.ddim_steps, args.sampler)
    results = inpaint_all(pipe, x, mask, samplers, label, args)
    trip = to_image(pipe, encode(pipe, x))
    masked = x * (1 - mask)  # the region to regenerate shown mid-grey (0), as in the mask column
    columns = [x, (mask - 1).expand_as(x), masked, *results.values()]  # the mask in as many channels as x
    save_grid(torch.cat(columns), out / "inpaint.png", nrow=len(columns))
    report = {"checkpoint": str(args.load), "image": source, "mask": str(args.mask), "condition": why,
              "class": label, "cfg_scale": args.cfg_scale, "seed": args.seed, "resample_steps": args.resample_steps,
              "blend": args.blend, "masked_fraction": float(mask.mean()),
              "columns": ["original", "mask", "masked input", *results], "samplers": inpaint_record(x, trip, mask,
                                                                                                   results)}
    write_text(out / "inpaint.json", json.dumps(report, indent=2) + "\n")
    print(f"inpainted {source} ({report['masked_fraction']:.0%} masked), condition: {why}, seed {args.seed}")
    for name, r in report["samplers"].items():
        print(f"{name:>10}: MSE inside {r['mse_inside']:.4f}, outside {r['mse_outside']:.5f} "
              f"(against the VAE round trip {r['mse_outside_vs_round_trip']:.5f})")
    print(f"wrote inpaint.png and inpaint.json to {out}")


# ----- shared ------------------------------------------------------------------------------------------------------
def prompt_kw(args) -> dict:
    """The prompt and negative prompt of one image, as `pipe.sample` takes them (None: the empty prompt)."""
    return {"prompts": None if args.prompt is None else [args.prompt],
            "negative_prompts": None if args.negative_prompt is None else [args.negative_prompt]}


def refuse_toy(pipe) -> None:
    if pipe.points:
        raise UserError(f"this model (denoiser.network {pipe.cfg.denoiser.network}) draws points, no images to "
                        f"reimagine; pass an image denoiser checkpoint")


def input_image(args, data) -> tuple[Tensor, Optional[int], str]:
    """The image to reimagine (1, C, S, S), its label (None for a file) and a description of where it came from."""
    if args.image is not None:
        return image_file(args.image, data), None, f"file {args.image}"
    index = 0 if args.index is None else args.index
    x, y = validation_item(data, index)
    return x, y, f"validation item {index}"


def condition(class_: Optional[int], item_label: Optional[int], num_classes: int) -> tuple[Optional[int], str]:
    """The class to condition on (None: the null class, or no class for an unconditional model) and its origin.

    --class K is checked by `sample.class_labels` (a class-conditional model, K in range).
    """
    labels, _ = class_labels(argparse.Namespace(class_=class_, per_class=None, num_samples=1), num_classes)
    if labels is not None:
        return int(labels[0]), f"class {int(labels[0])} (--class)"
    if num_classes == 0:
        return None, "none (unconditional model)"
    if item_label is not None and item_label >= 0:
        return item_label, f"class {item_label} (the validation item's label)"
    return None, "the null class (unconditional; pass --class K to condition on class K)"


def encode(pipe, x: Tensor) -> Tensor:
    """Images (B, C, H, W) → normalised latents z0 (pixel-space models: z0 = x)."""
    return pipe.encode(x)


def to_image(pipe, z: Tensor) -> Tensor:
    """Normalised latents → images clamped to [-1, 1], as the PNGs show them (pixel samples may overshoot)."""
    return pipe.decode(z).clamp(-1, 1)


def draw_noise(z0: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """eps ~ N(0, I) shaped like z0, from a CPU generator seeded with `seed`, and the generator's state after it.

    That state seeds every DDPM run, so DDPM's noise never repeats eps and does not depend on the other strengths.
    """
    gen = torch.Generator().manual_seed(seed)
    eps = base.sample_noise(tuple(z0.shape), gen, z0.device, z0.dtype)
    return eps, gen.get_state()


def generator_at(state: Tensor) -> torch.Generator:
    """A CPU generator restarted at `state` (from `draw_noise`)."""
    gen = torch.Generator()
    gen.set_state(state)
    return gen


def denoise(pipe, z_t: Tensor, t_start: int, sampler: Sampler, steps: int, labels: Optional[Tensor],
            cfg_scale: float, ddpm_state: Tensor, keep: set[int],
            prompts: Optional[dict] = None) -> tuple[Tensor, list[tuple[int, Tensor]]]:
    """Run `sampler` from x_T = z_t at t_start; the result and the states (t, x_t) at the times in `keep`."""
    frames = [(t_start, z_t)] if t_start in keep else []
    if t_start == 0:
        return z_t, frames  # strength 0: z_t is z0, nothing to denoise

    def keep_state(i: int, level: base.Level, x_t: Tensor, x0_pred: Tensor) -> None:
        t = step_number(level.net_time)
        if t in keep:
            frames.append((t, x_t.detach().clone()))

    z0_hat = pipe.sample(1, labels, sampler.spec(pipe, steps, cfg_scale), generator=generator_at(ddpm_state),
                         x_T=z_t, t_start=t_start, callback=keep_state, **(prompts or {}))
    return z0_hat, frames


def reimagine_at(pipe, z0: Tensor, eps: Tensor, strength: float, samplers: list[Sampler],
                 labels: Optional[Tensor], cfg_scale: float, ddpm_state: Tensor,
                 frames: int = 0, prompts: Optional[dict] = None) -> Reimagining:
    """Noise z0 once to z_t = q_sample(z0, t_s, eps) and denoise that z_t with every sampler.

    `frames` > 0 keeps about that many evenly spaced states of each sampler's trajectory (t_s and 0 included).
    """
    T = pipe.schedule.T
    t_start = start_time(strength, T)
    z_t = base.q_sample(z0, t_start, eps, pipe.schedule)  # (1, C, h, w); z0 itself at t = 0
    result = Reimagining(strength, t_start, z_t, steps={}, z0_hat={}, frames={})
    for sampler in samplers:
        steps = sampler_steps(sampler, strength, t_start)
        keep = set(evenly_spaced(sampler_times(pipe.schedule, t_start, steps), frames)) if frames else set()
        z0_hat, kept = denoise(pipe, z_t, t_start, sampler, steps, labels, cfg_scale, ddpm_state, keep, prompts)
        result.steps[sampler.name] = steps
        result.z0_hat[sampler.name] = z0_hat
        result.frames[sampler.name] = kept
    return result


def make_samplers(ddim_steps: list[int], kind: str = "ddim") -> list[Sampler]:
    """DDPM, then DDIM-n for each n, in the order of the grid's columns."""
    return [Sampler(DDPM), *[Sampler(f"{SAMPLERS[kind].display}-{n}", n, kind) for n in ddim_steps]]


def pixel_mse(pipe, x: Tensor, z: Tensor) -> float:
    """Mean squared error between the original image x and the decoded latent z, both in [-1, 1]."""
    return float((to_image(pipe, z) - x).pow(2).mean())


def strength_record(pipe, x: Tensor, r: Reimagining) -> dict:
    """The JSON entry of one strength: t_s, steps per sampler, MSE per reconstruction (and of the noised image)."""
    return {"strength": r.strength, "t": r.t_start, "steps": dict(r.steps),
            "mse": {name: pixel_mse(pipe, x, z) for name, z in r.z0_hat.items()},
            "mse_noised": pixel_mse(pipe, x, r.z_t)}


def comparison_grid(pipe, x: Tensor, results: list[Reimagining], samplers: list[Sampler]) -> Tensor:
    """(S·(3 + D), C, H, W): per strength the original | noised | DDPM | DDIM-n ... (D DDIM settings)."""
    rows = [torch.cat([x, to_image(pipe, r.z_t), *[to_image(pipe, r.z0_hat[s.name]) for s in samplers]])
            for r in results]  # S × (3 + D, C, H, W)
    return torch.cat(rows)


def intermediates_grid(pipe, r: Reimagining, names: list[str]) -> tuple[Tensor, int]:
    """(len(names)·W, C, H, W): one row of decoded states per sampler, padded with blank frames to width W."""
    width = max(len(r.frames[name]) for name in names)
    rows = []
    for name in names:
        images = torch.cat([to_image(pipe, z) for _, z in r.frames[name]])  # (F, C, H, W)
        blank = torch.full((width - len(images), *images.shape[1:]), BLANK, device=images.device)
        rows += [images, blank]
    return torch.cat(rows), width


def table(records: list[dict], names: list[str]) -> str:
    """strength, t and the MSE of every sampler, one line per strength."""
    head = f"{'strength':>8} {'t':>5} " + " ".join(f"{name:>10}" for name in names)
    lines = [f"{rec['strength']:8.3f} {rec['t']:5d} " + " ".join(f"{rec['mse'][name]:10.5f}" for name in names)
             for rec in records]
    return "\n".join([head, *lines])


def reimagine_all(pipe, z0: Tensor, args, samplers: list[Sampler], label: Optional[int]) -> dict[float, Reimagining]:
    """Every strength of --strengths and --intermediates-strength once, from one eps; frames only for the latter."""
    labels = None if label is None else torch.tensor([label])  # (1,)
    eps, ddpm_state = draw_noise(z0, args.seed)
    results = {}
    for s in dict.fromkeys([*args.strengths, args.intermediates_strength]):  # each strength once, in order
        frames = STRIP_FRAMES if s == args.intermediates_strength else 0
        results[s] = reimagine_at(pipe, z0, eps, s, samplers, labels, args.cfg_scale, ddpm_state, frames,
                                  prompt_kw(args))
    return results


def write_intermediates(out: Path, pipe, r: Reimagining, names: list[str]) -> dict:
    """intermediates.png (one row per sampler in `names`); returns the times of its frames for the JSON."""
    from model.images import save_grid

    strip, width = intermediates_grid(pipe, r, names)
    save_grid(strip, out / "intermediates.png", nrow=width)
    return {"strength": r.strength, "t": r.t_start, "shows": "decoded states x_t",
            "rows": {name: [t for t, _ in r.frames[name]] for name in names}}


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    check_args(args)
    from model.images import save_grid
    from model.pipeline import LatentDiffusionPipeline

    device = resolve_device(args.device)
    pipe = LatentDiffusionPipeline.from_pretrained(args.load, device)
    refuse_toy(pipe)
    x, item_label, source = input_image(args, pipe.cfg.data)
    label, why = condition(args.class_, item_label, pipe.num_classes)
    pipe.check_guidance(args.cfg_scale)  # refuses --cfg-scale on an unconditional model before anything is written
    pipe.check_prompts(prompt_kw(args)["prompts"], prompt_kw(args)["negative_prompts"], 1)
    if args.prompt is not None:
        why = f"{why}, prompt {args.prompt!r}"
    if args.mask is not None:
        read_mask(args.mask, source_size(args, pipe.cfg.data), pipe.cfg.data)  # refuses a bad mask before writing
        run_inpainting(args, pipe, x.to(device), label, why, source, output_folder(args.output, args.load, "inpaint"))
        return 0
    out = output_folder(args.output, args.load, "reimagine")

    x = x.to(device)  # (1, C, S, S)
    samplers = make_samplers(args.ddim_steps, args.sampler)
    results = reimagine_all(pipe, encode(pipe, x), args, samplers, label)
    rows = [results[s] for s in args.strengths]
    save_grid(comparison_grid(pipe, x, rows, samplers), out / "reimagine.png", nrow=2 + len(samplers))
    intermediates = write_intermediates(out, pipe, results[args.intermediates_strength], [DDPM, samplers[1].name])
    records = [strength_record(pipe, x, r) for r in rows]
    report = {"checkpoint": str(args.load), "image": source, "condition": why, "class": label, "prompt": args.prompt,
              "cfg_scale": args.cfg_scale, "seed": args.seed, "T": pipe.schedule.T,
              "columns": ["original", "noised", *[s.name for s in samplers]], "strengths": records,
              "intermediates": intermediates}
    write_text(out / "reimagine.json", json.dumps(report, indent=2) + "\n")
    print(f"reimagined {source}, condition: {why}, seed {args.seed}; MSE in pixel space against the original:")
    print(table(records, [s.name for s in samplers]))
    print(f"wrote reimagine.png, reimagine.json and intermediates.png to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
