"""Peak memory and step time of the 128-px networks per memory and speed knob, and the activation memory per sample
that scales them to another batch or GPU.

    python -m benchmarks.memory_knobs
    python -m benchmarks.memory_knobs --device cuda --vae-batch 16 --unet-batch 64

The networks are those of config/ffhq-beta-vae.json (the VAE on 3×128×128 images) and config/ffhq-denoiser.json
(the UNet on the VAE's 8×16×16 latents), with random weights and random batches. One training step is: VAE: the
forward pass, L1 + 10⁻²·KL, backward, AdamW; UNet: `benchmarks.common.diffusion_train_step` (v-loss, clip, AdamW,
EMA). The knobs, each alone against the fp32 baseline, are what the configs switch on: `trainer.channels_last`,
`unet.gradient_checkpointing` (the UNet only) and `trainer.compile` (torch.compile; its first call, the compilation,
is timed apart as "first call s").

Memory: CUDA's peak allocated bytes, or on a CPU the peak resident set (VmHWM, reset before each measurement through
/proc/self/clear_refs). Each knob is measured at batch B and 2B: "activation MiB / sample" is
(peak(2B) − peak(B)) / B, what each further sample of a batch costs; the weights, AdamW moments and EMA are in both
peaks and cancel. A batch of N then needs about peak(B) + (N − B) · that.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import (Report, build_unet, diffusion_train_step, latent_shape, load_config, make_parser, parse,
                               peak_memory_mib, random_batch, schedule_of, timed)
from model.errors import UserError, cli_entry

NAME = "memory_knobs"
VAE_CONFIG, UNET_CONFIG = "config/ffhq-beta-vae.json", "config/ffhq-denoiser.json"
KNOBS = ("fp32", "channels_last", "gradient_checkpointing", "compile")


def reset_peak(device: torch.device) -> bool:
    """Start a new peak-memory measurement; False when this platform cannot (the peak is then the process's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current resident set
        return True
    except OSError:
        return False


def vae_step(knob: str, batch: int, device: torch.device, seed: int) -> Callable[[], None]:
    from model.autoencoder import BetaVAE, kl_divergence, l1_loss

    torch.manual_seed(seed)
    vae = BetaVAE(load_config(VAE_CONFIG).vae.net).to(device)
    x = torch.rand(batch, vae.cfg.in_channels, 128, 128, device=device) * 2 - 1
    if knob == "channels_last":
        vae, x = vae.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    net = torch.compile(vae) if knob == "compile" else vae

    def step() -> None:
        x_hat, mean, logvar, _ = net(x)
        loss = (l1_loss(x_hat, x) + 1e-2 * kl_divergence(mean, logvar)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def unet_step(knob: str, batch: int, device: torch.device, seed: int) -> Callable[[], None]:
    import copy

    cfg = load_config(UNET_CONFIG)
    if knob == "gradient_checkpointing":
        unet = dataclasses.replace(cfg.denoiser.unet, gradient_checkpointing=True)
        cfg = dataclasses.replace(cfg, denoiser=dataclasses.replace(cfg.denoiser, unet=unet))
    torch.manual_seed(seed)
    net = build_unet(cfg).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    z0, c = random_batch((batch, *latent_shape(cfg)), cfg.denoiser.unet.num_classes, device)
    if knob == "channels_last":
        net, z0 = net.to(memory_format=torch.channels_last), z0.contiguous(memory_format=torch.channels_last)
    call = torch.compile(net) if knob == "compile" else net
    schedule = schedule_of(cfg)
    return lambda: diffusion_train_step(call, opt, z0, c, schedule, ema=ema)


STEPS = {"vae": vae_step, "unet": unet_step}


def one(stage: str, knob: str, batch: int, args) -> dict:
    """First-call time, median step time and peak memory of one (stage, knob, batch), in this process."""
    step = STEPS[stage](knob, batch, args.device, args.seed)
    first = timed(step, args.device)  # compiles under compile; allocator warm-up otherwise
    for _ in range(args.warmup):
        step()
    exact = reset_peak(args.device)
    seconds = [timed(step, args.device) for _ in range(args.repeats)]
    return {"first call s": first, "step s": statistics.median(seconds), "peak MiB": peak_memory_mib(args.device),
            "exact": exact}


def in_fresh_process(stage: str, knob: str, batch: int, args) -> dict:
    """`one` in a new Python process: on a CPU the resident set of an earlier measurement (memory the allocator
    keeps after a free) would otherwise hide a smaller one's peak."""
    flags = ["--device", str(args.device), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
             "--seed", str(args.seed), "--one", stage, knob, str(batch)]
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory_knobs", *flags], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(stage: str, knob: str, batch: int, args) -> dict:
    """The figures at `batch` and the peak at 2 × batch, each in a fresh process."""
    at_b, at_2b = in_fresh_process(stage, knob, batch, args), in_fresh_process(stage, knob, 2 * batch, args)
    return {"batch": batch, "first call s": at_b["first call s"], "step s": at_b["step s"],
            "peak MiB": at_b["peak MiB"], f"peak MiB at {2 * batch}": at_2b["peak MiB"],
            "activation MiB / sample": (at_2b["peak MiB"] - at_b["peak MiB"]) / batch}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__.split("\n")[0], repeats=3, warmup=1)
    p.add_argument("--vae-batch", type=int, default=2, help="VAE batch B (default 2; also measured at 2B)")
    p.add_argument("--unet-batch", type=int, default=8, help="UNet batch B (default 8; also measured at 2B)")
    p.add_argument("--knobs", nargs="+", default=list(KNOBS), choices=list(KNOBS), help="knobs to measure")
    p.add_argument("--one", nargs=3, metavar=("STAGE", "KNOB", "BATCH"), help=argparse.SUPPRESS)
    args = parse(p, argv)
    if args.vae_batch < 1 or args.unet_batch < 1:
        raise UserError(f"--vae-batch and --unet-batch must be >= 1, got {args.vae_batch} and {args.unet_batch}")
    if args.one:  # a measurement in its own process (see in_fresh_process): one JSON line
        stage, knob, batch = args.one
        print(json.dumps(one(stage, knob, int(batch), args)))
        return 0
    report = Report(NAME, args.device)
    for stage, title, batch in (("vae", "VAE (ffhq-beta-vae, 3×128×128)", args.vae_batch),
                                ("unet", "UNet (ffhq-denoiser, 8×16×16 latents)", args.unet_batch)):
        rows = []
        for knob in args.knobs:
            if knob == "gradient_checkpointing" and stage == "vae":
                continue  # the UNet's knob
            try:
                rows.append({"knob": knob, **measure(stage, knob, batch, args)})
            except RuntimeError as err:  # a knob this machine cannot run is reported, not fatal
                rows.append({"knob": knob, "first call s": f"failed: {str(err)[:100]}"})
        report.table(f"{title}: one training step", rows,
                     note="step s: median of the timed steps; peak MiB: the process's peak during them; each batch "
                          "size measured in a fresh process")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
