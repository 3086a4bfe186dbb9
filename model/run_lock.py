"""One owner per run folder: a lock file made atomically when a training run starts, removed when it ends.

`<run>/.lock` holds the owner's host, process id, SLURM job id (when inside a job) and start time. A second run on
the same folder stops at once with one line naming the owner. A stale lock is taken over with a warning: its
process is gone (same host), or it belongs to the same SLURM job id (a requeued job, possibly on another node), so
requeues and `--auto-resume` keep working unattended. Under DDP only global rank zero takes the lock; the other
ranks of the run work under it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from model.errors import UserError
from model.writes import PROBE_TRIES

LOCK_NAME = ".lock"


def global_rank() -> int:
    """This process's rank in a distributed run, from the variables the launchers set (0 when not distributed):
    torchrun's RANK, SLURM's SLURM_PROCID under srun, Lightning's LOCAL_RANK for the processes it spawns."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def stale_because(holder: dict[str, Any]) -> Optional[str]:
    """Why a lock's owner cannot be running any more, or None when it may be."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job_id") == job:
        return f"it belongs to this SLURM job ({job}), requeued"
    if holder.get("host") == socket.gethostname() and not process_alive(int(holder.get("pid", -1))):
        return f"its process {holder.get('pid')} on this host has ended"
    return None


def describe(holder: dict[str, Any]) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('started')}"


class RunLock:
    """`with RunLock(folder):` owns `folder/.lock` for the duration (global rank zero only)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.mine: Optional[dict[str, Any]] = None

    def __enter__(self) -> "RunLock":
        if global_rank() == 0:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        me = owner()
        for _ in range(PROBE_TRIES):  # a try after taking over a stale lock, or after the folder went
            # made again at every try: another srun task's write probe removes the run folder while it is empty
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # atomic: one creator wins
            except FileExistsError:
                self.take_over_if_stale()
                continue
            except FileNotFoundError:
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.mine = me
            return
        raise UserError(f"could not take the lock {self.path}; another run took it first or removed its folder, "
                        f"try again")

    def take_over_if_stale(self) -> None:
        holder = read_lock(self.path)
        why = stale_because(holder) if holder is not None else "it is unreadable (a start killed while writing it)"
        if why is None:
            raise UserError(f"the run folder {self.path.parent} is in use by {describe(holder)}; wait for that run "
                            f"to end or pick another run number with -n (if it is surely gone, delete {self.path})")
        print(f"warning: taking over the lock of {self.path.parent}: {why}", file=sys.stderr, flush=True)
        try:  # rename first: of two runs taking over at once, one rename succeeds and the other finds no file
            stale = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            os.rename(self.path, stale)
            stale.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the lock if it is still ours (a lock taken over by a requeued job is left to it)."""
        if self.mine is not None and read_lock(self.path) == self.mine:
            self.path.unlink(missing_ok=True)
        self.mine = None


def read_lock(path: Path) -> Optional[dict[str, Any]]:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None
