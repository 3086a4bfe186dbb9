"""Sample a Stable Diffusion folder (diffusers' layout) from prompts with our samplers: PNGs, a grid, samples.npz.

    python -m model.scripts.text2img --model stable-diffusion-v1-5 --prompt "a lighthouse at dusk" --seed 0
    python -m model.scripts.text2img --model DIR --prompt "a red heart" --prompt "a cat" --negative-prompt "blurry" \
        --sampler dpmpp_2m --steps 25 --cfg-scale 6.5 --height 512 --width 512 --output out/
    python -m model.scripts.text2img --model DIR --prompt "a cat" --cfg-sweep 0 2 4 6.5 --seed 0

The folder's UNet, VAE, CLIP text encoder and tokenizer are wrapped as our `Denoiser` (`model/stable_diffusion.py`);
nothing is downloaded. The initial latents x_T come from a CPU generator seeded by --seed, so one seed gives the same
images on every device. --cfg-scale is the package's guidance w, (1 + w) cond - w uncond: diffusers' guidance_scale
is w + 1 (SD's usual 7.5 is w = 6.5). --cfg-sweep draws the same noise at every scale and writes one grid with a
column per scale and a row per image. Defaults: DPM-Solver++(2M), 25 steps, the uniform grid (diffusers' 'trailing'
spacing; Stable Diffusion's own configs default to 'leading', see docs/text-to-image.md).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from model.errors import ArgParser, UserError, cli_entry
from model.scripts.common import add_sampler_arguments, output_folder, resolve_device, sampler_spec
from model.writes import save_npz

DEFAULTS = dict(sampler="dpmpp_2m", sample_steps=25, sample_spacing="uniform", clip_limit=None, guidance_rescale=0.0)
DEFAULT_HELP = {"sampler": "dpmpp_2m", "steps": "25; all T for ddpm", "spacing": "uniform, diffusers' 'trailing' spacing"}


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.text2img", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True,
                   help="a Stable Diffusion folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                        "scheduler/ (v1.x or 2.x, eps or v-prediction)")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeat for several); one row each")
    p.add_argument("--negative-prompt", "--negative_prompt", default=None,
                   help="the unconditional branch of guidance (default: the empty prompt)")
    add_sampler_arguments(p, defaults=DEFAULT_HELP)  # a folder has these defaults, not a checkpoint's
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--cfg-scale", "--cfg_scale", type=float, default=6.5,
                       help="classifier-free guidance w of this package: (1+w)·cond − w·uncond; diffusers' "
                            "guidance_scale = w + 1 (default 6.5, i.e. guidance_scale 7.5)")
    scale.add_argument("--cfg-sweep", "--cfg_sweep", type=float, nargs="+", default=None, metavar="W",
                       help="several w (same seed, same noise): one grid with a column per w and a row per image")
    p.add_argument("--guidance-rescale", "--guidance_rescale", type=float, default=None, metavar="PHI",
                   help="CFG rescale φ in [0, 1] (Lin et al. 2024); 0 by default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=512, help="image height in pixels (a multiple of the VAE's 8)")
    p.add_argument("--width", type=int, default=512, help="image width in pixels (a multiple of the VAE's 8)")
    p.add_argument("--per-prompt", "--per_prompt", type=int, default=1, help="images of every prompt")
    p.add_argument("--batch-size", "--batch_size", type=int, default=4,
                   help="images denoised at once (the noise is drawn for all of them first, so it does not change "
                        "the deterministic samplers' images)")
    p.add_argument("--output", default=None, help="output folder (default: <model>-text2img beside the folder)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--debug", action="store_true")
    return p


def check_args(args) -> list[float]:
    """The guidance scales of the run; refuses what cannot run before anything is loaded."""
    if not args.prompt:
        raise UserError("give at least one --prompt")
    for flag, value in (("--per-prompt", args.per_prompt), ("--batch-size", args.batch_size)):
        if value <= 0:
            raise UserError(f"{flag} must be > 0, got {value}")
    scales = args.cfg_sweep or [args.cfg_scale]
    if not all(math.isfinite(w) for w in scales):
        raise UserError(f"guidance scales must be finite numbers, got {scales}")
    return scales


def draw(sd, prompts: list[str], spec, args) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1]: x_T for all N from one seeded CPU generator, then batches of --batch-size
    (the stochastic samplers draw their noise from the same generator after x_T)."""
    generator = torch.Generator().manual_seed(args.seed)
    x_T = sd.initial_noise(len(prompts), args.height, args.width, generator)
    return torch.cat([sd.generate(prompts[i: i + args.batch_size], spec, x_T[i: i + args.batch_size],
                                  args.negative_prompt, generator).cpu()
                      for i in range(0, len(prompts), args.batch_size)])


def arrange(prompts: list[str], scales: list[float], columns: list[torch.Tensor], per_prompt: int):
    """(cells in grid order, the prompt and w of each cell, file names, row labels, cells per row). One scale: a row
    per prompt. A sweep: a row per image, a column per scale, the scales in the row's label."""
    if len(scales) == 1:
        w = scales[0]
        return (columns[0], prompts, [w] * len(prompts), [f"sample_{i:04d}.png" for i in range(len(prompts))],
                prompts[::per_prompt], per_prompt)
    cells = torch.stack([col[i] for i in range(len(prompts)) for col in columns])
    cell_prompts = [p for p in prompts for _ in scales]
    cell_w = [w for _ in prompts for w in scales]
    names = [f"sample_{i:04d}_w{w:g}.png" for i in range(len(prompts)) for w in scales]
    columns_label = "w = " + ", ".join(f"{w:g}" for w in scales)
    return cells, cell_prompts, cell_w, names, [f"{p}   ({columns_label})" for p in prompts], len(scales)


def write(out: Path, cells: torch.Tensor, cell_prompts: list[str], cell_w: list[float], names: list[str],
          labels: list[str], nrow: int, seed: int) -> None:
    from model.images import labelled_rows, save_png, to_pil, to_uint8

    images = to_uint8(cells)
    for img, name in zip(images, names):
        save_png(to_pil(img), out / name)
    save_png(labelled_rows(cells, labels, nrow), out / "grid.png")
    save_npz(out / "samples.npz", images=images, prompts=np.array(cell_prompts),
             guidance=np.array(cell_w, dtype=np.float64), seed=np.array(seed))


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    scales = check_args(args)
    from model.stable_diffusion import StableDiffusion, check_folder, check_image_size, read_config, spacing_note

    folder = check_folder(args.model)
    check_image_size(read_config(folder, "vae"), args.height, args.width)  # before minutes of loading
    sd = StableDiffusion.from_folder(folder, resolve_device(args.device))
    defaults = SimpleNamespace(T=sd.schedule.T, **DEFAULTS)
    spec = sampler_spec(args, defaults, guidance=scales[0], guidance_rescale=args.guidance_rescale)
    out = output_folder(args.output, args.model, "text2img")
    note = spacing_note(sd.scheduler_config)
    if note:
        print(note)
    prompts = [p for p in args.prompt for _ in range(args.per_prompt)]
    columns = [draw(sd, prompts, spec.replace(guidance=w), args) for w in scales]
    write(out, *arrange(prompts, scales, columns, args.per_prompt), seed=args.seed)
    shown, n = ", ".join(f"{w:g}" for w in scales), len(prompts) * len(scales)
    print(f"wrote {n} image{'s' if n > 1 else ''} ({spec.describe(sd.schedule.T)}, w = {shown}, i.e. diffusers' "
          f"guidance_scale = w + 1; seed {args.seed}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
