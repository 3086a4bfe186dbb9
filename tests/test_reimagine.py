"""`python -m model.scripts.reimagine`: noise an image to t_s = round(s·T), then denoise it with DDPM and DDIM.

The checkpoints are the shared tiny runs (conftest.py `tiny_runs`, T = 1000 as in config/digits.json). DDPM runs all
t_s steps, so the command-line runs use strengths up to 0.01 (t_s <= 10); strength 1 is checked on a shortened
schedule. The tiny networks are barely trained: the tests check the plumbing, not the quality of the images.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from model import base
from model.errors import UserError
from model.images import to_uint8
from model.scripts import reimagine
from model.sampling import SamplerSpec
from model.scripts.common import image_file, validation_item
from wrap import swapped

S = 16  # data.image_size of the tiny runs
PAD = 2  # model.images.grid_array's default padding
LATENT_ARGS = ["--strengths", "0", "0.005", "0.01", "--ddim-steps", "200", "2000", "--intermediates-strength", "0.01"]


def run_cli(argv: list[str]) -> str:
    """reimagine.main(argv), which must succeed; its stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert reimagine.main(argv) == 0
    return buf.getvalue()


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))  # (H, W) grey


def cell(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    """The S×S image at (row, col) of a save_grid mosaic."""
    top, left = PAD + row * (S + PAD), PAD + col * (S + PAD)
    return grid[top: top + S, left: left + S]


def grid_size(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of a save_grid mosaic of S×S images."""
    return cols * (S + PAD) + PAD, rows * (S + PAD) + PAD


@pytest.fixture(scope="module")
def latent_out(tiny_runs, tmp_path_factory) -> tuple[Path, str]:
    """The latent model's run on validation item 0 (the default image): its output folder and stdout."""
    out = tmp_path_factory.mktemp("reimagine") / "latent"
    stdout = run_cli(["--load", str(tiny_runs["latent"]), *LATENT_ARGS, "--output", str(out)])
    return out, stdout


@pytest.fixture(scope="module")
def systems(tiny_runs) -> dict:
    from model.pipeline import LatentDiffusionPipeline

    return {kind: LatentDiffusionPipeline.from_pretrained(tiny_runs[kind]) for kind in ("latent", "pixel")}


def first_validation_image(system) -> torch.Tensor:
    x, _ = validation_item(system.cfg.data, 0)
    return x  # (1, 1, S, S)


def reimagine_image(system, x, strength: float, ddim_steps: list[int], seed: int = 0):
    z0 = reimagine.encode(system, x)
    eps, state = reimagine.draw_noise(z0, seed)
    return reimagine.reimagine_at(system, z0, eps, strength, reimagine.make_samplers(ddim_steps), None, 0.0, state)


class Recorder(nn.Module):
    """Wraps the network and records the (t, x_t) of every call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x_t, t, c):
        self.calls.append((int(t[0]), x_t.clone()))
        return self.net(x_t, t, c)


# ----- the schedule of strengths and steps ---------------------------------------------------------------------
def test_start_time_and_steps_follow_the_documented_rounding():
    assert [reimagine.start_time(s, 1000) for s in (0.0, 0.25, 0.0125, 1.0)] == [0, 250, 13, 1000]  # half up
    ddim = reimagine.Sampler("DDIM-10", 10)
    assert reimagine.sampler_steps(ddim, 0.25, 250) == 3  # round(2.5) half up, not Python's banker's 2
    assert reimagine.sampler_steps(ddim, 0.01, 10) == 1  # max(1, round(0.1))
    assert reimagine.sampler_steps(reimagine.Sampler("DDIM-2000", 2000), 0.01, 10) == 10  # capped at t_s
    assert reimagine.sampler_steps(reimagine.Sampler("DDPM"), 0.5, 500) == 500
    assert reimagine.sampler_steps(ddim, 0.0, 0) == 0


# ----- strength 0: the input comes back ----------------------------------------------------------------------------
def test_strength_zero_returns_the_input_exactly_for_a_pixel_model(systems):
    system = systems["pixel"]
    x = first_validation_image(system)
    r = reimagine_image(system, x, 0.0, [2, 4])
    assert r.t_start == 0 and set(r.steps.values()) == {0}
    assert torch.equal(reimagine.to_image(system, r.z_t), x)
    for name, z in r.z0_hat.items():
        assert torch.equal(reimagine.to_image(system, z), x), name


def test_strength_zero_returns_the_vae_reconstruction_for_a_latent_model(systems):
    system = systems["latent"]
    x = first_validation_image(system)
    vae_recon = system.autoencoder.decode(system.autoencoder.encode(x)[0]).clamp(-1, 1)  # posterior mean, decoded
    r = reimagine_image(system, x, 0.0, [2, 4])
    for name, z in r.z0_hat.items():
        torch.testing.assert_close(reimagine.to_image(system, z), vae_recon, atol=1e-5, rtol=0, msg=name)
    assert float((vae_recon - x).pow(2).mean()) > 1e-4  # the tiny VAE is lossy: this is not the input itself


# ----- the samplers start from the same z_t at t_s -----------------------------------------------------------------
def test_every_sampler_starts_from_z_t_at_t_start(systems):
    system = systems["latent"]
    with swapped(system.denoiser, "net", Recorder(system.net)) as spy:
        every_sampler_starts_from_z_t_at_t_start(system, spy)


def every_sampler_starts_from_z_t_at_t_start(system, spy):
    x = first_validation_image(system)
    z0 = reimagine.encode(system, x)
    eps, state = reimagine.draw_noise(z0, 0)
    ab = float(system.schedule.alpha_bar[10])
    z_t = ab ** 0.5 * z0 + (1 - ab) ** 0.5 * eps  # the forward process at t = 10, written out
    ddim = reimagine.Sampler("DDIM-500", 500)  # strength 0.01 uses round(500 · 0.01) = 5 of the 500 steps
    r = reimagine.reimagine_at(system, z0, eps, 0.01, [ddim], torch.tensor([3]), 0.0, state)
    torch.testing.assert_close(r.z_t, z_t)
    assert r.steps == {"DDIM-500": 5}
    assert [t for t, _ in spy.calls] == [10, 8, 6, 4, 2]  # t_s, then evenly spaced down to 0
    assert torch.equal(spy.calls[0][1], r.z_t)

    spy.calls.clear()
    r = reimagine.reimagine_at(system, z0, eps, 0.01, [reimagine.Sampler("DDPM")], torch.tensor([3]), 0.0, state)
    assert [t for t, _ in spy.calls] == list(range(10, 0, -1))  # all t_s steps
    assert torch.equal(spy.calls[0][1], r.z_t)


def test_strength_one_starts_from_noise_at_T(systems):
    # A 10-step schedule keeps DDPM at strength 1 short; the network takes any integer t.
    system = systems["pixel"]
    with swapped(system.denoiser, "schedule", base.make_schedule("cosine", 10)):
        strength_one_starts_from_noise_at_T(system)


def strength_one_starts_from_noise_at_T(system):
    x = first_validation_image(system)
    z0 = reimagine.encode(system, x)
    eps, state = reimagine.draw_noise(z0, 0)
    r = reimagine.reimagine_at(system, z0, eps, 1.0, reimagine.make_samplers([2, 40]), None, 0.0, state)
    assert r.t_start == 10
    assert r.steps == {"DDPM": 10, "DDIM-2": 2, "DDIM-40": 10}
    torch.testing.assert_close(r.z_t, eps, atol=0.02, rtol=0)  # sqrt(alpha_bar_T) ≈ 0: pure noise


# ----- randomness ------------------------------------------------------------------------------------------------
def test_ddpm_noise_follows_the_seed_and_ddim_is_deterministic(systems):
    system = systems["pixel"]
    x = first_validation_image(system)
    z0 = reimagine.encode(system, x)
    eps, state = reimagine.draw_noise(z0, 0)
    _, other_state = reimagine.draw_noise(z0, 1)
    samplers = reimagine.make_samplers([2])
    a, b, c = (reimagine.reimagine_at(system, z0, eps, 0.005, samplers, None, 0.0, s)
               for s in (state, state, other_state))
    assert torch.equal(a.z0_hat["DDPM"], b.z0_hat["DDPM"])
    assert not torch.equal(a.z0_hat["DDPM"], c.z0_hat["DDPM"])
    assert torch.equal(a.z0_hat["DDIM-2"], c.z0_hat["DDIM-2"])  # eta 0: the same z_t gives the same result
    assert not torch.equal(eps, reimagine.draw_noise(z0, 1)[0])


def test_the_same_seed_gives_identical_files(tiny_runs, latent_out, tmp_path):
    first, _ = latent_out
    again = tmp_path / "again"
    run_cli(["--load", str(tiny_runs["latent"]), *LATENT_ARGS, "--output", str(again)])
    for name in ("reimagine.png", "reimagine.json", "intermediates.png"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


# ----- what the command writes -----------------------------------------------------------------------------------
def test_grid_has_a_row_per_strength_and_the_original_first(systems, latent_out):
    out, _ = latent_out
    grid = png(out / "reimagine.png")
    assert Image.open(out / "reimagine.png").size == grid_size(rows=3, cols=3 + 2)
    original = to_uint8(first_validation_image(systems["latent"]))[0, ..., 0]  # (S, S)
    for row in range(3):
        assert np.array_equal(cell(grid, row, 0), original)
    for col in range(1, 5):  # strength 0: noised, DDPM and DDIM all show the VAE reconstruction
        assert np.array_equal(cell(grid, 0, col), cell(grid, 0, 1))


def test_json_records_t_steps_and_mse(latent_out):
    out, stdout = latent_out
    report = json.loads((out / "reimagine.json").read_text())
    assert report["columns"] == ["original", "noised", "DDPM", "DDIM-200", "DDIM-2000"]
    assert report["T"] == 1000 and report["image"] == "validation item 0"
    assert "validation item's label" in report["condition"] and 0 <= report["class"] < 10
    rows = report["strengths"]
    assert [(r["strength"], r["t"]) for r in rows] == [(0.0, 0), (0.005, 5), (0.01, 10)]
    # DDIM-n uses max(1, round(n·s)) steps, capped at t_s; DDPM all t_s
    assert [r["steps"] for r in rows] == [{"DDPM": 0, "DDIM-200": 0, "DDIM-2000": 0},
                                          {"DDPM": 5, "DDIM-200": 1, "DDIM-2000": 5},
                                          {"DDPM": 10, "DDIM-200": 2, "DDIM-2000": 10}]
    assert len(set(rows[0]["mse"].values())) == 1 and rows[0]["mse"]["DDPM"] == rows[0]["mse_noised"]
    assert all(v >= 0 for r in rows for v in r["mse"].values())
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["strength", "t"])
    assert lines[head].split()[2:] == ["DDPM", "DDIM-200", "DDIM-2000"]
    assert [line.split()[1] for line in lines[head + 1: head + 4]] == ["0", "5", "10"]
    assert float(lines[head + 2].split()[2]) == pytest.approx(rows[1]["mse"]["DDPM"], abs=1e-5)


def test_intermediates_run_from_the_noised_image_to_the_reconstruction(latent_out):
    out, _ = latent_out
    report = json.loads((out / "reimagine.json").read_text())["intermediates"]
    assert report["t"] == 10 and report["shows"] == "decoded states x_t"
    ddpm, ddim = report["rows"]["DDPM"], report["rows"]["DDIM-200"]
    assert len(ddpm) == reimagine.STRIP_FRAMES and ddpm[0] == 10 and ddpm[-1] == 0 and ddpm == sorted(ddpm)[::-1]
    assert ddim == base.timesteps_ddim(1000, 2, 10)  # [10, 5, 0]: the 2 steps strength 0.01 gives DDIM-200
    strip, grid = png(out / "intermediates.png"), png(out / "reimagine.png")
    assert Image.open(out / "intermediates.png").size == grid_size(rows=2, cols=reimagine.STRIP_FRAMES)
    assert np.array_equal(cell(strip, 0, 0), cell(grid, 2, 1))  # t_s: the noised image
    assert np.array_equal(cell(strip, 0, len(ddpm) - 1), cell(grid, 2, 2))  # t = 0: the DDPM result
    assert np.array_equal(cell(strip, 1, len(ddim) - 1), cell(grid, 2, 3))  # t = 0: the DDIM-200 result
    assert (cell(strip, 1, len(ddim)) == 255).all()  # padding after DDIM's 3 states


def test_an_image_file_is_converted_and_resized(tiny_runs, systems, tmp_path):
    path = tmp_path / "wide.png"
    rgb = np.zeros((24, 40, 3), dtype=np.uint8)
    rgb[:, :, 0] = np.linspace(0, 255, 40, dtype=np.uint8)  # a red ramp, 40 wide and 24 high
    Image.fromarray(rgb).save(path)
    x = image_file(str(path), systems["pixel"].cfg.data)
    assert x.shape == (1, 1, S, S) and -1 <= float(x.min()) < float(x.max()) <= 1
    out = tmp_path / "out"
    run_cli(["--load", str(tiny_runs["pixel"]), "--image", str(path), "--class", "7", "--cfg-scale", "1",
             "--strengths", "0", "0.01", "--ddim-steps", "2", "4", "--intermediates-strength", "0.01",
             "--output", str(out)])
    report = json.loads((out / "reimagine.json").read_text())
    assert report["image"] == f"file {path}" and report["class"] == 7 and "--class" in report["condition"]
    assert report["cfg_scale"] == 1.0
    assert report["strengths"][0]["mse"] == {"DDPM": 0.0, "DDIM-2": 0.0, "DDIM-4": 0.0}  # pixel model, strength 0
    grid = png(out / "reimagine.png")
    assert Image.open(out / "reimagine.png").size == grid_size(rows=2, cols=3 + 2)
    assert np.array_equal(cell(grid, 0, 0), to_uint8(x)[0, ..., 0])
    for col in range(1, 5):
        assert np.array_equal(cell(grid, 0, col), cell(grid, 0, 0))


def test_condition_comes_from_class_label_or_null():
    assert reimagine.condition(4, 6, 10) == (4, "class 4 (--class)")
    assert reimagine.condition(None, 6, 10)[0] == 6
    label, why = reimagine.condition(None, None, 10)
    assert label is None and "null class" in why
    assert reimagine.condition(None, 6, 0)[0] is None  # an unconditional model ignores the item's label
    with pytest.raises(UserError, match="unconditional"):
        reimagine.condition(3, None, 0)


# ----- bad inputs: one line, exit 2, nothing written ---------------------------------------------------------------
def check_one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert reimagine.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err
    assert captured.out == ""


@pytest.fixture
def bad_png(tmp_path) -> Path:
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not an image")
    return path


@pytest.mark.parametrize("extra, needle", [
    (["--strengths", "0.5", "1.5"], "outside [0, 1]"),
    (["--strengths", "-0.1"], "outside [0, 1]"),
    (["--intermediates-strength", "2"], "outside [0, 1]"),
    (["--ddim-steps", "10", "0"], "--ddim-steps must be > 0"),
    (["--ddim-steps", "10", "10"], "lists a number twice"),
    (["--class", "10"], "out of range"),
    (["--index", "100000"], "out of range"),
    (["--index", "-1"], "--index must be >= 0"),
    (["--image", "MISSING"], "does not exist"),
    (["--image", "BROKEN"], "not a readable image"),
    (["--index", "0", "--image", "BROKEN"], "not allowed with"),
])
def test_bad_inputs_are_one_line_errors(capsys, tiny_runs, tmp_path, bad_png, extra, needle):
    extra = [str(tmp_path / "missing.png") if a == "MISSING" else str(bad_png) if a == "BROKEN" else a
             for a in extra]
    out = tmp_path / "out"
    check_one_line_error(capsys, ["--load", str(tiny_runs["latent"]), *extra, "--output", str(out)], needle)
    assert not out.exists()


def test_missing_checkpoint_and_toy_are_refused(capsys, tiny_runs, tmp_path):
    check_one_line_error(capsys, ["--load", str(tmp_path / "nope.ckpt")], "does not exist")
    check_one_line_error(capsys, ["--load", str(tiny_runs["toy"])], "toy")
    assert not (Path(tiny_runs["toy"]).parent.parent / "reimagine").exists()  # the default output folder


# ----- inpainting ------------------------------------------------------------------------------------------------
def half_mask(size: int = 16) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 2:] = 1.0  # regenerate the right half
    return mask


def run_inpaint(system, x, mask, resample=1, sampler="ddim", steps=4, seed=0):
    from model.inpainting import inpaint, latent_mask

    z0 = reimagine.encode(system, x)
    mask_z = latent_mask(mask, tuple(z0.shape[-2:]))
    z = inpaint(system.denoiser.bind(torch.tensor([3])), z0, mask_z, system.schedule, SamplerSpec(sampler, steps),
                resample=resample, generator=torch.Generator().manual_seed(seed))
    return z0, mask_z, z


@pytest.mark.parametrize("sampler,steps", [("ddim", 4), ("heun", 3), ("dpmpp_2m", 4),
                                           pytest.param("ddpm", None, marks=pytest.mark.slow)])
def test_inpainting_keeps_the_known_latents_and_regenerates_the_masked_ones(systems, sampler, steps):
    system = systems["latent"]
    x = first_validation_image(system)
    z0, mask_z, z = run_inpaint(system, x, half_mask(), sampler=sampler, steps=steps)
    assert mask_z.shape[-2:] == z0.shape[-2:] and 0 < float(mask_z.mean()) < 1
    keep = mask_z == 0
    assert torch.equal(z.expand_as(z0)[keep.expand_as(z0)], z0[keep.expand_as(z0)])  # the known region is z0 exactly
    assert (z - z0)[(~keep).expand_as(z0)].abs().mean() > 0.1  # the masked region is generated anew
    _, _, again = run_inpaint(system, x, half_mask(), sampler=sampler, steps=steps)
    assert torch.equal(z, again)  # a seed gives the same result


def test_inpainting_a_pixel_model_keeps_the_input_pixels_outside_the_mask(systems):
    system = systems["pixel"]
    x = first_validation_image(system)
    _, _, z = run_inpaint(system, x, half_mask())
    torch.testing.assert_close(z[..., :8], x[..., :8], rtol=0, atol=1e-6)
    assert (z[..., 8:] - x[..., 8:]).abs().mean() > 0.1


def test_repaint_resampling_runs_every_step_r_times(systems):
    system = systems["latent"]
    with swapped(system.denoiser, "net", Recorder(system.net)) as spy:
        repaint_resampling_runs_every_step_r_times(system, spy)


def repaint_resampling_runs_every_step_r_times(system, spy):
    x = first_validation_image(system)
    _, _, once = run_inpaint(system, x, half_mask(), resample=1)
    calls_once = len(spy.calls)
    _, _, thrice = run_inpaint(system, x, half_mask(), resample=3)
    assert len(spy.calls) - calls_once == 3 * calls_once
    assert [t for t, _ in spy.calls[calls_once:calls_once + 3]] == [1000, 1000, 1000]  # t = T, three times
    assert not torch.equal(once, thrice)


def test_an_all_white_mask_ignores_the_image(systems):
    system = systems["latent"]
    white = torch.ones(1, 1, 16, 16)
    a = run_inpaint(system, first_validation_image(system), white)[2]
    b = run_inpaint(system, validation_item(system.cfg.data, 1)[0], white)[2]
    assert torch.equal(a, b)  # nothing is known: the same seed gives the same fresh sample


def write_mask(path, array) -> str:
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.slow
def test_the_inpaint_command_writes_its_grid_and_blends_on_request(tiny_runs, tmp_path, capsys):
    mask = write_mask(tmp_path / "m.png", np.where(np.arange(16)[None, :] >= 8, 255, 0).repeat(16, 0))
    base_args = ["--load", str(tiny_runs["latent"]), "--index", "0", "--mask", mask, "--ddim-steps", "3"]
    assert reimagine.main([*base_args, "--output", str(tmp_path / "a")]) == 0
    assert reimagine.main([*base_args, "--blend", "--resample-steps", "2", "--output", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / n / "inpaint.json").read_text()) for n in "ab")
    assert a["columns"] == ["original", "mask", "masked input", "DDPM", "DDIM-3"] and a["masked_fraction"] == 0.5
    for name in ("DDPM", "DDIM-3"):
        assert b["samplers"][name]["mse_outside"] == 0.0  # blended: the original pixels outside the mask
        assert a["samplers"][name]["mse_inside"] > 0 and b["samplers"][name]["mse_inside"] > 0
    from PIL import Image

    assert Image.open(tmp_path / "a" / "inpaint.png").size == (5 * 18 + 2, 18 + 2)


@pytest.mark.parametrize("make,needle", [
    (lambda d: write_mask(d / "black.png", np.zeros((16, 16))), "all black"),
    (lambda d: write_mask(d / "small.png", np.full((8, 8), 255)), "is 8x8 but the image is 16x16"),
    (lambda d: (d / "junk.png").write_bytes(b"not a png") and str(d / "junk.png"), "not a readable image"),
    (lambda d: str(d / "absent.png"), "does not exist"),
])
def test_bad_masks_are_one_line_and_write_nothing(tiny_runs, tmp_path, capsys, make, needle):
    out = tmp_path / "out"
    code = reimagine.main(["--load", str(tiny_runs["latent"]), "--mask", make(tmp_path), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()

