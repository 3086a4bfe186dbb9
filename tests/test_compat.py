"""The framework internals the package relies on (model/compat.py) are still where it reaches for them."""
from __future__ import annotations

import csv

from model import compat


def test_every_private_attribute_the_package_uses_is_still_there():
    problems = compat.missing()
    assert not problems, ("a framework upgrade moved what model/compat.py relies on; adapt it there:\n"
                          + "\n".join(problems))


def test_a_resumed_csv_logger_keeps_the_rows_before_the_resume_step(tmp_path):
    """What exact resume needs of Lightning's CSV writer, end to end: earlier rows kept, later ones dropped."""
    folder = tmp_path / "logs"
    folder.mkdir()
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train/loss"])
        writer.writeheader()
        writer.writerows([{"step": s, "train/loss": 1.0 / (s + 1)} for s in (0, 5, 10, 15)])
    logger = compat.resumed_csv_logger(str(tmp_path), 10, name="logs", version="")
    logger.log_metrics({"train/loss": 0.5}, step=10)
    logger.save()
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [0, 5, 10]
    assert float(rows[-1]["train/loss"]) == 0.5


def test_importing_compat_imports_no_lightning():
    import subprocess
    import sys

    code = "import sys, model.compat; print(any(m.startswith(('pytorch_lightning', 'lightning')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
