"""Judge a class-conditional denoiser: do guided samples show their class, and are they copies of training images?

    python -m model.scripts.demo_report --load runs/digits-1/denoiser/checkpoints/last.ckpt \
        --classifier runs/classifiers/digits.pt --per-class 50 --cfg-scale 0 1 3 [--sampler ddim --steps 25]

For each guidance scale w it draws `per-class` samples of every class with the checkpoint's sampler (its config's
sampler, sample_steps and sample_spacing, unless --sampler, --steps or --spacing say otherwise; the same seed, so
the same starting noise, for every w). The class accuracy is read on a larger draw, `class-per-class` samples of
every class (the same seed; the budget's own draw when the two counts are equal): the small CNN classifies them, and
the report gives the share assigned to the requested class, overall with its 95% Wilson interval, and per class.
With 10 classes, 50 a class know a 98% accuracy to about ±1.2 points, 500 a class to ±0.4. The memorisation check
compares the median L2 distance (flattened [-1, 1] pixels) from each sample to its nearest training image with the
same median for held-out real images: copies of training images would sit near 0, far below the held-out median. The
error budget on pixel features (pixel Fréchet distance, KID, precision and recall of the samples of each w, of the
VAE round trip and of the real floor; see `model.metrics.budget`; at every `--pixel-size`, e.g. 16 and 32 for RGB
pictures) says how close the samples come to real images in style and sharpness; the same budget on the classifier's
penultimate features (domain features) sees shapes that small pixel images blur away, and with --inception the same
budget on Inception-v3's pool features (the features of FID; weights from disk). The ± of a budget row is over the
floor's draws; `--sample-draws N` adds rows for N − 1 more draws of the samples (seeds --seed + 1, ...), which show
how far the draw alone moves each figure. Writes report.json, report.md and a sample grid per w to `--output`
(default: report/ beside the denoiser's checkpoints folder).
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Optional

import torch
from torch import Tensor

from model.errors import ArgParser, UserError, cli_entry
from model.writes import write_text
from model.evaluation import (check_classifier_fits, class_major_labels, generate, model_budgets, per_class_accuracy,
                              predict, wilson_interval)
from model.metrics.budget import as_markdown as budget_markdown, as_text as budget_text
from model.scripts.common import (add_guidance_interval_argument, add_pixel_arguments, add_sampler_arguments,
                                  sampler_spec)

GRID_PER_CLASS = 10  # samples per class (row) shown in each sample grid
FURTHER_DRAW = ", seed "  # between the samples' row name and the seed of a further draw: "samples w=0, seed 1"


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.demo_report", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="class-conditional denoiser checkpoint (.ckpt) or export folder")
    p.add_argument("--classifier", required=True, help="classifier .pt from model.scripts.train_classifier")
    p.add_argument("--per-class", "--per_class", type=int, default=50, help="samples of every class per scale")
    p.add_argument("--class-per-class", "--class_per_class", type=int, default=500,
                   help="samples of every class per scale for the class accuracy (500: about ±0.4 points at 98%%)")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, nargs="+", default=[0.0, 1.0, 3.0],
                   help="guidance scales w to compare: (1+w)·cond − w·uncond")
    add_guidance_interval_argument(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (the same for every w)")
    p.add_argument("--sample-draws", "--sample_draws", type=int, default=1, metavar="N",
                   help="budget rows from N draws of the samples, seeds --seed, --seed+1, ...: how far the draw alone "
                        "moves each figure (the ± of a row is over the floor's draws); the first row is the --seed "
                        "draw, as with 1")
    p.add_argument("--batch-size", "--batch_size", type=int, default=250, help="samples drawn at once")
    add_sampler_arguments(p)
    add_pixel_arguments(p, several=True)
    p.add_argument("--inception", action="store_true",
                   help="add an error budget on Inception-v3 features (FID); the weights must be on disk: torch-"
                        "fidelity's file in the torch hub cache, or --inception-weights")
    p.add_argument("--inception-weights", "--inception_weights", default=None,
                   help="torch-fidelity's Inception-v3 weights file (implies --inception)")
    p.add_argument("--output", default=None, help="output folder (default: report/ beside the checkpoints folder)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    return p


def sample_row(w: float) -> str:
    """The budget row of the samples at guidance w (the --seed draw)."""
    return f"samples w={w:g}"


def further_draw(name: str, seed: int) -> str:
    """The name of a further draw, with seed `seed`, of the sample set `name`: "samples w=0, seed 1"."""
    return f"{name}{FURTHER_DRAW}{seed}"


def draw_row(w: float, seed: int) -> str:
    """The budget row of a further draw of the samples at guidance w (--sample-draws)."""
    return further_draw(sample_row(w), seed)


def sample_draws(rows: dict[str, dict], w: float) -> list[dict]:
    """The budget rows {name: row} of the samples at w: the --seed draw, then the further draws'."""
    further = sample_row(w) + FURTHER_DRAW
    return [rows[sample_row(w)]] + [r for name, r in rows.items() if name.startswith(further)]


def check_args(args) -> None:
    if args.per_class <= 0:
        raise UserError(f"--per-class must be > 0, got {args.per_class}")
    if args.class_per_class <= 0:
        raise UserError(f"--class-per-class must be > 0, got {args.class_per_class}")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {args.batch_size}")
    if args.sample_draws <= 0:
        raise UserError(f"--sample-draws must be > 0, got {args.sample_draws}")


def check_fit(pipe, clf) -> None:
    """The denoiser must be a class-conditional image model whose images the classifier can read."""
    if pipe.points:
        raise UserError("this denoiser samples 2-D points, not images; the report needs an image model")
    if pipe.num_classes == 0:
        raise UserError("the report needs a class-conditional denoiser, but this one is unconditional "
                        "(train with denoiser.unet.num_classes set)")
    check_classifier_fits(clf, pipe, conditional=True)


@torch.no_grad()
def nearest_distances(queries: Tensor, loader) -> Tensor:
    """For each query (N, C, H, W), the L2 distance (flattened pixels) to its nearest image in `loader` (N,)."""
    q = queries.flatten(1).double()  # (N, C*H*W)
    best = torch.full((len(q),), math.inf, dtype=torch.float64)
    for x, *_ in loader:
        d = torch.cdist(q, x.flatten(1).double(), compute_mode="donot_use_mm_for_euclid_dist")  # (N, B), exact
        best = torch.minimum(best, d.min(1).values)
    return best


def held_out_set(dm) -> tuple[Tensor, Tensor]:
    """The validation split's images (N, *shape) and labels (N,) in one pass; empty when it is (val_fraction 0)."""
    batches = [(x, y) for x, y, *_ in dm.val_dataloader()]
    if not batches:
        return torch.empty(0, *dm.data_shape), torch.empty(0, dtype=torch.long)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def side_by_side(real: Tensor, real_labels: Tensor, samples: Tensor, labels: Tensor, per_class: int) -> Tensor:
    """One row per class: `per_class` real images, a grey spacer, `per_class` samples of that class; (N, C, H, W)
    for `save_grid` with nrow = 2 * per_class + 1. Rows of classes with too few real images are padded grey."""
    spacer = torch.zeros_like(real[:1])  # 0 is mid-grey in [-1, 1]
    rows = []
    for k in labels.unique(sorted=True).tolist():
        mine, theirs = real[real_labels == k][:per_class], samples[labels == k][:per_class]
        pad = spacer.expand(per_class - len(mine), *real.shape[1:])
        rows += [mine, pad, spacer, theirs, spacer.expand(per_class - len(theirs), *real.shape[1:])]
    return torch.cat(rows)


def inception_space(args):
    """The Inception feature space of --inception / --inception-weights (None without either), from weights on disk."""
    if not (args.inception or args.inception_weights):
        return None
    from model.evaluation import InceptionSpace
    from model.metrics.fid import inception_extractor

    return InceptionSpace(inception_extractor(args.inception_weights), args.inception_weights)


def median(x: Tensor) -> Optional[float]:
    return float(x.median()) if len(x) else None


def held_out_accuracy(pred: Tensor, labels: Tensor, num_classes: int) -> dict[str, Any]:
    """The classifier on the held-out real images: what samples' class accuracy is read beside (empty: None)."""
    if not len(labels):
        return {"accuracy": None, "per_class_accuracy": None}
    return {"accuracy": float((pred == labels).float().mean()),
            "per_class_accuracy": per_class_accuracy(pred, labels, num_classes)}


def build_report(args, pipe, meta: dict[str, Any], dm, labels: Tensor, preds: list[Tensor],
                 d_samples: list[Tensor], d_held: Tensor, budgets: dict[str, Any],
                 held_out: dict[str, Any]) -> dict[str, Any]:
    """`labels` and `preds` are those of the class-accuracy draw; `d_samples` those of the budget's."""
    held = median(d_held)
    scales = []
    for w, pred, d in zip(args.cfg_scale, preds, d_samples):
        med = median(d)
        right = int((pred == labels).sum())
        scales.append({
            "cfg_scale": w,
            "accuracy": right / len(labels),
            "accuracy_interval": list(wilson_interval(right, len(labels))),  # 95%
            "per_class_accuracy": per_class_accuracy(pred, labels, pipe.num_classes),
            "median_nn_distance": med,
            "nn_distance_ratio": med / held if held else None,  # ~1: as far from the training set as new real data
        })
    return {
        "denoiser": str(args.load), "classifier": str(args.classifier),
        "classifier_val_accuracy": meta.get("val_accuracy"), "held_out": held_out,
        "sampler": args.spec.sampler, "steps": args.spec.step_count(pipe.diff.T), "spacing": args.spec.spacing,
        "eta": args.spec.eta, "s_noise": args.spec.s_noise,
        "autoguidance": args.spec.autoguidance, "sampling": args.spec.describe(pipe.diff.T),
        "per_class": args.per_class, "class_per_class": args.class_per_class, "seed": args.seed,
        "sample_draws": args.sample_draws,
        "class_names": list(dm.class_names), "train_items": len(dm.train_set), "held_out_items": len(d_held),
        "held_out_median_nn_distance": held,
        "scales": scales, "budgets": budgets,
    }


def sampling(report: dict[str, Any]) -> str:
    """How the report's samples were drawn, e.g. "DPM-Solver++(2M) 10 steps, noise-dense"; reports written before
    the sampler was a choice drew DDIM (eta 0)."""
    from model.scripts.common import describe_sampler

    return report.get("sampling") or describe_sampler(report["sampler"], report["steps"], spacing=report["spacing"])


def fmt(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def accuracy_text(scale: dict[str, Any]) -> str:
    """The class accuracy with its 95% interval, as "0.983 (0.979-0.986)" (reports written before it: the share)."""
    interval = scale.get("accuracy_interval")
    return f"{scale['accuracy']:.3f}" + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")


def table(report: dict[str, Any]) -> str:
    """A short plain-text table for the terminal."""
    lines = [f"{'w':>6} {'accuracy (95% interval)':>23} {'worst class':>14} {'median NN':>10} {'/ held-out':>10}"]
    for s in report["scales"]:
        worst = min(range(len(s["per_class_accuracy"])), key=lambda k: s["per_class_accuracy"][k])
        worst_txt = f"{report['class_names'][worst]} ({s['per_class_accuracy'][worst]:.2f})"
        lines.append(f"{s['cfg_scale']:>6.2f} {accuracy_text(s):>23} {worst_txt:>14} "
                     f"{fmt(s['median_nn_distance']):>10} {fmt(s['nn_distance_ratio'], 2):>10}")
    lines.append(f"held-out real images: class accuracy {fmt(report['held_out']['accuracy'])}, median NN distance to "
                 f"the training set {fmt(report['held_out_median_nn_distance'])} ({report['held_out_items']} images)")
    lines += [budget_text(b) for b in all_budgets(report).values()]
    return "\n".join(lines)


def all_budgets(report: dict[str, Any]) -> dict[str, Any]:
    """Every error budget of a report by space ("pixels 8", "domain"); reports written before there were several
    hold one pixel budget."""
    if "budgets" in report:
        return report["budgets"]
    return {f"pixels {report['pixel_budget']['protocol']['size']}": report["pixel_budget"]}


def draws_note(report: dict[str, Any]) -> str:
    """The sentence naming the rows of the samples' further draws, where the report has them."""
    n = report.get("sample_draws", 1)  # reports written before the option: one draw
    return f' The rows "samples w=…, seed S" are {n - 1} more draws of the same samples.' if n > 1 else ""


def markdown(report: dict[str, Any], grids: list[str]) -> str:
    names = report["class_names"]
    head = "| w | accuracy (95% interval) | " + " | ".join(names) + " | median NN distance | ratio to held-out |"
    rule = "|" + "---|" * (len(names) + 4)
    rows = [f"| {s['cfg_scale']:g} | {accuracy_text(s)} | "
            + " | ".join(f"{a:.2f}" for a in s["per_class_accuracy"])
            + f" | {fmt(s['median_nn_distance'])} | {fmt(s['nn_distance_ratio'], 2)} |" for s in report["scales"]]
    held = report.get("held_out") or {}
    if held.get("accuracy") is not None:
        rows.append(f"| held-out real images | {held['accuracy']:.3f} | "
                    + " | ".join(f"{a:.2f}" for a in held["per_class_accuracy"])
                    + f" | {fmt(report['held_out_median_nn_distance'])} | 1 |")
    return "\n".join([
        "# Sample report", "",
        f"Denoiser `{report['denoiser']}`, classifier `{report['classifier']}` (held-out accuracy on real images "
        f"{fmt(report['classifier_val_accuracy'])}).",
        f"{report['sampling']}, {report['per_class']} samples per class, seed {report['seed']} "
        f"(the same starting noise for every w); the class accuracy from "
        f"{report.get('class_per_class', report['per_class'])} samples per class.", "",
        "## Class accuracy of the samples", "",
        "The share of samples asked to be a class that the classifier assigns to it (overall and per class); the "
        "last row is the classifier on held-out real images, the agreement a perfect generator would reach.", "",
        head, rule, *rows, "",
        "## Memorisation check", "",
        f"Median L2 distance (flattened [-1, 1] pixels) from each sample to its nearest training image, against "
        f"{fmt(report['held_out_median_nn_distance'])} for the {report['held_out_items']} held-out real images "
        f"(to their nearest of the {report['train_items']} training images). Copies of training images would "
        f"give a median near 0, far below the held-out one; a ratio near 1 or above means no sign of copying.", "",
        "## Error budgets", "",
        "The samples of each w, the real images' VAE round trip and real images themselves (the floor), scored the "
        "same way; a row near the floor is as close to real images as real images are. One budget per feature "
        "space: pixels at each compared size, the classifier's penultimate features (domain), and Inception-v3's "
        "features when asked for." + draws_note(report), "",
        *[f"### {name}\n\n{budget_markdown(b)}\n" for name, b in all_budgets(report).items()],
        "## Samples (one row per class)", "",
        *[f"![{g}]({g})" for g in grids], "",
    ])


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    from data import make_datamodule
    from model.classifier import load_classifier
    from model.images import save_grid
    from model.pipeline import LatentDiffusionPipeline
    from model.metrics.budget import check_sizes
    from model.scripts.common import output_folder, pixel_protocols, resolve_device

    device = resolve_device(args.device)
    pipe = LatentDiffusionPipeline.from_pretrained(args.load, device)
    clf, meta = load_classifier(args.classifier)
    clf = clf.to(device)
    check_fit(pipe, clf)
    check_args(args)
    args.spec = sampler_spec(args, pipe.diff)  # the checkpoint's sampler, with the command's flags
    inception = inception_space(args)  # before any work: missing weights are a one-line error, not a download
    dm = make_datamodule(pipe.cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    K = pipe.num_classes
    protocols = pixel_protocols(args, dm)
    check_sizes(min(args.real_pool, len(dm.all_items())), K * args.per_class, per=K, flag="--per-class")
    out = output_folder(args.output, args.load, "report")

    labels = class_major_labels(K, args.per_class)  # the budget's draw
    judged = class_major_labels(K, args.class_per_class)  # the class accuracy's draw
    samples, preds, grids = [], [], []
    more = {}  # the budget's further draws (--sample-draws), rows of their own
    for w in args.cfg_scale:
        spec = args.spec.replace(guidance=w)
        x = generate(pipe, len(labels), labels, spec, seed=args.seed, batch_size=args.batch_size)
        samples.append(x)
        for seed in range(args.seed + 1, args.seed + args.sample_draws):
            more[draw_row(w, seed)] = generate(pipe, len(labels), labels, spec, seed=seed, batch_size=args.batch_size)
        keep = torch.arange(len(labels)) % args.per_class < GRID_PER_CLASS  # the first few of every class
        grids.append(f"samples_w{w:g}.png")
        save_grid(x[keep], out / grids[-1], nrow=min(GRID_PER_CLASS, args.per_class))
        if args.class_per_class != args.per_class:
            x = generate(pipe, len(judged), judged, spec, seed=args.seed, batch_size=args.batch_size)
        preds.append(predict(clf, x, device))
    held_out, held_labels = held_out_set(dm)
    for w, x in zip(args.cfg_scale, samples):  # held-out real digits (left) beside samples (right), class by class
        grids.append(f"real_vs_samples_w{w:g}.png")
        save_grid(side_by_side(held_out, held_labels, x, labels, GRID_PER_CLASS), out / grids[-1],
                  nrow=2 * GRID_PER_CLASS + 1)
    d_all = nearest_distances(torch.cat(samples + [held_out]), dm.train_dataloader())
    d_samples, d_held = list(d_all[: len(labels) * len(samples)].split(len(labels))), d_all[len(labels) * len(samples):]
    rows = {sample_row(w): x for w, x in zip(args.cfg_scale, samples)}
    budgets = model_budgets(pipe, dm, {**rows, **more}, protocols, args.real_pool, args.batch_size, classifier=clf,
                            inception=inception, device=device)

    held_pred = predict(clf, held_out, device) if len(held_out) else torch.empty(0, dtype=torch.long)
    report = build_report(args, pipe, meta, dm, judged, preds, d_samples, d_held, budgets,
                          held_out_accuracy(held_pred, held_labels, K))
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.md", markdown(report, grids))
    print(table(report))
    print(f"wrote report.json and report.md to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
