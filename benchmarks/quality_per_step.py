"""Sample quality per network evaluation: class accuracy and domain-feature FID of one trained class-conditional
model for DDPM with all T steps, DDIM at 10, 25, 50 and 100 steps and DPM-Solver++(2M) at 5, 10 and 20 steps.

    python -m benchmarks.quality_per_step --load runs/digits-1/denoiser/checkpoints/last.ckpt \
        --classifier runs/classifiers/digits.pt [--num_samples 500] [--cfg-scale 0] [--settings ddim:25 dpmpp_2m:10]

Every setting draws the same `--num_samples` samples (the same seed, so the same starting noise; classes cycling
0..K-1) and is measured under one protocol: `model.scripts.evaluate`'s (domain features of the classifier against
the validation set, real statistics cached). The aim of issue 8: DPM-Solver++ at 10 steps as good as DDIM at 25.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import Report
from model.errors import ArgParser, UserError, cli_entry

# (sampler, steps); None steps: DDPM with all T steps. The sheets' and the issue's settings.
DEFAULT_SETTINGS = ["ddpm:all", "ddim:10", "ddim:25", "ddim:50", "ddim:100", "dpmpp_2m:5", "dpmpp_2m:10",
                    "dpmpp_2m:20"]


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m benchmarks.quality_per_step", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="class-conditional denoiser checkpoint (.ckpt)")
    p.add_argument("--classifier", required=True, help="classifier .pt from model.scripts.train_classifier")
    p.add_argument("--num_samples", "--num-samples", type=int, default=500, help="samples per setting (500)")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, default=0.0, help="guidance w for every setting (0)")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                   help="sampler:steps pairs (ddpm:all runs every step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", "--batch_size", type=int, default=250)
    p.add_argument("--stats-cache", "--stats_cache", default="runs/fid_stats")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    return p


def parse_settings(settings: list[str]) -> list[tuple[str, int | None]]:
    """["ddim:25", "ddpm:all"] → [("ddim", 25), ("ddpm", None)]."""
    from model.lightning.denoiser_trainer import SAMPLERS

    out = []
    for item in settings:
        name, _, steps = item.partition(":")
        if name not in SAMPLERS or not (steps == "all" or steps.isdigit() and int(steps) > 0):
            raise UserError(f"--settings {item!r} is not sampler:steps with a sampler of {SAMPLERS} and steps > 0 "
                            f"(or ddpm:all)")
        out.append((name, None if steps == "all" else int(steps)))
    return out


def measure_setting(system, fid, clf, sampler: str, steps, args, device: str) -> dict:
    """Draw the samples of one setting and measure their FID and class accuracy (and the wall time)."""
    from model import fid as fidlib
    from model.evaluation import balanced_labels, generate, predict
    from model.scripts.common import describe_sampler, sampler_steps

    labels = balanced_labels(args.num_samples, system.num_classes)
    start = time.perf_counter()
    x = generate(system, args.num_samples, labels, args.cfg_scale, sampler=sampler, steps=steps, seed=args.seed,
                 batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    fid.reset()
    fidlib.update(fid, x.split(args.batch_size), real=False, extractor="classifier")
    n = sampler_steps(sampler, steps, system.diff.sample_steps, system.diff.T)
    accuracy = float((predict(clf, x, device) == labels).float().mean())
    return {"sampler": describe_sampler(sampler, n), "network evaluations": n * (2 if args.cfg_scale else 1),
            "FID (domain)": float(fid.compute()), "class accuracy": accuracy, "seconds": seconds}


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    from model.classifier import load_classifier
    from model.evaluation import check_classifier_fits, generate
    from model.fid import make_fid
    from model.lightning.denoiser_trainer import load_denoiser
    from model.scripts.common import held_out, resolve_device
    from model.scripts.evaluate import real_stats

    settings = parse_settings(args.settings)
    device = resolve_device(args.device)
    system = load_denoiser(args.load, map_location=device)
    clf = load_classifier(args.classifier)[0].to(device)
    if system.num_classes == 0:
        raise UserError("quality per step needs a class-conditional model (class accuracy); train one first")
    check_classifier_fits(clf, system, conditional=True)
    fid = make_fid("classifier", clf).to(device)
    args.inception_weights, args.inception_features = None, 2048  # what real_stats reads besides the classifier
    n_real, source = real_stats(fid, args, system, "classifier", held_out(system.cfg.data).val_dataloader())

    report = Report("quality_per_step", torch.device(device))
    generate(system, 2, None, 0.0, sampler="ddim", steps=2, seed=0, batch_size=2)  # warm-up: first calls are slow
    rows = [measure_setting(system, fid, clf, sampler, steps, args, device) for sampler, steps in settings]
    report.table(f"Quality per step: {args.num_samples} samples, w = {args.cfg_scale:g}, seed {args.seed}", rows,
                 note=f"FID: domain features of {args.classifier} against {n_real} validation images ({source}).")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
