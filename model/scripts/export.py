"""Export a trained denoiser as a folder of safetensors, its config and a model card; optionally publish it.

    python -m model.scripts.export --load runs/digits-1/denoiser/checkpoints/last.ckpt --output exports/digits
    python -m model.scripts.export --load <ckpt> --output exports/digits --push-to-hub <user>/<name>

The folder (see model/export.py) loads with `LatentDiffusionPipeline.from_pretrained(folder)`, and `sample`,
`reimagine` and `evaluate` take it wherever they take a checkpoint. The model card includes the figures of
`model.scripts.evaluate` when `evaluation/evaluation.json` beside the checkpoint's folder evaluated this checkpoint.
An existing export folder is refused unless --overwrite; nothing is written before every check has passed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from model.errors import ArgParser, UserError, cli_entry


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.export", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="denoiser training checkpoint (.ckpt)")
    p.add_argument("--output", required=True, help="the export folder")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing export folder")
    p.add_argument("--push-to-hub", "--push_to_hub", default=None, metavar="NAME",
                   help="also upload the folder to the Hugging Face hub as model repository NAME (user/name)")
    p.add_argument("--debug", action="store_true")
    return p


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file, not a folder; pick a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--output {out} is not empty; pick a new folder or pass --overwrite to replace its export")


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    from model.cli_config import from_dict
    from model.export import checkpoint_contents, find_evaluation, model_card, push_to_hub, write_export
    from model.pipeline import LatentDiffusionPipeline

    out, ckpt = Path(args.output), Path(args.load)
    check_output(out, args.overwrite)
    if args.push_to_hub is not None and args.push_to_hub.count("/") != 1:
        raise UserError(f"--push-to-hub {args.push_to_hub!r} is not a repository name; use user/name")
    config, num_classes, step, tensors = checkpoint_contents(ckpt)
    cfg = from_dict(config)
    LatentDiffusionPipeline.build(cfg, num_classes, tensors, "cpu", str(ckpt))  # the weights fit: refuse before writing
    evaluation = find_evaluation(ckpt)
    card = model_card(cfg, num_classes, step, str(ckpt), evaluation)
    written = write_export(out, config, num_classes, step, tensors, card)
    print(f"exported {ckpt} (step {step}) to {out}: {', '.join(p.name for p in written)}"
          + ("; the model card includes its evaluation" if evaluation else ""))
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
