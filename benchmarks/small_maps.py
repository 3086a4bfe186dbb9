"""The UNet's depthwise convolutions with implicit against explicit zero padding, on small maps.

    python -m benchmarks.small_maps
    ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.small_maps

On a 2x2 map a 3x3 depthwise convolution with "same" padding reads more padding than map, and oneDNN's CPU kernels
for it are slow there. `model.denoiser.unet.padded_depthwise` forms the same sums from a map padded beforehand and the
part of the kernel that can reach it; `depthwise`, which the UNet's blocks call, takes that way on maps of at most 2x2
only. Two tables, forward and backward passes, median of interleaved repeats:

- one depthwise convolution (a random batch of `--batch`, channels_last as the digits recipe trains) at every shape of
  the config's UNet, and with a 7x7 kernel on 2x2 and 4x4 maps: `nn.Conv2d` itself against `padded_depthwise`, the
  largest difference between their outputs and gradients (float32 rounding: the sums run in another order), and the
  way `depthwise` takes;
- one training step of the config's UNet (`benchmarks.common.diffusion_train_step`, channels_last, fused AdamW, the
  EMA) with `depthwise` as it is and with every block calling its `nn.Conv2d` directly.

The second line of the usage holds the kernels to AVX2 on an AVX-512 CPU, as an AVX2-only core runs them.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

import model.denoiser.unet as unet
from benchmarks.common import (Report, build_unet, diffusion_train_step, latent_shape, load_config, make_parser,
                               measure, parse, random_batch, schedule_of)
from model.errors import UserError, cli_entry

NAME = "small_maps"
CHANNELS_LAST = torch.channels_last


def parse_args(argv: list[str]):
    p = make_parser(__doc__.split("\n")[0], repeats=20, warmup=5)
    p.add_argument("--batch", type=int, default=128, help="batch of every shape (default 128, the recipe's)")
    return parse(p, argv)


def implicit(conv: nn.Conv2d, x: Tensor) -> Tensor:
    return conv(x)


@contextlib.contextmanager
def small_map_path(on: bool) -> Iterator[None]:
    """The UNet's blocks with `depthwise` as it is (on) or calling their convolution directly (off)."""
    kept = unet.depthwise
    unet.depthwise = kept if on else implicit
    try:
        yield
    finally:
        unet.depthwise = kept


def depthwise_shapes(net: nn.Module, z0: Tensor, c: Tensor | None) -> list[tuple[int, int, int, int]]:
    """(channels, height, width, kernel) of every depthwise convolution of `net`, in the order they run."""
    seen: list[tuple[int, int, int, int]] = []

    def record(module: nn.Conv2d, inputs: tuple[Tensor, ...]) -> None:
        _, channels, height, width = inputs[0].shape
        shape = (channels, height, width, module.kernel_size[0])
        if shape not in seen:
            seen.append(shape)

    hooks = [m.dwconv.register_forward_pre_hook(record) for m in net.modules() if isinstance(m, unet.ConvNeXtBlock)]
    with torch.no_grad(), small_map_path(False):  # the hooks see the convolution's own call
        net(z0, torch.rand(z0.shape[0]), c)
    for hook in hooks:
        hook.remove()
    return seen


def convolution_pass(fn: Callable[[Tensor], Tensor], conv: nn.Conv2d, x: Tensor, grad: Tensor) -> Callable[[], list]:
    """Forward and backward of fn on a fresh leaf; returns the output and the gradients of x, weight and bias."""
    def run() -> list[Tensor]:
        conv.zero_grad(set_to_none=True)
        leaf = x.detach().requires_grad_()
        out = fn(leaf)
        out.backward(grad)
        return [out.detach(), leaf.grad, conv.weight.grad, conv.bias.grad]
    return run


def convolution_row(shape: tuple[int, int, int, int], args) -> dict:
    channels, height, width, kernel = shape
    conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels).to(args.device)
    conv = conv.to(memory_format=CHANNELS_LAST)
    x = torch.randn(args.batch, channels, height, width, device=args.device).contiguous(memory_format=CHANNELS_LAST)
    grad = torch.randn_like(x)
    fns = {"implicit": convolution_pass(conv, conv, x, grad),
           "explicit": convolution_pass(lambda a: unet.padded_depthwise(conv, a), conv, x, grad)}
    difference = max((a - b).abs().max().item() for a, b in zip(fns["implicit"](), fns["explicit"]()))
    times = measure(fns, args.device, args.warmup, args.repeats)
    implicit, explicit = times["implicit"].median, times["explicit"].median
    return {"map, kernel": f"{args.batch}×{channels}×{height}×{width}, {kernel}×{kernel}",
            "nn.Conv2d µs": implicit * 1e6, "padded_depthwise µs": explicit * 1e6, "speed-up": implicit / explicit,
            "largest difference": difference,
            "depthwise takes": "padded_depthwise" if unet.is_small_map(height, width) else "nn.Conv2d"}


def step_rows(cfg, args) -> list[dict]:
    schedule = schedule_of(cfg)
    z0, c = random_batch((args.batch, *latent_shape(cfg)), cfg.denoiser.unet.num_classes, args.device)
    z0 = z0.contiguous(memory_format=CHANNELS_LAST)
    fns = {}
    for on in (False, True):
        torch.manual_seed(args.seed)
        net = build_unet(cfg).to(args.device).to(memory_format=CHANNELS_LAST)
        ema = copy.deepcopy(net).requires_grad_(False)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)  # as the recipe trains

        def step(net=net, ema=ema, opt=opt, on=on) -> Tensor:
            with small_map_path(on):
                return diffusion_train_step(net, opt, z0, c, schedule, ema=ema)
        fns["depthwise" if on else "nn.Conv2d"] = step
    times = measure(fns, args.device, args.warmup, args.repeats)
    base = times["nn.Conv2d"].median
    return [{"small maps through": name, "ms/step": t.median * 1e3, "speed-up": base / t.median}
            for name, t in times.items()]


@cli_entry
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    cfg = load_config(args.config)
    report = Report(NAME, args.device)
    torch.manual_seed(args.seed)
    net = build_unet(cfg).to(args.device)
    z0, c = random_batch((2, *latent_shape(cfg)), cfg.denoiser.unet.num_classes, args.device)
    shapes = depthwise_shapes(net, z0, c) + [(96, 2, 2, 7), (96, 4, 4, 7)]  # the ConvNeXt paper's kernel
    report.table("one depthwise convolution, forward and backward (channels_last)",
                 [convolution_row(shape, args) for shape in shapes],
                 note="speed-up above 1: padding beforehand is faster; the difference is float32 rounding.")
    report.table(f"training step of the UNet of {args.config} (batch {args.batch}, channels_last)",
                 step_rows(cfg, args), note="median of the repeats, the two interleaved.")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
