"""Our demo against peers given the same wall time: lucidrains' denoising-diffusion-pytorch in pixel space (PyPI
2.3.4; its classifier-free-guidance UNet and GaussianDiffusion, v-objective, DDIM-25) for our two stages' time, and
a diffusers UNet2DModel on our VAE's latents for our stage 2's time, all scored the same way.

    python -m benchmarks.peer_equal_time [--config config/digits.json] [--classifier runs/classifiers/digits.pt] \
        [--per-class 50] [--pixel-size 8] [-- <overrides for our main command>]
    python -m benchmarks.peer_equal_time --config config/emoji.json --classifier runs/classifiers/emoji.pt \
        --pixel-size 16 32 --output runs/bench-peer-emoji
    python -m benchmarks.peer_equal_time --classifier runs/classifiers/digits.pt --s-noise 1.1  # a second row of ours
    python -m benchmarks.peer_equal_time --classifier runs/classifiers/digits.pt --seeds 6 --sample-draws 3

1. Trains our demo with the README's main command (both stages, a fresh process) under training seed `--seed` and
   times it.
2. Trains the peer in this process on the same training split, at the same image size and at `--peer-batch`, for
   that many seconds of training steps (its imports and data come on top, so the peer gets a little more than we had):
   its `Unet(dim, dim_mults, channels, num_classes, cond_drop_prob = our p_uncond)` and `GaussianDiffusion(
   objective="pred_v", beta_schedule="cosine", sampling_timesteps=25, ddim_sampling_eta=0)`, AdamW with a 100-step
   warm-up, the global gradient-norm clip at 1 and an EMA of the weights (our decay warm-up) that it samples from.
3. Trains the latent peer (`benchmarks.latent_peer`) on our run's VAE latents for our denoiser stage's training
   time (the last `val/elapsed_s` its quality evaluations logged, or `--latent-peer-seconds`).
4. Draws `--per-class` samples of every class from each at w = 0 (the peer's cond_scale = 1), ours with our
   config's sampler (the digits config's DPM-Solver++(2M) SDE, 10 steps), the peers with their DDIM-25, and scores
   them with our error budgets (beside our VAE's round trip and the real floor) on pixel features at every
   `--pixel-size` and, with `--classifier`, on its features (domain), the classifier's class accuracy and the
   nearest-training-image distance over held-out images'. `--s-noise S` adds a row: the same network of ours drawn
   with its sampler's fresh noise scaled by S (docs/evaluation.md, the noise scale). `--sample-draws N` draws every
   model N times (seeds --seed, --seed + 1, ...) and gives each figure as the mean ± std over the draws: one draw of
   500 samples moves recall by up to about 0.02, more than some of the gaps the table compares.
5. With `--seeds N`, runs 1 to 4 under training seeds --seed to --seed + N - 1 (ours, both peers and the draws), each
   in `--output`/seed-S, then gives every figure as the mean ± std over the N runs (of each run's mean over its
   draws) and counts, per row of ours, the runs in which it beats the pixel peer on each column (a lower FD, a copy
   ratio nearer 1, else the higher figure): one peer training run is as noisy a reading as one of ours.
Needs `pip install denoising-diffusion-pytorch==2.3.4` (in the dev extras). Run it alone on the machine.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from benchmarks.common import Report, make_parser, parse, peer_update, timed_process
from model.errors import UserError, cli_entry

NAME = "peer_equal_time"
PEER = "denoising-diffusion-pytorch==2.3.4"


def peer_classes():
    try:
        from denoising_diffusion_pytorch.classifier_free_guidance import GaussianDiffusion, Unet
    except ImportError as err:
        raise UserError(f"the peer is not installed ({err}); pip install {PEER}") from err
    return Unet, GaussianDiffusion


def train_ours(args, out: Path, seed: int) -> tuple[Path, float]:
    """The README's training command under training seed `seed`, in a fresh process; its run folder and wall
    seconds."""
    seconds = timed_process(["-m", "model.main", "-cfg", args.config, "--train-vae", "--train-denoiser", "-n", "1",
                             "--output_dir", str(out), "--seed", str(seed), *args.overrides])
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

    ema = copy.deepcopy(peer).requires_grad_(False)
    opt = torch.optim.AdamW(peer.parameters(), lr=lr)
    step, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            if time.perf_counter() - start >= seconds:
                break
            x, y, _ = batch_parts(batch)
            loss = peer((x + 1) / 2, classes=y)  # the peer takes images in [0, 1]
            peer_update(peer, ema, opt, loss, step, lr)
            step += 1
    return ema.eval(), step


def grid_of(name: str, x: Tensor, labels: Tensor, held: tuple[Tensor, Tensor], out: Path, per_class: int = 10) -> None:
    """real_vs_<model>.png in `out`: per class, held-out real images (left) beside the model's samples (right)."""
    from model.images import save_grid
    from model.scripts.demo_report import side_by_side

    keep = min(per_class, int(torch.bincount(labels).min()))
    model, _, setting = name.partition(", ")  # "ours (latent), s_noise 1.1" -> real_vs_ours_s_noise_1.1.png
    slug = "_".join([model.split(" ")[0].lower(), *setting.replace(",", "").split()])
    save_grid(side_by_side(*held, x, labels, keep), out / f"real_vs_{slug}.png", nrow=2 * keep + 1)


@torch.no_grad()
def peer_samples(ema: nn.Module, labels: Tensor, seed: int, batch_size: int) -> Tensor:
    unguided_sampling_fixed(ema.model)  # on the EMA copy itself: a patched method does not follow deepcopy
    torch.manual_seed(seed)
    out = [ema.sample(classes=y, cond_scale=1.0, rescaled_phi=0.0) for y in labels.split(batch_size)]
    return torch.cat(out) * 2 - 1  # [0, 1] -> [-1, 1], as ours


SET_METRICS = ("precision", "recall", "coverage")  # shown beside the floor's


def draw_figures(budget: dict[str, Any], row: str) -> dict[str, float]:
    """One draw's figures in one feature space: FD over the floor's, precision, recall and coverage."""
    from model.metrics.budget import floor_ratio

    mine = next(r for r in budget["rows"] if r["row"] == row)
    return {"FD": floor_ratio(budget, row), **{m: mine[m]["mean"] for m in SET_METRICS}}


def digits_of(column: str) -> int:
    """Decimals a column is shown with: two for the ratios (FD over the floor's, the copy ratio), else three."""
    return 2 if column.startswith(("FD", "NN")) else 3


def over_draws(values: list[float], digits: int) -> Any:
    """One draw's figure as it is; several draws' as "mean ± std" (the spread the draw alone gives)."""
    if len(values) == 1:
        return values[0]
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def budget_figures(budget: dict[str, Any], rows: list[str], space: str, several: bool) -> dict[str, list[float]]:
    """A model's FD over the floor's, precision, recall and coverage in one feature space (named in the columns when
    the table holds several), each as its values over the model's draws (`rows`, the budget rows of its sample sets)."""
    figures = [draw_figures(budget, row) for row in rows]
    tag = f" {space}" if several else ""
    return {f"FD{tag} (× floor)": [f["FD"] for f in figures],
            **{f"{m}{tag} (floor's)": [f[m] for f in figures] for m in SET_METRICS}}


def floor_figures(budget: dict[str, Any], space: str, several: bool) -> dict[str, float]:
    """The real floor's precision, recall and coverage under the columns `budget_figures` names."""
    from model.metrics.budget import FLOOR

    floor = next(r for r in budget["rows"] if r["row"] == FLOOR)
    tag = f" {space}" if several else ""
    return {f"{m}{tag} (floor's)": floor[m]["mean"] for m in SET_METRICS}


def shown(column: str, values: list[float], floors: dict[str, float]) -> Any:
    """A column's values over the draws as the table shows them, the floor's in brackets where it has one."""
    value = over_draws(values, digits_of(column))
    if column not in floors:
        return value
    text = value if isinstance(value, str) else f"{value:.3f}"
    return f"{text} ({floors[column]:.3f})"


def budget_columns(budget: dict[str, Any], rows: list[str], space: str, several: bool) -> dict[str, Any]:
    """`budget_figures` as the table shows them: each over its draws, beside the floor's."""
    floors = floor_figures(budget, space, several)
    return {column: shown(column, values, floors)
            for column, values in budget_figures(budget, rows, space, several).items()}


def training_data(run: Path, batch_size: Optional[int] = None):
    """Our run's resolved config and its data module at `batch_size` (default: the denoiser's)."""
    from model.cli_config import from_dict
    from model.lightning.trainer import stage_data

    cfg = from_dict(json.loads((run / "config.json").read_text()))
    trainer = cfg.denoiser.trainer if batch_size is None else dataclasses.replace(cfg.denoiser.trainer,
                                                                                  batch_size=batch_size)
    return cfg, stage_data(cfg, trainer)


OURS, PEER, LATENT_PEER = "ours (latent)", "peer (pixel)", "diffusers UNet2DModel (our latents)"


def our_spec(pipe, **overrides):
    """Our sampler at w = 0: the checkpoint's (its config's), with the overrides given (s_noise, autoguidance)."""
    from model.sampling import SamplerSpec

    return SamplerSpec.from_config(pipe.diff, guidance=0.0, **overrides)


def our_samples(pipe, labels: Tensor, seed: int, **overrides) -> Tensor:
    """Our samples of `labels` with `our_spec`, in [-1, 1]."""
    from model.evaluation import generate

    return generate(pipe, len(labels), labels, our_spec(pipe, **overrides), seed=seed, batch_size=250)


def denoiser_seconds(run: Path) -> float:
    """Our denoiser stage's training time: the wall time its last quality evaluation logged."""
    from model.scripts.plots import logged_series, metrics_file, read_columns

    path = metrics_file(run / "denoiser")
    columns = read_columns(path) if path.is_file() else {}
    times = logged_series(columns, "val/elapsed_s")[1] if "val/elapsed_s" in columns else []
    if not len(times):
        raise UserError(f"{path} holds no val/elapsed_s (the config evaluates no quality during training); pass "
                        f"--latent-peer-seconds")
    return times[-1]


def draw_names(name: str, seed: int, draws: int) -> list[str]:
    """The sample sets of a model's draws: its own name for the --seed draw, then "<name>, seed S" (as demo_report
    names its further draws)."""
    from model.scripts.demo_report import further_draw

    return [name] + [further_draw(name, s) for s in range(seed + 1, seed + draws)]


Figures = dict[str, dict[str, list[float]]]  # per model, per column: its value in each draw


def judged(samples: dict[str, Tensor], labels: Tensor, pipe, dm, held: Tensor, clf, protocols: list,
           draws: dict[str, list[str]]) -> tuple[Figures, dict[str, float], dict]:
    """Per model (`draws`: its name → the names of its sample sets in `samples`): class accuracy (with a
    classifier), the copy ratio against the held-out images `held` and every error budget's columns, each over its
    draws; the floor's figures under the same columns, and the budgets."""
    from model.evaluation import model_budgets, predict
    from model.scripts.demo_report import nearest_distances

    d = nearest_distances(torch.cat([*samples.values(), held]), dm.train_dataloader())
    d_held = d[len(samples) * len(labels):].median()
    copy_ratio = {name: float(d_x.median() / d_held) for name, d_x in zip(samples, d.split(len(labels)))}
    budgets = model_budgets(pipe, dm, samples, protocols, 10_000, 250, classifier=clf)
    several = len(budgets) > 1
    figures: Figures = {}
    for model, names in draws.items():
        columns = figures[model] = {}
        if clf is not None:
            columns["class accuracy"] = [float((predict(clf, samples[n], "cpu") == labels).float().mean())
                                         for n in names]
        columns["NN / held-out"] = [copy_ratio[n] for n in names]
        for space, budget in budgets.items():
            columns.update(budget_figures(budget, names, space, several))
    floors = {k: v for space, b in budgets.items() for k, v in floor_figures(b, space, several).items()}
    return figures, floors, budgets


def better(column: str, a: float, b: float) -> bool:
    """Whether figure `a` beats `b` in `column`: a lower FD, a copy ratio nearer 1 (copies sit near 0, noise far
    above 1), else the higher figure."""
    if column.startswith("FD"):
        return a < b
    if column.startswith("NN"):
        return abs(math.log(a)) < abs(math.log(b))
    return a > b


def over_runs(runs: list[Figures], rival: str) -> list[dict[str, Any]]:
    """The comparison as a distribution over training runs: per model, each column's mean over a run's draws, then
    their mean ± std over the runs; per model of ours, the runs in which it beats `rival` on each column."""
    means = [{model: {c: statistics.fmean(v) for c, v in columns.items()} for model, columns in run.items()}
             for run in runs]
    rows = [{"model": model, **{c: over_draws([m[model][c] for m in means], digits_of(c)) for c in columns}}
            for model, columns in runs[0].items()]
    for model in [m for m in runs[0] if m.startswith(OURS)]:
        rows.append({"model": f"{model}: runs ahead of the {rival}",
                     **{c: f"{sum(better(c, m[model][c], m[rival][c]) for m in means)} of {len(runs)}"
                        for c in runs[0][model]}})
    return rows


def checked(args) -> None:
    """Bad arguments, refused before anything trains."""
    from model.sampling import AUTOGUIDANCE_RULE, NOISE_SCALE_RULE, autoguidance_ok, noise_scale_ok

    if args.sample_draws < 1 or args.seeds < 1:
        raise UserError(f"--sample-draws and --seeds must be >= 1, got {args.sample_draws} and {args.seeds}")
    if min(args.peer_batch, args.peer_dim, *args.peer_mults) < 1:
        raise UserError(f"--peer-batch, --peer-dim and --peer-mults must be >= 1, got {args.peer_batch}, "
                        f"{args.peer_dim} and {args.peer_mults}")
    if args.s_noise is not None and not noise_scale_ok(args.s_noise):
        raise UserError(f"--s-noise must be {NOISE_SCALE_RULE}, got {args.s_noise}")
    if args.autoguidance is not None and not autoguidance_ok(args.autoguidance):
        raise UserError(f"--autoguidance must be {AUTOGUIDANCE_RULE}, got {args.autoguidance}")
    if any(o == "--seed" or o.startswith("--seed=") for o in args.overrides):
        raise UserError("--seed after -- is the benchmark's own: pass --seed S before --; it seeds our training, "
                        "the peers' and the draws")
    peer_classes()  # a missing peer fails before anything trains


def compared(args, seed: int, out: Path, clf, report: Report) -> Figures:
    """One run of the comparison under training seed `seed`, in `out` (deleted first): every model trained and drawn,
    its table printed and the grids written; per model its figures over the draws."""
    from benchmarks import latent_peer
    from model.evaluation import class_major_labels, pixel_size
    from model.metrics.budget import ROUND_TRIP, PixelProtocol, floor_ratio
    from model.pipeline import LatentDiffusionPipeline
    from model.scripts.demo_report import held_out_set

    shutil.rmtree(out, ignore_errors=True)
    run, ours_s = train_ours(args, out, seed)
    cfg, dm = training_data(run)
    peer_s = args.peer_seconds or ours_s
    torch.manual_seed(seed)
    peer_data = training_data(run, args.peer_batch)[1]
    ema, steps = train_peer(make_peer(cfg, args), peer_data.train_dataloader(), peer_s, args.peer_lr)

    pipe = LatentDiffusionPipeline.from_pretrained(run / "denoiser" / "checkpoints" / "last.ckpt")
    latent_s = args.latent_peer_seconds or denoiser_seconds(run)
    latents, latent_labels = latent_peer.training_latents(pipe, dm.train_dataloader())
    unet = latent_peer.make_unet(tuple(latents.shape[1:]), pipe.num_classes, cfg.denoiser.unet.base_channels)
    latent_ema, latent_steps = latent_peer.train(
        unet, latents, latent_labels, latent_s, batch_size=cfg.denoiser.trainer.batch_size, lr=cfg.denoiser.optim.lr,
        p_uncond=cfg.denoiser.diffusion.p_uncond, num_classes=pipe.num_classes, seed=seed)

    labels = class_major_labels(pipe.num_classes, args.per_class)
    draw = {OURS: lambda s: our_samples(pipe, labels, s),
            PEER: lambda s: peer_samples(ema, labels, s, 250),
            LATENT_PEER: lambda s: latent_peer.samples(pipe, latent_ema, labels, tuple(latents.shape[1:]), s)}
    again = {k: v for k, v in (("s_noise", args.s_noise), ("autoguidance", args.autoguidance)) if v is not None}
    if again:  # the same network drawn again with other sampling settings
        draw[f"{OURS}, " + ", ".join(f"{k} {v:g}" for k, v in again.items())] = \
            lambda s: our_samples(pipe, labels, s, **again)
    draws = {model: draw_names(model, seed, args.sample_draws) for model in draw}
    samples = {name: draw[model](seed + k) for model, names in draws.items() for k, name in enumerate(names)}
    protocols = [PixelProtocol(size=size, seed=seed) for size in args.pixel_size or [pixel_size(dm)]]
    held = held_out_set(dm)
    figures, floors, budgets = judged(samples, labels, pipe, dm, held[0], clf, protocols, draws)
    rows = [{"model": model, **{c: shown(c, v, floors) for c, v in columns.items()}}
            for model, columns in figures.items()]
    rows[0].update({"training s": ours_s, "trained": "both stages",
                    "steps": f"{cfg.vae.trainer.max_steps} + {cfg.denoiser.trainer.max_steps}",
                    "sampler": our_spec(pipe).describe(pipe.diff.T)})
    rows[1].update({"training s": peer_s, "trained": f"steps of batch {args.peer_batch}", "steps": str(steps),
                    "sampler": "DDIM 25 steps (its own)"})
    rows[2].update({"training s": latent_s, "trained": "stage 2 (our VAE)", "steps": str(latent_steps),
                    "sampler": "DDIM 25 steps, trailing (diffusers)"})
    if again:  # the same network as the first row
        rows[3].update({**{k: rows[0][k] for k in ("training s", "trained", "steps")},
                        "sampler": our_spec(pipe, **again).describe(pipe.diff.T)})
    notes = [f"{space}: {b['protocol']['features']}; each figure the mean over the budget's {b['protocol']['draws']} "
             f"draws of real images; our VAE's round trip scores {floor_ratio(b, ROUND_TRIP):.2f}x the floor"
             for space, b in budgets.items()]
    over = f"; each drawn {args.sample_draws} times, seeds {seed} to {seed + args.sample_draws - 1}: " \
        "mean ± std over the draws" if args.sample_draws > 1 else ""
    report.table(f"Our demo and its peers at equal wall time ({args.config}, training seed {seed}, w = 0, "
                 f"{len(labels)} samples each{over})", rows, note="\n".join(notes))
    for model in draws:  # real held-out images beside each model's first draw, class by class
        grid_of(model, samples[model], labels, held, out)
    return figures


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__.split("\n")[0], repeats=1, warmup=0)
    p.add_argument("--output", default="runs/bench-peer",
                   help="folder of our run (deleted first); with --seeds, of one folder seed-S per training seed")
    p.add_argument("--classifier", default=None, help="classifier .pt for class accuracy (train_classifier)")
    p.add_argument("--per-class", "--per_class", type=int, default=50, help="samples of every class (50)")
    p.add_argument("--peer-dim", type=int, default=32, help="the peer UNet's base width (32)")
    p.add_argument("--peer-mults", type=int, nargs="+", default=[1, 2, 4], help="its dim_mults (1 2 4)")
    p.add_argument("--peer-lr", type=float, default=1e-3, help="its AdamW learning rate (1e-3)")
    p.add_argument("--peer-batch", type=int, default=64,
                   help="its batch (64; at 128, our denoiser's, a CPU gives it half as many steps)")
    p.add_argument("--peer-seconds", type=float, default=None, help="its training time (default: our main command's)")
    p.add_argument("--latent-peer-seconds", type=float, default=None,
                   help="the diffusers UNet's training time (default: our denoiser stage's)")
    p.add_argument("--pixel-size", type=int, nargs="+", default=None,
                   help="sides the pixel budget compares at (default: the data's native size, else <= 32)")
    p.add_argument("--s-noise", "--s_noise", type=float, default=None, metavar="S",
                   help="also draw our network with its sampler's fresh noise scaled by S (a row of its own)")
    p.add_argument("--autoguidance", type=float, default=None, metavar="A",
                   help="also draw our network with autoguidance weight A (0: without; the same row as --s-noise)")
    p.add_argument("--sample-draws", "--sample_draws", type=int, default=1, metavar="N",
                   help="draw every model N times (seeds --seed, --seed+1, ...): each figure is then the mean ± std "
                        "over the draws (1)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="run the comparison under N training seeds (--seed, --seed+1, ...), then give each figure's "
                        "mean ± std over the runs and the runs in which ours beat the pixel peer (1)")
    p.add_argument("overrides", nargs="*", help="after --: overrides for our main command, as on its command line")
    args = parse(p, argv)
    checked(args)
    from model.classifier import load_classifier

    clf = load_classifier(args.classifier)[0] if args.classifier else None
    report = Report(NAME, args.device)
    out = Path(args.output)
    seeds = range(args.seed, args.seed + args.seeds)
    runs = [compared(args, seed, out / f"seed-{seed}" if args.seeds > 1 else out, clf, report) for seed in seeds]
    if len(runs) > 1:
        draws = f", each the mean of {args.sample_draws} draws" if args.sample_draws > 1 else ""
        report.table(f"Our demo and its peers over {len(runs)} training seeds, {seeds[0]} to {seeds[-1]} "
                     f"({args.config}, w = 0): mean ± std over the runs{draws}", over_runs(runs, PEER))
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
