"""The training CLI.

    python -m model.main -cfg config/digits.json --train-vae --train-denoiser -n 1
    python -m model.main -cfg config/ffhq-beta-vae.json --train-vae -n 1
    python -m model.main -cfg config/ffhq-denoiser.json --train-denoiser --load-vae <vae.ckpt> -n 1
    python -m model.main -cfg ... --train-denoiser --load <denoiser last.ckpt> -n 1      (resume)
    python -m model.main -cfg ... --train-vae --train-denoiser -n 1 --auto-resume     (what train.sbatch runs)

Any config key can follow as `--dotted.key value`; `--print_config` prints the resolved config and exits.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Optional

from model.cli_config import add_config_arguments, build_config, new_parser, parse
from model.cli_config import from_dict
from model.config import Config, check_denoiser_shapes, to_dict
from model.checkpoint import CONFIG_KEY, read_checkpoint
from model.denoiser import NETWORKS
from model.errors import WRITE_ERRNOS, UserError, WriteFailed, cli_entry, write_failed
from model.run_folder import last_checkpoint, newest_checkpoint, next_run_number, run_dir
from model.run_lock import RunLock
from model.writes import check_writable, missing_folders, remove_if_empty


@functools.cache  # building it walks every Config field (tens of ms); parsing leaves it unchanged, so reuse it
def make_parser():
    p = new_parser("python -m model.main", "Train the beta-VAE (stage 1) and/or the denoiser (stage 2).")
    add_config_arguments(p)
    p.add_argument("--train-vae", action="store_true", help="train stage 1, the beta-VAE")
    p.add_argument("--train-denoiser", action="store_true", help="train stage 2, the denoiser")
    p.add_argument("--load-vae", type=Optional[str], default=None, help="stage-1 checkpoint the denoiser uses")
    p.add_argument("--load", type=Optional[str], default=None, help="checkpoint of the stage to resume")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue each stage from <run>/<stage>/checkpoints/last.ckpt when an earlier start of this "
                        "run (-n) wrote one, and skip a stage that reached its max_steps (a requeued SLURM job)")
    p.add_argument("-n", "--run", type=Optional[int], default=None,
                   help="run number: the run folder is <output_dir>/<config name>-<n> (default: next free)")
    p.add_argument("--verbose", action="store_true",
                   help="show Lightning's start-up notes and the framework warnings a normal run hides")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


LAYOUT_KEYS = ("accelerator", "devices", "num_nodes", "strategy")  # what decides the processes a stage runs as


def check_modes(args) -> None:
    if not (args.train_vae or args.train_denoiser):
        raise UserError("nothing to do: pass --train-vae, --train-denoiser, or both")
    if args.load and args.train_vae and args.train_denoiser:
        raise UserError("--load resumes one stage; pass it with only --train-vae or only --train-denoiser")
    if args.load_vae and args.train_vae:
        raise UserError("--load-vae conflicts with --train-vae (which trains a new VAE); drop one of them")
    if args.run is not None and args.run < 0:
        raise UserError(f"-n must be >= 0, got {args.run}")
    if args.auto_resume and args.run is None:
        raise UserError("--auto-resume continues a numbered run: pass -n too (train.sbatch uses the SLURM job id)")
    if args.auto_resume and args.load:
        raise UserError("--auto-resume finds the checkpoint itself in the run folder; drop --load")


def with_vae_of(cfg: Config, stored: dict, ckpt_path: str) -> Config:
    """Take the VAE section from a checkpoint's config (a VAE, or the denoiser being resumed) so stage 2 agrees."""
    new = dataclasses.replace(cfg, vae=from_dict(stored).vae)
    try:
        check_denoiser_shapes(new)
    except UserError as err:
        raise UserError(f"the checkpoint {ckpt_path} does not fit this config: {err}") from err
    return new

def rank_zero_print(message: str) -> None:
    """Print once per run: under DDP every rank runs this script, and only rank zero should speak."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(message)


# the keys that fix a stage's network shapes: a resumed stage must have the values its checkpoint was trained with
SHAPE_KEYS = {"vae": ("data.channels", "vae.net"),
              "denoiser": ("data.channels", "data.image_size", "denoiser.network", "denoiser.autoencoder",
                           *(f"denoiser.{n.config_field}" for n in NETWORKS.values()))}


def flat(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume_fits(cfg: Config, stored: dict, ckpt_path: str, stage: str) -> None:
    """Resuming with other network shapes than the checkpoint's would fail inside Lightning; name the key instead."""
    ours, theirs = flat(to_dict(cfg)), flat(stored)
    for key in sorted(ours):
        if key.startswith(SHAPE_KEYS[stage]) and key in theirs and ours[key] != theirs[key]:
            raise UserError(f"the checkpoint {ckpt_path} does not fit this config: {key} is {theirs[key]} there but "
                            f"{ours[key]} here; resume with the checkpoint's value or start a new run with -n")

def resume_points(args, folder: Path) -> dict[str, Optional[str]]:
    """The checkpoint each stage continues from: --load for the one stage trained, or with --auto-resume the
    stage's own last.ckpt in the run folder (None: a fresh start)."""
    if not args.auto_resume:
        stage = "denoiser" if args.train_denoiser else "vae"
        return {stage: args.load, ("vae" if stage == "denoiser" else "denoiser"): None}
    found = {stage: last_checkpoint(folder, stage) for stage in ("vae", "denoiser")}
    return {stage: str(path) if path else None for stage, path in found.items()}


def read_resumed(args, loads: dict[str, Optional[str]]) -> dict[str, tuple[dict, int]]:
    """(stored config, global step) of each checkpoint a trained stage resumes from: read once, before Lightning."""
    out = {}
    for stage, path in loads.items():
        if path and getattr(args, f"train_{stage}"):
            ckpt = read_checkpoint(path, expected=stage)
            out[stage] = (ckpt[CONFIG_KEY], int(ckpt.get("global_step", 0)))
    return out


def checked_config(cfg: Config, args, loads: dict[str, Optional[str]], stored: dict[str, dict]) -> Config:
    """The config with the VAE section of the stage-1 checkpoint in use, checked against what is resumed."""
    if args.load_vae:
        cfg = with_vae_of(cfg, read_checkpoint(args.load_vae, expected="vae")[CONFIG_KEY], args.load_vae)
    elif "denoiser" in stored:
        cfg = with_vae_of(cfg, stored["denoiser"], loads["denoiser"])
    for stage, config in stored.items():
        check_resume_fits(cfg, config, loads[stage], stage)
    if args.train_denoiser:
        check_denoiser_shapes(cfg)
    return cfg


@cli_entry
def main(argv: list[str]) -> int:
    parser = make_parser()
    args = parse(parser, argv)
    check_modes(args)
    cfg = build_config(parser, args)
    n = args.run if args.run is not None else next_run_number(cfg)
    folder = run_dir(cfg, n)
    loads = resume_points(args, folder)
    resumed = read_resumed(args, loads)
    cfg = checked_config(cfg, args, loads, {stage: config for stage, (config, _) in resumed.items()})
    check_process_layout(args, cfg)
    # a requeued job whose stage had reached its max_steps goes on to the next stage
    finished = {stage: step >= getattr(cfg, stage).trainer.max_steps for stage, (_, step) in resumed.items()}

    from model.lightning.trainer import quiet_frameworks, release_process_group

    if not args.verbose:
        quiet_frameworks()
    if args.train_vae and args.train_denoiser and not finished.get("denoiser"):
        from model.lightning.trainer import check_denoiser_stage

        check_denoiser_stage(cfg, vae_trained_first=not finished.get("vae"))
    check_writable(folder, "output_dir")  # a read-only or full output folder: refused before training starts
    created = missing_folders(folder.absolute())
    try:
        with RunLock(folder):  # one run per folder: a second start on it stops here, naming the first
            train_stages(args, cfg, folder, loads, finished)
        release_process_group()
    finally:
        remove_if_empty(created)  # refused before anything was written: leave no empty run folder behind
    return 0


def check_process_layout(args, cfg: Config) -> None:
    """Every rank runs the whole command (srun starts each task on it, Lightning's launcher starts ranks 1.. on it),
    so the stages of one command must run as the same processes."""
    if not (args.train_vae and args.train_denoiser):
        return
    layout = {stage: tuple(getattr(getattr(cfg, stage).trainer, key) for key in LAYOUT_KEYS)
              for stage in ("vae", "denoiser")}
    if layout["vae"] != layout["denoiser"]:
        raise UserError(f"the stages run as different processes ({', '.join(LAYOUT_KEYS)}: vae {layout['vae']}, "
                        f"denoiser {layout['denoiser']}); in one command set them equal, or train the stages in two "
                        f"commands (--train-vae, then --train-denoiser --load-vae)")


def train_stages(args, cfg: Config, folder: Path, loads: dict[str, Optional[str]], finished: dict[str, bool]) -> None:
    """The stages asked for, in order; a failed write names the newest whole checkpoint to resume from."""
    from model.lightning.trainer import train_stage

    vae_ckpt = args.load_vae
    stage = "vae"
    try:
        if args.train_vae:
            vae_ckpt = loads["vae"] if finished.get("vae") else str(train_stage("vae", cfg, folder, load=loads["vae"]))
            rank_zero_print(f"VAE checkpoint: {vae_ckpt}")
        stage = "denoiser"
        if args.train_denoiser:
            last = loads["denoiser"]
            if not finished.get("denoiser"):
                last = str(train_stage("denoiser", cfg, folder, load=last, load_vae=vae_ckpt))
            rank_zero_print(f"denoiser checkpoint: {last}")
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise with_resume_hint(write_failed(err, Path(err.filename or folder)), folder, stage) from err
    except WriteFailed as err:
        raise with_resume_hint(err, folder, stage) from err


def with_resume_hint(err: WriteFailed, folder: Path, stage: str) -> UserError:
    """The write error plus what to resume from: the stage's newest whole checkpoint (every one is written whole)."""
    newest = newest_checkpoint(folder / stage)
    if newest is None:
        return UserError(f"{err}; no {stage} checkpoint was written yet, so start the stage again")
    path, step = newest
    return UserError(f"{err}; the newest whole checkpoint is {path} (step {step}): resume with the same command "
                     f"plus --load {path}")

if __name__ == "__main__":
    raise SystemExit(main())
