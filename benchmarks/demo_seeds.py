"""The demo's quality as a distribution over training seeds: per feature space one row per run's sample report
(`model.scripts.demo_report`), then their mean ± std, then the recipe's bounds, each checked on every seed.

    python -m benchmarks.demo_seeds runs/digits-1 runs/digits-2 runs/digits-3 [--cfg-scale 0]
    python -m benchmarks.demo_seeds runs/emoji-1 runs/emoji-2 runs/emoji-3 --bounds emoji
    python -m benchmarks.demo_seeds runs/digits-1 runs/digits-2 --report report-s1.1  # another sampling's reports

Each run folder needs denoiser/report/report.json (or denoiser/<--report>/report.json: demo_report's --output there);
`main_wall_s` beside it (written by scripts/demo_benchmark.sh) adds the main command's wall time. Every figure is the
run's error budget at one guidance scale w: in each feature space (pixels at each compared size, the classifier's
features), the samples' FD over the real floor's, their precision and recall over the floor's (1 = as good as real
images); then the class accuracy beside the classifier's on held-out real images, and the memorisation ratio (median
distance to the nearest training image over held-out images'). A report with several draws of the samples
(`demo_report --sample-draws N`) gives the mean of their figures, and its run is named with the count. Runs in folders
of one name (peer_equal_time's seed-S/digits-1) are named by their path below the runs' common parent.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import Report
from model.errors import ArgParser, UserError, cli_entry
from model.metrics.budget import FLOOR, ROUND_TRIP
from model.scripts.demo_report import all_budgets, sample_draws, sampling

NAME = "demo_seeds"
CLASSES = "class"  # the table of class accuracy, the copy check and the wall time


def at_most(bound: float) -> Callable[[list[float]], bool]:
    return lambda values: max(values) <= bound


def at_least(bound: float) -> Callable[[list[float]], bool]:
    return lambda values: min(values) >= bound


def emoji_space_bounds(space: str) -> list[tuple]:
    return [(space, "FD / floor", at_most(1.5), f"every seed's {space} FD <= 1.5x the floor's"),
            (space, "precision / floor", at_least(0.9), f"every seed's {space} precision >= 0.9x the floor's"),
            (space, "recall / floor", at_least(0.9), f"every seed's {space} recall >= 0.9x the floor's")]


# What each recipe promises for w = 0, as (table, column, test over the runs' values, text); a bound is met only
# when every seed meets it, except where the text says mean.
BOUNDS = {
    "digits": [
        ("pixels 8", "FD / floor", at_most(1.25), "every seed's pixel FD <= 1.25x the floor's"),
        ("pixels 8", "FD / floor", lambda v: statistics.fmean(v) <= 1.15, "mean pixel FD <= 1.15x the floor's"),
        ("pixels 8", "recall / floor", at_least(0.93), "every seed's recall >= 0.93x the floor's"),
        (CLASSES, "class accuracy", at_least(0.99), "every seed's class accuracy >= 99%"),
    ],
    "emoji": [
        *emoji_space_bounds("pixels 16"), *emoji_space_bounds("pixels 32"),
        (CLASSES, "held-out - class accuracy", at_most(0.05),
         "every seed's class accuracy within 5 points of held-out real images'"),
        (CLASSES, "NN / held-out", at_least(0.95),
         "every seed's nearest-training-image distance >= 0.95x held-out images'"),
    ],
}


def read_report(folder: Path, w: float, name: str = "report") -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's sample report (the folder `name` beside its checkpoints) and its entry for guidance scale w."""
    path = folder / "denoiser" / name / "report.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; run model.scripts.demo_report on {folder} first")
    report = json.loads(path.read_text())
    scale = next((s for s in report["scales"] if s["cfg_scale"] == w), None)
    if scale is None:
        raise UserError(f"{path} has no samples at w = {w:g}; run demo_report with --cfg-scale {w:g}")
    return report, scale


def run_names(folders: list[Path]) -> list[str]:
    """Each run's name in the tables: its folder's name, or, where two runs share one (runs/a/digits-1 and
    runs/b/digits-1), its path below the runs' common parent."""
    names = [f.name for f in folders]
    if len(set(names)) == len(names):
        return names
    parent = Path(os.path.commonpath([f.resolve() for f in folders]))
    return [str(f.resolve().relative_to(parent)) for f in folders]


def space_row(run: str, budget: dict[str, Any], w: float) -> dict[str, Any]:
    """One run's figures in one feature space, each over the floor's; the mean over the samples' draws where the
    report has several."""
    rows = {r["row"]: r for r in budget["rows"]}
    draws, floor = sample_draws(rows, w), rows[FLOOR]
    row = {"run": run + (f" ({len(draws)} draws)" if len(draws) > 1 else "")}
    for name, metric in (("FD", "pixel_fd"), ("precision", "precision"), ("recall", "recall"),
                         ("coverage", "coverage")):
        if metric in draws[0]:  # reports written before coverage have none
            row[f"{name} / floor"] = statistics.fmean(d[metric]["mean"] for d in draws) / floor[metric]["mean"]
    if ROUND_TRIP in rows:
        row["round trip FD / floor"] = rows[ROUND_TRIP]["pixel_fd"]["mean"] / floor["pixel_fd"]["mean"]
    return row


def class_row(folder: Path, run: str, report: dict[str, Any], scale: dict[str, Any]) -> dict[str, Any]:
    """One run's class accuracy beside the classifier's on held-out real images, the copy check, the wall time."""
    row = {"run": run, "class accuracy": scale["accuracy"]}
    held = (report.get("held_out") or {}).get("accuracy", report.get("classifier_val_accuracy"))
    if held is not None:
        row["held-out accuracy"] = held
        row["held-out - class accuracy"] = held - scale["accuracy"]
    row["NN / held-out"] = scale["nn_distance_ratio"]
    wall = folder / "main_wall_s"
    if wall.is_file():
        row["main command s"] = float(wall.read_text())
    return row


def run_tables(folder: Path, w: float, name: str = "report", run: str = "") -> tuple[dict[str, dict[str, Any]], str]:
    """{table: row} of one run (one per feature space of its report, then CLASSES; the run named `run`, by default
    its folder's name) and how its samples were drawn."""
    report, scale = read_report(folder, w, name)
    run = run or folder.name
    tables = {space: space_row(run, budget, w) for space, budget in all_budgets(report).items()}
    return {**tables, CLASSES: class_row(folder, run, report, scale)}, sampling(report)


def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of every numeric column (std over the runs, n - 1; 0 for one run)."""
    out: dict[str, Any] = {"run": f"mean ± std ({len(rows)} runs)"}
    for key in rows[0]:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if key != "run" and values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[key] = f"{statistics.fmean(values):.3f} ± {std:.3f}"
    return out


def verdicts(tables: dict[str, list[dict[str, Any]]], recipe: str) -> list[str]:
    lines = []
    for table, column, test, text in BOUNDS[recipe]:
        values = [r[column] for r in tables.get(table, []) if column in r]
        if not values:
            lines.append(f"not measured: {text} (no {table} {column} in the reports)")
            continue
        lines.append(f"{'met' if test(values) else 'MISSED'}: {text} (runs: {', '.join(f'{v:.3f}' for v in values)})")
    return lines


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m benchmarks.demo_seeds", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (runs/digits-1 ...), one per training seed")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, default=0.0, help="guidance scale w to read (0)")
    p.add_argument("--bounds", choices=sorted(BOUNDS), default="digits", help="the recipe whose bounds to check")
    p.add_argument("--report", default="report",
                   help="the report folder in each run's denoiser folder (demo_report's default output: report)")
    args = p.parse_args(argv)
    if Path(args.report).name != args.report:
        raise UserError(f"--report names a folder inside each run's denoiser folder, got the path {args.report!r}")
    report = Report(NAME, torch.device("cpu"))  # the header names the machine the figures are read on
    folders = [Path(folder) for folder in args.runs]
    per_run, samplings = zip(*(run_tables(folder, args.cfg_scale, args.report, run)
                               for folder, run in zip(folders, run_names(folders))))
    tables = {name: [run[name] for run in per_run if name in run] for name in per_run[0]}
    drawn = " / ".join(sorted(set(samplings)))  # one sampler, unless the runs' reports differ
    for name, rows in tables.items():
        what = "class accuracy, copy check and wall time" if name == CLASSES else f"{name} features"
        report.table(f"The demo over {len(rows)} training runs, {drawn} at w = {args.cfg_scale:g}: {what}",
                     [*rows, spread(rows)])
    if args.cfg_scale == 0:
        print("\n" + "\n".join(verdicts(tables, args.bounds)))
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
