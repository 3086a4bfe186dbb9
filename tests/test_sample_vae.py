"""`python -m model.scripts.sample_vae`: a real (5-step) VAE checkpoint, the files it writes, and its errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import to_uint8
from model.scripts import sample_vae
from tiny import DIGITS, digits_latent_shape

IMAGE_SIZE = 16  # set on the command line below
PAD = 2  # model.images.grid_array's default padding
N = 5  # samples of the default run: a 3-wide grid with a partly empty second row




@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory) -> Path:
    """A VAE checkpoint from `model.main --train-vae`: 5 steps on 200 digits (batch 16 keeps it quick)."""
    from model.main import main

    out = tmp_path_factory.mktemp("runs")
    rc = main(["-cfg", DIGITS, "--train-vae", "-n", "1", "--output_dir", str(out),
               "--vae.trainer.max_steps", "5", "--vae.trainer.val_every_n_steps", "5",
               "--vae.trainer.progress_bar", "false", "--vae.trainer.images_every_n_steps", "0",
               "--data.max_items", "200", "--data.batch_size", "16", "--vae.trainer.batch_size", "16",
               "--data.image_size", str(IMAGE_SIZE)])
    assert rc == 0
    ckpt = out / "digits-1" / "vae" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def default_run(vae_ckpt) -> Path:
    """The sheet's command: `-cfg config/digits.json --load <ckpt>`, output in the default folder."""
    rc = sample_vae.main(["-cfg", str(Path(__file__).resolve().parents[1] / "config" / "digits.json"), "--load", str(vae_ckpt), "--num_samples", str(N)])
    assert rc == 0
    return vae_ckpt.parent.parent / "samples"


def run_into(ckpt: Path, out: Path, *extra: str) -> Path:
    assert sample_vae.main(["--load", str(ckpt), "--output", str(out), "--num_samples", "4", *extra]) == 0
    return out


def grid_size(count: int, ncol: int) -> tuple[int, int]:
    """(width, height) of a save_grid mosaic of `count` images, `ncol` per row."""
    rows = math.ceil(count / ncol)
    return ncol * (IMAGE_SIZE + PAD) + PAD, rows * (IMAGE_SIZE + PAD) + PAD


def tile(arr: np.ndarray, row: int, col: int) -> np.ndarray:
    y, x = PAD + row * (IMAGE_SIZE + PAD), PAD + col * (IMAGE_SIZE + PAD)
    return arr[y: y + IMAGE_SIZE, x: x + IMAGE_SIZE]


def test_default_folder_holds_every_file_with_its_grid_geometry(default_run):
    assert default_run.name == "samples" and default_run.parent.name == "vae"
    pairs_per_row = math.ceil(math.sqrt(N))  # 3
    expected = {
        "reconstructions.png": grid_size(2 * N, 2 * pairs_per_row),  # input | reconstruction, pair by pair
        "random_latents.png": grid_size(N, pairs_per_row),
        "random_latents_matched.png": grid_size(N, pairs_per_row),
        "interpolation.png": grid_size(2 * sample_vae.INTERP_STEPS, sample_vae.INTERP_STEPS),  # lerp, slerp
    }
    for name, size in expected.items():
        with Image.open(default_run / name) as img:
            assert img.size == size, name
            assert img.mode == "L", name  # digits are grey
    assert (default_run / "reconstructions.json").is_file() and (default_run / "latent_stats.json").is_file()


def test_left_of_each_pair_is_the_validation_input(default_run):
    data = sample_vae.data_config("config/digits.json", None)
    x = to_uint8(sample_vae.validation_images(data, N))[..., 0]  # (N, H, W)
    grid = np.asarray(Image.open(default_run / "reconstructions.png"))
    ncol = math.ceil(math.sqrt(N))
    for i in range(N):
        row, pair = divmod(i, ncol)
        np.testing.assert_array_equal(tile(grid, row, 2 * pair), x[i])
        assert not np.array_equal(tile(grid, row, 2 * pair + 1), x[i])  # a 5-step VAE is far from exact


def test_metrics_are_finite_and_psnr_follows_from_mse(default_run):
    m = json.loads((default_run / "reconstructions.json").read_text())
    assert m["num_images"] == N and len(m["per_image_mse"]) == N
    assert math.isfinite(m["mse"]) and 0 < m["mse"] <= 4  # clamped images in [-1, 1]: squared error <= 4
    assert m["psnr"] == pytest.approx(10 * math.log10(4 / m["mse"]))
    assert m["mse"] == pytest.approx(np.mean(m["per_image_mse"]))
    for mse, psnr in zip(m["per_image_mse"], m["per_image_psnr"]):
        assert psnr == pytest.approx(10 * math.log10(4 / mse))
    stats = json.loads((default_run / "latent_stats.json").read_text())
    assert stats["latent_shape"] == digits_latent_shape(IMAGE_SIZE)
    assert len(stats["channel_std"]) == digits_latent_shape(IMAGE_SIZE)[0] and all(s > 0 for s in stats["channel_std"])


def test_same_seed_gives_identical_files_and_another_seed_differs(vae_ckpt, tmp_path):
    a = run_into(vae_ckpt, tmp_path / "a", "--seed", "7")
    b = run_into(vae_ckpt, tmp_path / "b", "--seed", "7")
    c = run_into(vae_ckpt, tmp_path / "c", "--seed", "8")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for name in ("random_latents.png", "random_latents_matched.png"):
        assert (a / name).read_bytes() != (c / name).read_bytes(), name
    for name in ("reconstructions.png", "reconstructions.json", "interpolation.png"):  # no noise in these
        assert (a / name).read_bytes() == (c / name).read_bytes(), name


def test_lerp_and_slerp_hit_the_endpoints_and_slerp_keeps_the_norm():
    z0 = torch.zeros(2, 3, 3)
    z0[0, 0, 0] = 1.0
    z1 = torch.zeros(2, 3, 3)
    z1[1, 2, 2] = 1.0  # orthogonal to z0, same norm
    alpha = torch.linspace(0, 1, 5)
    for f in (sample_vae.lerp, sample_vae.slerp):
        path = f(z0, z1, alpha)  # (5, 2, 3, 3)
        assert path.shape == (5, 2, 3, 3)
        torch.testing.assert_close(path[0], z0)
        torch.testing.assert_close(path[-1], z1)
    norms = sample_vae.slerp(z0, z1, alpha).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(5))  # on the great circle
    assert sample_vae.lerp(z0, z1, alpha)[2].norm() == pytest.approx(math.sqrt(0.5))  # the chord dips inside
    torch.testing.assert_close(sample_vae.slerp(z0, 2 * z0, alpha), sample_vae.lerp(z0, 2 * z0, alpha))


def test_aggregate_posterior_moments_follow_the_law_of_total_variance():
    mean = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)  # (N=2, C=1, 2, 2): Var(mean) = 1
    logvar = torch.full((2, 1, 2, 2), math.log(3.0))  # E[variance] = 3
    m, s = sample_vae.aggregate_posterior_moments(mean, logvar)
    torch.testing.assert_close(m, torch.zeros(1))
    torch.testing.assert_close(s, torch.full((1,), 2.0))  # sqrt(1 + 3)


def check_one_line_error(capsys, argv: list[str], *needles: str) -> None:
    assert sample_vae.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_denoiser_checkpoint_is_refused(capsys, tmp_path):
    fake = tmp_path / "denoiser.ckpt"
    torch.save({"ldm_kind": "denoiser", "ldm_config": {}, "state_dict": {}}, fake)
    check_one_line_error(capsys, ["--load", str(fake)], "denoiser checkpoint")


def test_missing_checkpoint(capsys, tmp_path):
    check_one_line_error(capsys, ["--load", str(tmp_path / "nope.ckpt")], "does not exist")


def test_num_samples_must_be_positive(capsys, vae_ckpt, tmp_path):
    check_one_line_error(capsys, ["--load", str(vae_ckpt), "--num_samples", "0", "--output", str(tmp_path)],
                         "--num_samples")


def test_output_that_is_a_file(capsys, vae_ckpt, tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("x")
    check_one_line_error(capsys, ["--load", str(vae_ckpt), "--output", str(target)], "is a file")


def test_bad_flag_and_missing_load(capsys, vae_ckpt):
    check_one_line_error(capsys, ["--load", str(vae_ckpt), "--bogus", "1"], "--bogus")
    check_one_line_error(capsys, ["--num_samples", "3"], "--load")


def test_config_with_other_channels_is_refused(capsys, vae_ckpt, tmp_path):
    # cifar10 is RGB, this VAE takes one grey channel; refused before any data is read
    check_one_line_error(capsys, ["-cfg", "config/cifar10-beta-vae.json", "--load", str(vae_ckpt),
                                  "--output", str(tmp_path)], "channels")


@pytest.mark.slow
def test_the_round_trip_budget_sits_on_the_floor_for_an_identity_vae_and_above_it_for_a_5_step_one(
        vae_ckpt, tmp_path, monkeypatch, capsys):
    assert sample_vae.main(["--load", str(vae_ckpt), "--output", str(tmp_path / "a"), "--budget", "80"]) == 0
    rows = {r["row"]: r for r in json.loads((tmp_path / "a" / "round_trip_budget.json").read_text())["rows"]}
    assert rows["VAE round trip"]["pixel_fd"]["mean"] > 2 * rows["real floor"]["pixel_fd"]["mean"]  # 5 steps: blurry
    assert "VAE round trip" in capsys.readouterr().out
    # an autoencoder that returns its input scores exactly as the real images it was given
    monkeypatch.setattr(sample_vae, "encode", lambda vae, x, bs, device: (x, x))
    monkeypatch.setattr(sample_vae, "decode", lambda vae, z, bs, device: z)
    assert sample_vae.round_trip_budget(None, sample_vae.load_vae(str(vae_ckpt), "cpu")[1].data, 80, 10_000,
                                        "cpu")["rows"][0] == {**rows["real floor"], "row": "VAE round trip"}


def test_a_budget_larger_than_half_the_data_is_one_line(capsys, vae_ckpt, tmp_path):
    assert sample_vae.main(["--load", str(vae_ckpt), "--output", str(tmp_path / "out"), "--budget", "150"]) == 2
    err = capsys.readouterr().err
    assert "--budget" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything is written
