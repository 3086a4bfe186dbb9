"""Does a text model draw what its prompts say? Agreement of samples with their prompts, beside the real floor and
the shuffled-caption chance level, and the pixel error budget.

    python -m model.scripts.train_classifier -cfg config/emoji-text.json --data.labels true \
        --data.label_field subcategory --data.captions false --output runs/classifiers/emoji-subcategory.pt
    python -m model.scripts.prompt_agreement --load runs/emoji-text-1/denoiser/checkpoints/last.ckpt \
        --classifier runs/classifiers/emoji-subcategory.pt --label-field subcategory --cfg-scale 0 3

Without CLIP weights a CLIP score cannot be computed, so a classifier trained on the real images judges: each
held-out image's caption is a prompt, its sample should show that image's class (here the emoji's subcategory,
read from metadata.jsonl by `data.label_field`). Agreement is the share of samples the classifier assigns to
their prompt's class. Two references make the figure readable: the floor, the same classifier on the held-out real
images themselves (how often a real picture of the caption is recognised), and chance, the samples scored against
the classes of shuffled captions (what a model that ignores its prompt would get). Writes report.json, report.md
and grid.png (one row per prompt: the real image, then its samples at each w) to `--output`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import torch
from torch import Tensor

from model.errors import ArgParser, UserError, cli_entry
from model.scripts.common import add_pixel_arguments, add_spacing_argument
from model.writes import write_text

GRID_ROWS = 12  # prompts shown in grid.png


def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.prompt_agreement", description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="a text-conditional denoiser checkpoint (.ckpt) or export folder")
    p.add_argument("--classifier", required=True, help="classifier .pt from model.scripts.train_classifier, trained "
                                                       "on the same data with --data.label_field")
    p.add_argument("--label-field", "--label_field", required=True,
                   help="the metadata.jsonl field the classifier's classes come from (emoji: subcategory)")
    p.add_argument("--cfg-scale", "--cfg_scale", type=float, nargs="+", default=[0.0, 3.0],
                   help="guidance scales w: (1+w)·cond − w·uncond, uncond the empty prompt")
    p.add_argument("--data-root", "--data_root", default=None,
                   help="the image folder (default: the checkpoint's data.root)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--max-prompts", "--max_prompts", type=int, default=None,
                   help="at most this many held-out captions (a seeded subset; default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise and of the shuffled captions")
    p.add_argument("--batch-size", "--batch_size", type=int, default=250, help="samples drawn at once")
    add_spacing_argument(p)
    add_pixel_arguments(p)
    p.add_argument("--output", default=None, help="output folder (default: agreement/ beside the checkpoints)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    return p


def held_out_captions(pipe, field: str, max_prompts, seed: int, root=None):
    """The data module with classes from `field`, and the held-out (images, classes, captions), a seeded subset."""
    from data import make_datamodule

    data = dataclasses.replace(pipe.cfg.data, labels=True, label_field=field, captions=True,
                               root=root or pipe.cfg.data.root)
    dm = make_datamodule(data)
    dm.setup("fit")
    items = dm.split_items("val")
    if len(items) == 0:
        raise UserError("the agreement score needs held-out images, but the validation split is empty; train with "
                        "data.val_fraction > 0")
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:max_prompts].sort().values
    x, y, texts = zip(*(items[i] for i in keep.tolist()))
    return dm, torch.stack(x), torch.tensor(y), list(texts)


def shuffled(n: int, seed: int) -> Tensor:
    """A seeded permutation with no fixed point (each caption moves to another image), n >= 2."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    return torch.roll(perm, 1)[torch.argsort(perm)]  # i -> the element before i in the random cycle


def agreement(pred: Tensor, y: Tensor, perm: Tensor) -> dict[str, float]:
    return {"agreement": float((pred == y).float().mean()), "chance": float((pred == y[perm]).float().mean())}


def check(pipe, args) -> None:
    if not pipe.prompted:
        raise UserError("the agreement score needs a model trained on prompts (denoiser.text); this one was not")
    if not 0 < args.steps <= pipe.diff.T:
        raise UserError(f"--steps must be in [1, T={pipe.diff.T}], got {args.steps}")
    if args.max_prompts is not None and args.max_prompts < 2:
        raise UserError(f"--max-prompts must be >= 2, got {args.max_prompts}")


def markdown(report: dict[str, Any]) -> str:
    from model.metrics.budget import as_markdown

    rows = [f"| real held-out images (floor) | {report['floor']['agreement']:.3f} | {report['floor']['chance']:.3f} |"]
    rows += [f"| samples, w = {s['cfg_scale']:g} | {s['agreement']:.3f} | {s['chance']:.3f} |" for s in report["scales"]]
    return "\n".join([
        "# Prompt agreement", "",
        f"Denoiser `{report['denoiser']}`; {report['prompts']} held-out captions as prompts, one sample each "
        f"(DDIM {report['steps']} steps, seed {report['seed']}); classes from `{report['label_field']}` "
        f"({report['classes']} classes), judged by `{report['classifier']}`.", "",
        "| images | agreement with their caption's class | with a shuffled caption's class (chance) |",
        "| --- | --- | --- |", *rows, "",
        "## Error budget on pixel features", "", as_markdown(report["pixel_budget"]), "",
        "![prompts, real image, samples](grid.png)", "",
    ])


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    from model.classifier import load_classifier
    from model.evaluation import pixel_budget, predict
    from model.images import labelled_rows, save_png
    from model.pipeline import LatentDiffusionPipeline
    from model.sampling import SamplerSpec
    from model.scripts.common import output_folder, pixel_protocol, resolve_device

    device = resolve_device(args.device)
    pipe = LatentDiffusionPipeline.from_pretrained(args.load, device)
    check(pipe, args)
    clf, meta = load_classifier(args.classifier)
    clf = clf.to(device)
    dm, real, y, texts = held_out_captions(pipe, args.label_field, args.max_prompts, args.seed, args.data_root)
    if clf.num_classes != dm.num_classes:
        raise UserError(f"the classifier has {clf.num_classes} classes but {args.label_field!r} gives "
                        f"{dm.num_classes}; train it with --data.label_field {args.label_field}")
    protocol = pixel_protocol(args, dm)
    out = output_folder(args.output, args.load, "agreement")
    perm = shuffled(len(y), args.seed)
    spacing = args.spacing or pipe.diff.sample_spacing
    samples = {}
    for w in args.cfg_scale:
        spec = SamplerSpec("ddim", steps=args.steps, spacing=spacing, guidance=w)
        samples[w] = pipe.generate(len(texts), None, spec, seed=args.seed, batch_size=args.batch_size,
                                   prompts=texts)[0]
    scales = [{"cfg_scale": w, **agreement(predict(clf, x, device), y, perm)} for w, x in samples.items()]
    budget = pixel_budget(pipe, dm, {f"w={w:g}": x for w, x in samples.items()}, protocol, args.real_pool,
                          args.batch_size)
    report = {"denoiser": str(args.load), "classifier": str(args.classifier), "label_field": args.label_field,
              "classes": dm.num_classes, "prompts": len(texts), "steps": args.steps, "seed": args.seed,
              "floor": agreement(predict(clf, real, device), y, perm), "scales": scales, "pixel_budget": budget}
    rows = GRID_ROWS
    cells = torch.stack([torch.stack([real[i], *(x[i] for x in samples.values())]) for i in range(min(rows, len(y)))])
    save_png(labelled_rows(cells.flatten(0, 1), texts[:rows], nrow=1 + len(samples)), out / "grid.png")
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.md", markdown(report))
    floor = report["floor"]
    print(f"real held-out images: agreement {floor['agreement']:.3f} (chance {floor['chance']:.3f})")
    for s in scales:
        print(f"samples w = {s['cfg_scale']:g}: agreement {s['agreement']:.3f} (chance {s['chance']:.3f})")
    print(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
