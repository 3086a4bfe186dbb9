"""`python -m model.scripts.plots`: every subcommand on the tiny trained runs, its files, values and errors."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import to_uint8
from model.scripts import plots
from model.scripts.common import image_file, validation_item

IMAGE_SIZE = 16  # the tiny runs' data.image_size (tests/tiny.py)
PAD = 2  # model.images.grid_array's default padding
DPI, PANEL_WIDTH, PANEL_HEIGHT = 120, 6, 4  # model.plots.loss_panels: 6×4 inches per panel at 120 dpi


def run(*argv) -> None:
    assert plots.main([str(a) for a in argv]) == 0


def read_csv(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.asarray(rows[1:], dtype=np.float64)  # (T, columns)
    return header, {name: body[:, i] for i, name in enumerate(header)}


def grid(path: Path, rows: int, cols: int, mode: str) -> np.ndarray:
    """The PNG as an array, after checking it is a save_grid mosaic of rows × cols tiles in `mode`."""
    with Image.open(path) as img:
        assert img.size == (cols * (IMAGE_SIZE + PAD) + PAD, rows * (IMAGE_SIZE + PAD) + PAD), path
        assert img.mode == mode, path
        return np.asarray(img)


def tile(arr: np.ndarray, row: int, col: int) -> np.ndarray:
    y, x = PAD + row * (IMAGE_SIZE + PAD), PAD + col * (IMAGE_SIZE + PAD)
    return arr[y: y + IMAGE_SIZE, x: x + IMAGE_SIZE].astype(np.int32)


def grey(x: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] → (N, H, W) uint8 values as int32, as a grey PNG stores them."""
    return to_uint8(x)[..., 0].astype(np.int32)


def check_one_line_error(capsys, argv: list, *needles: str) -> None:
    assert plots.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def copy_checkpoint(ckpt: Path, root: Path) -> Path:
    """The checkpoint at <root>/run/stage/checkpoints/last.ckpt, so the default folder lands under tmp_path."""
    target = root / "run" / "stage" / "checkpoints" / "last.ckpt"
    target.parent.mkdir(parents=True)
    shutil.copy(ckpt, target)
    return target


@pytest.fixture(scope="module")
def latent_system(tiny_runs):
    from model.pipeline import LatentDiffusionPipeline

    return LatentDiffusionPipeline.from_pretrained(tiny_runs["latent"])


# ----------------------------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------------------------
def test_schedules_table_follows_the_closed_forms(tmp_path, capsys):
    T = 10
    run("schedules", "--T", T, "--output", tmp_path)
    header, col = read_csv(tmp_path / "schedules.csv")
    assert header == ["t"] + [f"{q}_{s}" for s in ("linear", "cosine", "sigmoid")
                              for q in ("beta", "alpha_bar", "log_snr")]
    t = np.arange(1, T + 1)
    np.testing.assert_array_equal(col["t"], t)
    # Ho et al. 2020: β_t linear from 1e-4 (t = 1) to 0.02 (t = T)
    np.testing.assert_allclose(col["beta_linear"], 1e-4 + (t - 1) / (T - 1) * (0.02 - 1e-4), rtol=1e-12)
    # sheet 000, eq. 10 with s_limit 6: β_t = 1e-4 + σ(−6 + 12 t/T)·(0.02 − 1e-4)
    sigmoid = 1 / (1 + np.exp(-(-6 + 12 * t / T)))
    np.testing.assert_allclose(col["beta_sigmoid"], 1e-4 + sigmoid * (0.02 - 1e-4), rtol=1e-12)
    # Nichol & Dhariwal, eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2); only β_T hits the 0.999 clip
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(col["alpha_bar_cosine"][:-1], f[1:-1] / f[0], rtol=1e-12)
    assert col["beta_cosine"][-1] == pytest.approx(0.999)
    for s in ("linear", "cosine", "sigmoid"):
        ab = col[f"alpha_bar_{s}"]
        np.testing.assert_allclose(ab, np.cumprod(1 - col[f"beta_{s}"]), rtol=1e-12)  # ᾱ_t = ∏_{s≤t} (1 − β_s)
        np.testing.assert_allclose(col[f"log_snr_{s}"], np.log(ab / (1 - ab)), rtol=1e-9)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 + T + 1 and printed[0].split() == header  # header, T rows, the "wrote" line
    with Image.open(tmp_path / "schedules.png") as img:
        assert img.width > 2 * img.height  # three panels side by side


def test_schedules_long_table_is_not_printed_and_default_folder_is_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("schedules", "--T", 30)
    header, col = read_csv(tmp_path / "plots" / "schedules.csv")
    assert len(col["t"]) == 30 and col["t"][-1] == 30
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    Image.open(tmp_path / "plots" / "schedules.png").verify()


# ----------------------------------------------------------------------------------------------------------------
# noising
# ----------------------------------------------------------------------------------------------------------------
def test_noising_a_latent_denoiser_checkpoint(tiny_runs, latent_system, tmp_path):
    T = 4
    ckpt = copy_checkpoint(tiny_runs["latent"], tmp_path)
    run("noising", "--load", ckpt, "--T", T, "--index", 1)
    out = ckpt.parent.parent / "plots"  # default: plots/ beside checkpoints/
    latent = grid(out / "noising_latent.png", rows=2, cols=T + 1, mode="L")  # rows: linear, cosine
    pixels = grid(out / "noising_pixels.png", rows=2, cols=T + 1, mode="L")
    x = validation_item(latent_system.cfg.data, 1)[0]  # (1, 1, H, W)
    decoded = grey(latent_system.decode(latent_system.encode(x)))[0]
    for row in range(2):
        # t = 0 is the un-noised latent, decoded (up to uint8 rounding), and the input image itself
        assert np.abs(tile(latent, row, 0) - decoded).max() <= 1
        np.testing.assert_array_equal(tile(pixels, row, 0), grey(x)[0])
        assert not np.array_equal(tile(pixels, row, T), grey(x)[0])
    assert not np.array_equal(tile(pixels, 0, T), tile(pixels, 1, T))  # the schedules differ at t = T
    header, col = read_csv(out / "noising.csv")
    assert header[:3] == ["t", "beta_linear", "alpha_bar_linear"] and "alpha_bar_cosine" in header
    assert "beta_sigmoid" not in header
    np.testing.assert_array_equal(col["t"], np.arange(1, T + 1))  # computed with --T, not the checkpoint's T


def test_noising_a_vae_checkpoint_and_an_image_file(tiny_runs, tmp_path):
    from model.scripts.sample_vae import decode, encode, load_vae

    photo = tmp_path / "photo.png"
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # not square, not grey
    Image.fromarray(rgb).save(photo)
    run("noising", "--load", tiny_runs["vae"], "--image", photo, "--T", 3, "--schedules", "sigmoid",
        "--output", tmp_path / "out")
    latent = grid(tmp_path / "out" / "noising_latent.png", rows=1, cols=4, mode="L")
    pixels = grid(tmp_path / "out" / "noising_pixels.png", rows=1, cols=4, mode="L")
    x = image_file(str(photo), load_vae(str(tiny_runs["vae"]), "cpu")[1].data)  # (1, 1, 16, 16)
    assert x.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_array_equal(tile(pixels, 0, 0), grey(x)[0])
    vae, _ = load_vae(str(tiny_runs["vae"]), "cpu")
    decoded = grey(decode(vae, encode(vae, x, 1, "cpu")[0], 1, "cpu"))[0]  # the raw posterior mean, decoded
    assert np.abs(tile(latent, 0, 0) - decoded).max() <= 1


def test_noising_a_pixel_denoiser_writes_only_the_pixel_grid_with_the_seeded_noise(tiny_runs, tmp_path, capsys):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run("noising", "--load", tiny_runs["pixel"], "--T", 2, "--seed", seed, "--output", tmp_path / name)
    assert "pixel-space denoiser" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["noising.csv", "noising_pixels.png"]
    a, b, c = (grid(tmp_path / n / "noising_pixels.png", rows=2, cols=3, mode="L") for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(tile(a, 0, 1), tile(c, 0, 1))  # another seed, another ε


# ----------------------------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------------------------
def copy_metrics(stage: Path, root: Path) -> Path:
    target = root / "run" / stage.name / "logs" / "metrics.csv"
    target.parent.mkdir(parents=True)
    shutil.copy(plots.metrics_file(stage), target)
    return target.parent.parent


def test_loss_of_a_stage_and_of_a_run(tiny_runs, tmp_path):
    stage = copy_metrics(tiny_runs["latent_run"], tmp_path)
    run("loss", "--run", stage)
    with Image.open(stage / "plots" / "loss.png") as img:  # default: plots/ inside --run
        assert img.size == (PANEL_WIDTH * DPI, PANEL_HEIGHT * DPI)
    run("loss", "--run", tiny_runs["latent_run"].parent, "--output", tmp_path / "both")  # the run: vae, denoiser
    with Image.open(tmp_path / "both" / "loss.png") as img:
        assert img.size == (2 * PANEL_WIDTH * DPI, PANEL_HEIGHT * DPI)  # one panel per stage


def test_loss_series_read_from_the_csv_logger(tiny_runs):
    denoiser = plots.stage_losses(tiny_runs["latent_run"])
    label, steps, loss = denoiser["train"]
    assert label == "train/loss" and len(loss) == 4  # logged every step of the 4-step run
    np.testing.assert_array_equal(steps, np.arange(4))
    assert denoiser["val"][0] == "val/loss" and len(denoiser["val"][2]) == 2  # validation every 2 steps
    np.testing.assert_array_equal(denoiser["smooth"][2], loss)  # 4 rows: too few to smooth
    vae = plots.stage_losses(tiny_runs["vae"].parent.parent)
    assert vae["val"][0] == "val/recon"  # the VAE logs no val/loss


def test_moving_average_is_centred_and_shorter_at_the_ends():
    y = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(plots.moving_average(y, 1), [2.0, 3.0, 5.0, 7.0, 8.0])
    np.testing.assert_allclose(plots.moving_average(y, 0), y)
    assert [plots.smoothing_half_width(k) for k in (10, 60, 10_000)] == [0, 3, plots.SMOOTH_WINDOW // 2]


def test_loss_refuses_a_folder_without_metrics(tmp_path, capsys):
    (tmp_path / "stage" / "logs").mkdir(parents=True)
    check_one_line_error(capsys, ["loss", "--run", tmp_path / "stage"], "metrics.csv", "CSV logger")
    assert not (tmp_path / "stage" / "plots").exists()
    (tmp_path / "stage" / "logs" / "metrics.csv").write_text("epoch,step,val/loss\n0,1,0.5\n")
    check_one_line_error(capsys, ["loss", "--run", tmp_path / "stage"], "metrics.csv", "'train/loss'")
    check_one_line_error(capsys, ["loss", "--run", tmp_path / "missing"], "not a folder")


# ----------------------------------------------------------------------------------------------------------------
# denoising
# ----------------------------------------------------------------------------------------------------------------
DENOISING_N, DENOISING_SEED = 3, 5


@pytest.fixture(scope="module")
def latent_denoising(tiny_runs, tmp_path_factory) -> Path:
    """The plots/ folder of `denoising --n 3 --seed 5` on a copy of the latent checkpoint (default folder)."""
    ckpt = copy_checkpoint(tiny_runs["latent"], tmp_path_factory.mktemp("denoising"))
    run("denoising", "--load", ckpt, "--n", DENOISING_N, "--seed", DENOISING_SEED)
    return ckpt.parent.parent / "plots"


def test_denoising_grid_of_a_latent_denoiser(latent_system, latent_denoising):
    n, seed, out = DENOISING_N, DENOISING_SEED, latent_denoising
    arr = grid(out / "denoising.png", rows=5, cols=n, mode="RGB")  # decoded x0, x0, x_t, ε, ε̂
    record = json.loads((out / "denoising.json").read_text())
    T = latent_system.diff.T
    assert record["t"] == [round(T * (i + 1) / (n + 1)) for i in range(n)]
    assert record["rows"] == ["x0 (decoded)", "x0 (latent)", "x_t", "eps", "eps_hat"]
    assert len(record["mse_eps"]) == n and all(math.isfinite(m) and m > 0 for m in record["mse_eps"])
    # the ε row is the noise drawn with the seed, shown as its first three channels / 3
    f = latent_system.cfg.vae.net.downsample_factor
    eps = torch.randn((n, latent_system.cfg.vae.net.latent_channels, IMAGE_SIZE // f, IMAGE_SIZE // f),
                      generator=torch.Generator().manual_seed(seed))
    expected = to_uint8(plots.latent_tiles(eps, IMAGE_SIZE)).astype(np.int32)  # (n, H, W, 3)
    for i in range(n):
        np.testing.assert_array_equal(tile(arr, 3, i), expected[i])


def test_denoising_noise_is_reproducible_with_the_seed(tiny_runs, latent_denoising, tmp_path):
    for name, seed in (("b", DENOISING_SEED), ("c", DENOISING_SEED + 1)):
        run("denoising", "--load", tiny_runs["latent"], "--n", DENOISING_N, "--seed", seed, "--output", tmp_path / name)
    a = grid(latent_denoising / "denoising.png", rows=5, cols=DENOISING_N, mode="RGB")
    b, c = (grid(tmp_path / n / "denoising.png", rows=5, cols=DENOISING_N, mode="RGB") for n in "bc")
    np.testing.assert_array_equal(a, b)
    for i in range(DENOISING_N):
        np.testing.assert_array_equal(tile(a, 0, i), tile(c, 0, i))  # the data does not depend on the seed
        assert not np.array_equal(tile(a, 3, i), tile(c, 3, i))  # ε does


def test_denoising_grid_of_a_pixel_denoiser(tiny_runs, tmp_path):
    from model.pipeline import LatentDiffusionPipeline

    run("denoising", "--load", tiny_runs["pixel"], "--n", 2, "--output", tmp_path)
    arr = grid(tmp_path / "denoising.png", rows=4, cols=2, mode="L")  # x0, x_t, ε, ε̂
    x, _ = plots.validation_batch(LatentDiffusionPipeline.from_pretrained(tiny_runs["pixel"]).cfg.data, 2)
    for i in range(2):
        np.testing.assert_array_equal(tile(arr, 0, i), grey(x)[i])
    assert json.loads((tmp_path / "denoising.json").read_text())["rows"] == ["x0", "x_t", "eps", "eps_hat"]


def test_latent_tiles_scale_by_the_fixed_range_and_upsample_nearest():
    z = torch.tensor([[1.5, -6.0], [0.0, 3.0]]).view(1, 1, 2, 2)  # (1, 1, 2, 2): one channel → grey
    tiles = plots.latent_tiles(z, 4)  # (1, 1, 4, 4)
    assert tiles.shape == (1, 1, 4, 4)
    torch.testing.assert_close(tiles[0, 0, :2, :2], torch.full((2, 2), 0.5))  # 1.5 / 3
    torch.testing.assert_close(tiles[0, 0, :2, 2:], torch.full((2, 2), -1.0))  # −6 / 3, clamped
    assert plots.latent_tiles(torch.zeros(2, 5, 2, 2), 4).shape == (2, 3, 4, 4)  # ≥ 3 channels → RGB


def test_spread_timesteps_run_from_small_to_large_t():
    assert plots.spread_timesteps(4, 1000).tolist() == [200, 400, 600, 800]
    assert plots.spread_timesteps(3, 2).tolist() == [1, 1, 2]  # never t = 0, where ε cannot be estimated


# ----------------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def not_an_image(tmp_path) -> Path:
    path = tmp_path / "broken.png"
    path.write_text("not a png")
    return path


@pytest.mark.parametrize("argv, needles", [
    (["schedules", "--T", "0"], ["--T must be >= 1"]),
    (["noising", "--load", "{latent}", "--T", "0"], ["--T must be >= 1"]),
    (["noising", "--load", "{missing}"], ["does not exist"]),
    (["noising", "--load", "{toy}"], ["2-D toy"]),
    (["noising", "--load", "{latent}", "--index", "9999"], ["--index 9999 is out of range"]),
    (["noising", "--load", "{vae}", "--index", "-1"], ["--index -1 is out of range"]),
    (["noising", "--load", "{vae}", "--image", "{missing}"], ["--image", "does not exist"]),
    (["noising", "--load", "{vae}", "--image", "{broken}"], ["--image", "not a readable image"]),
    (["noising", "--load", "{vae}", "--schedules", "quadratic"], ["quadratic"]),
    (["denoising", "--load", "{latent}", "--n", "0"], ["--n must be >= 1"]),
    (["denoising", "--load", "{vae}"], ["vae checkpoint", "denoiser is needed"]),
    (["denoising", "--load", "{toy}"], ["2-D toy"]),
    (["denoising"], ["--load"]),
    (["histogram"], ["histogram"]),
    ([], ["required"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_runs, not_an_image, tmp_path, capsys, argv, needles):
    paths = {"latent": tiny_runs["latent"], "vae": tiny_runs["vae"], "toy": tiny_runs["toy"],
             "missing": tmp_path / "missing.ckpt", "broken": not_an_image}
    out = tmp_path / "out"
    argv = [a.format(**paths) for a in argv] + (["--output", str(out)] if len(argv) > 1 else [])
    check_one_line_error(capsys, argv, *needles)
    assert not out.exists()


def test_a_classifier_checkpoint_is_refused(tmp_path, capsys):
    fake = tmp_path / "classifier.pt"
    torch.save({"ldm_kind": "classifier", "state_dict": {}}, fake)
    check_one_line_error(capsys, ["noising", "--load", fake], "classifier checkpoint", "vae or denoiser")


def test_output_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("x")
    check_one_line_error(capsys, ["schedules", "--T", "3", "--output", taken], "is a file")
