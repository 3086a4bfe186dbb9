"""Training throughput: the package's Lightning systems against a bare PyTorch loop doing the same math.

    python -m benchmarks.train_throughput
    python -m benchmarks.train_throughput --steps 20 --repeats 5 --device cuda

Configurations:

- denoiser, Lightning: `DenoiserSystem` on the digits config (batch 128, on its 4×4×8 latents) fitted by the Trainer
  that `model.lightning.trainer.make_trainer` builds, with validation, checkpoints, image grids, the logger and the
  progress bar off (`--keep-callbacks` keeps the logger, LR monitor and checkpoint callbacks of a real run);
- denoiser, bare: the same network, optimiser (`adamw_with_warmup`), data loader and math in a plain loop
  (`benchmarks.common.diffusion_train_step`: q_sample, UNet, v-target MSE, backward, clip, AdamW, EMA);
- both with cached latents (`cache_latents: true`, the config's choice) and with the VAE encoding every batch;
- the VAE, Lightning (`VAESystem`) against bare (BetaVAE, L1 + SSIM + β·KL, backward, clip, AdamW).

Timing: all configurations live in this one process and take turns (`--repeats` rounds, interleaved, every other
round reversed), so drift of the machine and the state of the process fall on all of them alike. In a round each
configuration starts a fresh epoch (Lightning: a new `fit` of the same system), runs `--warmup` untimed steps and
then a window of `--steps` steps. A step's time is the interval between the starts of consecutive steps
(Lightning: `on_train_batch_start`), so it includes the data loader and all the loop's bookkeeping.
images/s = the window's images / its time; the table gives the median (and best) round.

Peak memory: each configuration once more in a fresh subprocess (the resident set's high-water mark, imports
included; on CUDA `max_memory_allocated`); `--no-memory` skips it. The VAE is untrained (random weights): the cost
of encoding does not depend on the weights.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import (Report, diffusion_train_step, interleaved, load_config, make_parser,
                               peak_memory_mib, parse, sync)
from model.errors import UserError, cli_entry

NAME = "train_throughput"
RESULT = "RESULT "  # prefix of the one stdout line a worker answers with
# (system, loop, latents): the configurations, in the order the tables show them
CONFIGS = [("denoiser", "lightning", "cached"), ("denoiser", "bare", "cached"),
           ("denoiser", "lightning", "encoded"), ("denoiser", "bare", "encoded"),
           ("vae", "lightning", "-"), ("vae", "bare", "-")]


def parse_args(argv: list[str]):
    # 3 rounds: a median and a best; 3 warm-up steps: the first steps of a fit (or epoch) are slower
    p = make_parser(__doc__.splitlines()[0], repeats=3, warmup=3)
    p.add_argument("--steps", type=int, default=10,
                   help="steps per timed window (10: about 2 s of denoiser steps on 2 CPU cores)")
    p.add_argument("--keep-callbacks", action="store_true",
                   help="keep the logger, LR monitor and checkpoint callbacks a real run has (off: the loop alone)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory subprocesses (each costs ~10 s of imports and set-up on 2 CPU cores)")
    p.add_argument("--only", nargs="+", default=None, help="configurations to run, e.g. denoiser:bare:cached")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # set by the parent for its subprocesses
    args = parse(p, argv)
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Inside a worker: set up one configuration, run warm-up + timed steps, report
# ----------------------------------------------------------------------------------------------------------------
class StepClock:
    """perf_counter at the start of every step (after a device sync) and the batch size of that step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.starts: list[float] = []
        self.sizes: list[int] = []

    def tick(self, batch_size: int) -> None:
        sync(self.device)
        self.starts.append(time.perf_counter())
        self.sizes.append(batch_size)

    def window(self, warmup: int) -> tuple[float, float, int]:
        """(images/s, seconds per step, batch size) of the steps after `warmup`; the last tick closes the window."""
        seconds = self.starts[-1] - self.starts[warmup]
        return (sum(self.sizes[warmup:-1]) / seconds, seconds / (len(self.starts) - 1 - warmup),
                max(self.sizes[warmup:-1]))


def lightning_clock(device: torch.device):
    """A Lightning callback that ticks a StepClock at every on_train_batch_start."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.clock = StepClock(device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.clock.tick(len(batch[0]))

    return Clock()


def stage_config(cfg, system: str, latents: str, device: torch.device):
    """The digits config with cache_latents as asked and a trainer that neither validates nor writes anything."""
    den = cfg.denoiser
    diffusion = dataclasses.replace(den.diffusion, cache_latents=latents == "cached")
    cfg = dataclasses.replace(cfg, denoiser=dataclasses.replace(den, diffusion=diffusion))
    tc = cfg.vae.trainer if system == "vae" else cfg.denoiser.trainer
    never = 10**9  # an interval no benchmark run reaches
    tc = dataclasses.replace(tc, val_every_n_steps=never, limit_val_batches=0, checkpoint_every_n_steps=never,
                             images_every_n_steps=0, progress_bar=False,
                             accelerator="gpu" if device.type == "cuda" else "cpu", devices="1")
    return cfg, tc


def image_data(cfg, tc):
    """The digits datamodule at the stage's batch size, set up (what run.train_stage builds)."""
    from data import make_datamodule

    dm = make_datamodule(dataclasses.replace(cfg.data, batch_size=tc.batch_size or cfg.data.batch_size))
    dm.prepare_data()
    dm.setup("fit")
    return dm


class LightningRunner:
    """The package's system, data and Trainer; every `run` is a new `fit` of the same system."""

    def __init__(self, system_kind: str, latents: str, cfg, tc, device: torch.device, keep: bool) -> None:
        from model.config import to_dict
        from model.lightning.systems.denoiser import DenoiserSystem
        from model.lightning.latent_cache import CachedLatents
        from model.lightning.systems.vae import VAESystem

        self.tc, self.device, self.keep = tc, device, keep
        self.dm = image_data(cfg, tc)
        if system_kind == "vae":
            self.system, self.monitor = VAESystem(to_dict(cfg)), "val/recon"
        else:
            self.system = DenoiserSystem(to_dict(cfg), num_classes=self.dm.num_classes)
            self.monitor = "val/loss"
            if latents == "cached":
                self.dm = CachedLatents(self.dm, self.system.encode_mean)

    def run(self, steps: int) -> StepClock:
        from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

        from model.lightning.trainer import make_logger, make_trainer

        clock = lightning_clock(self.device)
        with tempfile.TemporaryDirectory() as folder:
            tc = dataclasses.replace(self.tc, max_steps=steps)
            logger = make_logger(tc, Path(folder), NAME, resume_step=None)
            trainer = make_trainer(tc, Path(folder), self.monitor, logger, [clock])
            if not self.keep:  # the loop alone: no logger, so no LR monitor (it needs one), no checkpoint callbacks
                trainer.loggers = []
                trainer.callbacks = [cb for cb in trainer.callbacks
                                     if not isinstance(cb, (ModelCheckpoint, LearningRateMonitor))]
            trainer.fit(self.system, datamodule=self.dm)
        return clock.clock


def bare_denoiser_step(cfg, tc, dm, latents: str, device: torch.device) -> tuple[Callable, object]:
    """(step(batch, i), train loader): the denoiser recipe on plain modules, no LightningModule anywhere."""
    from model import base
    from model.autoencoder import BetaVAE
    from model.optim import adamw_with_warmup
    from model.denoiser import denoiser_network
    from model.ema import ema_decay_at
    from model.lightning.latent_cache import CachedLatents

    diff = cfg.denoiser.diffusion
    net = denoiser_network(cfg, dm.num_classes).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    vae = BetaVAE(cfg.vae.net).requires_grad_(False).eval().to(device)
    opt_sched = adamw_with_warmup(net.parameters(), cfg.denoiser.optim, cfg.denoiser.trainer.max_steps)
    opt, lr_sched = opt_sched["optimizer"], opt_sched["lr_scheduler"]["scheduler"]
    schedule = base.make_schedule(diff.schedule, diff.T)
    channels = cfg.vae.net.latent_channels
    shift, scale = torch.zeros(1, channels, 1, 1, device=device), torch.ones(1, channels, 1, 1, device=device)

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(x.to(device))[0]  # posterior mean, (B, C_z, h, w)

    if latents == "cached":
        dm = CachedLatents(dm, encode)
        dm.setup("fit")

    def step(batch, i: int) -> None:
        x, y = (b.to(device) for b in batch)
        z0 = ((x if latents == "cached" else encode(x)) - shift) / scale  # normalised latents (B, C_z, h, w)
        c = torch.where(torch.rand(y.shape, device=device) < diff.p_uncond, torch.full_like(y, dm.num_classes), y)
        diffusion_train_step(net, opt, z0, c, schedule, diff.parametrisation, tc.gradient_clip_val, ema,
                             ema_decay_at(i, diff.ema_decay))
        lr_sched.step()

    return step, dm.train_dataloader()


def bare_vae_step(cfg, tc, dm, device: torch.device) -> tuple[Callable, object]:
    """(step(batch, i), train loader): the β-VAE recipe on plain modules."""
    from model.autoencoder import BetaVAE, ReconstructionLoss, beta_at, kl_divergence
    from model.optim import adamw_with_warmup

    n = cfg.vae.net
    vae, recon_loss = BetaVAE(n).to(device), ReconstructionLoss(cfg.vae.loss).to(device)
    opt_sched = adamw_with_warmup(vae.parameters(), cfg.vae.optim, cfg.vae.trainer.max_steps)
    opt, lr_sched = opt_sched["optimizer"], opt_sched["lr_scheduler"]["scheduler"]

    def step(batch, i: int) -> None:
        x = batch[0].to(device)
        x_hat, mean, logvar, _ = vae(x)
        recon, _ = recon_loss(x_hat, x)  # (B,)
        beta = beta_at(i, n.beta_start, n.kl_factor, n.beta_decay_period, n.beta_min)
        loss = (recon + beta * kl_divergence(mean, logvar)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), tc.gradient_clip_val)
        opt.step()
        lr_sched.step()

    return step, dm.train_dataloader()


class BareRunner:
    """The same recipe in a plain loop over the same data loader; every `run` starts a fresh epoch, as a fit does."""

    def __init__(self, system_kind: str, latents: str, cfg, tc, device: torch.device) -> None:
        dm = image_data(cfg, tc)
        if system_kind == "vae":
            self.step, self.loader = bare_vae_step(cfg, tc, dm, device)
        else:
            self.step, self.loader = bare_denoiser_step(cfg, tc, dm, latents, device)
        self.device, self.i = device, 0

    def run(self, steps: int) -> StepClock:
        clock, done = StepClock(self.device), 0
        while done < steps:
            for batch in self.loader:  # a new epoch, re-shuffled like Lightning's
                if done == steps:
                    break
                clock.tick(len(batch[0]))
                self.step(batch, self.i)
                self.i, done = self.i + 1, done + 1
        return clock


def make_runner(spec: str, args):
    system_kind, loop, latents = spec.split(":")
    cfg, tc = stage_config(load_config(args.config), system_kind, latents, args.device)
    if loop == "lightning":
        return LightningRunner(system_kind, latents, cfg, tc, args.device, args.keep_callbacks)
    return BareRunner(system_kind, latents, cfg, tc, args.device)


def quiet() -> None:
    """Lightning's start-up lines and warnings (no GPU, few workers) would bury the tables."""
    import importlib
    import logging

    importlib.import_module("pytorch_lightning")  # its import sets its loggers to INFO: import first, then lower
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def worker(args) -> dict:
    """One configuration in its own process, warm-up and one window: its peak memory."""
    quiet()
    make_runner(args.worker, args).run(args.warmup + args.steps)
    return {"peak_mib": peak_memory_mib(args.device)}


# ----------------------------------------------------------------------------------------------------------------
# The parent: one subprocess per configuration and repeat, then the tables
# ----------------------------------------------------------------------------------------------------------------
def spawn(spec: str, argv: list[str]) -> dict:
    """Run `spec` in a fresh Python process with the same flags; its RESULT line as a dict."""
    cmd = [sys.executable, "-m", f"benchmarks.{NAME}", *argv, "--worker", spec]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"worker {spec} failed (exit {done.returncode}):\n" + "\n".join(tail))
    return json.loads(lines[-1][len(RESULT):])


def time_rounds(specs: list[str], args) -> dict[str, list[tuple[float, float, int]]]:
    """{spec: [(images/s, s/step, batch) per round]}, the configurations taking turns in this process."""
    runners = {spec: make_runner(spec, args) for spec in specs}
    windows: dict[str, list[tuple[float, float, int]]] = {spec: [] for spec in specs}
    for spec in interleaved(specs, args.repeats):
        windows[spec].append(runners[spec].run(args.warmup + args.steps + 1).window(args.warmup))
    return windows


def throughput_rows(windows: dict[str, list], memory: dict[str, float]) -> list[dict]:
    rows = []
    for spec, ws in windows.items():
        system, loop, latents = spec.split(":")
        row = {"system": system, "loop": loop, "latents": latents,
               "batch": ws[0][2], "ms/step": 1e3 * statistics.median(w[1] for w in ws),
               "images/s": statistics.median(w[0] for w in ws), "best images/s": max(w[0] for w in ws)}
        bare = windows.get(f"{system}:bare:{latents}")
        if loop == "lightning" and bare:
            ratio = statistics.median(w[0] for w in bare) / row["images/s"]
            row["overhead vs bare"] = f"{100 * (ratio - 1):+.1f}%"
        if spec in memory:
            row["peak MiB"] = memory[spec]
        rows.append(row)
    return rows


def caching_rows(windows: dict[str, list]) -> list[dict]:
    """The encode cost per step: denoiser step time with the VAE encoding each batch minus with cached latents."""
    rows = []
    for loop in ("lightning", "bare"):
        cached, encoded = windows.get(f"denoiser:{loop}:cached"), windows.get(f"denoiser:{loop}:encoded")
        if cached and encoded:
            c = 1e3 * statistics.median(w[1] for w in cached)
            e = 1e3 * statistics.median(w[1] for w in encoded)
            rows.append({"loop": loop, "cached ms/step": c, "encoding ms/step": e, "encode cost ms/step": e - c,
                         "speed-up of caching": e / c})
    return rows


def strip_only(argv: list[str]) -> list[str]:
    """argv without `--only ...` (the worker gets its configuration through --worker)."""
    out, skipping = [], False
    for a in argv:
        if a == "--only":
            skipping = True
        elif skipping and not a.startswith("--"):
            continue
        else:
            skipping = False
            out.append(a)
    return out


@cli_entry
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        print(RESULT + json.dumps(worker(args)), flush=True)
        return 0
    specs = [":".join(c) for c in CONFIGS]
    unknown = sorted(set(args.only or []) - set(specs))
    if unknown:
        raise UserError(f"unknown configuration {unknown[0]}; choose from {', '.join(specs)}")
    specs = [s for s in specs if s in (args.only or specs)]
    quiet()
    report = Report(NAME, args.device)
    print(f"{len(specs)} configurations x {args.repeats} rounds of {args.warmup} warm-up + {args.steps} timed steps",
          flush=True)
    windows = time_rounds(specs, args)
    memory = {} if args.no_memory else {spec: spawn(spec, strip_only(argv))["peak_mib"] for spec in specs}
    report.table("training throughput (median round)", throughput_rows(windows, memory),
                 note="overhead vs bare = bare images/s ÷ Lightning images/s − 1 (the time Lightning and the "
                      "package's hooks add per image); peak MiB = a fresh process's resident-set high-water mark "
                      "(CUDA: max_memory_allocated), imports included: compare the rows with each other.")
    rows = caching_rows(windows)
    if rows:
        report.table("latent caching (denoiser)", rows)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
