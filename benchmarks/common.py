"""What every benchmark shares, written once: the command line, the machine header, timing (warm-up, interleaved
repeats, median and min), peak memory, the results CSV and the Markdown table, and the pieces of the denoiser
recipe the scripts time outside Lightning (the config, the UNet, a random batch, one bare training step).

Benchmarks print numbers and write `benchmarks/results/<name>.csv`; they assert nothing about timings
(speed figures belong in benchmarks, not in timed tests).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch
from torch import Tensor, nn

from model import base
from model.errors import ArgParser, UserError

RESULTS = Path(__file__).resolve().parent / "results"
# The embedded demo: its networks are the ones the README's measured figures use, and it needs no download.
DIGITS_CONFIG = "config/digits.json"


# ----------------------------------------------------------------------------------------------------------------
# Command line and machine
# ----------------------------------------------------------------------------------------------------------------
def make_parser(description: str, repeats: int, warmup: int) -> ArgParser:
    """Flags every benchmark has; each script passes defaults sized for a 2-core CPU and adds its own sizes."""
    p = ArgParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed repeats per figure (default {repeats})")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls before timing (default {warmup})")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for weights, noise and batches")
    p.add_argument("--config", default=DIGITS_CONFIG, help=f"JSON config whose networks are timed ({DIGITS_CONFIG})")
    return p


def parse(parser: ArgParser, argv: list[str]):
    """Parse and check the common flags; seeds torch."""
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        raise UserError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    args.device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    return args


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but torch sees no CUDA device; drop --device or use cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {name!r}")
    return device


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def threads_source() -> str:
    """Where torch's intra-op thread count came from: OMP_NUM_THREADS=N, or torch's default (the cores)."""
    given = os.environ.get("OMP_NUM_THREADS")
    return f"OMP_NUM_THREADS={given}" if given else "default"


def machine_header(device: torch.device) -> str:
    """One line naming what the numbers were measured on (the benchmarks never change torch's thread count; the
    environment's OMP_NUM_THREADS, where set, does)."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability()}"  # the vector ISA torch dispatches to
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, device {device} ({what}), "
            f"torch threads {torch.get_num_threads()} ({threads_source()}), python {platform.python_version()}, "
            f"1-min load average {load:.2f}")


# ----------------------------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds of each timed repeat."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


def timed_process(args: list[str]) -> float:
    """Wall seconds of `python <args>` in a fresh process (as a user runs a command), its output discarded."""
    import subprocess
    import sys

    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so perf_counter sees it; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call of fn."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(names: list[str], repeats: int) -> Iterator[str]:
    """Each name once per round, `repeats` rounds, every other round reversed: a slow drift of the machine (other
    load, clocks, caches) then falls on all of them alike, and their ratios stay fair."""
    for r in range(repeats):
        yield from (names if r % 2 == 0 else names[::-1])


def measure(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int) -> dict[str, Timing]:
    """Time every fn `repeats` times, `interleaved`, after `warmup` untimed calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: Timing() for name in fns}
    for name in interleaved(list(fns), repeats):
        out[name].seconds.append(timed(fns[name], device))
    return out


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA's max_memory_allocated, else the resident set's high-water mark.

    On Linux the high-water mark is VmHWM of /proc/self/status, which starts afresh with the program: getrusage's
    ru_maxrss survives exec, so a subprocess started by a big parent would report the parent's peak.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB elsewhere


# ----------------------------------------------------------------------------------------------------------------
# Output: Markdown tables on stdout, one CSV per benchmark
# ----------------------------------------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """Numbers with about three significant digits (the noise of these timings), thousands separated."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1 or a == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, columns in first-seen order, ready to paste into the README."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(name: str, rows: list[dict[str, Any]]) -> Path:
    """benchmarks/results/<name>.csv with the union of the rows' columns (full precision)."""
    RESULTS.mkdir(exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    path = RESULTS / f"{name}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


class Report:
    """Prints the machine header, then each table as it is measured; `save` writes them all to one CSV."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.header = machine_header(device)
        self.rows: list[dict[str, Any]] = []
        print(self.header, flush=True)

    def table(self, title: str, rows: list[dict[str, Any]], note: str = "") -> None:
        print(f"\n### {title}\n\n{markdown_table(rows)}", flush=True)
        if note:
            print(f"\n{note}", flush=True)
        self.rows += [{"table": title, **row} for row in rows]

    def save(self) -> Path:
        path = write_csv(self.name, [{**row, "machine": self.header} for row in self.rows])
        print(f"\nwrote {path}")
        return path


# ----------------------------------------------------------------------------------------------------------------
# The denoiser recipe outside Lightning
# ----------------------------------------------------------------------------------------------------------------
def load_config(path: str):
    """The validated Config of a JSON file (what `-cfg` reads)."""
    from model.cli_config import from_dict

    p = Path(path)
    if not p.is_file():
        raise UserError(f"config {path} does not exist; run from the repository root or pass --config FILE")
    return from_dict(json.loads(p.read_text()))


def build_unet(cfg, in_channels: Optional[int] = None, size: Optional[int] = None) -> nn.Module:
    """The config's denoiser network with random weights, through the package's `denoiser_network`.

    `in_channels` swaps the input channels only (pixel space: 1 for grey images), keeping width and depth; `size`
    is the side of the input when it is not the config's, which the class bias maps (when the config has them) follow.
    """
    from model.denoiser import denoiser_network

    unet = cfg.denoiser.unet
    if in_channels is not None:
        unet = dataclasses.replace(unet, in_channels=in_channels)
    if size is not None and unet.class_bias_size:
        unet = dataclasses.replace(unet, class_bias_size=size)
    cfg = dataclasses.replace(cfg, denoiser=dataclasses.replace(cfg.denoiser, unet=unet))
    return denoiser_network(cfg, cfg.denoiser.unet.num_classes)


def latent_shape(cfg, image_size: Optional[int] = None) -> tuple[int, int, int]:
    """(C, H, W) of the VAE's latents for square images of `image_size` (default: the config's data.image_size)."""
    size = (image_size or cfg.data.image_size) // cfg.vae.net.downsample_factor
    return cfg.vae.net.latent_channels, size, size


def schedule_of(cfg) -> base.Schedule:
    return base.make_schedule(cfg.denoiser.diffusion.schedule, cfg.denoiser.diffusion.T)


def random_batch(shape: tuple[int, ...], num_classes: int, device: torch.device) -> tuple[Tensor, Optional[Tensor]]:
    """A stand-in batch: z0 ~ N(0, I) of `shape` and uniform class labels (None when unconditional)."""
    z0 = torch.randn(shape, device=device)
    c = torch.randint(0, num_classes, (shape[0],), device=device) if num_classes else None
    return z0, c


def diffusion_train_step(net: nn.Module, opt: torch.optim.Optimizer, z0: Tensor, c: Optional[Tensor],
                         schedule: base.Schedule, parametrisation: base.Parametrisation = "v",
                         clip: Optional[float] = 1.0, ema: Optional[nn.Module] = None, ema_decay: float = 0.999,
                         autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> Tensor:
    """One optimiser step of the denoiser recipe with no Lightning around it.

    The same math as `DenoiserSystem.training_step` plus what the Trainer adds: t ~ U{1..T}, eps ~ N(0, I),
    x_t = q_sample, the network, the per-sample L2 loss on the target (v by default) averaged over the batch,
    backward, the global gradient-norm clip (the trainer's default 1.0), the optimiser step, and the EMA update
    when `ema` is given. `autocast` wraps the forward pass and the loss (mixed precision).
    """
    t = torch.randint(1, schedule.T + 1, (z0.shape[0],), device=z0.device)  # (B,)
    eps = torch.randn_like(z0)
    with autocast():
        x_t = base.q_sample(z0, t, eps, schedule)
        pred = net(x_t, t, c)
        loss = base.diffusion_loss(pred.float(), z0, eps, t, schedule, parametrisation).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    if ema is not None:
        from model.ema import ema_update

        ema_update(ema, net, ema_decay)
    return loss.detach()


def denoise_of(net: nn.Module, schedule: base.Schedule, c: Optional[Tensor]):
    """The network as the samplers see it (v-target, the `Denoiser` wrapper), its labels bound."""
    from model.denoising import Denoiser

    classes = getattr(getattr(net, "cfg", None), "num_classes", 0)
    return Denoiser(net, schedule, "v", num_classes=classes).bind(c if classes else None)


def peer_update(net, ema, opt, loss, step: int, lr: float) -> None:
    """One optimiser step of a peer model as the peer benchmarks train them: AdamW's rate warmed up over 100 steps,
    the gradient-norm clip at 1, then the EMA of the weights with our decay warm-up (model.ema)."""
    from torch import nn

    from model.ema import ema_decay_at, ema_update

    for group in opt.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / 100)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    ema_update(ema, net, ema_decay_at(step, 0.999))
