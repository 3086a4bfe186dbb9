"""Sample quality per network evaluation: one trained class-conditional model sampled by DDPM, DDIM and
DPM-Solver++(2M) at 5 to 100 steps (and DDPM with all T), or by every registered sampler at given numbers of network
evaluations (--nfe), each scored by the error budget on pixel features (pixel Fréchet distance over the real floor,
precision, recall, KID), class accuracy and the domain-feature FID.

    python -m benchmarks.quality_per_step --load runs/digits-1/denoiser/checkpoints/last.ckpt \
        --classifier runs/classifiers/digits.pt [--num_samples 500] [--cfg-scale 0] [--settings ddim:25 dpmpp_2m:10]
    python -m benchmarks.quality_per_step --load ... --classifier ... --nfe 5 10 25 50   (every sampler)

Every setting draws the same `--num_samples` samples (the same seed, so the same starting noise; classes cycling
0..K-1). The pixel metrics follow `model.scripts.evaluate`'s protocol (the same real references for every row, the
floor and the VAE round trip beside them); the domain FID is measured against the validation set (real statistics
cached). Writes the table to benchmarks/results/<--name>.csv and the plot beside it (or to `--plot`).
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks import common
from benchmarks.common import Report
from model.errors import ArgParser, UserError, cli_entry
from model.scripts.common import add_pixel_arguments, add_spacing_argument

STEPS = (5, 10, 25, 50, 100)
# (sampler, steps); "ddpm:all" runs every one of the T steps
DEFAULT_SETTINGS = [f"{s}:{n}" for s in ("ddpm", "ddim", "dpmpp_2m") for n in STEPS] + ["ddpm:all"]


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m benchmarks.quality_per_step", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="class-conditional denoiser checkpoint (.ckpt) or export folder")
    p.add_argument("--classifier", required=True, help="classifier .pt from model.scripts.train_classifier")
    p.add_argument("--num_samples", "--num-samples", type=int, default=500, help="samples per setting (500)")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, default=0.0, help="guidance w for every setting (0)")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                   help="sampler:steps pairs (ddpm:all runs every step)")
    p.add_argument("--nfe", type=int, nargs="+", default=None,
                   help="instead of --settings: every registered sampler at about these network evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", "--batch_size", type=int, default=250)
    p.add_argument("--stats-cache", "--stats_cache", default="runs/fid_stats")
    p.add_argument("--plot", default=None, help="where the plot goes (benchmarks/results/<--name>.png)")
    p.add_argument("--name", default="quality_per_step", help="the CSV's and plot's name in benchmarks/results/")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    add_spacing_argument(p)
    add_pixel_arguments(p)
    return p


def parse_settings(settings: list[str]) -> list[tuple[str, int | None]]:
    """["ddim:25", "ddpm:all"] → [("ddim", 25), ("ddpm", None)]."""
    from model.sampling import SAMPLERS

    out = []
    for item in settings:
        name, _, steps = item.partition(":")
        if name not in SAMPLERS or not (steps == "all" or steps.isdigit() and int(steps) > 0):
            raise UserError(f"--settings {item!r} is not sampler:steps with a sampler of {', '.join(SAMPLERS)} and steps > 0 "
                            f"(or ddpm:all)")
        out.append((name, None if steps == "all" else int(steps)))
    return out


def nfe_settings(nfes: list[int]) -> list[str]:
    """sampler:steps for every registered sampler at each NFE: steps = NFE, or (NFE + 1) / 2 rounded for a sampler
    that calls the network twice per step (Heun: its step into the data calls it once)."""
    from model.sampling import SAMPLERS

    if any(n < 1 for n in nfes):
        raise UserError(f"--nfe values must be >= 1, got {nfes}")
    return [f"{name}:{max(1, round((n + info.evals_per_step - 1) / info.evals_per_step))}"
            for name, info in SAMPLERS.items() for n in nfes]


def counted_calls(net):
    """A context that counts `net`'s forward calls: (hook handle, counter list)."""
    calls = [0]
    return net.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)), calls


def draw_setting(pipe, fid, clf, sampler: str, steps, args, device: str) -> tuple[dict, torch.Tensor]:
    """The samples of one setting with their class accuracy, domain FID and wall time; (row, samples)."""
    from model.evaluation import balanced_labels, generate, predict
    from model.metrics import fid as fidlib
    from model.sampling import SamplerSpec

    labels = balanced_labels(args.num_samples, pipe.num_classes)
    start = time.perf_counter()
    spec = SamplerSpec.from_config(pipe.diff, sampler=sampler, steps=steps, guidance=args.cfg_scale,
                                   spacing="uniform" if steps is None else args.spacing)
    hook, calls = counted_calls(pipe.denoiser.net)
    try:
        x = generate(pipe, args.num_samples, labels, spec, seed=args.seed, batch_size=args.batch_size)
    finally:
        hook.remove()
    seconds = time.perf_counter() - start
    batches = -(-args.num_samples // args.batch_size)
    fid.reset()
    fidlib.update(fid, x.split(args.batch_size), real=False, extractor="classifier")
    accuracy = float((predict(clf, x, device) == labels).float().mean())
    # counted per batch; guidance evaluates the conditional and unconditional halves in one call: two evaluations
    return {"sampler": spec.describe(pipe.diff.T),
            "network evaluations": calls[0] // batches * (2 if args.cfg_scale else 1),
            "class accuracy": accuracy, "FID (domain)": float(fid.compute()), "seconds": seconds}, x


def budget_columns(budget: dict, name: str) -> dict:
    """The pixel metrics of one budget row as table columns."""
    from model.metrics.budget import floor_ratio

    row = next(r for r in budget["rows"] if r["row"] == name)
    return {"pixel FD / floor": floor_ratio(budget, name), "pixel FD": row["pixel_fd"]["mean"],
            "precision": row["precision"]["mean"], "recall": row["recall"]["mean"],
            "coverage": row["coverage"]["mean"], "KID x 1e3": 1e3 * row["kid"]["mean"]}


def plot(rows: list[dict], budget: dict, path: str) -> None:
    """Pixel FD over the floor against network evaluations, one line per sampler, the round trip and floor level."""
    import numpy as np

    from model.metrics.budget import FLOOR, ROUND_TRIP, floor_ratio
    from model.plots import _pyplot, _save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    from model.sampling import SAMPLERS

    for family in (info.display for info in SAMPLERS.values()):
        points = sorted((r["network evaluations"], r["pixel FD / floor"]) for r in rows
                        if r["sampler"].startswith(family + " ") and r["sampler"][len(family) + 1].isdigit())
        if points:
            ax.plot(*np.array(points).T, marker="o", label=family)
    names = [r["row"] for r in budget["rows"]]
    if ROUND_TRIP in names:
        ax.axhline(floor_ratio(budget, ROUND_TRIP), ls="--", c="0.4", label="VAE round trip")
    ax.axhline(floor_ratio(budget, FLOOR), ls=":", c="k", label="real floor")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel("pixel Fréchet distance / real floor")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save_figure(plt, fig, path)
    print(f"wrote {path}")


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    from pathlib import Path

    from model.classifier import load_classifier
    from model.evaluation import check_classifier_fits, generate, pixel_budget
    from model.metrics.budget import FLOOR, ROUND_TRIP, check_sizes
    from model.metrics.fid import make_fid
    from model.pipeline import LatentDiffusionPipeline
    from model.sampling import SamplerSpec
    from model.scripts.common import held_out, pixel_protocol, resolve_device
    from model.scripts.evaluate import real_stats

    settings = parse_settings(nfe_settings(args.nfe) if args.nfe else args.settings)
    device = resolve_device(args.device)
    pipe = LatentDiffusionPipeline.from_pretrained(args.load, device)
    clf = load_classifier(args.classifier)[0].to(device)
    if pipe.num_classes == 0:
        raise UserError("quality per step needs a class-conditional model (class accuracy); train one first")
    check_classifier_fits(clf, pipe, conditional=True)
    args.spacing = args.spacing or pipe.diff.sample_spacing
    dm = held_out(pipe.cfg.data)
    protocol = pixel_protocol(args, dm)
    check_sizes(min(args.real_pool, len(dm.all_items())), args.num_samples)
    fid = make_fid("classifier", clf).to(device)
    args.inception_weights, args.inception_features = None, 2048  # what real_stats reads besides the classifier
    n_real, source = real_stats(fid, args, pipe, "classifier", dm.val_dataloader())

    report = Report(args.name, torch.device(device))
    generate(pipe, 2, None, SamplerSpec("ddim", 2), seed=0, batch_size=2)  # warm-up: first calls are slow
    rows, samples = [], {}
    for sampler, steps in settings:
        row, samples[f"{sampler}:{steps or 'all'}"] = draw_setting(pipe, fid, clf, sampler, steps, args, device)
        rows.append(row)
    budget = pixel_budget(pipe, dm, samples, protocol, args.real_pool, args.batch_size)
    rows = [{**row, **budget_columns(budget, name)} for row, name in zip(rows, samples)]
    references = [{"sampler": name, **budget_columns(budget, name)} for name in (ROUND_TRIP, FLOOR)
                  if any(r["row"] == name for r in budget["rows"])]
    p = budget["protocol"]
    report.table(f"Quality per step: {args.num_samples} samples, w = {args.cfg_scale:g}, seed {args.seed}",
                 rows + references,
                 note=f"Pixel metrics: {p['features']}; mean over {p['draws']} draws of n = {p['n']} floor images "
                      f"and a reference of {p['reference']}; k = {p['k']}. FID (domain): {args.classifier} against "
                      f"{n_real} validation images ({source}). Seconds: wall time of the sampling alone.")
    report.save()
    args.plot = args.plot or str(common.RESULTS / f"{args.name}.png")
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot(rows, budget, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
