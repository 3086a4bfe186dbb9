"""benchmarks.peer_equal_time's table: each model's figures over its draws of the samples (the end-to-end run is in
tests/test_benchmarks_run.py)."""
from __future__ import annotations

import statistics

from benchmarks import peer_equal_time
from model.metrics.budget import FLOOR


def budget(rows: dict[str, dict[str, float]]) -> dict:
    """A budget with the given rows' means (the fields budget_columns reads)."""
    return {"rows": [{"row": name, **{m: {"mean": v, "std": 0.0} for m, v in figures.items()}}
                     for name, figures in rows.items()]}


FIGURES = ("pixel_fd", "precision", "recall", "coverage")
B = budget({FLOOR: dict(zip(FIGURES, (2.0, 0.905, 0.912, 0.628))),
            "ours": dict(zip(FIGURES, (1.0, 0.95, 0.86, 0.68))),
            "ours, seed 1": dict(zip(FIGURES, (3.0, 0.93, 0.90, 0.64)))})


def test_a_draw_is_named_as_demo_report_names_its_further_draws():
    from model.scripts.demo_report import draw_row

    assert peer_equal_time.draw_names("ours", 0, 3) == ["ours", "ours, seed 1", "ours, seed 2"]
    assert peer_equal_time.draw_names("samples w=0", 4, 2)[1] == draw_row(0.0, 5)


def test_one_draw_gives_its_figures_beside_the_floors():
    columns = peer_equal_time.budget_columns(B, ["ours"], "pixels 8", several=False)
    assert columns == {"FD (× floor)": 0.5, "precision (floor's)": "0.950 (0.905)",
                       "recall (floor's)": "0.860 (0.912)", "coverage (floor's)": "0.680 (0.628)"}


def test_several_draws_give_the_mean_and_spread_of_each_figure():
    columns = peer_equal_time.budget_columns(B, ["ours", "ours, seed 1"], "pixels 8", several=True)
    sd = statistics.stdev([0.86, 0.90])
    assert columns["FD pixels 8 (× floor)"] == f"1.00 ± {statistics.stdev([0.5, 1.5]):.2f}"
    assert columns["recall pixels 8 (floor's)"] == f"0.880 ± {sd:.3f} (0.912)"
    assert columns["precision pixels 8 (floor's)"].startswith("0.940 ± ")


def test_a_figure_beats_another_in_the_direction_its_column_reads():
    better = peer_equal_time.better
    assert better("FD (× floor)", 0.9, 3.0) and not better("FD (× floor)", 3.0, 0.9)
    assert better("recall (floor's)", 0.88, 0.85) and not better("recall (floor's)", 0.85, 0.88)
    assert better("class accuracy", 0.99, 0.3)
    # the copy ratio: near 0 are copies, far above 1 noise; nearer 1 wins on either side
    assert better("NN / held-out", 0.92, 1.55) and not better("NN / held-out", 0.5, 1.55)


def test_over_runs_gives_each_figures_spread_over_the_runs_and_counts_the_runs_ahead():
    ours, peer = peer_equal_time.OURS, peer_equal_time.PEER
    runs = [{ours: {"recall (floor's)": [0.86, 0.88], "FD (× floor)": [1.0]},
             peer: {"recall (floor's)": [0.88, 0.90], "FD (× floor)": [4.0]}},
            {ours: {"recall (floor's)": [0.88], "FD (× floor)": [0.8]},
             peer: {"recall (floor's)": [0.84], "FD (× floor)": [5.0]}}]
    rows = {r["model"]: r for r in peer_equal_time.over_runs(runs, peer)}
    # a run's figure is the mean over its draws (0.87 and 0.89 for the peer), then mean ± std over the runs
    assert rows[ours]["recall (floor's)"] == f"0.875 ± {statistics.stdev([0.87, 0.88]):.3f}"
    assert rows[peer]["recall (floor's)"] == f"0.865 ± {statistics.stdev([0.89, 0.84]):.3f}"
    ahead = rows[f"{ours}: runs ahead of the {peer}"]
    assert ahead == {"model": f"{ours}: runs ahead of the {peer}", "recall (floor's)": "1 of 2",
                     "FD (× floor)": "2 of 2"}
    assert list(rows) == [ours, peer, f"{ours}: runs ahead of the {peer}"]  # the peers get no count of their own
