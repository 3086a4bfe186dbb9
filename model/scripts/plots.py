"""The figures of the course sheets as PNG and CSV: noise schedules, the forward process, the loss, denoising.

    python -m model.scripts.plots schedules --T 10
    python -m model.scripts.plots noising --load runs/digits-1/denoiser/checkpoints/last.ckpt --T 10
    python -m model.scripts.plots loss --run runs/digits-1/denoiser
    python -m model.scripts.plots denoising --load runs/digits-1/denoiser/checkpoints/last.ckpt --n 8
    python -m model.scripts.plots quality --run runs/emoji-1/denoiser runs/emoji-2/denoiser

- `schedules` (sheet 001): β_t, ᾱ_t and log SNR_t = log(ᾱ_t / (1 − ᾱ_t)) against t for the linear, cosine and
  sigmoid schedules (model/base.py); `schedules.png` (three panels) and `schedules.csv` (t = 1..T; columns t, then
  beta_<s>, alpha_bar_<s>, log_snr_<s> per schedule s). T ≤ 20 also prints the table. Default folder: `plots/`.
- `noising` (sheet 001, 1b): one image (`--image FILE`, converted to the checkpoint's channels and size like the
  folder data set converts images, or `--index I` of the validation split) under x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε
  with one fixed ε (`--seed`) at t = 0..T, one row per schedule (each computed with this `--T`):
  `noising_latent.png` noises the latent and decodes every x_t; `noising_pixels.png` noises the image pixels;
  `noising.csv` holds the schedules' table as above. For a denoiser checkpoint the latent is the denoiser's
  normalised latent (z − shift) / scale, decoded with its `decode`; for a VAE checkpoint it is the raw posterior
  mean of q(z|x). A pixel-space denoiser has no latent, so only the pixel grid is written.
- `loss` (sheet 001, 2b): the training loss over optimiser steps from the CSV logger's `logs/metrics.csv`, raw
  and as a centred moving average over about a tenth of the logged rows (at most SMOOTH_WINDOW), with the
  validation loss as points (log y-axis when
  all values are positive): `loss.png`, one panel per stage. `--run` is a stage folder (runs/digits-1/denoiser)
  or a run folder (runs/digits-1: every stage in it that has the log). Default folder: `plots/` inside `--run`.
- `quality`: sample quality during training (`trainer.fid_every_n_steps`, the CSV logger's `logs/metrics.csv`):
  pixel FD, precision and recall, each over the real floor's logged beside it, against wall seconds and optimiser
  steps, one line per `--run` (stage folders, e.g. one per training seed): `quality.png` and `quality.csv`.
  Default folder: `plots/` inside the first `--run`.
- `denoising` (sheet 002): n validation items, item i at t_i = round(T·(i+1)/(n+1)), one column each; rows x0,
  x_t, ε (the true noise) and the EMA network's ε̂; in latent space a first row shows the decoded x0 and the
  latent rows are drawn as described at `latent_tiles`. `denoising.png` and `denoising.json` (each column's t
  and the mean squared error between ε and ε̂ in the space the network sees).

Default folder of the subcommands with `--load`: `plots/` beside the checkpoint's `checkpoints/` folder.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from model import base
from model.errors import ArgParser, UserError, cli_entry
from model.plots import QUALITY_PANELS
from model.writes import write_text

if TYPE_CHECKING:
    from data.config import DataConfig

SCHEDULE_NAMES = tuple(base.SCHEDULES)  # linear, cosine, sigmoid
PRINT_MAX_T = 20  # schedule tables up to this T are also printed
SMOOTH_WINDOW = 51  # at most this many logged rows in the moving average of the training loss
TRAIN_LOSS = "train/loss"
VAL_LOSSES = ("val/loss", "val/recon")  # the denoiser logs val/loss; the VAE logs val/recon and val/kl, no val/loss
STAGES = ("vae", "denoiser")  # the stage folders of a run folder
LATENT_RANGE = 3.0  # latent tiles show value / 3: normalised latents and ε are about N(0, 1), so ±3σ spans the grey


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m model.scripts.plots", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="{schedules,noising,loss,denoising,quality}")
    add_schedules_parser(sub)
    add_noising_parser(sub)
    add_loss_parser(sub)
    add_denoising_parser(sub)
    add_quality_parser(sub)
    return p


def add_schedules_parser(sub) -> None:
    s = sub.add_parser("schedules", help="β_t, ᾱ_t and log SNR of every schedule: schedules.png, schedules.csv")
    s.add_argument("--T", type=int, default=1000, help="diffusion steps (default: %(default)s)")
    s.add_argument("--output", default=None, help="output folder (default: plots/ in the current folder)")
    s.set_defaults(handler=run_schedules)


def add_noising_parser(sub) -> None:
    s = sub.add_parser("noising", help="the forward process on one image, in latent and pixel space")
    s.add_argument("--load", required=True, help="VAE or denoiser checkpoint (.ckpt)")
    source = s.add_mutually_exclusive_group()
    source.add_argument("--image", default=None, help="image file (default: an item of the validation split)")
    source.add_argument("--index", type=int, default=0, help="item of the validation split (default: %(default)s)")
    s.add_argument("--T", type=int, default=10, help="diffusion steps of every schedule shown (default: %(default)s)")
    s.add_argument("--schedules", nargs="+", choices=SCHEDULE_NAMES, default=["linear", "cosine"],
                   help="one grid row each (default: linear cosine)")
    s.add_argument("--seed", type=int, default=0, help="seed of the one ε used at every t (default: %(default)s)")
    add_device_and_output(s)
    s.set_defaults(handler=run_noising)


def add_loss_parser(sub) -> None:
    s = sub.add_parser("loss", help="training loss over the optimiser steps from logs/metrics.csv")
    s.add_argument("--run", required=True, help="stage folder (runs/<run>/denoiser) or run folder (runs/<run>)")
    s.add_argument("--output", default=None, help="output folder (default: plots/ inside --run)")
    s.set_defaults(handler=run_loss)


def add_denoising_parser(sub) -> None:
    s = sub.add_parser("denoising", help="x0, x_t, ε and the network's ε̂ for validation items at spread-out t")
    s.add_argument("--load", required=True, help="denoiser checkpoint (.ckpt) or export folder")
    s.add_argument("--n", type=int, default=8, help="validation items, one column each (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the noise ε (default: %(default)s)")
    add_device_and_output(s)
    s.set_defaults(handler=run_denoising)


def add_quality_parser(sub) -> None:
    s = sub.add_parser("quality", help="pixel FD, precision and recall over the floor's against wall time and steps")
    s.add_argument("--run", nargs="+", required=True, help="denoiser stage folders (runs/<run>/denoiser), one line each")
    s.add_argument("--output", default=None, help="output folder (default: plots/ inside the first --run)")
    s.set_defaults(handler=run_quality)


def add_device_and_output(s: argparse.ArgumentParser) -> None:
    s.add_argument("--output", default=None, help="output folder (default: plots/ beside the run's checkpoints)")
    s.add_argument("--device", default="auto", help="cpu, cuda, or auto")


def check_positive(value: int, flag: str, why: str) -> None:
    if value < 1:
        raise UserError(f"{flag} must be >= 1, got {value}; {why}")


def folder_at(output: Optional[str], default: Path) -> Path:
    """`--output` or `default`, created; a path that is a file is a UserError (common.output_folder's check)."""
    from model.scripts.common import output_folder

    return output_folder(output or str(default), checkpoint="", default_name="")


# ----------------------------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------------------------
def schedules_with(names: list[str], T: int) -> dict[str, base.Schedule]:
    return {name: base.make_schedule(name, T) for name in names}


def schedule_columns(schedules: dict[str, base.Schedule]) -> dict[str, list]:
    """The table of t = 1..T: t, then beta_<s>, alpha_bar_<s>, log_snr_<s> for each schedule s, as columns."""
    T = next(iter(schedules.values())).T
    columns: dict[str, list] = {"t": list(range(1, T + 1))}
    for name, s in schedules.items():
        columns[f"beta_{name}"] = s.betas.tolist()  # betas[t-1] is β_t
        columns[f"alpha_bar_{name}"] = s.alpha_bar[1:].tolist()
        columns[f"log_snr_{name}"] = s.log_snr[1:].tolist()
    return columns


def write_csv(columns: dict[str, list], path: Path) -> None:
    """One row per entry; floats as Python writes them (shortest form that reads back to the same float64)."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(zip(*columns.values()))
    write_text(path, text.getvalue())


def print_table(columns: dict[str, list]) -> None:
    widths = [max(len(name), 11) for name in columns]
    print("  ".join(name.rjust(w) for name, w in zip(columns, widths)))
    for row in zip(*columns.values()):
        print("  ".join((str(v) if isinstance(v, int) else f"{v:.4e}").rjust(w) for v, w in zip(row, widths)))


def plot_schedules(columns: dict[str, list], names: list[str], path: Path) -> None:
    from model.plots import line_panels

    beta = r"$\beta_t$"
    titles = {"beta": beta, "alpha_bar": r"$\bar\alpha_t$",
              "log_snr": r"log SNR$_t$ = log($\bar\alpha_t$ / (1 $-$ $\bar\alpha_t$))"}
    panels = {title: {name: np.asarray(columns[f"{key}_{name}"]) for name in names} for key, title in titles.items()}
    line_panels(np.asarray(columns["t"]), panels, path, xlabel="t", log_y=(beta,))


def write_schedule_table(schedules: dict[str, base.Schedule], csv_path: Path) -> dict[str, list]:
    """`csv_path` with the schedules' table, printed as well when T <= PRINT_MAX_T."""
    columns = schedule_columns(schedules)
    write_csv(columns, csv_path)
    if len(columns["t"]) <= PRINT_MAX_T:
        print_table(columns)
    return columns


def run_schedules(args) -> None:
    check_positive(args.T, "--T", "the schedules need at least one step")
    out = folder_at(args.output, Path("plots"))
    names = list(SCHEDULE_NAMES)
    columns = write_schedule_table(schedules_with(names, args.T), out / "schedules.csv")
    plot_schedules(columns, names, out / "schedules.png")
    print(f"wrote schedules.png and schedules.csv (T = {args.T}) to {out}")


# ----------------------------------------------------------------------------------------------------------------
# noising
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    """Images ↔ the latent the forward process noises; `encode` and `decode` are None for a pixel-space model."""

    data: "DataConfig"  # the checkpoint's data section
    encode: Optional[Callable[[Tensor], Tensor]]  # (N, C, H, W) → (N, C_z, h, w), on CPU
    decode: Optional[Callable[[Tensor], Tensor]]  # (N, C_z, h, w) → (N, C, H, W) in [-1, 1], on CPU
    latent: str  # what the latent is, for the printed line


def vae_codec(path: str, device: str) -> Codec:
    """A VAE checkpoint: the raw posterior mean of q(z|x), decoded by the VAE."""
    from model.scripts.sample_vae import decode, encode, load_vae

    vae, cfg = load_vae(path, device)
    bs = cfg.data.batch_size
    return Codec(cfg.data, lambda x: encode(vae, x, bs, device)[0], lambda z: decode(vae, z, bs, device),
                 "the VAE's raw posterior-mean latent")


def denoiser_codec(path: str, device: str) -> Codec:
    """A denoiser checkpoint: its normalised latent (z − shift) / scale, or none in pixel space."""
    pipe = load_image_denoiser(path, device, "noising")
    if pipe.autoencoder is None:
        return Codec(pipe.cfg.data, None, None, "none (pixel-space denoiser)")
    return Codec(pipe.cfg.data, lambda x: pipe.encode(x.to(device)).cpu(),
                 lambda z: pipe.decode(z.to(device)).cpu(),
                 "the denoiser's normalised latent (z - shift) / scale")


def load_codec(path: str, device: str) -> Codec:
    """The codec of a VAE or denoiser checkpoint; the file is read twice: for its kind, then by its own loader."""
    from model.checkpoint import KIND_KEY, read_checkpoint

    kind = read_checkpoint(path)[KIND_KEY]
    if kind == "vae":
        return vae_codec(path, device)
    if kind == "denoiser":
        return denoiser_codec(path, device)
    raise UserError(f"{path} is a {kind} checkpoint, but noising needs a vae or denoiser checkpoint; "
                    f"pass one of those")


def forward_process(x0: Tensor, eps: Tensor, schedule: base.Schedule) -> Tensor:
    """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε at t = 0..T, one ε for all: x0, eps (1, C, H, W) → (T+1, C, H, W)."""
    n = schedule.T + 1
    return base.q_sample(x0.expand(n, -1, -1, -1), torch.arange(n), eps.expand(n, -1, -1, -1), schedule)


def noising_rows(x0: Tensor, schedules: dict[str, base.Schedule], seed: int) -> Tensor:
    """One row of x_0..x_T per schedule, all with the same ε ~ N(0, I) drawn with `seed`: (S·(T+1), C, H, W)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))  # (1, C, H, W)
    return torch.cat([forward_process(x0, eps, s) for s in schedules.values()])


def write_noising(out: Path, x: Tensor, codec: Codec, schedules: dict[str, base.Schedule], seed: int) -> list[str]:
    """noising_pixels.png, noising_latent.png (unless pixel space) and noising.csv; returns the names written."""
    from model.images import save_grid

    ncol = next(iter(schedules.values())).T + 1
    save_grid(noising_rows(x, schedules, seed), out / "noising_pixels.png", nrow=ncol)
    names = ["noising_pixels.png"]
    if codec.encode is not None:
        z_t = noising_rows(codec.encode(x), schedules, seed)  # (S·(T+1), C_z, h, w)
        save_grid(codec.decode(z_t), out / "noising_latent.png", nrow=ncol)
        names.append("noising_latent.png")
    write_schedule_table(schedules, out / "noising.csv")
    return names + ["noising.csv"]


def run_noising(args) -> None:
    from model.scripts.common import image_file, output_folder, resolve_device, validation_item

    check_positive(args.T, "--T", "the forward process needs at least one step")
    device = resolve_device(args.device)
    codec = load_codec(args.load, device)
    x = image_file(args.image, codec.data) if args.image else validation_item(codec.data, args.index)[0]
    out = output_folder(args.output, args.load, "plots")
    if codec.encode is None:
        print("pixel-space denoiser (denoiser.autoencoder 'none'): no latent to noise, only noising_pixels.png")
    names = write_noising(out, x, codec, schedules_with(args.schedules, args.T), args.seed)
    source = args.image or f"validation item {args.index}"
    print(f"wrote {', '.join(names)} ({source}; rows {', '.join(args.schedules)}; t = 0..{args.T}; "
          f"latent: {codec.latent}; seed {args.seed}) to {out}")


# ----------------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------------
def metrics_file(stage: Path) -> Path:
    return stage / "logs" / "metrics.csv"


def logged_stages(run: Path) -> list[Path]:
    """The stage folders under --run that hold logs/metrics.csv: the folder itself, or its vae/ and denoiser/."""
    if not run.is_dir():
        raise UserError(f"--run {run} is not a folder; pass a stage folder like runs/digits-1/denoiser or a run "
                        f"folder like runs/digits-1")
    if metrics_file(run).is_file():
        return [run]
    stages = [run / s for s in STAGES if metrics_file(run / s).is_file()]
    if not stages:
        raise UserError(f"{metrics_file(run)} does not exist (nor does vae/ or denoiser/logs/metrics.csv under "
                        f"{run}); the loss plot needs the CSV logger (trainer.logger 'csv', the default) and at least "
                        f"log_every_n_steps steps of training")
    return stages


def read_columns(path: Path) -> dict[str, list[str]]:
    """metrics.csv as {column: the cells of every row}; CSVLogger leaves the cells a row did not log empty."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {name: [row[name] for row in rows] for name in (rows[0] if rows else {})}


def logged_series(columns: dict[str, list[str]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows where `name` was logged with a finite value."""
    pairs = [(float(s), float(v)) for s, v in zip(columns["step"], columns[name]) if v not in ("", None)]
    steps, values = np.asarray(pairs, dtype=np.float64).reshape(-1, 2).T  # (2, K)
    keep = np.isfinite(values)
    return steps[keep], values[keep]


def moving_average(y: np.ndarray, half: int) -> np.ndarray:
    """Centred mean of y[i - half .. i + half], fewer values at the ends where fewer exist: (K,) → (K,).

    Centred rather than trailing, so the smoothed curve does not lag behind a falling loss.
    """
    c = np.cumsum(np.concatenate([[0.0], y]))  # (K+1,): c[i] = y[0] + ... + y[i-1]
    i = np.arange(len(y))
    start, end = np.maximum(i - half, 0), np.minimum(i + half + 1, len(y))
    return (c[end] - c[start]) / (end - start)


def smoothing_half_width(count: int) -> int:
    """About a tenth of the logged rows, at most SMOOTH_WINDOW // 2 either side."""
    return min(SMOOTH_WINDOW // 2, count // 20)


def stage_losses(stage: Path) -> dict:
    """The "train", "smooth" and (when logged) "val" series of one stage for `model.plots.loss_panels`."""
    path = metrics_file(stage)
    columns = read_columns(path)
    if TRAIN_LOSS not in columns or "step" not in columns:
        raise UserError(f"{path} has no '{TRAIN_LOSS}' column; the loss plot needs the CSV logger's training loss: "
                        f"train with trainer.logger 'csv' and log_every_n_steps <= max_steps")
    steps, loss = logged_series(columns, TRAIN_LOSS)
    if len(loss) == 0:
        raise UserError(f"{path} holds no finite '{TRAIN_LOSS}' value; train for at least log_every_n_steps steps")
    half = smoothing_half_width(len(loss))
    series = {"train": (TRAIN_LOSS, steps, loss),
              "smooth": (f"moving average ({2 * half + 1} rows)", steps, moving_average(loss, half))}
    val_name = next((name for name in VAL_LOSSES if name in columns), None)
    if val_name is not None:
        val_steps, val = logged_series(columns, val_name)
        if len(val):
            series["val"] = (val_name, val_steps, val)
    return series


def print_loss_summary(panels: dict[str, dict]) -> None:
    """The first and last training loss of each stage."""
    for title, series in panels.items():
        _, steps, loss = series["train"]
        print(f"{title}: {TRAIN_LOSS} {loss[0]:.4g} at step {steps[0]:.0f} → {loss[-1]:.4g} at step {steps[-1]:.0f}")


def run_loss(args) -> None:
    from model.plots import loss_panels

    run = Path(args.run)
    panels = {f"{stage.parent.name}/{stage.name}": stage_losses(stage) for stage in logged_stages(run)}
    out = folder_at(args.output, run / "plots")
    loss_panels(panels, out / "loss.png")
    print_loss_summary(panels)
    print(f"wrote loss.png to {out}")


# ----------------------------------------------------------------------------------------------------------------
# quality
# ----------------------------------------------------------------------------------------------------------------
QUALITY = tuple(metric for metric, _ in QUALITY_PANELS)  # the plotted metrics, each over its floor


def stage_quality(stage: Path) -> dict[str, np.ndarray]:
    """The quality evaluations of one denoiser stage: "step" (1-based optimiser steps), "elapsed_s", and each
    metric of QUALITY over its floor."""
    path = metrics_file(stage)
    if not path.is_file():
        raise UserError(f"{path} does not exist; the quality plot needs the CSV logger's log of a denoiser stage "
                        f"(pass runs/<run>/denoiser)")
    columns = read_columns(path)
    needed = [f"val/{m}" for m in QUALITY] + [f"val/floor_{m}" for m in QUALITY] + ["val/elapsed_s"]
    missing = [name for name in needed if name not in columns]
    if missing:
        raise UserError(f"{path} has no {missing[0]} column; train with trainer.fid_every_n_steps > 0 (runs trained "
                        f"before the floor and wall time were logged lack them)")
    steps, elapsed = logged_series(columns, "val/elapsed_s")
    series = {"step": steps + 1, "elapsed_s": elapsed}  # rows carry the 0-based step of the batch
    for m in QUALITY:
        series[m] = logged_series(columns, f"val/{m}")[1] / logged_series(columns, f"val/floor_{m}")[1]
    return series


def run_quality(args) -> None:
    from model.plots import quality_panels

    stages = [Path(r) for r in args.run]
    runs = {f"{stage.parent.name}/{stage.name}": stage_quality(stage) for stage in stages}
    out = folder_at(args.output, stages[0] / "plots")
    quality_panels(runs, out / "quality.png")
    rows = [{"run": label, **{k: float(v[i]) for k, v in series.items()}}
            for label, series in runs.items() for i in range(len(series["step"]))]
    write_csv({key: [r[key] for r in rows] for key in ("run", "step", "elapsed_s", *QUALITY)}, out / "quality.csv")
    for r in rows:
        print(f"{r['run']}: step {r['step']:.0f} at {r['elapsed_s']:.0f} s: pixel FD {r['pixel_fd']:.2f}x floor, "
              f"precision {r['precision']:.2f}x, recall {r['recall']:.2f}x")
    print(f"wrote quality.png and quality.csv to {out}")


# ----------------------------------------------------------------------------------------------------------------
# denoising
# ----------------------------------------------------------------------------------------------------------------
def load_image_denoiser(path: str, device: str, command: str):
    """A denoiser checkpoint of images (latent or pixel space); the 2-D toy is refused."""
    from model.pipeline import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(path, device)
    if pipe.points:
        raise UserError(f"{path} is the 2-D toy denoiser (points, not images); {command} needs an image denoiser "
                        f"checkpoint")
    return pipe


def validation_batch(data: "DataConfig", n: int) -> tuple[Tensor, Tensor]:
    """The first min(n, size) items of the validation split: x (K, C, H, W) in [-1, 1] and y (K,)."""
    from model.scripts.common import held_out

    val = held_out(data).val_set
    items = [val[i] for i in range(min(n, len(val)))]
    return torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])


def spread_timesteps(n: int, T: int) -> Tensor:
    """t_i = round(T·(i+1)/(n+1)) for i = 0..n−1, within [1, T]: evenly from small to large t, (n,) int64."""
    t = torch.round(T * torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)).long()
    return t.clamp(1, T)


def denoise_items(pipe, x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, ...]:
    """(z0, t, eps, x_t, eps_hat) on CPU for images x (N, C, H, W) with labels y (N,): item i at t_i."""
    device = pipe.device
    z0 = pipe.encode(x.to(device)).cpu()  # (N, C_z, h, w), or the pixels
    t = spread_timesteps(len(x), pipe.diff.T)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))  # (N, C_z, h, w)
    x_t, eps_hat = predict_noise(pipe, z0.to(device), y, t, eps.to(device))
    return z0, t, eps, x_t.cpu(), eps_hat.cpu()


@torch.no_grad()
def predict_noise(pipe, z0: Tensor, y: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t, ε̂): x_t from the forward process on the objective's table, ε̂ from the EMA network through the wrapper
    (`Denoiser`, any objective), each item at its own step."""
    x_t = base.q_sample(z0, t, eps, pipe.schedule)
    c = pipe.condition(y.to(z0.device))
    eps_hat = [pipe.denoiser(x_t[i: i + 1], int(t[i]), None if c is None else c[i: i + 1])[1] for i in range(len(t))]
    return x_t, torch.cat(eps_hat)


def latent_tiles(z: Tensor, image_size: int) -> Tensor:
    """Latents (N, C_z, h, w) as image tiles (N, 1 or 3, S, S) in [-1, 1].

    The first channel as grey, or the first three as RGB when C_z >= 3; each value divided by LATENT_RANGE (3)
    and clamped to [-1, 1], the same rule for every tile; nearest-neighbour upsampling to the image size S.
    """
    c = 3 if z.shape[1] >= 3 else 1
    tiles = (z[:, :c] / LATENT_RANGE).clamp(-1, 1)  # (N, c, h, w)
    return torch.nn.functional.interpolate(tiles, size=(image_size, image_size), mode="nearest")  # (N, c, S, S)


def same_channels(rows: list[Tensor]) -> list[Tensor]:
    """Repeat grey rows (N, 1, H, W) to RGB (N, 3, H, W) when any row is RGB, so the rows form one grid."""
    c = max(r.shape[1] for r in rows)
    return [r.expand(-1, c, -1, -1) for r in rows]


def denoising_rows(pipe, x: Tensor, z0: Tensor, x_t: Tensor, eps: Tensor, eps_hat: Tensor) -> dict[str, Tensor]:
    """The grid's rows by name, each (N, C, H, W): pixels as they are, latents through `latent_tiles`."""
    if pipe.autoencoder is None:
        return {"x0": x, "x_t": x_t, "eps": eps, "eps_hat": eps_hat}
    size = x.shape[-1]
    latents = {"x0 (latent)": z0, "x_t": x_t, "eps": eps, "eps_hat": eps_hat}
    decoded = pipe.decode(z0.to(pipe.device)).cpu()  # (N, C, H, W)
    return {"x0 (decoded)": decoded, **{name: latent_tiles(z, size) for name, z in latents.items()}}


def write_denoising(out: Path, rows: dict[str, Tensor], t: Tensor, eps: Tensor, eps_hat: Tensor, info: dict) -> None:
    """denoising.png (one row per entry of rows, one column per item) and denoising.json."""
    from model.images import save_grid

    save_grid(torch.cat(same_channels(list(rows.values()))), out / "denoising.png", nrow=len(t))
    mse = (eps_hat - eps).pow(2).flatten(1).mean(1)  # (N,)
    record = {"t": t.tolist(), "mse_eps": mse.tolist(), "rows": list(rows), **info}
    write_text(out / "denoising.json", json.dumps(record, indent=2) + "\n")


def run_denoising(args) -> None:
    from model.scripts.common import output_folder, resolve_device

    check_positive(args.n, "--n", "the grid needs at least one column")
    device = resolve_device(args.device)
    pipe = load_image_denoiser(args.load, device, "denoising")
    x, y = validation_batch(pipe.cfg.data, args.n)
    out = output_folder(args.output, args.load, "plots")
    z0, t, eps, x_t, eps_hat = denoise_items(pipe, x, y, args.seed)
    rows = denoising_rows(pipe, x, z0, x_t, eps, eps_hat)
    latent = f"normalised latent; tiles show value / {LATENT_RANGE:g} clamped to [-1, 1]"
    space = "pixels" if pipe.autoencoder is None else latent
    info = {"space": space, "seed": args.seed, "parametrisation": pipe.diff.parametrisation}
    write_denoising(out, rows, t, eps, eps_hat, info)
    note = f" (the validation split has only {len(x)})" if len(x) < args.n else ""
    print(f"wrote denoising.png and denoising.json: {len(x)} items{note} at t = {t.tolist()}, rows "
          f"{', '.join(rows)} to {out}")


@cli_entry
def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    args.handler(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
