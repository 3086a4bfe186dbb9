"""`model.scripts.evaluate`: FID per guidance scale with cached real statistics, class accuracy, the loss table
(checked against its closed form for a zero network), and the 2-D toy's Chamfer distance."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.toy2d import chamfer_distance
from model.classifier import SmallCNN, save_classifier
from model.evaluation import balanced_labels, loss_per_timestep, loss_timesteps, wilson_interval
from model.pipeline import LatentDiffusionPipeline
from model.scripts.evaluate import main


@pytest.fixture(scope="module")
def evaluated(tiny_runs, tmp_path_factory) -> dict:
    """One evaluation of the tiny latent model (two guidance scales, DDIM-3), run twice: the second uses the cache."""
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    clf = save_classifier(root / "clf.pt", SmallCNN(1, 10, 16, width=8), {})  # untrained: any accuracy will do
    argv = ["--load", str(tiny_runs["latent"]), "--classifier", str(clf), "--num_samples", "20", "--cfg-scale",
            "0", "3", "--ddim", "--steps", "3", "--stats-cache", str(root / "stats"), "--loss-timesteps", "1", "500"]
    assert main(argv + ["--output", str(root / "first")]) == 0
    assert main(argv + ["--output", str(root / "second")]) == 0
    return {"root": root, "first": root / "first", "second": root / "second"}


@pytest.mark.parametrize("successes,n", [(0, 10), (3, 10), (10, 10), (491, 500), (4913, 5000), (1, 1)])
def test_the_class_accuracy_interval_is_wilsons(successes, n):
    from scipy.stats import binomtest

    want = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(want.low, abs=1e-4) and hi == pytest.approx(want.high, abs=1e-4)
    assert lo <= successes / n <= hi and (hi > lo)  # never empty, even at 0 or all


@pytest.mark.parametrize("successes,n", [(1, 0), (-1, 5), (6, 5)])
def test_a_share_out_of_range_has_no_interval(successes, n):
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(successes, n)


def report(folder: Path) -> dict:
    return json.loads((folder / "evaluation.json").read_text())


def test_writes_every_file_with_one_fid_per_scale(evaluated):
    out = evaluated["first"]
    assert {p.name for p in out.iterdir()} == {"evaluation.json", "evaluation.md", "loss_per_timestep.csv",
                                               "samples_w0.png", "samples_w0.npz", "samples_w3.png", "samples_w3.npz"}
    r = report(out)
    assert [s["cfg_scale"] for s in r["scales"]] == [0.0, 3.0]
    for s in r["scales"]:
        assert np.isfinite(s["fid"]) and s["fid"] > -1e-9
        assert 0 <= s["accuracy"] <= 1 and len(s["per_class_accuracy"]) == 10
    assert r["sampler"] == "DDIM 3 steps, noise-dense (eta 0)" and r["num_samples"] == 20  # the config's spacing
    assert r["real_baseline"]["images"] == 20 and np.isfinite(r["real_baseline"]["fid"])
    protocol = r["fid_protocol"]
    assert protocol["real_images"] == 12 and protocol["generated_images"] == 20  # 120 items, 10 % held out
    assert "domain classifier" in protocol["extractor"] and "float64" in protocol["dtype"]


def test_the_error_budget_scores_every_scale_the_round_trip_and_the_floor(evaluated):
    budget = report(evaluated["first"])["pixel_budget"]
    assert [r["row"] for r in budget["rows"]] == ["samples w=0", "samples w=3", "VAE round trip", "real floor"]
    for row in budget["rows"]:
        for metric in ("pixel_fd", "kid", "precision", "recall"):
            assert np.isfinite(row[metric]["mean"]) and row[metric]["std"] >= 0
        assert 0 <= row["precision"]["mean"] <= 1 and 0 <= row["recall"]["mean"] <= 1
    p = budget["protocol"]
    assert (p["n"], p["real_pool"], p["reference"], p["size"], p["components"], p["k"]) == (20, 120, 100, 8, 16, 3)
    assert budget == report(evaluated["second"])["pixel_budget"]  # the same seed: the same figures
    md = (evaluated["first"] / "evaluation.md").read_text()
    assert "## Error budget on pixel features" in md and "| samples w=3 |" in md
    assert "(l2 loss on the v target," in md


def test_the_loss_table_names_the_objective_it_was_trained_on():
    from model.scripts.evaluate import markdown

    base = {"denoiser": "d", "sampler": "s", "num_samples": 1, "seed": 0, "loss_per_timestep": [], "loss": "l2",
            "parametrisation": "v"}
    assert "(l2 loss on the v target," in markdown({**base, "objective": "vp"})
    assert "(l2 loss on the flow objective's target," in markdown({**base, "objective": "flow"})  # not "v target"


def test_dpm_solver_samples_through_the_same_command(tiny_runs, tmp_path):
    out = tmp_path / "dpm"
    clf = save_classifier(tmp_path / "clf.pt", SmallCNN(1, 10, 16, width=8), {})
    assert main(["--load", str(tiny_runs["latent"]), "--num_samples", "10", "--sampler", "dpmpp_2m", "--steps", "3",
                 "--stats-cache", str(tmp_path / "stats"), "--classifier", str(clf), "--output", str(out),
                 "--loss-timesteps", "500"]) == 0
    r = report(out)
    assert r["sampler"] == "DPM-Solver++(2M) 3 steps, noise-dense" and np.isfinite(r["scales"][0]["fid"])


def test_samples_are_class_balanced_uint8(evaluated):
    w0 = np.load(evaluated["first"] / "samples_w0.npz")
    assert w0["images"].shape == (20, 16, 16, 1) and w0["images"].dtype == np.uint8
    assert w0["labels"].tolist() == balanced_labels(20, 10).tolist() == [k % 10 for k in range(20)]


def test_second_run_reads_the_cached_real_statistics_and_repeats_every_figure(evaluated):
    first, second = report(evaluated["first"]), report(evaluated["second"])
    assert first["fid_protocol"]["real_statistics"].startswith("computed")
    assert second["fid_protocol"]["real_statistics"].startswith("cached")
    assert len(list((evaluated["root"] / "stats").iterdir())) == 1
    assert first["scales"] == second["scales"] and first["loss_per_timestep"] == second["loss_per_timestep"]


def test_loss_table_csv_matches_the_report(evaluated):
    rows = list(csv.DictReader(open(evaluated["first"] / "loss_per_timestep.csv")))
    r = report(evaluated["first"])
    assert [int(row["t"]) for row in rows] == [1, 500] == [e["t"] for e in r["loss_per_timestep"]]
    assert [float(row["loss"]) for row in rows] == pytest.approx([e["loss"] for e in r["loss_per_timestep"]],
                                                                 rel=1e-5)
    assert float(rows[0]["alpha_bar"]) > float(rows[1]["alpha_bar"])


class Zero(torch.nn.Module):
    def forward(self, x_t, t, c=None):
        return torch.zeros_like(x_t)


def test_loss_table_of_a_zero_network_is_the_closed_form(tiny_runs):
    """With v-target, l2 and a network that outputs 0, the loss at t is E[v^2] with v = sqrt(ab) eps - sqrt(1-ab) x0:
    L(t) = ab A + (1 - ab) B - 2 sqrt(ab (1 - ab)) C, with A = E[eps^2], B = E[x0^2], C = E[eps x0] the same at every t
    because the noise is fixed. Fit A, B, C on 11 timesteps: the fit must be exact."""
    from data import make_datamodule

    system = LatentDiffusionPipeline.from_pretrained(tiny_runs["pixel"])
    assert (system.diff.parametrisation, system.diff.loss, system.diff.min_snr_gamma) == ("v", "l2", None)
    system.denoiser.net = Zero()
    dm = make_datamodule(system.cfg.data)
    dm.setup("fit")
    timesteps = loss_timesteps(system.diff.T)
    losses = torch.tensor(loss_per_timestep(system, dm.val_dataloader(), timesteps), dtype=torch.float64)
    ab = system.schedule.alpha_bar[timesteps].double()
    design = torch.stack([ab, 1 - ab, -2 * (ab * (1 - ab)).sqrt()], dim=1)  # (11, 3)
    coef = torch.linalg.lstsq(design, losses.unsqueeze(1)).solution
    assert torch.allclose(design @ coef, losses.unsqueeze(1), atol=1e-6, rtol=0)
    assert coef[0].item() == pytest.approx(1.0, abs=0.05)  # E[eps^2] of 12 * 256 Gaussian draws


def test_toy_reports_ddpm_and_ddim_chamfer_distances(tiny_runs, tmp_path):
    out = tmp_path / "toy"
    assert main(["--load", str(tiny_runs["toy"]), "--num_samples", "200", "--steps", "5", "--output", str(out),
                 "--loss-timesteps", "10", "90"]) == 0
    r = report(out)
    assert [(c["sampler"], c["steps"]) for c in r["chamfer"]] == [("ddpm", 100), ("ddim", 5)]
    assert r["sampler"] == "DDPM 100 steps and DDIM 5 steps (eta 0)"
    from data import make_datamodule

    system = LatentDiffusionPipeline.from_pretrained(tiny_runs["toy"])
    data = make_datamodule(system.cfg.data).points()
    for c in r["chamfer"]:
        points = torch.from_numpy(np.load(out / f"samples_{c['sampler']}.npz")["points"])
        assert points.shape == (200, 2)
        assert c["chamfer_distance"] == pytest.approx(chamfer_distance(points, data[:200]), rel=1e-6)
    assert (out / "chamfer.png").stat().st_size > 0 and "scales" not in r
