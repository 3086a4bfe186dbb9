"""A pytest plugin for `benchmarks.edit_loop`: each process of a pytest run (the controller and every pytest-xdist
worker) writes when it started, finished collecting, began its first test, ended its last and finished, as
`<name>.json` in the folder $TIER_TIMELINE_DIR (seconds since the epoch; nothing is written when it is unset).

It is loaded by name (`-p tier_timeline`, this folder on PYTHONPATH), so it also stamps a checkout without it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

STAMPS: dict[str, float] = {"start": time.time()}  # loaded as the process starts pytest


def pytest_collection_finish(session) -> None:
    STAMPS.setdefault("collected", time.time())


def pytest_runtest_logstart(nodeid, location) -> None:
    STAMPS.setdefault("first", time.time())


def pytest_runtest_logfinish(nodeid, location) -> None:
    STAMPS["last"] = time.time()


def pytest_unconfigure(config) -> None:
    folder = os.environ.get("TIER_TIMELINE_DIR")
    if folder:
        name = os.environ.get("PYTEST_XDIST_WORKER", "controller")
        STAMPS["end"] = time.time()
        Path(folder, f"{name}.json").write_text(json.dumps(STAMPS))
