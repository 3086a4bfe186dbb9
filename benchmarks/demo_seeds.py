"""The demo's quality as a distribution over training seeds: one row per run's sample report
(`model.scripts.demo_report`), then their mean ± std, then the recipe's bounds, each checked on every seed.

    python -m benchmarks.demo_seeds runs/digits-1 runs/digits-2 runs/digits-3 [--cfg-scale 0]

Each run folder needs denoiser/report/report.json; `main_wall_s` beside it (written by scripts/demo_benchmark.sh)
adds the main command's wall time. Every figure is the run's error budget at one guidance scale w: the samples' pixel
FD over the real floor's, their precision and recall over the floor's (1 = as good as real images), the class
accuracy, and the memorisation ratio (median distance to the nearest training image over held-out images').
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Report
from model.errors import ArgParser, UserError, cli_entry
from model.metrics.budget import FLOOR, ROUND_TRIP

NAME = "demo_seeds"
# (column, test, text): what the recipe promises for w = 0; every seed must pass all but the mean bound
BOUNDS = [
    ("FD / floor", lambda v: max(v) <= 1.25, "every seed's pixel FD <= 1.25x the floor's"),
    ("FD / floor", lambda v: statistics.fmean(v) <= 1.15, "mean pixel FD <= 1.15x the floor's"),
    ("recall / floor", lambda v: min(v) >= 0.93, "every seed's recall >= 0.93x the floor's"),
    ("class accuracy", lambda v: min(v) >= 0.99, "every seed's class accuracy >= 99%"),
]


def run_row(folder: Path, w: float) -> dict[str, Any]:
    path = folder / "denoiser" / "report" / "report.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; run model.scripts.demo_report on {folder} first")
    report = json.loads(path.read_text())
    scale = next((s for s in report["scales"] if s["cfg_scale"] == w), None)
    if scale is None:
        raise UserError(f"{path} has no samples at w = {w:g}; run demo_report with --cfg-scale {w:g}")
    rows = {r["row"]: r for r in report["pixel_budget"]["rows"]}
    samples, floor = rows[f"samples w={w:g}"], rows[FLOOR]
    row = {"run": folder.name,
           "FD / floor": samples["pixel_fd"]["mean"] / floor["pixel_fd"]["mean"],
           "precision / floor": samples["precision"]["mean"] / floor["precision"]["mean"],
           "recall / floor": samples["recall"]["mean"] / floor["recall"]["mean"],
           "class accuracy": scale["accuracy"],
           "NN / held-out": scale["nn_distance_ratio"]}
    if ROUND_TRIP in rows:
        row["round trip FD / floor"] = rows[ROUND_TRIP]["pixel_fd"]["mean"] / floor["pixel_fd"]["mean"]
    wall = folder / "main_wall_s"
    if wall.is_file():
        row["main command s"] = float(wall.read_text())
    return row


def spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of every numeric column (std over the runs, n - 1; 0 for one run)."""
    out: dict[str, Any] = {"run": f"mean ± std ({len(rows)} runs)"}
    for key in rows[0]:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if key != "run" and values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[key] = f"{statistics.fmean(values):.3f} ± {std:.3f}"
    return out


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for column, test, text in BOUNDS:
        values = [r[column] for r in rows]
        lines.append(f"{'met' if test(values) else 'MISSED'}: {text} (runs: {', '.join(f'{v:.3f}' for v in values)})")
    return lines


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m benchmarks.demo_seeds", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (runs/digits-1 ...), one per training seed")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, default=0.0, help="guidance scale w to read (0)")
    args = p.parse_args(argv)
    report = Report(NAME, torch.device("cpu"))  # the header names the machine the figures are read on
    rows = [run_row(Path(folder), args.cfg_scale) for folder in args.runs]
    note = "\n".join(verdicts(rows)) if args.cfg_scale == 0 else ""
    report.table(f"The demo over {len(rows)} training runs, DDIM-25 at w = {args.cfg_scale:g}",
                 [*rows, spread(rows)], note=note)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
