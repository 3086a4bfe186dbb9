"""benchmarks.demo_seeds: one row per training run read from its sample report, their spread, and the recipe's
bounds checked on every run (a bound met on the mean but missed by one seed is reported as missed)."""
from __future__ import annotations

import csv
import json

import pytest

from benchmarks import common, demo_seeds


def stats(mean: float) -> dict[str, float]:
    return {"mean": mean, "std": 0.0}


def fake_run(root, name: str, fd: float, recall: float, accuracy: float, wall: int):
    folder = root / name
    (folder / "denoiser" / "report").mkdir(parents=True)
    rows = [{"row": "samples w=0", "pixel_fd": stats(fd), "precision": stats(0.9), "recall": stats(recall)},
            {"row": "VAE round trip", "pixel_fd": stats(0.11), "precision": stats(0.9), "recall": stats(0.9)},
            {"row": "real floor", "pixel_fd": stats(0.1), "precision": stats(0.9), "recall": stats(0.9)}]
    report = {"scales": [{"cfg_scale": 0.0, "accuracy": accuracy, "nn_distance_ratio": 1.0}],
              "pixel_budget": {"rows": rows}}
    (folder / "denoiser" / "report" / "report.json").write_text(json.dumps(report))
    (folder / "main_wall_s").write_text(f"{wall}\n")
    return str(folder)


def test_rows_are_ratios_to_the_floor_and_a_bound_missed_by_one_seed_is_missed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    runs = [fake_run(tmp_path, "digits-1", fd=0.10, recall=0.9, accuracy=1.0, wall=100),
            fake_run(tmp_path, "digits-2", fd=0.13, recall=0.9, accuracy=0.995, wall=110)]  # FD 1.3x: over 1.25x
    assert demo_seeds.main(runs) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "results" / "demo_seeds.csv")))
    assert [float(r["FD / floor"]) for r in rows[:2]] == [pytest.approx(1.0), pytest.approx(1.3)]
    assert float(rows[0]["round trip FD / floor"]) == pytest.approx(1.1) and rows[1]["main command s"] == "110.0"
    assert rows[2]["FD / floor"] == "1.150 ± 0.212"  # mean ± sample std of 1.0 and 1.3
    assert "MISSED: every seed's pixel FD <= 1.25x" in out and "met: mean pixel FD <= 1.15x" in out
    assert "met: every seed's recall >= 0.93x" in out and "met: every seed's class accuracy >= 99%" in out


def test_a_run_without_its_report_is_one_line(tmp_path, capsys):
    assert demo_seeds.main([str(tmp_path / "digits-9")]) == 2
    assert "run model.scripts.demo_report" in capsys.readouterr().err
