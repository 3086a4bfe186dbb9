"""Our demo against a pixel-space peer given the same wall time: lucidrains' denoising-diffusion-pytorch (PyPI
2.3.4; its classifier-free-guidance UNet and GaussianDiffusion, v-objective, DDIM-25), both scored the same way.

    python -m benchmarks.peer_equal_time [--config config/digits.json] [--classifier runs/classifiers/digits.pt] \
        [--per-class 50] [-- <overrides for our main command>]

1. Trains our demo with the README's main command (both stages, a fresh process) and times it.
2. Trains the peer in this process on the same training split, at the same image size and batch, for that many
   seconds of training steps (its imports and data come on top, so the peer gets a little more than we had):
   its `Unet(dim, dim_mults, channels, num_classes, cond_drop_prob = our p_uncond)` and `GaussianDiffusion(
   objective="pred_v", beta_schedule="cosine", sampling_timesteps=25, ddim_sampling_eta=0)`, AdamW with a 100-step
   warm-up, the global gradient-norm clip at 1 and an EMA of the weights (our decay warm-up) that it samples from.
3. Draws `--per-class` samples of every class from each at w = 0 (the peer's cond_scale = 1), DDIM-25, and scores
   both with our error budget on pixel features (beside our VAE's round trip and the real floor), the digits
   classifier's accuracy and the nearest-training-image distance over held-out images'.
Needs `pip install denoising-diffusion-pytorch==2.3.4` (in the dev extras). Run it alone on the machine.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.common import Report, make_parser, parse, timed_process
from model.errors import UserError, cli_entry

NAME = "peer_equal_time"
PEER = "denoising-diffusion-pytorch==2.3.4"


def peer_classes():
    try:
        from denoising_diffusion_pytorch.classifier_free_guidance import GaussianDiffusion, Unet
    except ImportError as err:
        raise UserError(f"the peer is not installed ({err}); pip install {PEER}") from err
    return Unet, GaussianDiffusion


def train_ours(args, out: Path) -> tuple[Path, float]:
    """The README's main command in a fresh process; its run folder and wall seconds."""
    seconds = timed_process(["-m", "model.main", "-cfg", args.config, "--train-vae", "--train-denoiser", "-n", "1",
                             "--output_dir", str(out), *args.overrides])
    return out / f"{Path(args.config).stem}-1", seconds


def unguided_sampling_fixed(unet: nn.Module) -> None:
    """In 2.3.4 the UNet's forward_with_cond_scale returns one tensor at cond_scale = 1 (no guidance), where the
    sampler unpacks two (guided, unconditional): w = 0 sampling fails. Give the sampler the pair it expects."""
    plain = unet.forward_with_cond_scale

    def pair(*args, **kwargs):
        out = plain(*args, **kwargs)
        return out if isinstance(out, tuple) else (out, out)

    unet.forward_with_cond_scale = pair


def make_peer(cfg, args) -> nn.Module:
    Unet, GaussianDiffusion = peer_classes()
    unet = Unet(dim=args.peer_dim, dim_mults=tuple(args.peer_mults), channels=cfg.data.channels,
                num_classes=cfg.denoiser.unet.num_classes, cond_drop_prob=cfg.denoiser.diffusion.p_uncond)
    return GaussianDiffusion(unet, image_size=cfg.data.image_size, timesteps=1000, sampling_timesteps=25,
                             objective="pred_v", beta_schedule="cosine", ddim_sampling_eta=0.0)


def train_peer(peer: nn.Module, loader, seconds: float, lr: float) -> tuple[nn.Module, int]:
    """Training steps until `seconds` have passed; returns the EMA copy and the number of steps."""
    from data.captions import batch_parts
    from model.ema import ema_decay_at, ema_update

    ema = copy.deepcopy(peer).requires_grad_(False)
    opt = torch.optim.AdamW(peer.parameters(), lr=lr)
    step, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            if time.perf_counter() - start >= seconds:
                break
            x, y, _ = batch_parts(batch)
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 100)
            loss = peer((x + 1) / 2, classes=y)  # the peer takes images in [0, 1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
            opt.step()
            ema_update(ema, peer, ema_decay_at(step, 0.999))
            step += 1
    return ema.eval(), step


@torch.no_grad()
def peer_samples(ema: nn.Module, labels: Tensor, seed: int, batch_size: int) -> Tensor:
    unguided_sampling_fixed(ema.model)  # on the EMA copy itself: a patched method does not follow deepcopy
    torch.manual_seed(seed)
    out = [ema.sample(classes=y, cond_scale=1.0, rescaled_phi=0.0) for y in labels.split(batch_size)]
    return torch.cat(out) * 2 - 1  # [0, 1] -> [-1, 1], as ours


def budget_columns(budget: dict[str, Any], row: str) -> dict[str, Any]:
    from model.metrics.budget import FLOOR, floor_ratio

    rows = {r["row"]: r for r in budget["rows"]}
    mine, floor = rows[row], rows[FLOOR]
    return {"pixel FD (× floor)": floor_ratio(budget, row),
            "precision (floor's)": f"{mine['precision']['mean']:.3f} ({floor['precision']['mean']:.3f})",
            "recall (floor's)": f"{mine['recall']['mean']:.3f} ({floor['recall']['mean']:.3f})"}


def training_data(run: Path):
    """Our run's resolved config and its data module at the denoiser's batch size (what the peer trains on)."""
    from model.cli_config import from_dict
    from model.lightning.trainer import stage_data

    cfg = from_dict(json.loads((run / "config.json").read_text()))
    return cfg, stage_data(cfg, cfg.denoiser.trainer)


def both_samples(pipe, ema: nn.Module, labels: Tensor, seed: int) -> dict[str, Tensor]:
    """Ours and the peer's samples of `labels` at w = 0, DDIM-25, in [-1, 1]."""
    from model.evaluation import generate
    from model.sampling import SamplerSpec

    spec = SamplerSpec.from_config(pipe.diff, sampler="ddim", steps=25, spacing=pipe.diff.sample_spacing, guidance=0.0)
    return {"ours (latent)": generate(pipe, len(labels), labels, spec, seed=seed, batch_size=250),
            "peer (pixel)": peer_samples(ema, labels, seed, 250)}


def judged(samples: dict[str, Tensor], labels: Tensor, pipe, dm, clf, seed: int) -> tuple[list[dict], dict]:
    """Per model: class accuracy (with a classifier), the copy ratio and the error budget's columns."""
    from model.evaluation import pixel_budget, pixel_size, predict
    from model.metrics.budget import PixelProtocol
    from model.scripts.demo_report import nearest_distances, real_images

    held = real_images(dm.val_dataloader(), dm.data_shape)
    d = nearest_distances(torch.cat([*samples.values(), held]), dm.train_dataloader())
    d_held = d[len(samples) * len(labels):].median()
    budget = pixel_budget(pipe, dm, samples, PixelProtocol(size=pixel_size(dm), seed=seed), 10_000, 250)
    rows = []
    for (name, x), d_x in zip(samples.items(), d.split(len(labels))):
        row: dict[str, Any] = {"model": name}
        if clf is not None:
            row["class accuracy"] = float((predict(clf, x, "cpu") == labels).float().mean())
        rows.append({**row, "NN / held-out": float(d_x.median() / d_held), **budget_columns(budget, name)})
    return rows, budget


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__.split("\n")[0], repeats=1, warmup=0)
    p.add_argument("--output", default="runs/bench-peer", help="folder of our run (deleted first)")
    p.add_argument("--classifier", default=None, help="classifier .pt for class accuracy (train_classifier)")
    p.add_argument("--per-class", "--per_class", type=int, default=50, help="samples of every class (50)")
    p.add_argument("--peer-dim", type=int, default=32, help="the peer UNet's base width (32)")
    p.add_argument("--peer-mults", type=int, nargs="+", default=[1, 2, 4], help="its dim_mults (1 2 4)")
    p.add_argument("--peer-lr", type=float, default=1e-3, help="its AdamW learning rate (1e-3)")
    p.add_argument("--peer-seconds", type=float, default=None, help="its training time (default: our main command's)")
    p.add_argument("overrides", nargs="*", help="after --: overrides for our main command, as on its command line")
    args = parse(p, argv)
    peer_classes()  # a missing peer fails before anything trains
    from model.classifier import load_classifier
    from model.metrics.budget import ROUND_TRIP, floor_ratio
    from model.pipeline import LatentDiffusionPipeline

    clf = load_classifier(args.classifier)[0] if args.classifier else None
    report = Report(NAME, args.device)
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    run, ours_s = train_ours(args, out)
    cfg, dm = training_data(run)
    peer_s = args.peer_seconds or ours_s
    torch.manual_seed(args.seed)
    ema, steps = train_peer(make_peer(cfg, args), dm.train_dataloader(), peer_s, args.peer_lr)

    pipe = LatentDiffusionPipeline.from_pretrained(run / "denoiser" / "checkpoints" / "last.ckpt")
    labels = torch.arange(pipe.num_classes).repeat_interleave(args.per_class)
    rows, budget = judged(both_samples(pipe, ema, labels, args.seed), labels, pipe, dm, clf, args.seed)
    rows[0].update({"training s": ours_s, "trained": "both stages",
                    "steps": f"{cfg.vae.trainer.max_steps} + {cfg.denoiser.trainer.max_steps}"})
    rows[1].update({"training s": peer_s, "trained": "training steps", "steps": str(steps)})
    protocol = budget["protocol"]
    report.table(f"Our demo and the pixel-space peer at equal wall time ({args.config}, DDIM-25, w = 0, "
                 f"{len(labels)} samples each)", rows,
                 note=f"pixel metrics: {protocol['features']}; mean over {protocol['draws']} draws; our VAE's round "
                      f"trip scores {floor_ratio(budget, ROUND_TRIP):.2f}x the floor")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
