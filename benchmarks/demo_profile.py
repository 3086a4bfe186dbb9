"""Where the README's main command spends its wall time: both training stages under Lightning's SimpleProfiler
(`trainer.profile`), then the sampling command, each as the user runs it (a fresh process).

    python -m benchmarks.demo_profile [--config config/digits.json] [-- <overrides for the main command>]

Prints one table: every part of the command with its seconds and its share of the command's wall time. The stage
parts come from the profiler's totals, with nested actions taken apart (Lightning's optimiser step holds the
training step, the backward pass, gradient clipping and the EMA update); "Lightning loop and logging" is the rest
of the stage's `fit` (self.log, the loggers, the loop's own bookkeeping). "process start" is what the command's
process spends outside the stages: imports, reading the data, building the networks. Run it alone on the machine.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks.common import Report, make_parser, parse, timed_process
from model.errors import cli_entry
from model.lightning.profile import PROFILE_FILE

NAME = "demo_profile"
STAGES = ("vae", "denoiser")


def total(actions: dict[str, dict[str, float]], test) -> float:
    return sum(a["total_s"] for name, a in actions.items() if test(name))


def stage_parts(profile: dict[str, Any]) -> dict[str, float]:
    """Seconds of each part of one stage from its profile.json; the parts add up to the stage's wall time."""
    a = profile["actions"]
    step = total(a, lambda n: n.startswith("[LightningModule]") and n.endswith(".optimizer_step"))
    forward = total(a, lambda n: n.startswith("[Strategy]") and n.endswith(".training_step"))
    backward = total(a, lambda n: n.startswith("[Strategy]") and n.endswith(".backward"))
    clip_and_zero = total(a, lambda n: n.endswith((".configure_gradient_clipping", ".optimizer_zero_grad")))
    ema = total(a, lambda n: n == "ema_update")
    parts = {
        "data (loading batches)": total(a, lambda n: n.endswith(("dataloader_next", "val_next", "batch_to_device"))),
        "data setup (latent cache: VAE encode)": total(a, lambda n: n.startswith("[LightningDataModule]")),
        "forward and loss": forward,
        "backward": backward,
        "optimiser (clip, AdamW, zero grad)": max(step - forward - backward - ema, 0.0) if step else clip_and_zero,
        "EMA update": ema,
        "validation": total(a, lambda n: n.startswith("[Strategy]") and n.endswith(".validation_step")),
        "quality evaluations (samples + metrics)": total(a, lambda n: n.startswith("[Callback]QualityDuringTraining")),
        "checkpoints": total(a, lambda n: n == "save_checkpoint"),
        "image grids": total(a, lambda n: n.startswith("[Callback]ImageGrid")),
        "progress bar": total(a, lambda n: n.startswith("[Callback]StepProgressBar")),
    }
    parts["Lightning loop and logging"] = max(profile["wall_s"] - sum(parts.values()), 0.0)
    return parts


def rows_of(profiles: dict[str, dict[str, Any]], main_s: float, sample_s: float) -> list[dict[str, Any]]:
    wall = main_s + sample_s
    rows = []
    for stage in STAGES:
        rows += [{"stage": stage, "part": part, "s": s} for part, s in stage_parts(profiles[stage]).items()]
    rows.append({"stage": "main", "part": "process start (imports, data, networks)",
                 "s": max(main_s - sum(p["wall_s"] for p in profiles.values()), 0.0)})
    rows.append({"stage": "sample", "part": "sampling command (process, the config's sampler, grids, GIF)",
                 "s": sample_s})
    for row in rows:
        row["share %"] = 100 * row["s"] / wall
    rows.append({"stage": "all", "part": "README main command", "s": wall, "share %": 100.0})
    return rows


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__.split("\n")[0], repeats=1, warmup=0)
    p.add_argument("--output", default="runs/bench-profile", help="folder of the profiled run (deleted first)")
    p.add_argument("overrides", nargs="*", help="after --: overrides for the main command, as on its command line")
    args = parse(p, argv)
    report = Report(NAME, args.device)
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    run = out / f"{Path(args.config).stem}-1"  # the run folder is named after the config file
    main_s = timed_process(["-m", "model.main", "-cfg", args.config, "--train-vae", "--train-denoiser", "-n", "1",
                        "--output_dir", str(out), "--vae.trainer.profile", "true",
                        "--denoiser.trainer.profile", "true", *args.overrides])
    sample_s = timed_process(["-m", "model.scripts.sample", "--load", str(run / "denoiser" / "checkpoints" / "last.ckpt"),
                          "--per-class", "8"])  # the config's sampler
    profiles = {s: json.loads((run / s / PROFILE_FILE).read_text()) for s in STAGES}
    report.table(f"Where the main command's time goes ({args.config})", rows_of(profiles, main_s, sample_s),
                 note="Stage parts from Lightning's SimpleProfiler (trainer.profile); the full per-action tables are "
                      f"{run}/<stage>/fit-profile.txt.")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
