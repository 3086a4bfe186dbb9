"""Evaluate a trained denoiser: FID per guidance scale, class accuracy, loss per timestep, the toy's Chamfer distance.

    python -m model.scripts.evaluate --load runs/digits-1/denoiser/checkpoints/last.ckpt \
        --classifier runs/classifiers/digits.pt --num_samples 500 --cfg-scale 0 7.5 --ddim --steps 25
    python -m model.scripts.evaluate --load <ckpt> --inception-weights weights-inception-2015-12-05-6726825d.pth

Image models: for each guidance scale w, `--num_samples` samples (classes cycling 0..K-1 on a conditional model; the
same seed, so the same starting noise, for every w; `--sampler ddpm|ddim|dpmpp_2m`, default DDPM with all T steps)
against the real validation set. FID goes through torchmetrics
with Inception-v3 (downloaded by torch-fidelity, or a local file) or, with `--classifier`, the domain features of a
classifier trained by this package; `--extractor` picks one when both are available. With a classifier and a
conditional model it also reports the class accuracy of the samples. Then the EMA network's loss on the validation
set at fixed timesteps (sheet 000, 2.2e). The 2-D toy instead gets the Chamfer distance of DDPM (all T steps) and
DDIM (or `--sampler`, with `--steps`) samples to the data, with both point clouds plotted.

Beside FID, every image model gets the error budget on pixel features that see blur, stroke width and style
(`model.metrics.budget`): pixel Fréchet distance, KID and improved precision/recall of the samples of each w, of the
VAE round trip of real images and of real images themselves (the floor), each at n = `--num_samples`.

Writes evaluation.json, evaluation.md, loss_per_timestep.csv and samples_w<w>.png / .npz (toy: chamfer.png and
samples_ddpm.npz / samples_ddim.npz) to `--output` (default: evaluation/ beside the checkpoints folder). The real
set's FID statistics are cached in `--stats-cache` per data set, resolution and extractor.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

import torch

from model.errors import ArgParser, UserError, cli_entry
from model.writes import save_npz, write_text
from model.metrics.budget import as_markdown as budget_markdown, as_text as budget_text
from model.scripts.common import (add_guidance_interval_argument, add_pixel_arguments, add_sampler_arguments,
                                  describe_sampler, sampler_spec)

GRID_MAX = 100  # samples shown in each samples_w<w>.png


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="denoiser checkpoint (.ckpt) or export folder (model.scripts.export)")
    p.add_argument("--num_samples", "--num-samples", type=int, default=500, help="samples per guidance scale")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, nargs="+", default=[0.0],
                   help="guidance scales w, one FID each: (1+w)·cond − w·uncond")
    add_guidance_interval_argument(p)
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (the same for every w)")
    p.add_argument("--classifier", default=None, help="classifier .pt from model.scripts.train_classifier")
    p.add_argument("--extractor", choices=["auto", "inception", "classifier"], default="auto",
                   help="FID features; auto: the classifier when given, else Inception-v3")
    p.add_argument("--inception-weights", "--inception_weights", default=None,
                   help="local torch-fidelity Inception-v3 weights (default: download to the torch hub cache)")
    p.add_argument("--inception-features", "--inception_features", type=int, default=2048,
                   help="Inception pool features: 64, 192, 768 or 2048 (the standard)")
    p.add_argument("--stats-cache", "--stats_cache", default="runs/fid_stats",
                   help="folder for the cached FID statistics of real data sets")
    add_pixel_arguments(p)
    p.add_argument("--loss-timesteps", "--loss_timesteps", type=int, nargs="+", default=None,
                   help="timesteps of the loss table (default: 1 and T/10, 2T/10, ..., T)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=250, help="samples drawn at once")
    p.add_argument("--output", default=None, help="output folder (default: evaluation/ beside the checkpoints)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    return p


def check_args(args, pipe) -> None:
    T = pipe.diff.T
    if args.num_samples < 2:
        raise UserError(f"--num_samples must be at least 2 (FID needs a covariance), got {args.num_samples}")
    if args.steps is not None and not 0 < args.steps <= T:
        raise UserError(f"--steps must be in [1, T={T}], got {args.steps}")
    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {args.batch_size}")
    bad = [t for t in args.loss_timesteps or [] if not 1 <= t <= T]
    if bad:
        raise UserError(f"--loss-timesteps must lie in [1, T={T}], got {bad}")
    if pipe.num_classes == 0 and any(w != 0 for w in args.cfg_scale):
        raise UserError("--cfg-scale other than 0 needs a class-conditional model, but this one is unconditional; "
                        "use --cfg-scale 0")
    if args.extractor == "classifier" and args.classifier is None:
        raise UserError("--extractor classifier needs --classifier PATH (train one with model.scripts.train_classifier)")


def choose_extractor(args) -> str:
    if args.extractor == "auto":
        return "classifier" if args.classifier else "inception"
    return args.extractor


# ----- image models ---------------------------------------------------------------------------------------------
def real_stats(fid, args, pipe, extractor: str, val_loader) -> tuple[int, str]:
    """Load the real set's statistics from the cache, or compute and cache them; (number of images, where from)."""
    from model.metrics import fid as fidlib

    ident = fidlib.extractor_id(extractor, args.classifier, args.inception_weights, args.inception_features)
    path = fidlib.stats_file(args.stats_cache, pipe.cfg.data, "val", ident)
    if fidlib.load_real_stats(fid, path):
        return fidlib.real_image_count(fid), f"cached {path}"
    fidlib.update(fid, (x for x, *_ in val_loader), real=True, extractor=extractor)
    n_real = fidlib.real_image_count(fid)
    fidlib.save_real_stats(fid, path, {"extractor": ident, "images": n_real, "data": pipe.cfg.data.name})
    return n_real, f"computed, cached to {path}"


def scale_result(args, pipe, fid, extractor: str, clf, w: float, out: Path, device: str):
    """Draw the samples of one guidance scale, write them, and measure FID (and class accuracy); (result, samples)."""
    from model.metrics import fid as fidlib
    from model.evaluation import balanced_labels, generate, per_class_accuracy, predict
    from model.images import save_grid, to_uint8

    labels = balanced_labels(args.num_samples, pipe.num_classes)
    x = generate(pipe, args.num_samples, labels, args.spec.replace(guidance=w), seed=args.seed,
                 batch_size=args.batch_size)
    save_grid(x[:GRID_MAX], out / f"samples_w{w:g}.png", nrow=pipe.num_classes or 10)
    save_npz(out / f"samples_w{w:g}.npz", images=to_uint8(x),
                        labels=(labels if labels is not None else torch.full((len(x),), -1)).numpy())
    fid.reset()  # drops the generated statistics of the previous w, keeps the real ones
    fidlib.update(fid, x.split(args.batch_size), real=False, extractor=extractor)
    result: dict[str, Any] = {"cfg_scale": w, "fid": float(fid.compute())}
    if clf is not None and labels is not None:
        pred = predict(clf, x, device)
        result["accuracy"] = float((pred == labels).float().mean())
        result["per_class_accuracy"] = per_class_accuracy(pred, labels, pipe.num_classes)
    return result, x


def real_baseline(args, fid, extractor: str, train_set) -> dict[str, Any]:
    """FID of up to num_samples real training images against the validation statistics: the floor that a finite
    sample sets under this protocol (a perfect model would score about this, not 0)."""
    from model.metrics import fid as fidlib

    n = min(args.num_samples, len(train_set))
    images = torch.stack([train_set[i][0] for i in range(n)])  # (n, C, H, W)
    fid.reset()
    fidlib.update(fid, images.split(args.batch_size), real=False, extractor=extractor)
    return {"images": n, "fid": float(fid.compute())}


def evaluate_images(args, pipe, dm, clf, extractor: str, fid, protocol, out: Path, device: str) -> dict[str, Any]:
    from model.evaluation import pixel_budget
    from model.metrics import fid as fidlib

    n_real, source = real_stats(fid, args, pipe, extractor, dm.val_dataloader())
    scales, samples = [], {}
    for w in args.cfg_scale:
        result, samples[f"samples w={w:g}"] = scale_result(args, pipe, fid, extractor, clf, w, out, device)
        scales.append(result)
    return {"fid_protocol": {**fidlib.protocol(extractor, n_real, args.num_samples, dm.data_shape, args.classifier,
                                              args.inception_features, args.inception_weights),
                             "real_statistics": source},
            "scales": scales, "real_baseline": real_baseline(args, fid, extractor, dm.train_set),
            "pixel_budget": pixel_budget(pipe, dm, samples, protocol, args.real_pool, args.batch_size),
            **loss_table(args, pipe, dm, out)}


# ----- the 2-D toy ----------------------------------------------------------------------------------------------
def toy_specs(args, pipe) -> list:
    """DDPM with all T steps, then the chosen sampler (DDIM when that is DDPM) with its steps."""
    other = args.spec.sampler if args.spec.sampler != "ddpm" else "ddim"
    return [args.spec.replace(sampler="ddpm").replace_steps(None), sampler_spec(args, pipe.diff, sampler=other)]


def evaluate_points(args, pipe, dm, out: Path) -> dict[str, Any]:
    """Chamfer distance of DDPM and DDIM samples to the data (sheet 004), with both point clouds plotted."""
    from data.toy2d import chamfer_distance
    from model.evaluation import generate
    from model.plots import scatter_panels

    data = dm.points()
    results, panels = [], []
    for spec in toy_specs(args, pipe):
        points = generate(pipe, args.num_samples, None, spec, seed=args.seed, batch_size=args.batch_size)
        cd = chamfer_distance(points, data[: args.num_samples])
        steps = spec.step_count(pipe.diff.T)
        save_npz(out / f"samples_{spec.sampler}.npz", points=points.numpy())
        results.append({"sampler": spec.sampler, "steps": steps, "chamfer_distance": cd})
        panels.append((f"{spec.describe(pipe.diff.T)}: Chamfer distance {cd:.4f}", points.numpy()))
    scatter_panels(panels, data.numpy(), out / "chamfer.png")
    return {"chamfer": results, **loss_table(args, pipe, dm, out)}


# ----- shared ---------------------------------------------------------------------------------------------------
def loss_table(args, pipe, dm, out: Path) -> dict[str, Any]:
    """The EMA network's validation loss at fixed timesteps, also written as loss_per_timestep.csv."""
    from model.evaluation import loss_per_timestep, loss_timesteps

    timesteps = sorted(set(args.loss_timesteps)) if args.loss_timesteps else loss_timesteps(pipe.diff.T)
    losses = loss_per_timestep(pipe, dm.val_dataloader(), timesteps)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["t", "alpha_bar", "loss"])
    writer.writerows([t, f"{float(pipe.schedule.alpha_bar[t]):.6g}", f"{loss:.6g}"] for t, loss in zip(timesteps, losses))
    write_text(out / "loss_per_timestep.csv", text.getvalue())
    return {"loss_per_timestep": [{"t": t, "loss": loss} for t, loss in zip(timesteps, losses)],
            "loss": pipe.diff.loss, "parametrisation": pipe.diff.parametrisation, "objective": pipe.diff.objective}


def sampler_text(args, pipe) -> str:
    if pipe.points:  # the toy compares two samplers
        return " and ".join(spec.describe(pipe.diff.T) for spec in toy_specs(args, pipe))
    return args.spec.describe(pipe.diff.T)


def table(report: dict[str, Any]) -> str:
    """A short plain-text summary for the terminal."""
    lines = []
    if "scales" in report:
        lines.append(f"{'w':>6} {'FID':>10} {'accuracy':>9}")
        for s in report["scales"]:
            acc = f"{s['accuracy']:.3f}" if "accuracy" in s else "n/a"
            lines.append(f"{s['cfg_scale']:>6g} {s['fid']:>10.4f} {acc:>9}")
        base = report["real_baseline"]
        lines.append(f"{'real':>6} {base['fid']:>10.4f} {'':>9}  ({base['images']} training images: the floor)")
        lines.append("protocol: " + "; ".join(f"{k} {v}" for k, v in report["fid_protocol"].items()))
        lines.append(budget_text(report["pixel_budget"]))
    for c in report.get("chamfer", []):
        lines.append(f"{describe_sampler(c['sampler'], c['steps'])}: Chamfer distance {c['chamfer_distance']:.4f}")
    lines.append("loss per timestep: " + ", ".join(f"t={r['t']} {r['loss']:.4f}" for r in report["loss_per_timestep"]))
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Evaluation", "", f"Denoiser `{report['denoiser']}`; {report['sampler']}, {report['num_samples']} "
             f"samples per setting, seed {report['seed']}.", ""]
    if "scales" in report:
        lines += ["## FID per guidance scale", "", "| w | FID | class accuracy |", "|---|---|---|"]
        lines += [f"| {s['cfg_scale']:g} | {s['fid']:.4f} | "
                  + (f"{s['accuracy']:.3f}" if "accuracy" in s else "n/a") + " |" for s in report["scales"]]
        base = report["real_baseline"]
        lines += ["", f"Real baseline: {base['images']} real training images score {base['fid']:.4f} against the "
                  f"same validation statistics, the floor that a finite sample sets.", "",
                  "Protocol (FID figures compare only under the same one):", ""]
        lines += [f"- {k}: {v}" for k, v in report["fid_protocol"].items()]
        lines += ["", "## Error budget on pixel features", "", budget_markdown(report["pixel_budget"])]
        lines += ["", *[f"![samples w={s['cfg_scale']:g}](samples_w{s['cfg_scale']:g}.png)" for s in report["scales"]]]
    if "chamfer" in report:
        lines += ["## Chamfer distance to the data", "", "| sampler | Chamfer distance |", "|---|---|"]
        lines += [f"| {describe_sampler(c['sampler'], c['steps'])} | {c['chamfer_distance']:.4f} |"
                  for c in report["chamfer"]]
        lines += ["", "![samples over the data](chamfer.png)"]
    objective = report.get("objective", "vp")  # flow and edm have their own targets; vp's is the parametrisation
    target = f"the {report['parametrisation']} target" if objective == "vp" else f"the {objective} objective's target"
    lines += ["", f"## Validation loss per timestep ({report['loss']} loss on {target}, EMA network, fixed noise)", "",
              "| t | loss |", "|---|---|"]
    lines += [f"| {r['t']} | {r['loss']:.5f} |" for r in report["loss_per_timestep"]]
    return "\n".join(lines) + "\n"


def load_judges(args, pipe, device: str):
    """(classifier or None, extractor name, FID metric or None), every check done before anything is written."""
    from model.classifier import load_classifier
    from model.evaluation import check_classifier_fits
    from model.metrics.fid import make_fid

    if pipe.points:
        return None, None, None
    clf = None
    if args.classifier is not None:
        clf = load_classifier(args.classifier)[0].to(device)
        check_classifier_fits(clf, pipe, conditional=pipe.num_classes > 0)
    extractor = choose_extractor(args)
    fid = make_fid(extractor, clf, args.inception_weights, args.inception_features).to(device)
    return clf, extractor, fid


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    from model.pipeline import LatentDiffusionPipeline
    from model.metrics.budget import check_sizes
    from model.scripts.common import held_out, output_folder, pixel_protocol, resolve_device

    device = resolve_device(args.device)
    pipe = LatentDiffusionPipeline.from_pretrained(args.load, device)
    check_args(args, pipe)
    args.spec = sampler_spec(args, pipe.diff)
    clf, extractor, fid = load_judges(args, pipe, device)
    dm = held_out(pipe.cfg.data)  # refuses an empty validation split before the output folder exists
    protocol = None
    if fid is not None:
        protocol = pixel_protocol(args, dm)
        check_sizes(min(args.real_pool, len(dm.all_items())), args.num_samples)
    out = output_folder(args.output, args.load, "evaluation")

    report: dict[str, Any] = {"denoiser": str(args.load), "sampler": sampler_text(args, pipe),
                              "num_samples": args.num_samples, "seed": args.seed}
    if fid is None:
        report.update(evaluate_points(args, pipe, dm, out))
    else:
        report.update(evaluate_images(args, pipe, dm, clf, extractor, fid, protocol, out, device))
    write_text(out / "evaluation.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "evaluation.md", markdown(report))
    print(table(report))
    print(f"wrote evaluation.json and evaluation.md to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
