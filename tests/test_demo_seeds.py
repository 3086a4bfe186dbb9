"""benchmarks.demo_seeds: one row per training run read from its sample report, their spread, and the recipe's
bounds checked on every run (a bound met on the mean but missed by one seed is reported as missed)."""
from __future__ import annotations

import csv
import json

import pytest

from benchmarks import common, demo_seeds


def stats(mean: float) -> dict[str, float]:
    return {"mean": mean, "std": 0.0}


def budget(size, fd: float, recall: float, precision: float = 0.9) -> dict:
    rows = [{"row": "samples w=0", "pixel_fd": stats(fd), "precision": stats(precision), "recall": stats(recall)},
            {"row": "VAE round trip", "pixel_fd": stats(0.11), "precision": stats(0.9), "recall": stats(0.9)},
            {"row": "real floor", "pixel_fd": stats(0.1), "precision": stats(0.9), "recall": stats(0.9)}]
    return {"protocol": {"size": size}, "rows": rows}


def fake_run(root, name: str, fd: float, recall: float, accuracy: float, wall: int, budgets=None, sampling=None,
             report_folder: str = "report"):
    """A run folder with a sample report: one pixel budget at 8 px and DDIM samples (as reports were first written)
    unless `budgets` gives several and `sampling` another sampler."""
    folder = root / name
    (folder / "denoiser" / report_folder).mkdir(parents=True)
    report = {"scales": [{"cfg_scale": 0.0, "accuracy": accuracy, "nn_distance_ratio": 1.0}],
              "pixel_budget": budget(8, fd, recall), "classifier_val_accuracy": 0.6,
              "sampler": "ddim", "steps": 25, "spacing": "noise-dense"}
    if sampling:
        report["sampling"] = sampling
    if budgets:
        report["budgets"] = budgets
    (folder / "denoiser" / report_folder / "report.json").write_text(json.dumps(report))
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
    assert float(rows[0]["round trip FD / floor"]) == pytest.approx(1.1) and rows[4]["main command s"] == "110.0"
    assert rows[2]["FD / floor"] == "1.150 ± 0.212"  # mean ± sample std of 1.0 and 1.3
    assert "pixels 8 features" in rows[0]["table"] and "class accuracy" in rows[3]["table"]
    assert "MISSED: every seed's pixel FD <= 1.25x" in out and "met: mean pixel FD <= 1.15x" in out
    assert "met: every seed's recall >= 0.93x" in out and "met: every seed's class accuracy >= 99%" in out
    assert "training runs, DDIM 25 steps, noise-dense (eta 0) at w = 0" in rows[0]["table"]
    assert "coverage / floor" not in rows[0]  # reports written before coverage was scored


def test_coverage_is_read_over_the_floor_where_the_report_has_it(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    scored = budget(8, 0.1, 0.9)
    for row, value in zip(scored["rows"], (0.3, 0.4, 0.6)):  # samples, round trip, floor
        row["coverage"] = stats(value)
    assert demo_seeds.main([fake_run(tmp_path, "digits-1", 0.1, 0.9, 1.0, 100, budgets={"pixels 8": scored})]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results" / "demo_seeds.csv")))
    assert float(rows[0]["coverage / floor"]) == pytest.approx(0.5)


def test_a_report_with_several_draws_of_the_samples_is_read_as_their_mean(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    drawn = budget(8, 0.1, 0.9)
    drawn["rows"][1:1] = [{"row": "samples w=0, seed 1", "pixel_fd": stats(0.2), "precision": stats(0.9),
                           "recall": stats(0.72)},  # demo_report --sample-draws 2
                          {"row": "samples w=1", "pixel_fd": stats(0.9), "precision": stats(0.5),
                           "recall": stats(0.1)}]  # another guidance scale: not a draw of w = 0
    runs = [fake_run(tmp_path, "digits-1", 0.1, 0.9, 1.0, 100, budgets={"pixels 8": drawn}),
            fake_run(tmp_path, "digits-2", 0.1, 0.9, 1.0, 100)]  # one draw
    assert demo_seeds.main(runs) == 0
    rows = list(csv.DictReader(open(tmp_path / "results" / "demo_seeds.csv")))
    assert float(rows[0]["FD / floor"]) == pytest.approx(1.5) and float(rows[0]["recall / floor"]) == pytest.approx(0.9)
    assert rows[0]["run"] == "digits-1 (2 draws)" and rows[1]["run"] == "digits-2"
    assert float(rows[1]["FD / floor"]) == pytest.approx(1.0)


def test_runs_in_folders_of_one_name_are_named_by_their_path_below_the_common_parent(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    runs = [fake_run(tmp_path / f"seed-{s}", "digits-1", 0.1, 0.9, 1.0, 100) for s in (0, 1)]  # peer_equal_time's
    assert demo_seeds.main(runs) == 0
    rows = list(csv.DictReader(open(tmp_path / "results" / "demo_seeds.csv")))
    assert [r["run"] for r in rows[:2]] == ["seed-0/digits-1", "seed-1/digits-1"]
    assert [r["run"] for r in rows[3:5]] == ["seed-0/digits-1", "seed-1/digits-1"]  # the class table too


def test_the_tables_name_how_the_samples_were_drawn_and_runs_drawn_otherwise(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    dpm = "DPM-Solver++(2M) 10 steps, noise-dense"
    runs = [fake_run(tmp_path, "digits-1", 0.1, 0.9, 1.0, 100, sampling=dpm),
            fake_run(tmp_path, "digits-2", 0.1, 0.9, 1.0, 100, sampling=dpm)]
    assert demo_seeds.main(runs) == 0
    table = next(csv.DictReader(open(tmp_path / "results" / "demo_seeds.csv")))["table"]
    assert f"training runs, {dpm} at w = 0" in table
    runs.append(fake_run(tmp_path, "digits-3", 0.1, 0.9, 1.0, 100))  # an older report: DDIM
    assert demo_seeds.main(runs) == 0
    table = next(csv.DictReader(open(tmp_path / "results" / "demo_seeds.csv")))["table"]
    assert f"DDIM 25 steps, noise-dense (eta 0) / {dpm} at w = 0" in table


def test_another_sampling_is_read_from_its_own_report_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    run = fake_run(tmp_path, "digits-1", fd=0.1, recall=0.9, accuracy=1.0, wall=100)
    fake_run(tmp_path, "digits-1", fd=0.2, recall=0.8, accuracy=0.98, wall=100, report_folder="report-s1.1",
             sampling="DPM-Solver++(2M) SDE 10 steps, noise-dense (s_noise 1.1)")
    assert demo_seeds.main([run, "--report", "report-s1.1"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results" / "demo_seeds.csv")))
    assert float(rows[0]["FD / floor"]) == pytest.approx(2.0) and "(s_noise 1.1) at w = 0" in rows[0]["table"]
    assert "MISSED: every seed's class accuracy >= 99%" in capsys.readouterr().out
    assert demo_seeds.main([run, "--report", "../report"]) == 2
    assert "--report names a folder inside" in capsys.readouterr().err


def test_a_run_without_its_report_is_one_line(tmp_path, capsys):
    assert demo_seeds.main([str(tmp_path / "digits-9")]) == 2
    assert "run model.scripts.demo_report" in capsys.readouterr().err


def test_the_emoji_bounds_read_every_feature_space_and_the_held_out_accuracy(tmp_path, monkeypatch, capsys):
    """The RGB recipe's bounds hold at both pixel sizes, and class accuracy is judged beside the classifier's
    accuracy on held-out real images (0.6 here), not against a fixed share."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    spaces = {"pixels 16": budget(16, 0.14, 0.9), "pixels 32": budget(32, 0.16, 0.9, precision=0.8),
              "domain": budget(None, 0.3, 0.5)}
    runs = [fake_run(tmp_path, "emoji-1", 0.14, 0.9, accuracy=0.58, wall=600, budgets=spaces)]
    assert demo_seeds.main(runs + ["--bounds", "emoji"]) == 0
    out = capsys.readouterr().out
    assert "met: every seed's pixels 16 FD <= 1.5x" in out and "MISSED: every seed's pixels 32 FD <= 1.5x" in out
    assert "MISSED: every seed's pixels 32 precision >= 0.9x" in out and "met: every seed's pixels 16 recall" in out
    assert "met: every seed's class accuracy within 5 points" in out  # 0.58 beside 0.6
    assert "domain features" in out  # reported, though the recipe sets no bound on it


@pytest.mark.parametrize("args, needle", [(["--config", "cifar"], "--config must be digits or emoji"),
                                          (["--seeds", "x"], "--seeds must be a positive integer"),
                                          (["--fast"], "unknown option --fast"),
                                          (["--first-seed", "-1"], "--first-seed must be an integer >= 0, got -1"),
                                          (["--draws", "0"], "--draws must be a positive integer, got 0"),
                                          (["0", "--", "--seed", "1"], "RUN must be a positive integer, got 0")])
def test_the_demo_benchmark_script_refuses_bad_options_in_one_line(args, needle):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "demo_benchmark.sh"
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""  # nothing trained, nothing printed


def test_the_demo_benchmark_script_without_torch_is_one_line(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    fake = tmp_path / "python"  # a python that cannot import torch (a shell outside the project's environment)
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "scripts" / "demo_benchmark.sh"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "cannot import torch" in done.stderr and ". .venv/bin/activate" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
