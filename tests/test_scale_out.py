"""Scaling out without SLURM: resumable data order, exact resume, 2-process DDP on CPU, auto-resume, knobs.

The SLURM side (sbatch, requeue, SIGUSR1) is in test_slurm.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data.resumable as resumable
from data.resumable import ResumableLoader
from model.main import main
from tiny import DIGITS, ROOT, failure_summary, tiny

TINY = tiny(val_every=3, log_every=1)


def indices(loader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]  # the dataset below returns its index as the label


class Numbered(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.zeros(1), i


def loader(n: int = 23, batch: int = 4, seed: int = 0, done: int = 0) -> ResumableLoader:
    return ResumableLoader(Numbered(n), batch_size=batch, seed=seed, batches_done=lambda: done)


# ---- the resumable data order --------------------------------------------------------------------------------


def test_each_epoch_is_a_fresh_seeded_permutation():
    dl = loader()
    e0, e1 = indices(dl), indices(dl)
    assert sorted(sum(e0, [])) == list(range(23)) == sorted(sum(e1, []))
    assert e0 != e1  # a new order per epoch
    again = loader()
    assert indices(again) == e0 and indices(again) == e1  # a function of (seed, epoch) only
    assert indices(loader(seed=1)) != e0


@pytest.mark.parametrize("epoch, done", [(0, 2), (1, 5), (1, 6)])
def test_a_restored_loader_yields_exactly_the_rest(epoch, done):
    """State saved after `done` batches of `epoch`: the new loader continues there (6 = after the epoch's last
    batch: an empty pass, then the next epoch), and the epochs after it are the uninterrupted run's."""
    ref = loader()
    epochs = [indices(ref) for _ in range(4)]
    first = loader(done=done)
    for _ in range(epoch + 1):
        indices(first)  # the epochs up to the one the state is saved in
    state = first.state_dict()
    assert state == {"epoch": epoch, "batches": done}
    resumed = loader()
    resumed.load_state_dict(state)
    assert indices(resumed) == epochs[epoch][done:]  # 6 batches per epoch of 23 items
    assert indices(resumed) == epochs[epoch + 1]


def test_ranks_read_disjoint_shares_of_each_epoch(monkeypatch):
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(resumable, "world", lambda rank=rank: (rank, 2))
        shares.append(sum(indices(loader(n=24)), []))
    assert len(shares[0]) == len(shares[1]) == 12
    assert sorted(shares[0] + shares[1]) == list(range(24))


# ---- exact resume ----------------------------------------------------------------------------------------------


def train(out: Path, n: str, *args: str) -> int:
    return main(["-cfg", DIGITS, "--output_dir", str(out), "-n", n, *TINY, *args])


def last(out: Path, n: str, stage: str) -> dict:
    return torch.load(out / f"digits-{n}" / stage / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Bit-equal weights (network, EMA, latent statistics), AdamW moments and step."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][m], sb[i][m]) for i in sa for m in sa[i])


def train_losses(out: Path, n: str, stage: str) -> list[tuple[int, str]]:
    import csv

    with open(out / f"digits-{n}" / stage / "logs" / "metrics.csv") as f:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights_and_loss_curve(tmp_path):
    """Run 2 stops the VAE at step 6 (a validation step) and the denoiser at 5, and resumes both to 12 (the VAE by
    --auto-resume, the denoiser on cached latents by --load): weights, EMA, autoguidance's guide, AdamW state and the
    logged loss curve (values and steps) equal the uninterrupted run 1 bit for bit."""
    to = {stage: ("--vae.trainer.max_steps" if stage == "vae" else "--denoiser.trainer.max_steps") for stage in
          ("vae", "denoiser")}
    guide = ["--denoiser.diffusion.guide_fraction", "0.6"]  # step 7 of 12: the resumed part keeps it as run 1 does
    assert train(tmp_path, "1", "--train-vae", "--train-denoiser", to["vae"], "12", to["denoiser"], "12", *guide) == 0
    assert train(tmp_path, "2", "--train-vae", to["vae"], "6") == 0
    assert train(tmp_path, "2", "--train-vae", "--auto-resume", to["vae"], "12") == 0
    vae = str(tmp_path / "digits-2" / "vae" / "checkpoints" / "last.ckpt")
    assert train(tmp_path, "2", "--train-denoiser", "--load-vae", vae, to["denoiser"], "5", *guide) == 0
    den = str(tmp_path / "digits-2" / "denoiser" / "checkpoints" / "last.ckpt")
    assert train(tmp_path, "2", "--train-denoiser", "--load", den, to["denoiser"], "12", *guide) == 0
    for stage in ("vae", "denoiser"):
        assert_same_training_state(last(tmp_path, "1", stage), last(tmp_path, "2", stage))
        curve = train_losses(tmp_path, "2", stage)  # both starts' rows in one metrics.csv
        assert [step for step, _ in curve] == list(range(12)) and curve == train_losses(tmp_path, "1", stage)


@pytest.mark.slow
def test_a_vae_with_its_discriminator_resumes_exactly_across_the_switch_on(tmp_path):
    """The discriminator and its AdamW moments live in last.ckpt: stopped before vae.disc.start_step and resumed past
    it, the run ends bit-equal to the uninterrupted one."""
    disc = ["--train-vae", "--vae.disc.weight", "0.5", "--vae.disc.layers", "2", "--vae.disc.base_channels", "8",
            "--vae.disc.start_step", "4"]
    assert train(tmp_path, "1", *disc, "--vae.trainer.max_steps", "8") == 0
    assert train(tmp_path, "2", *disc, "--vae.trainer.max_steps", "3") == 0
    assert train(tmp_path, "2", *disc, "--auto-resume", "--vae.trainer.max_steps", "8") == 0
    full = last(tmp_path, "1", "vae")
    assert any(k.startswith("disc.") for k in full["state_dict"]) and len(full["optimizer_states"][0]["param_groups"]) == 2
    assert_same_training_state(full, last(tmp_path, "2", "vae"))
    curve = train_losses(tmp_path, "2", "vae")
    assert curve == train_losses(tmp_path, "1", "vae") and [step for step, _ in curve] == list(range(8))


def test_auto_resume_skips_finished_stages(tmp_path, capsys):
    steps = ["--vae.trainer.max_steps", "3", "--denoiser.trainer.max_steps", "3"]
    assert train(tmp_path, "1", "--train-vae", "--train-denoiser", *steps) == 0
    ckpts = tmp_path / "digits-1"
    before = {stage: (ckpts / stage / "checkpoints" / "last.ckpt").stat().st_mtime_ns for stage in ("vae", "denoiser")}
    capsys.readouterr()
    assert train(tmp_path, "1", "--train-vae", "--train-denoiser", "--auto-resume", *steps) == 0
    out = capsys.readouterr().out
    assert "trained to step" not in out and out.count("checkpoint: ") == 2
    assert before == {stage: (ckpts / stage / "checkpoints" / "last.ckpt").stat().st_mtime_ns for stage in before}


@pytest.mark.slow
def test_accumulation_counts_optimiser_steps_and_resumes_at_a_step_boundary(tmp_path):
    """accumulate_grad_batches 2: 6 optimiser steps read 11 batches (7 per epoch of 108 images; Lightning closes an
    epoch's odd last batch with a step of its own); stopped at 3 and resumed, the same state."""
    acc = ["--train-vae", "--vae.trainer.accumulate_grad_batches", "2", "--vae.trainer.gradient_clip_val", "0.5"]
    assert train(tmp_path, "1", *acc, "--vae.trainer.max_steps", "6") == 0
    full = last(tmp_path, "1", "vae")
    loader = full["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert full["global_step"] == 6 and (loader["epoch"], loader["batches"]) == (1, 4)
    assert train(tmp_path, "2", *acc, "--vae.trainer.max_steps", "3") == 0
    assert train(tmp_path, "2", *acc, "--auto-resume", "--vae.trainer.max_steps", "6") == 0
    assert_same_training_state(full, last(tmp_path, "2", "vae"))


# ---- 2-process DDP on CPU --------------------------------------------------------------------------------------


def ddp_vae(out: Path, n: str, steps: int, *extra: str) -> None:
    args = []
    for key, value in (("accelerator", "cpu"), ("devices", "2"), ("strategy", "ddp"), ("max_steps", str(steps))):
        args += [f"--vae.trainer.{key}", value]
    done = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "-n", n,
                           "--output_dir", str(out), *TINY, *args, *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, failure_summary(done.stderr)
    assert "global batch 32 = 16 per process x 2 process(es) x 1 accumulated" in done.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_ddp_resume_matches_the_uninterrupted_run(tmp_path):
    """gloo on CPU: both ranks end with the same weights (digests in the checkpoint), the run stopped at step 5
    (mid-epoch) and at 8 (an epoch's last batch) and resumed ends where the uninterrupted one does, and each rank's
    random stream is stored."""
    ddp_vae(tmp_path, "1", 10)
    ddp_vae(tmp_path, "2", 5)  # mid-epoch (4 batches per rank and epoch)
    ddp_vae(tmp_path, "2", 8, "--auto-resume")  # at an epoch's end
    ddp_vae(tmp_path, "2", 10, "--auto-resume")
    a, b = last(tmp_path, "1", "vae"), last(tmp_path, "2", "vae")
    assert_same_training_state(a, b)
    for ckpt in (a, b):
        digests = ckpt["callbacks"]["SameWeightsOnEveryRank"]["digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
        rng = ckpt["callbacks"]["RNGState"]["cpu"]
        assert len(rng) == 2 and not torch.equal(rng[0], rng[1])  # each rank draws its own noise


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quality_during_training_splits_the_samples_across_two_processes(tmp_path):
    """2-process DDP: each rank draws half of fid_num_samples, rank zero writes one row per evaluation, and both
    ranks agree on best.ckpt (a rank that did not see the metric would stall or fail the checkpoint)."""
    import csv

    args = ["--denoiser.trainer.fid_every_n_steps", "3", "--denoiser.trainer.fid_num_samples", "20",
            "--denoiser.trainer.best_by", "val/pixel_fd", "--vae.trainer.max_steps", "2",
            "--denoiser.trainer.max_steps", "6"]
    for stage in ("vae", "denoiser"):  # Lightning's launcher starts rank one on the whole command: both stages
        for key, value in (("accelerator", "cpu"), ("devices", "2"), ("strategy", "ddp")):
            args += [f"--{stage}.trainer.{key}", value]
    done = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "--train-denoiser",
                           "-n", "1", "--output_dir", str(tmp_path), *TINY, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, failure_summary(done.stderr)
    stage = tmp_path / "digits-1" / "denoiser"
    rows = [r for r in csv.DictReader(open(stage / "logs" / "metrics.csv")) if r.get("val/pixel_fd")]
    assert [int(r["step"]) for r in rows] == [2, 5]
    best = torch.load(stage / "checkpoints" / "best.ckpt", weights_only=True)
    scores = {int(r["step"]) + 1: float(r["val/pixel_fd"]) for r in rows}
    assert best["global_step"] == min(scores, key=scores.get)


def srun_environment(rank: int, port: int) -> dict[str, str]:
    """What `srun` sets for task `rank` of `sbatch --nodes=2 --ntasks-per-node=1`: one task on each of two nodes.
    MASTER_ADDR stands in for resolving the first node's name, which is this machine."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train.sbatch", "SLURM_STEP_ID": "0",
            "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_NODELIST": "node-a,node-b", "SLURMD_NODENAME": ("node-a", "node-b")[rank],
            "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank), "SLURM_LOCALID": "0",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "STAGE": "vae", "RUN": "1"}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_nodes_with_one_task_each_end_with_equal_weights(tmp_path):
    """train.sh as `srun` starts it on each of 2 nodes × 1 task: it sets trainer.num_nodes 2 and devices 1 from
    SLURM's variables, Lightning's SLURM environment gives global ranks 0 and 1 on node ranks 0 and 1, and both
    ranks end with the same weights (the digests SameWeightsOnEveryRank keeps in the checkpoint)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["bash", "train.sh", "--output_dir", str(tmp_path), *TINY, "--vae.trainer.accelerator", "cpu",
            "--vae.trainer.max_steps", "6"]
    ranks = [subprocess.Popen(args, env=srun_environment(r, port), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in ranks]
    for p, (_, err) in zip(ranks, outputs):
        assert p.returncode == 0, failure_summary(err)
    assert "global batch 32 = 16 per process x 2 process(es) x 1 accumulated" in outputs[0][0]
    ckpt = last(tmp_path, "1", "vae")
    assert ckpt["global_step"] == 6
    digests = ckpt["callbacks"]["SameWeightsOnEveryRank"]["digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    rng = ckpt["callbacks"]["RNGState"]["cpu"]
    assert len(rng) == 2 and not torch.equal(rng[0], rng[1])  # two ranks, each with its own noise


@pytest.mark.slow
def test_bf16_mixed_precision_trains_with_float32_master_weights(tmp_path):
    """precision bf16-mixed: the forward pass runs in bfloat16 (the first loss differs from float32's by rounding
    only), while the weights, EMA and checkpoint stay float32."""
    for n, precision in (("1", "32"), ("2", "bf16-mixed")):
        assert train(tmp_path, n, "--train-vae", "--train-denoiser", "--vae.trainer.max_steps", "3",
                     "--denoiser.trainer.max_steps", "3", "--vae.trainer.precision", precision,
                     "--denoiser.trainer.precision", precision) == 0
    for stage in ("vae", "denoiser"):
        floats = [v for v in last(tmp_path, "2", stage)["state_dict"].values() if v.is_floating_point()]
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats)
        fp32, bf16 = (float(train_losses(tmp_path, n, stage)[0][1]) for n in ("1", "2"))
        assert fp32 != bf16 and abs(bf16 - fp32) < 0.05 * fp32


def test_the_process_group_is_released_after_training():
    """A DDP run destroys its process group before the interpreter exits, where gloo's threads could abort it."""
    import torch.distributed as dist

    from model.lightning.trainer import release_process_group

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()
    release_process_group()
    assert not dist.is_initialized()
    release_process_group()  # without a group: nothing to do
    assert not dist.is_initialized()
