"""benchmarks.quality_per_step on a tiny checkpoint: every registered sampler runs at the asked number of network
evaluations, which is counted, not computed (Heun's step into the data calls the network once)."""
from __future__ import annotations

import csv

import pytest

from benchmarks import common, quality_per_step
from data import make_datamodule
from data.config import DataConfig
from model.classifier import save_classifier, train_classifier
from model.sampling import SAMPLERS


def test_nfe_settings_give_every_sampler_about_the_asked_evaluations():
    settings = quality_per_step.nfe_settings([5, 10])
    assert settings[:2] == ["ddpm:5", "ddpm:10"]
    assert "heun:3" in settings and "unipc:10" in settings
    assert len(settings) == 2 * len(SAMPLERS)


@pytest.mark.slow  # trains a classifier and samples with every sampler (about 35 s)
def test_every_sampler_is_scored_at_its_counted_evaluations(tiny_runs, tmp_path, monkeypatch):
    dm = make_datamodule(DataConfig(name="digits", image_size=16, batch_size=64))
    clf, _ = train_classifier(dm, epochs=1, lr=3e-3, seed=0)
    path = save_classifier(tmp_path / "clf.pt", clf, {"data": "digits"})
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")  # not the repository's benchmarks/results
    assert quality_per_step.main(["--load", str(tiny_runs["latent"]), "--classifier", str(path), "--nfe", "3",
                                  "--num_samples", "20", "--batch-size", "10", "--draws", "2", "--real-pool", "200",
                                  "--name", "nfe_test", "--stats-cache", str(tmp_path / "stats")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results" / "nfe_test.csv")))
    counted = {r["sampler"].split(" ")[0]: int(r["network evaluations"]) for r in rows if r["network evaluations"]}
    assert counted == {"DDPM": 3, "DDIM": 3, "DPM-Solver++(2M)": 3, "Euler": 3, "Heun": 3, "UniPC": 3}
    assert sum(r["sampler"].startswith("DPM-Solver++(2M) SDE") for r in rows) == 1
    assert (tmp_path / "results" / "nfe_test.png").is_file()
