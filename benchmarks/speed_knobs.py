"""Speed knobs for the denoiser UNet: fp32, bf16 autocast, channels_last, torch.compile and both, training, sampling.

    python -m benchmarks.speed_knobs
    python -m benchmarks.speed_knobs --device cuda --batch 256          (GPU: autocast runs on cuda with bf16)

The UNet of config/digits.json (random weights) on its 4×4×8 latents, batch `--batch`, three tables:

- one UNet call without gradients (its first call apart: it holds torch.compile's compilation for inference);
- a training step: `benchmarks.common.diffusion_train_step` (q_sample, UNet, v-target MSE, backward, clip,
  AdamW, EMA) on a fixed random batch;
- sampling: one DDIM-`--steps` call (`model.sampling.sample_ddim`) from fixed noise.

Knobs, one at a time against the fp32 baseline: (a) fp32; (b) `torch.autocast(device, dtype=torch.bfloat16)` around
the forward pass and the loss (sampling: around the whole loop); (c) the UNet and its input in the `channels_last`
memory format; (d) `torch.compile` of the UNet (default mode); (e) both (c) and (d). A knob that fails (no compiler,
an unsupported op) is reported as "failed: <reason>", and one whose UNet call is slower than `--slow-limit` / steps
as "not timed"; the others still run. The first call of each knob is timed on its own ("first call s"): for
torch.compile it holds the compilation, which the steady-state figures exclude.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from torch import nn

from benchmarks.common import (Report, build_unet, denoise_of, diffusion_train_step, latent_shape, load_config,
                               make_parser, measure, parse, random_batch, schedule_of, timed)
from model.sampling import sample_ddim
from model.errors import UserError, cli_entry

NAME = "speed_knobs"


def parse_args(argv: list[str]):
    # 3 repeats, 1 warm-up: the first call is timed apart, so one more untimed call settles caches and allocators
    p = make_parser(__doc__.splitlines()[0], repeats=3, warmup=1)
    p.add_argument("--batch", type=int, default=64, help="batch of both measurements (64: the demo's batch)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (25: the digits config's sample_steps)")
    p.add_argument("--knobs", nargs="+", default=list(KNOBS), choices=list(KNOBS), help="knobs to time")
    p.add_argument("--slow-limit", type=float, default=10.0,
                   help="a knob whose UNet call is over this / --steps seconds is reported but not timed further "
                        "(10 s per DDIM call: bf16 on a CPU without bf16 instructions takes minutes per call)")
    p.add_argument("--cold-compile", action="store_true",
                   help="compile into an empty inductor cache (a first-ever compile); by default torch's cache "
                        "is used as is, so a second run compiles faster")
    return parse(p, argv)


def compile_cache(cold: bool) -> str:
    """Point inductor at an empty folder when `cold`; a line saying which cache the compile figures used."""
    if cold:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    from model.compat import inductor_cache_dir

    folder = inductor_cache_dir()
    if folder is None:  # older torch: the figures still stand, only this line is vaguer
        return "inductor cache: torch's default folder"
    state = "empty" if not any(os.scandir(folder)) else "already filled by earlier compiles"
    return f"inductor cache: {folder} ({state})"


@dataclass(frozen=True)
class Knob:
    """One way of running the same UNet: mixed precision, a memory format, or compilation."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    def autocast(self, device: torch.device) -> Callable[[], ContextManager]:
        if not self.bf16:
            return contextlib.nullcontext
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)

    def prepare(self, net: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        """(the network to call, the input in the knob's layout)."""
        if self.channels_last:
            net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        if self.compile:
            net = torch.compile(net)
        return net, x


KNOBS = {"fp32": Knob(), "bf16 autocast": Knob(bf16=True), "channels_last": Knob(channels_last=True),
         "torch.compile": Knob(compile=True),
         # as a config with trainer.channels_last and trainer.compile trains
         "channels_last + torch.compile": Knob(channels_last=True, compile=True)}


def fresh_unet(cfg, seed: int, device: torch.device) -> nn.Module:
    """The same initial weights for every knob."""
    torch.manual_seed(seed)
    return build_unet(cfg).to(device)


def training(knob: Knob, cfg, schedule, batch, seed: int, device: torch.device) -> Callable[[], torch.Tensor]:
    net = fresh_unet(cfg, seed, device)
    ema = copy.deepcopy(net).requires_grad_(False)  # before compiling: the EMA copy stays a plain module
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    z0, c = batch
    net, z0 = knob.prepare(net, z0)
    return lambda: diffusion_train_step(net, opt, z0, c, schedule, ema=ema, autocast=knob.autocast(device))


def sampling(knob: Knob, net: nn.Module, x_T: torch.Tensor, c, schedule, steps: int,
             device: torch.device) -> Callable[[], torch.Tensor]:
    """One DDIM call of the (prepared) sampling network under the knob."""
    autocast = knob.autocast(device)

    def sample() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return sample_ddim(denoise_of(net, schedule, c), x_T, schedule, steps=steps)

    return sample


def failure(err: Exception) -> str:
    return "failed: " + (str(err).strip().splitlines() or [type(err).__name__])[0][:120]


def forward_probe(knob: Knob, net: nn.Module, x: torch.Tensor, c, device: torch.device,
                  limit: float) -> tuple[float, float]:
    """(first, steady) seconds of one no-grad UNet call under the knob: the first call (it holds any compilation
    and one-off set-up) and a second one, unless the first alone, on a knob that does not compile, took longer
    than `limit` (a whole DDIM call's budget; steady = first then)."""
    t = torch.full((x.shape[0],), 500, dtype=torch.int64, device=device)  # any t: the cost does not depend on it
    autocast = knob.autocast(device)

    def call() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return net(x, t, c)

    first = timed(call, device)
    return first, first if first > limit and not knob.compile else timed(call, device)


def probe_rows(knobs: dict[str, Knob], cfg, batch, args) -> tuple[list[dict], dict[str, Callable], dict[str, str]]:
    """Prepare every knob's sampling network and time one UNet call with it: (rows, DDIM calls, knobs not to time).

    A knob whose UNet call is over --slow-limit / steps would make a DDIM call (and a training step) last longer
    than this run should: it is reported and skipped (bf16 on a CPU without bf16 instructions: minutes).
    """
    limit = args.slow_limit / args.steps
    rows, samplers, skip = [], {}, {}
    for name, knob in knobs.items():
        try:
            net, x_T = knob.prepare(fresh_unet(cfg, args.seed, args.device).eval(), batch[0])
            first, steady = forward_probe(knob, net, x_T, batch[1], args.device, args.slow_limit)
        except Exception as err:  # a knob the machine cannot run is a figure, not a crash
            rows.append({"knob": name, "first UNet call s": "", "UNet call ms": "", "status": failure(err)})
            skip[name] = failure(err)
            continue
        samplers[name] = sampling(knob, net, x_T, batch[1], schedule_of(cfg), args.steps, args.device)
        status = "ok"
        if steady > limit:
            status = skip[name] = (f"not timed: one UNet call takes {steady:.1f} s, over --slow-limit / steps = "
                                   f"{limit:.2f} s")
        rows.append({"knob": name, "first UNet call s": first, "UNet call ms": 1e3 * steady, "status": status})
    return rows, samplers, skip


def first_calls(fns: dict[str, Callable], device: torch.device) -> tuple[dict[str, float], dict[str, str]]:
    """Call each fn once, timed (compilation happens here); ({name: seconds}, {name: "failed: ..."})."""
    seconds, failed = {}, {}
    for name, fn in fns.items():
        try:
            seconds[name] = timed(fn, device)
        except Exception as err:  # a knob the machine cannot run is a figure, not a crash
            failed[name] = failure(err)
    return seconds, failed


def knob_rows(fns: dict[str, Callable], skip: dict[str, str], args, per: str, scale: float) -> list[dict]:
    """Time each knob's fn (those not in `skip`): the first call apart, then the steady state interleaved."""
    first, failed = first_calls({k: f for k, f in fns.items() if k not in skip}, args.device)
    steady = measure({k: f for k, f in fns.items() if k in first}, args.device, args.warmup, args.repeats)
    base_time: Optional[float] = steady["fp32"].median if "fp32" in steady else None
    rows = []
    for name in fns:
        row: dict = dict.fromkeys(["knob", per, f"min {per}", "speed-up vs fp32", "first call s",
                                   "first call minus steady s", "status"], "")  # the same columns on every row
        row["knob"], row["status"] = name, skip.get(name) or failed.get(name) or "ok"
        if name in steady:
            t = steady[name]
            row.update({per: scale * t.median, f"min {per}": scale * t.min,
                        "speed-up vs fp32": base_time / t.median if base_time else "",
                        "first call s": first[name], "first call minus steady s": first[name] - t.median})
        rows.append(row)
    return rows


@cli_entry
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.slow_limit <= 0:
        raise UserError("--batch, --steps and --slow-limit must be > 0")
    cfg = load_config(args.config)
    schedule = schedule_of(cfg)
    if args.steps > schedule.T:
        raise UserError(f"--steps must be at most T = {schedule.T}, got {args.steps}")
    report = Report(NAME, args.device)
    if any(KNOBS[name].compile for name in args.knobs):
        print(compile_cache(args.cold_compile))
    shape = latent_shape(cfg)
    batch = random_batch((args.batch, *shape), cfg.denoiser.unet.num_classes, args.device)
    knobs = {name: KNOBS[name] for name in args.knobs}
    rows, samplers, skip = probe_rows(knobs, cfg, batch, args)
    report.table(f"one UNet call, no grad (batch {args.batch}, {'×'.join(map(str, shape))} latents)", rows,
                 note="first UNet call s holds torch.compile's compilation of the inference graph.")
    train = {k: training(knob, cfg, schedule, batch, args.seed, args.device) for k, knob in knobs.items()}
    report.table(f"training step (batch {args.batch})", knob_rows(train, skip, args, "ms/step", 1e3),
                 note="first call minus steady ≈ torch.compile's compilation of the training graph (forward and "
                      "backward); for the other knobs, one-off allocation.")
    report.table(f"DDIM-{args.steps} sampling (batch {args.batch})", knob_rows(samplers, skip, args, "s/batch", 1.0),
                 note="median of the repeats, knobs interleaved; speed-up vs fp32 above 1: the knob helps here.")
    report.save()
    if args.cold_compile:
        shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
