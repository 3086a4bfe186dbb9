"""The edit-loop tier's wall time, and where each of its processes spends it.

    python -m benchmarks.edit_loop
    python -m benchmarks.edit_loop --baseline ../older-checkout --repeats 4
    python -m benchmarks.edit_loop -- tests/test_base.py    (another selection; the default is -m "not slow")

Runs the README's edit-loop command, `python -m pytest -q -m "not slow" -n 2 --dist loadscope`, in a fresh process
with `benchmarks/pytest_plugins/tier_timeline.py` loaded as a pytest plugin. Every process of the run (pytest's
controller and each pytest-xdist worker) stamps when it started, finished collecting (imports, mostly), began its first
test and ended its last; the table gives the workers' latest stamps in seconds from the command's start, and the tail
from the last test to the command's end.

`--baseline DIR` runs the same command in another checkout (its own modules first on PYTHONPATH, this environment's
packages) alternately with this one, so that both see the same hours of a machine whose speed drifts: compare the two
by their ratio, not by seconds measured at other times.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks.common import Report, interleaved, make_parser, parse
from model.errors import UserError, cli_entry

NAME = "edit_loop"
HERE = Path(__file__).resolve().parent
PLUGINS = HERE / "pytest_plugins"  # tier_timeline.py, loaded by name in the timed runs
ROOT = HERE.parent
DEFAULT_SELECTION = ["-m", "not slow"]


def parse_args(argv: list[str]):
    p = make_parser(__doc__.split("\n")[0], repeats=3, warmup=0)
    p.add_argument("--workers", type=int, default=2, help="pytest-xdist workers, -n (default 2, the README's)")
    p.add_argument("--baseline", default=None, help="another checkout to time alternately with this one")
    p.add_argument("pytest_args", nargs="*", help='after --: the tests to select (default -m "not slow")')
    args = parse(p, argv)
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.baseline is not None and not (Path(args.baseline) / "tests").is_dir():
        raise UserError(f"--baseline {args.baseline} has no tests/ folder; pass the root of another checkout")
    return args


def command(workers: int, selection: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", *selection, "-n", str(workers), "--dist", "loadscope",
            "-p", "tier_timeline"]


def timed_run(tree: Path, cmd: list[str]) -> dict[str, Any]:
    """One run of `cmd` in `tree`: its wall seconds, pytest's summary line and every process's stamps."""
    with tempfile.TemporaryDirectory() as stamps:
        env = {**os.environ, "TIER_TIMELINE_DIR": stamps,
               "PYTHONPATH": os.pathsep.join([str(tree), str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
        start = time.time()
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        end = time.time()
        processes = {f.stem: json.loads(f.read_text()) for f in Path(stamps).glob("*.json")}
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    if not re.search(r"\d+ passed", summary):
        raise UserError(f"the tests did not run in {tree} (exit {done.returncode}): {summary or done.stderr[-200:]}")
    return {"start": start, "end": end, "summary": summary, "processes": processes}


def row_of(tree: str, k: int, run: dict[str, Any]) -> dict[str, Any]:
    """Seconds from the command's start: the workers' latest start, end of collection, first test and last test."""
    workers = [p for name, p in run["processes"].items() if name != "controller"] or list(run["processes"].values())

    def latest(key: str) -> Optional[float]:
        stamps = [p[key] for p in workers if key in p]
        return max(stamps) - run["start"] if stamps else None

    last = latest("last")
    counts = re.findall(r"(\d+) (passed|failed)", run["summary"])
    return {"tree": tree, "run": k, "wall s": run["end"] - run["start"],
            "workers started s": latest("start"), "collected s": latest("collected"), "first test s": latest("first"),
            "last test s": last, "last test to end s": run["end"] - run["start"] - last if last is not None else None,
            "tests": ", ".join(f"{n} {what}" for n, what in counts)}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = {"this checkout": ROOT}
    if args.baseline is not None:
        trees["baseline"] = Path(args.baseline).resolve()
    cmd = command(args.workers, args.pytest_args or DEFAULT_SELECTION)
    report = Report(NAME, args.device)
    print(f"command: {' '.join(cmd[1:])}", flush=True)
    rows, counts = [], {name: 0 for name in trees}
    for name in interleaved(list(trees), args.repeats):
        counts[name] += 1
        rows.append(row_of(name, counts[name], timed_run(trees[name], cmd)))
        print(f"  {name} run {counts[name]}: {rows[-1]['wall s']:.1f} s ({rows[-1]['tests']})", flush=True)
    report.table("The edit-loop tier, run by run (seconds from the command's start)", rows)
    means = {name: statistics.mean(r["wall s"] for r in rows if r["tree"] == name) for name in trees}
    summary = [{"tree": name, "runs": counts[name], "mean wall s": m, "min wall s": min(
        r["wall s"] for r in rows if r["tree"] == name)} for name, m in means.items()]
    if args.baseline is not None:
        for row in summary:
            row["× the baseline's mean"] = row["mean wall s"] / means["baseline"]
    report.table("Wall time", summary)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
