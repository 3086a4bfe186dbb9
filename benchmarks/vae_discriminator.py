"""What the patch discriminator buys stage 1: the same VAE trained with and without it, each round trip scored on
the pixel metrics beside the real floor (the error budget of docs/evaluation.md).

    python -m benchmarks.vae_discriminator                      (digits at 32 px, f = 8: 4×4×4 latents)
    python -m benchmarks.vae_discriminator --steps 3000 --device cuda

Both runs train `config/digits.json`'s VAE at `--image-size` px with `--channel-mult` (a compressive encoder, so the
round trip is visibly above the floor and there is something to gain) for `--steps` steps; the second adds the
discriminator (`vae.disc`: weight `--disc-weight`, 2 layers, switched on at half the steps). Each round trip of `--n`
real images is scored against the floor (`model.scripts.sample_vae --budget`), with the reconstruction PSNR of the
validation images and the wall time of training. Runs go to `--output` (deleted first).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path


from benchmarks.common import Report, load_config, make_parser, parse
from model.errors import UserError, cli_entry

NAME = "vae_discriminator"


def train(out: Path, name: str, args, extra: list[str]) -> tuple[Path, float]:
    from model.main import main

    overrides = ["--data.image_size", str(args.image_size), "--vae.net.channel_mult", args.channel_mult,
                 "--vae.net.latent_channels", "4",  # 4×4×4 latents at f = 8: a round trip with room to improve
                 "--vae.trainer.max_steps", str(args.steps), "--vae.trainer.val_every_n_steps", str(args.steps),
                 "--vae.trainer.checkpoint_every_n_steps", str(args.steps),
                 "--vae.trainer.images_every_n_steps", "0", "--vae.trainer.progress_bar", "false",
                 "--vae.trainer.accelerator", args.device.type, "--seed", str(args.seed)]
    start = time.perf_counter()
    code = main(["-cfg", args.config, "--train-vae", "-n", name, "--output_dir", str(out), *overrides, *extra])
    if code != 0:
        raise SystemExit(code)
    return out / f"digits-{name}" / "vae" / "checkpoints" / "last.ckpt", time.perf_counter() - start


def scores(ckpt: Path, args) -> dict:
    from model.scripts.sample_vae import (decode, encode, load_vae, reconstruction_metrics, round_trip_budget,
                                          validation_images)

    vae, cfg = load_vae(str(ckpt), str(args.device))
    budget = round_trip_budget(vae, cfg.data, args.n, args.real_pool, str(args.device))
    rows = {r["row"]: r for r in budget["rows"]}
    x = validation_images(cfg.data, 10_000)
    x_hat = decode(vae, encode(vae, x, 256, str(args.device))[0], 256, str(args.device))
    trip, floor = rows["VAE round trip"], rows["real floor"]
    return {"pixel FD": trip["pixel_fd"]["mean"], "× floor": trip["pixel_fd"]["mean"] / floor["pixel_fd"]["mean"],
            "KID × 10³": 1e3 * trip["kid"]["mean"], "precision": trip["precision"]["mean"],
            "recall": trip["recall"]["mean"], "val PSNR dB": reconstruction_metrics(x, x_hat)["psnr"],
            "floor FD": floor["pixel_fd"]["mean"], "floor precision": floor["precision"]["mean"],
            "floor recall": floor["recall"]["mean"]}, budget["protocol"]


def check_pool(args) -> None:
    """--n real images per row need 2n real ones: refused before any training."""
    import dataclasses

    from data import make_datamodule
    from model.metrics.budget import check_sizes

    data = dataclasses.replace(load_config(args.config).data, image_size=args.image_size)
    check_sizes(min(args.real_pool, len(make_datamodule(data).all_items())), args.n, flag="--n")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__.split("\n")[0], repeats=1, warmup=0)
    p.add_argument("--steps", type=int, default=1200, help="VAE training steps of each run (default 1200)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--channel-mult", default="[1, 2, 2, 2]", help="vae.net.channel_mult (default f = 8)")
    p.add_argument("--disc-weight", type=float, default=0.5, help="vae.disc.weight of the second run (default 0.5)")
    p.add_argument("--n", type=int, default=500, help="real images per row of the budget (default 500)")
    p.add_argument("--real-pool", type=int, default=10_000, help="real images the floor and reference come from")
    p.add_argument("--output", default="runs/bench-vae-disc", help="folder of the two runs (deleted first)")
    args = parse(p, argv)
    if args.steps < 2 or args.disc_weight <= 0:
        raise UserError(f"--steps must be >= 2 and --disc-weight > 0, got {args.steps} and {args.disc_weight}")
    check_pool(args)
    report = Report(NAME, args.device)
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    disc = ["--vae.disc.weight", str(args.disc_weight), "--vae.disc.layers", "2", "--vae.disc.base_channels", "32",
            "--vae.disc.start_step", str(args.steps // 2)]
    rows, protocol = [], None
    for name, label, extra in (("1", "without", []), ("2", f"with (weight {args.disc_weight})", disc)):
        ckpt, seconds = train(out, name, args, extra)
        figures, protocol = scores(ckpt, args)
        rows.append({"discriminator": label, **figures, "train s": seconds})
    report.table(f"VAE round trip at {args.image_size} px, channel_mult {args.channel_mult}, {args.steps} steps",
                 rows, note=f"pixel metrics: {protocol['features']}; mean over {protocol['draws']} draws of n = "
                            f"{protocol['n']}; precision/recall k = {protocol['k']}")
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
