"""The training CLI.

    python -m model.main -cfg config/digits.json --train-vae --train-denoiser -n 1
    python -m model.main -cfg config/ffhq-beta-vae.json --train-vae -n 1
    python -m model.main -cfg config/ffhq-denoiser.json --train-denoiser --load-vae <vae.ckpt> -n 1
    python -m model.main -cfg ... --train-denoiser --load <denoiser last.ckpt> -n 1      (resume)

Any config key can follow as `--dotted.key value`; `--print_config` prints the resolved config and exits.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from model.cli_config import add_config_arguments, build_config, new_parser, parse
from model.config import Config, check_denoiser_shapes, from_dict, to_dict
from model.checkpoint import CONFIG_KEY, read_checkpoint
from model.errors import UserError, cli_entry


def make_parser():
    p = new_parser("python -m model.main", "Train the beta-VAE (stage 1) and/or the denoiser (stage 2).")
    add_config_arguments(p)
    p.add_argument("--train-vae", action="store_true", help="train stage 1, the beta-VAE")
    p.add_argument("--train-denoiser", action="store_true", help="train stage 2, the denoiser")
    p.add_argument("--load-vae", type=Optional[str], default=None, help="stage-1 checkpoint the denoiser uses")
    p.add_argument("--load", type=Optional[str], default=None, help="checkpoint of the stage to resume")
    p.add_argument("-n", "--run", type=Optional[int], default=None,
                   help="run number: the run folder is <output_dir>/<config name>-<n> (default: next free)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def check_modes(args) -> None:
    if not (args.train_vae or args.train_denoiser):
        raise UserError("nothing to do: pass --train-vae, --train-denoiser, or both")
    if args.load and args.train_vae and args.train_denoiser:
        raise UserError("--load resumes one stage; pass it with only --train-vae or only --train-denoiser")
    if args.load_vae and args.train_vae:
        raise UserError("--load-vae conflicts with --train-vae (which trains a new VAE); drop one of them")
    if args.run is not None and args.run < 0:
        raise UserError(f"-n must be >= 0, got {args.run}")


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
                           "denoiser.unet", "denoiser.toy")}


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

@cli_entry
def main(argv: list[str]) -> int:
    parser = make_parser()
    args = parse(parser, argv)
    check_modes(args)
    cfg = build_config(parser, args)
    stage = "denoiser" if args.train_denoiser else "vae"
    # the config stored in the checkpoint being resumed, read once (a clear error before Lightning restores it)
    resumed = read_checkpoint(args.load, expected=stage)[CONFIG_KEY] if args.load else None
    if args.load_vae:
        cfg = with_vae_of(cfg, read_checkpoint(args.load_vae, expected="vae")[CONFIG_KEY], args.load_vae)
    elif resumed is not None and args.train_denoiser:
        cfg = with_vae_of(cfg, resumed, args.load)
    if resumed is not None:
        check_resume_fits(cfg, resumed, args.load, stage)
    if args.train_denoiser:
        check_denoiser_shapes(cfg)

    from model.lightning.run import next_run_number, run_dir, train_stage

    n = args.run if args.run is not None else next_run_number(cfg)
    folder = run_dir(cfg, n)
    vae_ckpt = args.load_vae
    if args.train_vae:
        vae_ckpt = str(train_stage("vae", cfg, folder, load=args.load if not args.train_denoiser else None))
        rank_zero_print(f"VAE checkpoint: {vae_ckpt}")
    if args.train_denoiser:
        last = train_stage("denoiser", cfg, folder, load=args.load, load_vae=vae_ckpt)
        rank_zero_print(f"denoiser checkpoint: {last}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
