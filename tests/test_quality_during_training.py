"""Sample quality during training (`trainer.fid_every_n_steps`): the pixel metrics (and a domain FID) logged at their
steps, and best.ckpt kept by one of them."""
from __future__ import annotations

import csv

import pytest
import torch

from model.classifier import SmallCNN, save_classifier
from model.main import main
from tiny import DIGITS, tiny


@pytest.mark.slow
def test_quality_is_logged_during_training_and_best_ckpt_follows_it(tmp_path, capsys):
    clf = save_classifier(tmp_path / "clf.pt", SmallCNN(1, 10, 16, width=8), {})
    assert main(["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", "1", "--output_dir", str(tmp_path),
                 *tiny(val_every=100, log_every=1), "--vae.trainer.max_steps", "2",
                 "--denoiser.trainer.max_steps", "6", "--denoiser.trainer.fid_every_n_steps", "3",
                 "--denoiser.trainer.fid_num_samples", "20", "--denoiser.trainer.fid_features", str(clf),
                 "--denoiser.trainer.best_by", "val/pixel_fd"]) == 0
    stage = tmp_path / "digits-1" / "denoiser"
    rows = [r for r in csv.DictReader(open(stage / "logs" / "metrics.csv")) if r.get("val/pixel_fd")]
    assert [int(r["step"]) for r in rows] == [2, 5]  # after optimiser steps 3 and 6 (rows carry the 0-based step)
    for r in rows:
        assert float(r["val/pixel_fd"]) > 0 and 0 <= float(r["val/precision"]) <= 1 and float(r["val/fid"]) >= 0
    best = torch.load(stage / "checkpoints" / "best.ckpt", weights_only=True)
    scores = {int(r["step"]) + 1: float(r["val/pixel_fd"]) for r in rows}
    assert best["global_step"] == min(scores, key=scores.get)  # best.ckpt is the step with the lowest pixel FD


@pytest.mark.slow
def test_the_configured_sampler_leaves_the_trained_weights_alone(tmp_path):
    """Quality evaluations during training draw their samples with the config's sampler from their own generator: a
    stochastic sampler or a deterministic one gives the same weights, so a config's sampler can change without
    retraining (docs/evaluation.md relies on it)."""
    weights = {}
    for run, sampler in ((1, "ddim"), (2, "dpmpp_2m_sde")):
        assert main(["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", str(run), "--output_dir", str(tmp_path),
                     *tiny(val_every=100, log_every=1), "--vae.trainer.max_steps", "2",
                     "--denoiser.trainer.max_steps", "4", "--denoiser.trainer.fid_every_n_steps", "2",
                     "--denoiser.trainer.fid_num_samples", "20", "--denoiser.diffusion.sampler", sampler,
                     "--denoiser.diffusion.sample_steps", "3"]) == 0
        ckpt = torch.load(tmp_path / f"digits-{run}" / "denoiser" / "checkpoints" / "last.ckpt", weights_only=True)
        weights[sampler] = ckpt["state_dict"]
    assert weights["ddim"].keys() == weights["dpmpp_2m_sde"].keys()
    assert all(torch.equal(weights["ddim"][k], weights["dpmpp_2m_sde"][k]) for k in weights["ddim"])


def test_quality_settings_are_checked_before_training(tmp_path, capsys):
    base = ["-cfg", DIGITS, "--train-denoiser", "-n", "1", "--output_dir", str(tmp_path)]
    for extra, needle in ((["--denoiser.trainer.fid_every_n_steps", "3"], "multiple of trainer.log_every_n_steps"),
                          (["--denoiser.trainer.best_by", "val/pixel_fd", "--denoiser.trainer.fid_every_n_steps", "0"],
                           "needs trainer.fid_every_n_steps > 0"),
                          (["--denoiser.trainer.best_by", "val/sharpness"], "trainer.best_by must be"),
                          (["--train-vae", "--vae.trainer.fid_every_n_steps", "20"], "needs a denoiser stage"),
                          (["--train-vae", "--vae.trainer.best_by", "val/loss"], "not logged by this stage")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "digits-1").exists()


def test_inception_fid_without_its_weights_stops_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no Inception weights there, and no network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", "1", "--output_dir", str(tmp_path / "out"),
                 *tiny(val_every=100, log_every=1), "--vae.trainer.max_steps", "2", "--denoiser.trainer.max_steps", "3",
                 "--denoiser.trainer.fid_every_n_steps", "3", "--denoiser.trainer.fid_features", "inception"])
    assert code == 2
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "digits-1" / "denoiser").exists()


@pytest.mark.slow
def test_the_floor_and_wall_time_are_logged_beside_the_quality_and_plotted(tmp_path, capsys):
    """Every evaluation row carries the real floor (scored against the same reference, which never holds the floor's
    images) and a growing wall time; the quality plot reads them as ratios to the floor."""
    from model.scripts.plots import main as plots_main

    assert main(["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", "1", "--output_dir", str(tmp_path),
                 *tiny(val_every=100, log_every=1), "--vae.trainer.max_steps", "2",
                 "--denoiser.trainer.max_steps", "6", "--denoiser.trainer.fid_every_n_steps", "3",
                 "--denoiser.trainer.fid_num_samples", "20"]) == 0
    stage = tmp_path / "digits-1" / "denoiser"
    rows = [r for r in csv.DictReader(open(stage / "logs" / "metrics.csv")) if r.get("val/pixel_fd")]
    floors = {r["val/floor_pixel_fd"] for r in rows}
    assert len(floors) == 1 and float(floors.pop()) > 0  # the same real images at every evaluation
    assert 0 < float(rows[0]["val/floor_recall"]) <= 1 and 0 < float(rows[0]["val/floor_coverage"]) <= 1
    assert all(0 <= float(r["val/coverage"]) <= 1 for r in rows)
    elapsed = [float(r["val/elapsed_s"]) for r in rows]
    assert 0 < elapsed[0] < elapsed[1]
    assert plots_main(["quality", "--run", str(stage)]) == 0
    table = list(csv.DictReader(open(stage / "plots" / "quality.csv")))
    assert [float(r["step"]) for r in table] == [3.0, 6.0]
    ratio = float(rows[1]["val/pixel_fd"]) / float(rows[1]["val/floor_pixel_fd"])
    assert float(table[1]["pixel_fd"]) == pytest.approx(ratio)
    assert (stage / "plots" / "quality.png").stat().st_size > 0
    assert "x floor" in capsys.readouterr().out


def test_the_quality_plot_of_a_run_without_quality_logs_is_one_line(tmp_path, capsys):
    from model.scripts.plots import main as plots_main

    stage = tmp_path / "denoiser" / "logs"
    stage.mkdir(parents=True)
    (stage / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    assert plots_main(["quality", "--run", str(tmp_path / "denoiser")]) == 2
    err = capsys.readouterr().err
    assert "fid_every_n_steps > 0" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("metric,mode", [("val/pixel_fd", "min"), ("val/kid", "min"), ("val/precision", "max"),
                                         ("val/recall", "max"), ("val/coverage", "max")])
def test_best_ckpt_keeps_the_lowest_distance_or_the_highest_share(tmp_path, metric, mode):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from model.config import TrainerConfig
    from model.lightning.trainer import make_callbacks

    tc = TrainerConfig(best_by=metric, fid_every_n_steps=20, log_every_n_steps=10)
    best = [c for c in make_callbacks(tc, tmp_path, "val/loss") if isinstance(c, ModelCheckpoint) and c.monitor]
    assert [(c.monitor, c.mode) for c in best] == [(metric, mode)]
