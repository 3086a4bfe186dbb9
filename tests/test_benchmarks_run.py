"""Every benchmark runs end to end with the smallest settings (slow tier): a refactor that breaks one at run time
fails here, not in front of a user. The figures themselves are not checked: they are measurements, not results."""
from __future__ import annotations

import csv
import importlib
import statistics

import pytest
import torch

from benchmarks import common
from model.sampling import SAMPLERS
from tiny import ROOT, tiny

SMALL = {  # the smallest arguments that still run every table of the benchmark
    "demo_profile": ["--output", "{tmp}/runs", "--", *tiny(val_every=2), "--vae.trainer.max_steps", "2",
                     "--denoiser.trainer.max_steps", "2"],
    "peer_equal_time": ["--output", "{tmp}/runs", "--per-class", "2", "--peer-seconds", "2", "--peer-dim", "8",
                        "--latent-peer-seconds", "2", "--pixel-size", "8", "16", "--classifier", "{tmp}/clf.pt",
                        "--peer-mults", "1", "2", "--peer-batch", "8", "--s-noise", "1.1", "--autoguidance", "0.3",
                        "--sample-draws", "2", "--seeds", "2", "--seed", "3",
                        "--", *tiny(val_every=2),
                        "--vae.trainer.max_steps", "2", "--denoiser.trainer.max_steps", "2"],
    "edit_loop": ["--repeats", "1", "--baseline", str(ROOT), "--", "tests/test_wrap.py"],
    "latent_vs_pixel": ["--repeats", "1", "--warmup", "0", "--train-batch", "2", "--sample-batch", "2", "--steps", "2"],
    "memory_knobs": ["--repeats", "1", "--warmup", "0", "--vae-batch", "2", "--unet-batch", "2", "--knobs", "fp32"],
    "sampler_overhead": ["--repeats", "1", "--warmup", "0", "--ddpm-steps", "10", "--batch-sizes", "1",
                         "--overhead-repeats", "1"],
    "small_maps": ["--repeats", "1", "--warmup", "0", "--batch", "2"],
    "speed_knobs": ["--repeats", "1", "--warmup", "0", "--batch", "2", "--steps", "2", "--knobs", "fp32",
                    "channels_last"],
    "train_throughput": ["--repeats", "1", "--warmup", "0", "--steps", "1", "--no-memory"],
    "vae_discriminator": ["--steps", "2", "--n", "20", "--real-pool", "100", "--output", "{tmp}/runs"],
}


def test_every_benchmark_is_listed():
    import pkgutil

    import benchmarks

    names = {m.name for m in pkgutil.iter_modules(benchmarks.__path__)} - {"common"}
    # quality_per_step: tests/test_quality_per_step.py; demo_seeds reads reports: tests/test_demo_seeds.py;
    # latent_peer is a part of peer_equal_time: tests/test_latent_peer.py
    assert names == set(SMALL) | {"quality_per_step", "demo_seeds", "latent_peer"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_benchmark_runs_and_writes_its_table(name, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    from model.classifier import SmallCNN, save_classifier

    save_classifier(tmp_path / "clf.pt", SmallCNN(1, 10, 16, width=4), {})  # untrained: any accuracy
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.main([a.replace("{tmp}", str(tmp_path)) for a in SMALL[name]]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results" / f"{name}.csv")))
    assert rows and all(r["machine"].startswith("machine:") for r in rows)
    if name == "peer_equal_time":
        check_peer_comparison(rows, tmp_path)
    if name == "edit_loop":
        check_edit_loop(rows)


def check_edit_loop(rows: list[dict]) -> None:
    """Both trees ran the selection once, each worker stamped by the plugin, in the order a run goes through."""
    runs = [r for r in rows if r["table"].startswith("The edit-loop tier")]
    assert [r["tree"] for r in runs] == ["this checkout", "baseline"] and all(r["tests"] == "3 passed" for r in runs)
    for r in runs:
        stamps = [float(r[k]) for k in ("workers started s", "collected s", "first test s", "last test s", "wall s")]
        assert 0 < stamps[0] and stamps == sorted(stamps), stamps
    summary = {r["tree"]: r for r in rows if r["table"] == "Wall time"}
    assert float(summary["baseline"]["× the baseline's mean"]) == 1.0


def check_peer_comparison(rows: list[dict], tmp_path) -> None:
    """Two training seeds (3 and 4), each model drawn twice: a table per run, then one over the runs."""
    runs = [[r for r in rows if f"training seed {seed}," in r["table"]] for seed in (3, 4)]
    summary = [r for r in rows if "over 2 training seeds, 3 to 4" in r["table"]]
    assert len(runs[0]) == len(runs[1]) == 4 and len(rows) == 8 + len(summary), [r["table"] for r in rows]
    for run in runs:
        # the pixel peer trains at its own batch, not our denoiser's; ours samples with the config's sampler
        assert [r["trained"] for r in run if r["model"] == "peer (pixel)"] == ["steps of batch 8"]
        diffusion = common.load_config(common.DIGITS_CONFIG).denoiser.diffusion
        assert run[0]["sampler"].startswith(f"{SAMPLERS[diffusion.sampler].display} {diffusion.sample_steps} steps")
        # --s-noise and --autoguidance: the same network again, its noise scaled and stepped away from its guide
        noisier = [r for r in run if r["model"] == "ours (latent), s_noise 1.1, autoguidance 0.3"]
        assert len(noisier) == 1 and noisier[0]["sampler"].endswith("(s_noise 1.1, autoguidance 0.3)")
        fd = next(column for column in run[0] if column.startswith("FD"))
        assert noisier[0]["steps"] == run[0]["steps"] and noisier[0][fd] != run[0][fd]
        # --sample-draws 2: every model's figures are the mean ± std over its two draws
        assert all(" ± " in r[fd] and " ± " in r["class accuracy"] for r in run), [r[fd] for r in run]
        # two different draws, seen on our rows: the peers train for 2 s of wall time, and one that has learned
        # little can decode every draw to the same saturated images (std 0 at the table's rounding)
        ours = [r for r in run if r["model"].startswith("ours")]
        assert len(ours) == 2 and all(float(r[fd].split(" ± ")[1]) > 0 for r in ours), [r[fd] for r in ours]
    # --seeds 2: another training seed trains other networks, and the summary is their mean ± std per model
    assert runs[0][0][fd] != runs[1][0][fd]
    mean = statistics.fmean(float(run[0][fd].split(" ± ")[0]) for run in runs)
    # of the two runs' means; each is shown to 0.01, as is the summary: they agree to the two roundings
    assert abs(float(summary[0][fd].split(" ± ")[0]) - mean) <= 0.0100001
    ahead = [r for r in summary if r["model"].endswith("runs ahead of the peer (pixel)")]
    ours = ["ours (latent)", "ours (latent), s_noise 1.1, autoguidance 0.3"]
    assert [r["model"].split(":")[0] for r in ahead] == ours
    assert all(r[fd] in ("0 of 2", "1 of 2", "2 of 2") for r in ahead)
    for seed in (3, 4):  # every run in its own folder, with its grids
        grids = {path.name for path in (tmp_path / "runs" / f"seed-{seed}").glob("real_vs_*.png")}
        assert grids == {"real_vs_ours.png", "real_vs_peer.png", "real_vs_diffusers.png",
                         "real_vs_ours_s_noise_1.1_autoguidance_0.3.png"}


@pytest.mark.parametrize("flag,value", [("--peer-batch", "0"), ("--peer-dim", "-1"), ("--peer-mults", "0"),
                                        ("--s-noise", "0"), ("--sample-draws", "0"), ("--seeds", "0")])
def test_a_bad_peer_size_is_refused_before_anything_trains(flag, value, tmp_path, capsys):
    from benchmarks import peer_equal_time

    assert peer_equal_time.main(["--output", str(tmp_path / "runs"), flag, value]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], lines
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag,value", [("--workers", "0"), ("--baseline", "{tmp}")])
def test_a_bad_edit_loop_setting_is_refused_in_one_line(flag, value, tmp_path, capsys):
    from benchmarks import edit_loop

    assert edit_loop.main([flag, value.replace("{tmp}", str(tmp_path))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], lines


def test_our_training_seed_is_the_benchmarks_own(tmp_path, capsys):
    from benchmarks import peer_equal_time

    assert peer_equal_time.main(["--output", str(tmp_path / "runs"), "--", "--seed", "3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pass --seed S before --" in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_the_machine_header_says_where_the_thread_count_came_from(monkeypatch):
    from benchmarks.common import machine_header

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert f"torch threads {torch.get_num_threads()} (default)" in machine_header(torch.device("cpu"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read when torch starts: the header names it beside torch's count
    assert "(OMP_NUM_THREADS=1)" in machine_header(torch.device("cpu"))
