"""Sample a trained denoiser: grid, one PNG per sample, samples.npz, and the reverse process as a strip and a GIF.

    python -m model.scripts.sample --load runs/digits-1/denoiser/checkpoints/last.ckpt --ddim --steps 25 --per-class 4
    python -m model.scripts.sample -cfg config/ffhq-ddim.json --load <ckpt> --num_samples 25 --seed 42 --clip_limit 1.5 --ddim
    python -m model.scripts.sample --load <ckpt> --sampler dpmpp_2m --steps 10 --per-class 4
    python -m model.scripts.sample --load <ckpt> --prompt "red heart" --prompt "flag: Japan" --cfg-scale 5 --seed 0
    python -m model.scripts.sample --load <ckpt> --prompts-file prompts.txt --per-prompt 8 --negative-prompt "face"

The checkpoint carries its config, and its `denoiser.diffusion` section gives the sampling defaults (sampler,
sample_steps, sample_spacing, clip_limit, guidance_interval); `-cfg` takes them from another config instead, and
the flags override either. DDPM runs all T steps unless `--steps` is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from model.errors import ArgParser, UserError, cli_entry
from model.writes import save_npz, write_text
from model.scripts.common import (add_guidance_interval_argument, add_sampler_arguments, evenly_spaced, output_folder,
                                  resolve_device, sampler_spec, step_number)

STRIP_FRAMES = 10  # decoded predictions shown in the reverse-process strip (t = T, T-n, ..., 0)
GRID_MAX = 1024  # samples shown in grid.png; every sample still gets its own PNG
MAX_SAMPLE_BYTES = 2**31  # samples.npz of one call: 2 GiB of uint8 images
GIF_FRAMES = 40  # at most this many frames in the GIF, to keep decoding cheap


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.sample", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="denoiser checkpoint (.ckpt) or export folder (model.scripts.export)")
    p.add_argument("-cfg", "--config", default=None, help="JSON config whose denoiser.diffusion gives defaults")
    add_sampler_arguments(p)
    p.add_argument("--num_samples", "--num-samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip_limit", "--clip-limit", type=float, default=None,
                   help="clamp the predicted x0 (normalised latent) to [-L, L] at each step")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, default=0.0,
                   help="classifier-free guidance w: (1+w)·cond − w·uncond")
    add_guidance_interval_argument(p)
    p.add_argument("--guidance-rescale", "--guidance_rescale", type=float, default=None, metavar="PHI",
                   help="CFG rescale φ in [0, 1] (Lin et al. 2024); default: the checkpoint's")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--class", dest="class_", type=int, default=None, help="condition every sample on class K")
    group.add_argument("--per-class", "--per_class", type=int, default=None, help="N samples of every class")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--prompt", action="append", default=None,
                      help="a prompt for a text model (repeat for several); one row of the grid each")
    text.add_argument("--prompts-file", "--prompts_file", default=None,
                      help="a UTF-8 file with one prompt per line: one grid row per prompt, labelled with it")
    p.add_argument("--per-prompt", "--per_prompt", type=int, default=4, help="samples of every prompt")
    p.add_argument("--negative-prompt", "--negative_prompt", default=None,
                   help="guidance steers away from this prompt instead of the empty one (needs --cfg-scale)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=256,
                   help="samples drawn at once: memory stays bounded for any --num_samples (one seeded generator)")
    p.add_argument("--output", default=None, help="output folder (default: samples/ beside the run's checkpoints)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--debug", action="store_true")
    return p


def sampling_defaults(config_path: Optional[str]):
    """(sampler, steps, clip_limit) from a config file's denoiser.diffusion, or None."""
    if config_path is None:
        return None
    from model.cli_config import add_config_arguments, build_config, new_parser, parse

    parser = new_parser("config", "config")
    add_config_arguments(parser)
    diff = build_config(parser, parse(parser, ["-cfg", config_path])).denoiser.diffusion
    return diff


def class_labels(args, num_classes: int) -> tuple[Optional[torch.Tensor], int]:
    """The label of every sample (None = unconditional) and the number of samples."""
    if args.class_ is None and args.per_class is None:
        return None, args.num_samples
    if num_classes == 0:
        raise UserError("--class/--per-class need a class-conditional model, but this one is unconditional")
    if args.class_ is not None:
        if not 0 <= args.class_ < num_classes:
            raise UserError(f"--class {args.class_} is out of range: this model has classes 0..{num_classes - 1}")
        return torch.full((args.num_samples,), args.class_, dtype=torch.long), args.num_samples
    if args.per_class <= 0:
        raise UserError(f"--per-class must be > 0, got {args.per_class}")
    from model.evaluation import class_major_labels

    return class_major_labels(num_classes, args.per_class), num_classes * args.per_class


def read_prompts(args) -> Optional[list[str]]:
    """The prompts of --prompt or --prompts-file (blank lines skipped), None without."""
    if args.prompts_file is None:
        return args.prompt
    try:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read --prompts-file {args.prompts_file} ({err}); give a UTF-8 text file with one "
                        f"prompt per line") from None
    if not prompts:
        raise UserError(f"--prompts-file {args.prompts_file} holds no prompt; write one prompt per line")
    return prompts


def prompt_rows(args, prompts: Optional[list[str]]) -> tuple[Optional[list[str]], Optional[int]]:
    """Every sample's prompt (each prompt --per-prompt times, prompt-major) and the count; None, None without."""
    if prompts is None:
        return None, None
    if args.per_class is not None:
        raise UserError("--per-class and prompts both choose the grid's rows; use --class with prompts")
    if args.per_prompt <= 0:
        raise UserError(f"--per-prompt must be > 0, got {args.per_prompt}")
    return [p for p in prompts for _ in range(args.per_prompt)], len(prompts) * args.per_prompt


def check_args(args) -> None:
    if args.num_samples <= 0:
        raise UserError(f"--num_samples must be > 0, got {args.num_samples}")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {args.batch_size}")


def check_memory(n: int, shape: tuple[int, ...]) -> None:
    """samples.npz holds every image as uint8: refuse a count whose array would not fit, before sampling."""
    per_image = int(np.prod(shape))
    if n * per_image > MAX_SAMPLE_BYTES:
        raise UserError(f"{n} samples of {'x'.join(map(str, shape))} need {n * per_image / 2**30:.1f} GiB in "
                        f"samples.npz; draw at most {MAX_SAMPLE_BYTES // per_image} per call (several calls with "
                        f"different --seed)")


def write_images(out: Path, batches, labels: Optional[torch.Tensor], nrow: int,
                 prompts: Optional[list[str]] = None) -> torch.Tensor:
    """grid.png (the first GRID_MAX samples; with prompts, one row per prompt labelled with it),
    sample_<i>[_class<K>].png and samples.npz (images uint8 N×H×W×C, labels, −1 = unconditional, and the prompts),
    a batch at a time; returns the first sample's latent."""
    from model.images import labelled_rows, save_grid, save_png, to_pil, to_uint8

    arrays, shown, first = [], [], None
    for images, z in batches:
        start = sum(len(a) for a in arrays)
        arrays.append(to_uint8(images))
        shown.append(images[: max(0, GRID_MAX - start)])
        first = z[:1] if first is None else first
        lab = labels[start: start + len(images)].tolist() if labels is not None else [-1] * len(images)
        for i, (img, k) in enumerate(zip(arrays[-1], lab), start=start):
            save_png(to_pil(img), out / f"sample_{i:04d}{f'_class{k}' if k >= 0 else ''}.png")
    arr = np.concatenate(arrays)
    grid = torch.cat(shown)
    if prompts is not None:
        save_png(labelled_rows(grid, prompts[: len(grid)][::nrow], nrow), out / "grid.png")
    else:
        save_grid(grid, out / "grid.png", nrow=nrow)
    extra = {"prompts": np.array(prompts)} if prompts is not None else {}
    save_npz(out / "samples.npz", images=arr,
             labels=(labels.numpy() if labels is not None else np.full(len(arr), -1)).astype(np.int64), **extra)
    return first


def write_reverse_process(out: Path, pipe, frames: list[tuple[int, torch.Tensor]]) -> None:
    """The decoded prediction of x0 for the first sample at t = T, T−n, …, 0, as a strip and a GIF."""
    from model.images import grid_array, save_gif, save_grid

    strip = evenly_spaced(frames, STRIP_FRAMES)
    save_grid(torch.cat([pipe.decode(z) for _, z in strip]), out / "reverse_process.png", nrow=len(strip))
    write_text(out / "reverse_process_t.json", json.dumps([t for t, _ in strip]) + "\n")
    gif = evenly_spaced(frames, GIF_FRAMES)
    save_gif([grid_array(pipe.decode(z), nrow=1) for _, z in gif], out / "reverse_process.gif")


def write_points(out: Path, pipe, points: torch.Tensor) -> None:
    """The 2-D toy: samples.npz with the points, a scatter over the data, and the Chamfer distance."""
    from data import make_datamodule
    from data.toy2d import chamfer_distance
    from model.plots import scatter_points

    dm = make_datamodule(pipe.cfg.data)
    dm.setup("fit")
    data = dm.points()
    cd = float(chamfer_distance(points.cpu(), data[: len(points)]))
    save_npz(out / "samples.npz", points=points.cpu().numpy())
    scatter_points(points.cpu().numpy(), data.numpy(), out / "grid.png", title=f"Chamfer distance {cd:.4f}")
    print(f"Chamfer distance to the data: {cd:.4f}")


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    from model.pipeline import LatentDiffusionPipeline

    device = resolve_device(args.device)
    pipe = LatentDiffusionPipeline.from_pretrained(args.load, device)
    T = pipe.diff.T
    defaults = dataclasses.replace(sampling_defaults(args.config) or pipe.diff, T=T)
    check_args(args)
    prompts, n_prompted = prompt_rows(args, read_prompts(args))
    if n_prompted is not None:
        args.num_samples = n_prompted
    labels, n = class_labels(args, pipe.num_classes)
    negative = [args.negative_prompt] if args.negative_prompt is not None else None
    pipe.check_prompts(prompts, negative, n)
    spec = sampler_spec(args, defaults, guidance=args.cfg_scale, guidance_rescale=args.guidance_rescale)
    pipe.check_guidance(args.cfg_scale)  # refuses --cfg-scale on an unconditional model before anything is written
    check_memory(n, (pipe.cfg.data.channels, pipe.cfg.data.image_size, pipe.cfg.data.image_size))
    out = output_folder(args.output, args.load, "samples")

    frames: list[tuple[int, torch.Tensor]] = []  # (t at which x0 was predicted, x0 of the first sample)
    t_now = [T]

    def keep_first(i: int, level, x_next: torch.Tensor, x0: torch.Tensor) -> None:
        frames.append((t_now[0], x0[:1].detach()))
        t_now[0] = step_number(level.net_time)

    batches = pipe.batches(n, labels, spec, seed=args.seed, batch_size=args.batch_size, callback=keep_first,
                           prompts=prompts, negative_prompts=negative)
    if pipe.points:
        write_points(out, pipe, torch.cat([z for _, z in batches]))
    else:
        # labels are class-major, so with --per-class each row of the grid is one class
        nrow = args.per_class or (args.per_prompt if prompts else max(1, int(np.ceil(np.sqrt(min(n, GRID_MAX))))))
        frames.append((0, write_images(out, batches, labels, nrow=nrow, prompts=prompts)))
        write_reverse_process(out, pipe, frames)
    print(f"wrote {n} samples ({spec.describe(T)}, w = {args.cfg_scale}, "
          f"seed {args.seed}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
