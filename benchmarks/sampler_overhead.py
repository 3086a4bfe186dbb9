"""Our DDPM, DDIM and UniPC loops (`model.sampling`) against diffusers' schedulers, same denoiser.

    python -m benchmarks.sampler_overhead
    python -m benchmarks.sampler_overhead --ddpm-steps 1000 --batch-sizes 1 64 --repeats 5     (the full DDPM)

Both sides use the v-prediction, the cosine schedule (diffusers' "squaredcos_cap_v2"), the same T and the same
times, no clipping; diffusers' DDPMScheduler / DDIMScheduler / UniPCMultistepScheduler are driven by a plain loop
(`set_timesteps`, then `step` per time), as its pipelines do.

(a) the per-step overhead of each loop in microseconds, with a near-zero-cost denoiser (x ↦ 0.1·x on one 4×4×4
    latent), so the time is the sampler's own bookkeeping; ours/diffusers measured side by side, interleaved;
(b) wall time per batch and per sample with the real ConvNeXt UNet of config/digits.json (random weights) on
    its 4×4×8 latents, for DDIM-`--ddim-steps` and DDPM-`--ddpm-steps`;
(c) the largest absolute difference between the two implementations' final samples (float32, same x_T, and for
    DDPM the same generator seed, which both draw their per-step noise from in the same order): a sanity figure.

Index mapping: diffusers' `alphas_cumprod[k]` is our `alpha_bar[k + 1]`, and its timestep k is our t = k + 1; with
`timestep_spacing="trailing"` its times are ours minus 1 whenever T is a multiple of the steps (checked below).
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from benchmarks.common import (Report, build_unet, latent_shape, load_config, make_parser, measure, parse,
                               random_batch, schedule_of)
from model import base, sampling
from model.errors import UserError, cli_entry

NAME = "sampler_overhead"


def parse_args(argv: list[str]):
    # 3 repeats of (b): each is up to ddpm-steps UNet calls at batch 64, the bulk of this script's time
    p = make_parser(__doc__.splitlines()[0], repeats=3, warmup=1)
    p.add_argument("--ddim-steps", type=int, default=25, help="DDIM steps (25: the digits config's sample_steps)")
    p.add_argument("--ddpm-steps", type=int, default=100,
                   help="DDPM steps for (b) (100 keeps the default run near 2 minutes on 2 CPU cores; the "
                        "sampler cost is linear in the steps, so DDPM-1000 is about 10x; part (a) always runs all T)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64],
                   help="batch sizes of (b) (1: one sample's latency; 64: the demo's batch)")
    # microsecond figures are noisy on a shared machine; 21 cheap repeats (a few seconds in all) steady the median
    p.add_argument("--overhead-repeats", type=int, default=21, help="timed repeats of (a) (default 21)")
    return parse(p, argv)


# ----------------------------------------------------------------------------------------------------------------
# diffusers' side
# ----------------------------------------------------------------------------------------------------------------
def make_schedulers(T: int) -> dict[str, object]:
    """diffusers' DDPM, DDIM and UniPC schedulers set up like our samplers (v, cosine, no clipping, no noise at the
    end; UniPC-2 bh2 with the data prediction, first order at both ends)."""
    try:
        from diffusers import DDIMScheduler, DDPMScheduler, UniPCMultistepScheduler
    except ImportError as err:
        raise UserError("this benchmark compares against diffusers, which is not installed; "
                        "pip install \"diffusers>=0.27\"") from err
    common = dict(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                  timestep_spacing="trailing")
    return {"ddpm": DDPMScheduler(variance_type="fixed_small", clip_sample=False, **common),  # our beta_tilde
            "ddim": DDIMScheduler(set_alpha_to_one=True, steps_offset=0, clip_sample=False, **common),  # ab_0 = 1
            "unipc": UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True, thresholding=False,
                                             lower_order_final=True, final_sigmas_type="zero", **common)}


def diffusers_loop(scheduler, denoiser, x_T: Tensor, c: Optional[Tensor], steps: int,
                   generator: Optional[torch.Generator]) -> Tensor:
    """Sample with a diffusers scheduler the way its pipelines do; the denoiser sees our t = k + 1."""
    scheduler.set_timesteps(steps)
    noise = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    x = x_T
    with torch.no_grad():
        for k in scheduler.timesteps:
            t = torch.full((x.shape[0],), int(k) + 1, dtype=torch.int64, device=x.device)  # (B,) our time
            x = scheduler.step(denoiser(x, t, c), k, x, **noise).prev_sample
    return x


def our_loop(kind: str, denoiser, x_T: Tensor, schedule: base.Schedule, c: Optional[Tensor], steps: int,
             generator: Optional[torch.Generator]) -> Tensor:
    """Our loop as the package runs it: the network behind the `Denoiser` wrapper (v to (x0, eps)), bound once."""
    from model.denoising import Denoiser

    denoise = Denoiser(denoiser, schedule, "v", num_classes=int(c.max()) + 1 if c is not None else 0).bind(c)
    return sampling.sample(denoise, x_T, schedule, sampling.SamplerSpec(kind, steps), generator=generator)


OUR_TIMES = {"ddpm": base.timesteps_ddpm, "ddim": base.timesteps_ddim, "unipc": base.timesteps_dpm_solver}


def check_agreement(schedule: base.Schedule, schedulers: dict[str, object], runs: list[tuple[str, int]]) -> str:
    """Check that both sides use the same alpha_bar and visit the same times; a line saying so, or an error."""
    ab_diff = max((s.alphas_cumprod.double() - schedule.alpha_bar[1:]).abs().max().item() for s in schedulers.values())
    for kind, n in runs:
        if not 1 <= n <= schedule.T or schedule.T % n:
            raise UserError(f"--{kind}-steps {n} does not divide T = {schedule.T}: diffusers' DDIM steps by T // n "
                            f"and its trailing times round otherwise than ours; pick a divisor of {schedule.T}")
        ours = OUR_TIMES[kind](schedule.T, n)[:-1]  # descending times t >= 1 at which the denoiser is called
        schedulers[kind].set_timesteps(n)
        theirs = [int(k) + 1 for k in schedulers[kind].timesteps]
        if ours != theirs:
            raise UserError(f"{kind}-{n}: diffusers visits t = {theirs[:4]}... but ours {ours[:4]}...; pick steps "
                            f"dividing T")
    names = ", ".join(f"{k.upper()}-{n}" for k, n in runs)
    return (f"checked: both sides call the denoiser at the same t for {names} (our t = diffusers' k + 1); "
            f"max |alphas_cumprod[k] - alpha_bar[k+1]| = {ab_diff:.1e} (diffusers' float32 against our float64)")


# ----------------------------------------------------------------------------------------------------------------
# The three parts
# ----------------------------------------------------------------------------------------------------------------
def side_by_side(kind: str, denoiser, x_T: Tensor, c: Optional[Tensor], schedule: base.Schedule, scheduler,
                 steps: int, seed: int) -> dict[str, Callable[[], Tensor]]:
    """The two sampling calls to time against each other, each drawing noise from a fresh seeded generator."""
    return {
        "ours": lambda: our_loop(kind, denoiser, x_T, schedule, c, steps, torch.Generator().manual_seed(seed)),
        "diffusers": lambda: diffusers_loop(scheduler, denoiser, x_T, c, steps, torch.Generator().manual_seed(seed)),
    }


def overhead_rows(args, shape: tuple, schedule, schedulers) -> list[dict]:
    """(a) microseconds per step of each loop around a denoiser that costs almost nothing."""
    denoiser = lambda x, t, c: x * 0.1  # noqa: E731  (a few µs: the time left is the loop's own)
    x_T = torch.randn(1, *shape, device=args.device)
    rows = []
    for kind, steps in (("ddpm", schedule.T), ("ddim", args.ddim_steps), ("unipc", args.ddim_steps)):
        fns = side_by_side(kind, denoiser, x_T, None, schedule, schedulers[kind], steps, args.seed)
        res = measure(fns, args.device, warmup=max(args.warmup, 2), repeats=args.overhead_repeats)
        us = {k: 1e6 * v.median / steps for k, v in res.items()}
        rows.append({"sampler": f"{kind.upper()}-{steps}", "ours µs/step": us["ours"],
                     "diffusers µs/step": us["diffusers"], "ours min µs/step": 1e6 * res["ours"].min / steps,
                     "diffusers min µs/step": 1e6 * res["diffusers"].min / steps,
                     "ours/diffusers": us["ours"] / us["diffusers"]})
    return rows


def unet(args, cfg) -> nn.Module:
    """The digits UNet in eval mode; its zero-initialised output conv is redrawn so that it does not output 0."""
    net = build_unet(cfg).to(args.device).eval()
    nn.init.normal_(net.out_conv.weight, std=0.02)  # the timing is the same; the (c) figure needs a real output
    return net


def unet_rows(args, net, shape: tuple, schedule, schedulers) -> list[dict]:
    """(b) seconds per batch and milliseconds per sample of each loop with the real UNet."""
    rows = []
    for batch in args.batch_sizes:
        x_T, c = random_batch((batch, *shape), net.cfg.num_classes, args.device)
        for kind, steps in (("ddim", args.ddim_steps), ("ddpm", args.ddpm_steps)):
            fns = side_by_side(kind, net, x_T, c, schedule, schedulers[kind], steps, args.seed)
            res = measure(fns, args.device, warmup=args.warmup, repeats=args.repeats)
            ours, theirs = res["ours"], res["diffusers"]
            rows.append({"sampler": f"{kind.upper()}-{steps}", "batch": batch, "ours s/batch": ours.median,
                         "diffusers s/batch": theirs.median, "ours min s": ours.min, "diffusers min s": theirs.min,
                         "ours ms/sample": 1e3 * ours.median / batch,
                         "diffusers ms/sample": 1e3 * theirs.median / batch,
                         "ours/diffusers": ours.median / theirs.median})
    return rows


def difference_rows(args, net, shape: tuple, schedule, schedulers) -> list[dict]:
    """(c) max |ours - diffusers| of the final samples from the same x_T (and the same noise seed for DDPM)."""
    batch = max(args.batch_sizes)
    x_T, c = random_batch((batch, *shape), net.cfg.num_classes, args.device)
    rows = []
    for kind, steps in (("ddim", args.ddim_steps), ("unipc", args.ddim_steps), ("ddpm", args.ddpm_steps)):
        fns = side_by_side(kind, net, x_T, c, schedule, schedulers[kind], steps, args.seed)
        ours, theirs = fns["ours"](), fns["diffusers"]()
        rows.append({"sampler": f"{kind.upper()}-{steps}", "batch": batch,
                     "max abs difference": (ours - theirs).abs().max().item(),
                     "max abs sample": ours.abs().max().item()})
    return rows


@cli_entry
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config)
    schedule = schedule_of(cfg)
    if cfg.denoiser.diffusion.parametrisation != "v" or cfg.denoiser.diffusion.schedule != "cosine":
        raise UserError("this comparison is set up for the v-target and the cosine schedule; use a config with "
                        "denoiser.diffusion.parametrisation 'v' and schedule 'cosine' (config/digits.json)")
    schedulers = make_schedulers(schedule.T)
    shape = latent_shape(cfg)
    dims = "×".join(map(str, shape))
    report = Report(NAME, args.device)
    print(check_agreement(schedule, schedulers, [("ddpm", schedule.T), ("ddim", args.ddim_steps),
                                                 ("unipc", args.ddim_steps), ("ddpm", args.ddpm_steps)]))
    report.table(f"(a) per-step overhead, near-zero-cost denoiser (batch 1, {dims})",
                 overhead_rows(args, shape, schedule, schedulers),
                 note="µs/step = median wall time of one whole sampling call / steps; ours/diffusers < 1 means our "
                      "loop costs less per step.")
    net = unet(args, cfg)
    report.table(f"(b) wall time with the digits ConvNeXt UNet (random weights, {dims} latents)",
                 unet_rows(args, net, shape, schedule, schedulers),
                 note="median (and min) of the repeats, ours and diffusers interleaved; per sample = per batch / "
                      "batch.")
    report.table("(c) final samples, ours against diffusers (float32)",
                 difference_rows(args, net, shape, schedule, schedulers),
                 note="a sanity figure, not a test: float32 rounding, and diffusers' float32 alphas_cumprod.")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
