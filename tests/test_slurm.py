"""`sbatch train.sbatch` on a real SLURM cluster: 2 tasks (DDP over gloo on CPU), preempted mid-run by
`scontrol requeue` (SIGTERM) or warned by SLURM's time-limit signal (SIGUSR1); the job comes back, resumes from its
last.ckpt and ends with the same step count and the same weights as an uninterrupted 2-process run.

Needs a running cluster: `bash scripts/slurm_local.sh` (as root) installs and starts a single-node one, and CI runs
it before the tests. Without one these tests are skipped, saying why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from tiny import DIGITS, ROOT, failure_summary, tiny

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.multiprocess]

VAE_STEPS, DENOISER_STEPS = 60, 10
# one torch thread per process in the job and in the reference run, so both sum in the same order
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CONFIG": DIGITS, "RUN": "1"}


def training_args(out: Path) -> list[str]:
    args = ["--output_dir", str(out), *tiny(val_every=20, log_every=5), "--vae.trainer.max_steps", str(VAE_STEPS),
            "--denoiser.trainer.max_steps", str(DENOISER_STEPS)]
    for stage in ("vae", "denoiser"):
        args += [f"--{stage}.trainer.accelerator", "cpu", f"--{stage}.trainer.checkpoint_every_n_steps", "5"]
    return args


def why_no_slurm() -> str | None:
    if shutil.which("sbatch") is None:
        return "no SLURM on this machine: run `bash scripts/slurm_local.sh` as root to install and start one"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"SLURM does not answer ({err}): run `bash scripts/slurm_local.sh` as root to start it"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"SLURM has no usable node ({(out.stderr or out.stdout).strip()[:200]}): run scripts/slurm_local.sh"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = why_no_slurm()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory) -> Path:
    """The uninterrupted run: both stages, 2 processes launched by Lightning itself (no SLURM)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    ddp = []
    for stage in ("vae", "denoiser"):
        ddp += [f"--{stage}.trainer.devices", "2", f"--{stage}.trainer.strategy", "ddp"]
    env = {k: v for k, v in ENV.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-m", "model.main", "-cfg", DIGITS, "--train-vae", "--train-denoiser",
                           "-n", "1", *training_args(out), *ddp], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)
    assert done.returncode == 0, failure_summary(done.stderr)
    return out / "digits-1"


def submit(out: Path, stage: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                           "--time=15", f"--output={out}/slurm-%j.out", f"--export=ALL,STAGE={stage}",
                           "train.sbatch", *training_args(out)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, ...)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    return dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)


def wait_until(check: Callable[[], bool], seconds: float, what: str, job_id: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        state = job(job_id).get("JobState")
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), f"job {job_id} {state} before {what}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s (job {job_id}: {state})"
        time.sleep(0.2)


def interrupt_and_finish(out: Path, stage: str, interrupt: list[str]) -> tuple[str, str]:
    """Submit, interrupt once the first periodic checkpoint exists, wait for the requeued job to complete."""
    job_id = submit(out, stage)
    wait_until((out / "digits-1" / "vae" / "checkpoints" / "step0000005.ckpt").exists, 300, "first checkpoint", job_id)
    subprocess.run([*interrupt, job_id], check=True, timeout=60)
    wait_until(lambda: job(job_id).get("JobState") == "COMPLETED", 600, "completed job", job_id)
    info = job(job_id)
    assert info["Restarts"] == "1", info
    return job_id, (out / f"slurm-{job_id}.out").read_text()


def assert_same_as(reference: Path, run: Path, stage: str, steps: int) -> None:
    a, b = (torch.load(r / stage / "checkpoints" / "last.ckpt", weights_only=True) for r in (reference, run))
    assert a["global_step"] == b["global_step"] == steps
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    digests = b["callbacks"]["SameWeightsOnEveryRank"]["digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_sbatch_two_tasks_survive_scontrol_requeue(reference, tmp_path):
    """Preemption: SIGTERM reaches both tasks mid-VAE; they stop at a step boundary and save; the next start of
    the job continues the VAE from last.ckpt, then trains the denoiser. Nothing is retrained or lost."""
    job_id, log = interrupt_and_finish(tmp_path, "both", ["scontrol", "requeue"])
    assert "stopped by SIGTERM at step" in log and "start 1," in log and "start 2," in log, log[-3000:]
    assert log.count("denoiser checkpoint:") == 1
    assert_same_as(reference, tmp_path / "digits-1", "vae", VAE_STEPS)
    assert_same_as(reference, tmp_path / "digits-1", "denoiser", DENOISER_STEPS)


def test_time_limit_signal_saves_and_requeues_the_job(reference, tmp_path):
    """SIGUSR1, as `#SBATCH --signal=SIGUSR1@90` sends it before the time limit: the job saves and requeues itself."""
    job_id, log = interrupt_and_finish(tmp_path, "vae", ["scancel", "--signal=USR1"])
    assert "stopped by SIGUSR1 at step" in log and f"requeued SLURM job {job_id}" in log, log[-3000:]
    assert_same_as(reference, tmp_path / "digits-1", "vae", VAE_STEPS)
