"""SLURM: Lightning's cluster detection (ranks, world size, master address from SLURM's variables) without its
requeue-inside-the-signal-handler; GracefulStop stops at a step boundary and `requeue` puts the job back.

Lightning's `SLURMEnvironment(auto_requeue=True)` saves a checkpoint from inside the SIGUSR1 handler, i.e. at
whatever point of a step the signal lands: the weights may already hold the update while the step counter and the
EMA do not, so the resumed run would not continue the uninterrupted one.
"""
from __future__ import annotations

import os
import subprocess
from typing import Optional

from lightning_fabric.plugins.environments import SLURMEnvironment


def cluster_plugins() -> list:
    """[SLURMEnvironment(auto_requeue=False)] inside a SLURM job step, else nothing (Lightning picks the default)."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def job_id() -> Optional[str]:
    """The id `scontrol requeue` takes: `<job>` or, for an array task, `<array job>_<task>`."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job: str) -> str:
    """Put `job` back in the queue; the sentence for the stop message says what happens next."""
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"could not requeue SLURM job {job} ({err}); submit it again: it resumes from last.ckpt"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()[:1]
        return f"could not requeue SLURM job {job} ({' '.join(why)}); submit it again: it resumes from last.ckpt"
    return f"requeued SLURM job {job}: its next allocation resumes from last.ckpt"
