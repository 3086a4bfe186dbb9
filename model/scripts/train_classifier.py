"""Train the small CNN classifier on a config's data (train split) and report its held-out accuracy.

    python -m model.scripts.train_classifier -cfg config/digits.json
    python -m model.scripts.train_classifier -cfg config/digits.json --epochs 5 --seed 1 --output runs/classifiers/d.pt

The classifier judges generated samples (model.scripts.demo_report) and serves as a feature extractor. Any
config key may follow `-cfg` as `--dotted.key value` (e.g. `--data.image_size 16`); `--seed` is the config's
seed and seeds the classifier's training. The checkpoint goes to `<output_dir>/classifiers/<config name>.pt`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from data.sources import kind_of
from model.errors import UserError, cli_entry

DEFAULT_EPOCHS = 15  # ~99 % held-out accuracy on digits; a few minutes on 2 CPU cores at 32 px
DEFAULT_LR = 3e-3  # AdamW with a cosine decay; BatchNorm makes this high rate stable


def make_parser():
    from model.cli_config import add_config_arguments, new_parser

    p = new_parser("python -m model.scripts.train_classifier", __doc__.split("\n")[0])
    add_config_arguments(p)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="passes over the training split")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak AdamW learning rate")
    p.add_argument("--output", type=Optional[str], default=None,
                   help="checkpoint path (default: <output_dir>/classifiers/<config name>.pt)")
    return p


@cli_entry
def main(argv: list[str]) -> int:
    from model.cli_config import build_config, parse

    parser = make_parser()
    args = parse(parser, argv)
    cfg = build_config(parser, args)
    if kind_of(cfg.data.name) != "images":
        raise UserError(f"data.name {cfg.data.name} holds {kind_of(cfg.data.name)}, not images; the classifier "
                        f"needs an image data set")
    if args.epochs <= 0:
        raise UserError(f"--epochs must be > 0, got {args.epochs}")
    if args.lr <= 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    out = Path(args.output) if args.output else Path(cfg.output_dir) / "classifiers" / f"{cfg.name}.pt"
    if out.is_dir():
        raise UserError(f"--output {out} is a folder; pass a file path such as {out}/classifier.pt")

    from data import make_datamodule
    from model.classifier import save_classifier, train_classifier
    from model.config import to_dict

    dm = make_datamodule(cfg.data)
    start = time.perf_counter()
    model, acc = train_classifier(dm, args.epochs, args.lr, cfg.seed)
    seconds = time.perf_counter() - start
    meta = {"config_name": cfg.name, "data": to_dict(cfg)["data"], "class_names": list(dm.class_names),
            "epochs": args.epochs, "lr": args.lr, "seed": cfg.seed, "train_items": len(dm.train_set),
            "val_items": len(dm.val_set), "val_accuracy": None if acc != acc else acc}
    save_classifier(out, model, meta)
    held_out = "no validation split (data.val_fraction 0)" if acc != acc else f"{acc:.4f} on {len(dm.val_set)} items"
    print(f"trained {args.epochs} epochs on {len(dm.train_set)} items in {seconds:.0f} s; "
          f"held-out accuracy {held_out}")
    print(f"classifier checkpoint: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
