"""Faults: NaN/Inf steps, checkpoints killed mid-write, Ctrl-C/SIGTERM/SIGKILL, and reproducibility."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.lightning.systems.denoiser import DenoiserSystem
from model.lightning.systems.vae import VAESystem
from model.main import main
from tiny import DIGITS, ROOT, tiny

TINY = tiny(val_every=1000, log_every=1)


def all_finite(path: Path) -> bool:
    sd = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def logged(stage_dir: Path, key: str) -> list[float]:
    with open(stage_dir / "logs" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


# ---- NaN / Inf -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_steps_are_skipped_and_never_reach_weights_ema_or_checkpoints(tmp_path, monkeypatch):
    real = DenoiserSystem.loss_at

    def nan_at_steps_3_to_5(self, *args):
        loss = real(self, *args)
        return loss * float("nan") if self.training and 3 <= self.global_step <= 5 else loss

    monkeypatch.setattr(DenoiserSystem, "loss_at", nan_at_steps_3_to_5)
    assert main(["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", "1", "--output_dir", str(tmp_path), *TINY,
                 "--vae.trainer.max_steps", "2", "--denoiser.trainer.max_steps", "10",
                 "--denoiser.trainer.checkpoint_every_n_steps", "4"]) == 0
    stage = tmp_path / "digits-1" / "denoiser"
    ckpts = sorted((stage / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt", "step0000004.ckpt", "step0000008.ckpt"}
    assert all(all_finite(p) for p in ckpts)  # net and EMA weights alike
    assert torch.load(stage / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert max(logged(stage, "train/skipped_steps")) == 3


def test_a_loss_that_stays_nan_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(VAESystem, "beta", lambda self: float("nan"))
    code = main(["-cfg", DIGITS, "--train-vae", "-n", "1", "--output_dir", str(tmp_path), *TINY,
                 "--vae.trainer.max_steps", "100", "--vae.trainer.checkpoint_every_n_steps", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "NaN or Inf for 20 steps in a row" in err[0], err
    assert all(all_finite(p) for p in (tmp_path / "digits-1" / "vae" / "checkpoints").glob("*.ckpt"))


NAN_ON_RANK_1 = """
import sys
from model.lightning.systems.vae import VAESystem
from model.main import main

real = VAESystem._losses


def nan_on_rank_1_at_step_2(self, x):
    recon, *rest = real(self, x)
    if self.training and self.global_rank == 1 and self.global_step == 2:
        recon = recon * float("nan")
    return (recon, *rest)


VAESystem._losses = nan_on_rank_1_at_step_2
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_nan_on_one_ddp_rank_makes_every_rank_skip_that_update(tmp_path):
    """Under DDP the skip decision is reduced across ranks; a rank deciding alone would hang or diverge."""
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    out = subprocess.run([sys.executable, str(script), "-cfg", DIGITS, "--train-vae", "-n", "1", "--output_dir",
                          str(tmp_path), *TINY, "--vae.trainer.max_steps", "5", "--vae.trainer.accelerator", "cpu",
                          "--vae.trainer.devices", "2", "--vae.trainer.strategy", "ddp"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    stage = tmp_path / "digits-1" / "vae"
    assert torch.load(stage / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert all_finite(stage / "checkpoints" / "last.ckpt")
    assert logged(stage, "train/skipped_steps") and max(logged(stage, "train/skipped_steps")) == 1  # rank 0 too


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_gradients_of_a_finite_loss_are_dropped_before_the_update(bad):
    """The hook Lightning calls right before the optimiser step clips the global norm and, when that norm is not
    finite, drops every gradient: the step changes nothing; the next finite step is clipped and applied."""
    from model.config import Config, to_dict

    system = VAESystem(to_dict(Config()))
    system.log = lambda *args, **kwargs: None  # no trainer attached (a fresh system, dropped after the test)
    opt = torch.optim.SGD(system.parameters(), lr=1.0)
    params = list(system.parameters())
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    params[0].grad[0] = bad
    system.configure_gradient_clipping(opt, gradient_clip_val=0.5)
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and system.skipped_steps == 1
    for p in params:
        p.grad = torch.ones_like(p)
    system.configure_gradient_clipping(opt, gradient_clip_val=0.5)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert total == pytest.approx(0.5, rel=1e-4) and system.bad_steps_in_a_row == 0
    opt.step()
    assert not torch.equal(params[0], before[0])


# ---- checkpoints killed while being written ---------------------------------------------------------------

WRITER = """
import sys, torch
from model.checkpoint import atomic_torch_save
k = 0
while True:
    k += 1
    atomic_torch_save({"k": k, "x": torch.full((4_000_000,), float(k))}, sys.argv[1])
    print(k, flush=True)
"""


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    target = tmp_path / "last.ckpt"
    for delay in (0.05, 0.13, 0.21, 0.34):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT)
        assert proc.stdout.readline().strip()  # at least one complete save
        time.sleep(delay)  # then die somewhere inside a later torch.save
        proc.kill()
        proc.wait()
        ckpt = torch.load(target, weights_only=True)
        assert ckpt["x"].shape == (4_000_000,) and bool((ckpt["x"] == ckpt["k"]).all())


# ---- signals ----------------------------------------------------------------------------------------------


def start_vae_run(out: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "-n", "1", "--output_dir", str(out),
            *TINY, "--vae.trainer.max_steps", "100000", "--vae.trainer.checkpoint_every_n_steps", "5"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.2)


def resume_to(out: Path, ckpt: Path, steps: int) -> int:
    return main(["-cfg", DIGITS, "--train-vae", "-n", "1", "--output_dir", str(out), *TINY, "--load", str(ckpt),
                 "--vae.trainer.max_steps", str(steps), "--vae.trainer.checkpoint_every_n_steps", "5"])


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_saves_a_resumable_checkpoint_and_exits_cleanly(tmp_path, sig, code, name):
    proc = start_vae_run(tmp_path)
    ckpts = tmp_path / "digits-1" / "vae" / "checkpoints"
    wait_for(ckpts / "step0000005.ckpt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and f"stopped by {name} at step" in err.strip().splitlines()[-1]
    step = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
    assert step >= 5 and f"at step {step};" in err
    assert resume_to(tmp_path, ckpts / "last.ckpt", step + 3) == 0
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == step + 3


@pytest.mark.slow
def test_sigkill_resumes_from_the_last_periodic_checkpoint(tmp_path):
    proc = start_vae_run(tmp_path)
    ckpts = tmp_path / "digits-1" / "vae" / "checkpoints"
    wait_for(ckpts / "step0000010.ckpt", proc)
    while torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] < 10:  # written just after step<N>
        time.sleep(0.1)  # (reading while it is replaced is safe: the saves are atomic)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    step = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]  # whole, thanks to atomic saves
    assert step >= 10 and step % 5 == 0
    assert resume_to(tmp_path, ckpts / "last.ckpt", step + 2) == 0
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == step + 2
    with open(tmp_path / "digits-1" / "vae" / "logs" / "metrics.csv") as f:  # no row lost or repeated
        assert [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")] == list(range(step + 2))


@pytest.mark.slow
def test_slurms_sigterm_after_a_requeue_does_not_cut_the_stop_message(tmp_path):
    """`scontrol requeue` makes SLURM send SIGTERM to the job's tasks while they are still to print their stop
    message and exit; the stand-in scontrol here sends it to its caller in the same way."""
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\nkill -TERM $PPID\nsleep 0.5\n")
    fake.chmod(0o755)
    script = ("import signal, types\nfrom model.lightning.callbacks.graceful_stop import GracefulStop\n"
              "from model.lightning.trainer import requeue_after\nstop = GracefulStop()\n"
              "stop.received = signal.SIGUSR1\n"
              "print(requeue_after(stop, types.SimpleNamespace(is_global_zero=True)), flush=True)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_ID="77")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert done.returncode == 0 and "requeued SLURM job 77" in done.stdout, (done.returncode, done.stderr[-2000:])


# ---- reproducibility --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_same_loss_curve_and_weights(tmp_path):
    for n in ("1", "2"):
        assert main(["-cfg", DIGITS, "--train-vae", "--train-denoiser", "-n", n, "--output_dir", str(tmp_path),
                     *TINY, "--vae.trainer.max_steps", "4", "--denoiser.trainer.max_steps", "6"]) == 0
    for stage in ("vae", "denoiser"):
        a, b = (tmp_path / f"digits-{n}" / stage for n in ("1", "2"))
        curve = logged(a, "train/loss")
        assert len(curve) == {"vae": 4, "denoiser": 6}[stage] and curve == logged(b, "train/loss")
        sd_a = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        sd_b = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
