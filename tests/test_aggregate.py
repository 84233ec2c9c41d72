"""The aggregator on synthetic sweeps written into a real sqlite MLflow store with the tracking layout.

Per-step scores are chosen so that every expected number below can be checked by hand."""

from __future__ import annotations

import ast
import csv
import dataclasses
import html
import io
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from rich.console import Console
from scipy.stats import mannwhitneyu

from orchestrator.aggregate import AggregationError, aggregate_sweep, main
from orchestrator.fidelity import fidelity_notes
from orchestrator.report import cost_table, write_outputs
from orchestrator.runs import TrialRun
from orchestrator.scores import (
    aggregate_runs,
    mean_of_cell_means,
    probability_of_improvement,
    run_scores,
    stratified_bootstrap,
)
from orchestrator.tracking import SweepTracker
from trainers.runtime.record import TrialRecord, make_record

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "lamo-sweeps"
DOMAINS = {"reacher2d-medium": "reacher2d", "hopper-medium": "locomotion", "walker2d-medium": "locomotion"}


# --- a sweep store with the layout of orchestrator/tracking.py ---------------------------------------------

class SyntheticStore:
    """A store written through the sweep's own tracker: sqlite in `root` unless `uri` names another backend
    (bench/aggregate_scale.py writes a paper-sized sweep with it)."""

    def __init__(self, root: Path, uri: str | None = None):
        self.uri = uri or f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
        self.clock = 1_700_000_000_000

    def sweep(self, name: str, digest: str, seeds: list[int], superseded: bool = False) -> tuple[str, str]:
        sweep_id = f"{name}-{digest}"
        self.clock += 1000
        tags = {"role": "sweep", "sweep_id": sweep_id, "sweep_name": name}
        if superseded:
            tags["superseded"] = "true"
        run = self.client.create_run(self.experiment_id, run_name=sweep_id, start_time=self.clock, tags=tags)
        self.client.log_param(run.info.run_id, "seeds", str(seeds))
        return sweep_id, run.info.run_id

    def trial(self, parent: tuple[str, str], algorithm: str, task: str, ratio: float, seed: int,
              curves: dict[str, list[tuple[int, float]]], num_steps: int = 1000,
              status: str = "FINISHED") -> str:
        """A child run written by the sweep's own tracker from a trial record, evaluated every 100 steps."""
        sweep_id, parent_run_id = parent
        record = make_record(algorithm, task, ratio, seed, {"num_steps": num_steps, "eval_every": 100},
                             sweep_id=sweep_id)
        run_id, _ = SweepTracker(self.uri, EXPERIMENT, sweep_id).trial_run(parent_run_id, record)
        metrics = [Metric(f"eval/{label}/normalized_mean", value, self.clock, step)
                   for label, curve in curves.items() for step, value in curve]
        # A misleading per-step maximum over targets: the aggregator must score from the per-target histories.
        metrics += [Metric("eval/best_normalized_mean", 999.0, self.clock, step)
                    for step, _ in next(iter(curves.values()), [])]
        if status != "RUNNING":  # cost is logged when a trial ends
            metrics += [Metric("cost/wall_seconds", 3600.0, self.clock, 0),
                        Metric("cost/gpu_hours", 0.5, self.clock, 0)]
        self.client.log_batch(run_id, metrics=metrics)
        if status != "RUNNING":
            self.client.set_terminated(run_id, status=status)
        return run_id


# num_steps 1000, an evaluation every 100: the paper window is steps 900 and 1000 (the last 2 of 10, LaMo's share)
STEPS = list(range(100, 1001, 100))


def flat(value: float) -> list[tuple[int, float]]:
    return [(s, value) for s in STEPS]


def curve(*values: float) -> list[tuple[int, float]]:
    return list(zip(STEPS, values))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SyntheticStore:
    store = SyntheticStore(tmp_path_factory.mktemp("store"))

    # "protocols": one cell per rule to check.
    sweep = store.sweep("protocols", "aaaaaaaaaa", [0, 1])
    store.trial(sweep, "lamo", "reacher2d-medium", 1.0, 0,
                {"target_76": curve(5, 10, 15, 20, 25, 30, 35, 38, 40, 50),
                 "target_40": curve(60, 70, 80, 60, 50, 40, 30, 30, 30, 20)})
    store.trial(sweep, "lamo", "reacher2d-medium", 1.0, 1,
                {"target_76": curve(10, 15, 20, 25, 30, 35, 40, 45, 50, 60),
                 "target_40": curve(50, 90, 50, 50, 50, 50, 50, 45, 40, 40)})
    # Each seed prefers a different target; the cell takes the target with the best mean over seeds (40).
    store.trial(sweep, "lamo", "reacher2d-medium", 0.1, 0, {"target_76": flat(60), "target_40": flat(50)})
    store.trial(sweep, "lamo", "reacher2d-medium", 0.1, 1, {"target_76": flat(10), "target_40": flat(30)})
    # A shorter run at another cadence: the window is steps > 400 of 500.
    store.trial(sweep, "bc", "reacher2d-medium", 1.0, 0,
                {"policy": [(50 * i, 1.0) for i in range(1, 9)] + [(450, 4.0), (500, 8.0)]}, num_steps=500)
    store.trial(sweep, "bc", "reacher2d-medium", 1.0, 1, {"policy": flat(10)})

    # "aggregates": two locomotion tasks × two ratios, plus one reacher2d cell; constant curves, score = value.
    sweep = store.sweep("aggregates", "bbbbbbbbbb", [0, 1])
    lamo = {("hopper-medium", 0.1): (10, 20), ("hopper-medium", 1.0): (30, 40),
            ("walker2d-medium", 0.1): (50, 60), ("walker2d-medium", 1.0): (70, 200),
            ("reacher2d-medium", 1.0): (40, 60)}
    for (task, ratio), scores in lamo.items():
        for seed, score in enumerate(scores):
            store.trial(sweep, "lamo", task, ratio, seed, {"target_3600": flat(score), "target_1800": flat(score - 1)})
    dt = {("hopper-medium", 0.1): (5, 5), ("hopper-medium", 1.0): (25, 25), ("walker2d-medium", 0.1): (50, 60),
          ("walker2d-medium", 1.0): (100,)}
    for (task, ratio), scores in dt.items():
        for seed, score in enumerate(scores):
            store.trial(sweep, "dt", task, ratio, seed, {"target_3600": flat(score)})
    store.trial(sweep, "dt", "walker2d-medium", 1.0, 1, {"target_3600": flat(1000)}, status="FAILED")
    store.trial(sweep, "bc", "hopper-medium", 1.0, 0, {"policy": flat(12)})
    store.trial(sweep, "bc", "hopper-medium", 1.0, 1, {"policy": flat(1000)}, status="RUNNING")

    # Only BC on generated reacher2d data: its fidelity notes must not speak of kitchen, locomotion or LaMo.
    sweep = store.sweep("bc-reacher2d", "abcabcabca", [0, 1])
    for seed in (0, 1):
        store.trial(sweep, "bc", "reacher2d-medium", 1.0, seed, {"policy": flat(30 + seed)})

    # Bad inputs.
    store.trial(store.sweep("all-failed", "cccccccccc", [0]), "bc", "hopper-medium", 1.0, 0,
                {"policy": flat(1)}, status="FAILED")
    # The last evaluation is at exactly 80 %: not after it, so nothing is in the paper window.
    store.trial(store.sweep("early-evals", "dddddddddd", [0]), "bc", "hopper-medium", 1.0, 0,
                {"policy": [(200, 5.0), (400, 7.0), (800, 9.0)]})
    # The same name twice: the name means the most recent one.
    store.trial(store.sweep("renamed", "eeeeeeeeee", [0]), "bc", "hopper-medium", 1.0, 0, {"policy": flat(1)})
    store.trial(store.sweep("renamed", "ffffffffff", [0]), "bc", "hopper-medium", 1.0, 0, {"policy": flat(2)})
    # --restart marks earlier parents superseded; this one is even made the newer, so that only the tag decides.
    store.trial(store.sweep("restarted", "9999999999", [0]), "bc", "hopper-medium", 1.0, 0, {"policy": flat(2)})
    store.trial(store.sweep("restarted", "9999999999", [0], superseded=True), "bc", "hopper-medium", 1.0, 0,
                {"policy": flat(1)})

    # For the readers: a reused trial (its curves and cost are its original's) and a step logged twice (the
    # later value stands).
    sweep = store.sweep("reusing", "7777777777", [0, 1])
    [original] = store.client.search_runs([store.experiment_id], "tags.trial_id = 'lamo.hopper-medium.r1.s0' and "
                                          "tags.sweep_id = 'aggregates-bbbbbbbbbb'")
    record = make_record("lamo", "hopper-medium", 1.0, 0, {"num_steps": 1000, "eval_every": 100},
                         sweep_id=sweep[0])
    SweepTracker(store.uri, EXPERIMENT, sweep[0]).reuse_trial(sweep[1], record, original)
    relogged = store.trial(sweep, "lamo", "hopper-medium", 1.0, 1, {"target_3600": flat(30)})
    store.client.log_batch(relogged, metrics=[Metric("eval/target_3600/normalized_mean", 35.0, store.clock + 1, 1000)])
    return store


def run(store: SyntheticStore, sweep: str, out: Path, protocol: str = "paper", **kwargs):
    console = Console(file=io.StringIO(), width=200)
    result = aggregate_sweep(store.uri, EXPERIMENT, sweep, protocol, out, console, resamples=500, **kwargs)
    return result, console.file.getvalue()


@pytest.fixture(scope="module")
def aggregates(store, tmp_path_factory):
    return run(store, "aggregates", tmp_path_factory.mktemp("out") / "aggregates")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# --- protocols ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol, target, mean, seeds", [
    ("paper", "76", 50.0, [45.0, 55.0]),  # window means: t76 45, 55; t40 25, 40
    ("last", "76", 55.0, [50.0, 60.0]),   # t76 50, 60; t40 20, 40
    ("best", "40", 85.0, [80.0, 90.0]),   # t76 50, 60; t40 80, 90
])
def test_protocol_scores_and_the_named_best_target(store, tmp_path, protocol, target, mean, seeds):
    result, printed = run(store, "protocols", tmp_path, protocol, log_artifacts=False)
    cell = result.cell("lamo", "reacher2d-medium", 1.0)
    assert cell.target == target and cell.mean == mean and list(cell.scores) == seeds
    assert cell.std == pytest.approx(np.std(seeds, ddof=1))
    assert f"{mean:.1f} ± {np.std(seeds, ddof=1):.1f} (target {target})" in printed
    assert f"Protocol: {protocol}" in printed


def test_paper_window_at_lamos_cadence_is_its_last_8_of_40_evaluations():
    # LaMo trains 100,000 steps and evaluates every 2,500; "the last 20K steps" are the evaluations at 82,500 …
    # 100,000: 8 of the 40. The one at 80,000 closes the first 80K and is not in the window.
    steps = np.arange(2500, 100_001, 2500)
    values = np.sqrt(steps)  # every evaluation different, so a window one evaluation too wide is seen
    run = TrialRun(run_id="r", record=make_record("lamo", "hopper-medium"), status="FINISHED",
                   curves={"target_3600": list(zip(steps.tolist(), values.tolist()))})
    assert len(steps) == 40
    assert run_scores(run, "paper")["target_3600"] == pytest.approx(values[steps > 80_000].mean())
    assert run_scores(run, "paper")["target_3600"] == pytest.approx(values[-8:].mean())


def test_best_target_is_chosen_per_cell_over_seeds_not_per_seed(store, tmp_path):
    result, _ = run(store, "protocols", tmp_path, log_artifacts=False)
    cell = result.cell("lamo", "reacher2d-medium", 0.1)
    # seed 0 prefers target 76 (60 > 50), seed 1 target 40 (30 > 10); means: t76 35, t40 40
    assert cell.target == "40" and list(cell.scores) == [50.0, 30.0] and cell.mean == 40.0


def test_window_without_num_steps_and_non_return_conditioned_label(store, tmp_path):
    result, printed = run(store, "protocols", tmp_path, log_artifacts=False)
    cell = result.cell("bc", "reacher2d-medium", 1.0)
    assert cell.label == "policy" and cell.target is None
    assert list(cell.scores) == [6.0, 10.0]  # mean(4, 8) from steps > 400 of 500; mean(10, 10)
    assert "8.0 ± 2.8 |" in (tmp_path / "tables.md").read_text()
    # reacher2d average over the sweep's cells: lamo (50 + 40) / 2, bc 8 over 1 of 2 cells
    assert [(s.algorithm, s.mean, s.cells, s.cells_expected) for s in result.domains] == [
        ("lamo", 45.0, 2, 2), ("bc", 8.0, 1, 2)]
    assert "8.0 [1/2 cells]" in printed


# --- aggregates, robust statistics, excluded runs, cost ---------------------------------------------------

def test_domain_averages_iqm_and_ratio_means(aggregates):
    result, _ = aggregates
    summary = {(s.algorithm, s.domain): s for s in result.domains}
    lamo, dt, bc = summary["lamo", "locomotion"], summary["dt", "locomotion"], summary["bc", "locomotion"]
    assert lamo.mean == (15 + 35 + 55 + 135) / 4  # cell means
    assert lamo.iqm == (30 + 40 + 50 + 60) / 4  # 8 scores, 2 trimmed from each end
    assert dt.mean == (5 + 25 + 55 + 100) / 4 and dt.cells == 4 and dt.runs == 7
    assert dt.iqm == (5 + 25 + 25 + 50 + 60) / 5  # 7 scores, 1 trimmed from each end
    assert (bc.mean, bc.cells, bc.cells_expected) == (12.0, 1, 4)
    assert summary["lamo", "reacher2d"].mean == 50.0 and ("dt", "reacher2d") not in summary
    for s in result.domains:
        assert s.mean_ci[0] <= s.mean <= s.mean_ci[1] and s.iqm_ci[0] <= s.iqm <= s.iqm_ci[1]
    ratios = {(r.algorithm, r.domain, r.ratio): (r.mean, r.tasks) for r in result.ratios}
    assert ratios["lamo", "locomotion", 0.1] == (35.0, 2) and ratios["lamo", "locomotion", 1.0] == (85.0, 2)
    assert ratios["bc", "locomotion", 1.0] == (12.0, 1)
    # The chosen target is named: 3600 beats 1800 by one point everywhere.
    assert {c.target for c in result.cells if c.algorithm == "lamo"} == {"3600"}


def test_probability_of_improvement(aggregates):
    result, _ = aggregates
    over = {(i.domain, i.baseline): i for i in result.pooled_improvements}
    # per cell: hopper 1.0 and 1.0; walker 0.1 ties half the pairs -> 0.5; walker 1.0 [70, 200] vs [100] -> 0.5
    assert over["locomotion", "dt"].probability == 0.75 and over["locomotion", "dt"].cells == 4
    assert over["locomotion", "bc"].probability == 1.0 and over["locomotion", "bc"].cells == 1
    assert ("reacher2d", "dt") not in over  # no shared cell
    low, high = over["locomotion", "dt"].ci
    assert 0.5 <= low <= 0.75 <= high <= 1.0
    # the same per-cell value as scipy's Mann-Whitney U / (n m)
    x, y = np.array([50.0, 60.0, 61.0]), np.array([50.0, 55.0])
    assert probability_of_improvement([x], [y], 10)[0] == mannwhitneyu(x, y).statistic / 6


# lamo against dt on two locomotion tasks: ahead at 1 % of the data, behind at 100 %; bc has one task at 100 %
# only; reacher2d has no lamo. Scores per seed, constant curves.
CROSSING = {
    ("lamo", "hopper-medium", 0.01): (50, 60, 70), ("dt", "hopper-medium", 0.01): (10, 20, 55),  # P 8/9
    ("lamo", "walker2d-medium", 0.01): (50, 60, 70), ("dt", "walker2d-medium", 0.01): (10, 20, 30),  # P 1
    ("lamo", "hopper-medium", 1.0): (10, 20, 30), ("dt", "hopper-medium", 1.0): (50, 60, 70),  # P 0
    ("lamo", "walker2d-medium", 1.0): (10, 20, 30), ("dt", "walker2d-medium", 1.0): (25, 60, 70),  # P 1/9
    ("bc", "hopper-medium", 1.0): (0, 0, 0),  # P 1
    ("bc", "reacher2d-medium", 1.0): (5, 6, 7),
}


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    """The CROSSING sweep aggregated from trial runs directly (no store) and written out."""
    runs = [TrialRun(run_id=f"{algorithm}-{task}-{ratio}-{seed}", status="FINISHED",
                     record=make_record(algorithm, task, ratio, seed, {"num_steps": 1000, "eval_every": 100}),
                     curves={"policy" if algorithm == "bc" else "target_3600": flat(score)})
            for (algorithm, task, ratio), scores in CROSSING.items() for seed, score in enumerate(scores)]
    result = aggregate_runs(runs, "paper", sweep_id="crossing-0000000000", sweep_name="crossing",
                            parent_run_id="p", resamples=500)
    result.out_dir = tmp_path_factory.mktemp("crossing")
    result.files = write_outputs(result, result.out_dir)
    return result


def test_probability_of_improvement_per_data_ratio(crossing):
    rows = [(i.domain, i.baseline, i.ratio, i.cells) for i in crossing.improvements]
    assert rows == [("locomotion", "dt", None, 4), ("locomotion", "bc", None, 1),  # pooled first, as before
                    ("locomotion", "dt", 0.01, 2), ("locomotion", "dt", 1.0, 2), ("locomotion", "bc", 1.0, 1)]
    at = {(i.baseline, i.ratio): i for i in crossing.improvements}
    assert at["dt", 0.01].probability == pytest.approx(17 / 18) and at["dt", 1.0].probability == pytest.approx(1 / 18)
    assert at["dt", None].probability == pytest.approx(0.5) and at["bc", 1.0].probability == 1.0
    for i in crossing.improvements:
        assert i.ci[0] <= i.probability <= i.ci[1], i
    assert at["dt", 0.01].ci[0] > 0.5 > at["dt", 1.0].ci[1]  # the edge at 1 % and the loss at 100 % are clear

    # each row is the pooled computation over its own cells (the pooled row's value is what it was before)
    def computed(ratio: float | None):
        keys = [(c.task, c.ratio) for c in crossing.cells
                if c.algorithm == "lamo" and c.domain == "locomotion" and ratio in (None, c.ratio)]
        return probability_of_improvement([crossing.cell("lamo", *k).scores for k in keys],
                                          [crossing.cell("dt", *k).scores for k in keys], 500)
    for ratio in (None, 0.01, 1.0):
        assert (at["dt", ratio].probability, at["dt", ratio].ci) == computed(ratio)


def test_improvement_csv_has_a_ratio_column(crossing):
    with (crossing.out_dir / "improvement.csv").open() as handle:
        assert next(csv.reader(handle)) == ["domain", "reference", "baseline", "ratio", "probability", "ci_low",
                                            "ci_high", "cells", "resamples"]
    rows = read_csv(crossing.out_dir / "improvement.csv")
    assert [(r["baseline"], r["ratio"], r["cells"]) for r in rows] == [
        ("dt", "", "4"), ("bc", "", "1"), ("dt", "0.01", "2"), ("dt", "1.0", "2"), ("bc", "1.0", "1")]
    assert float(rows[2]["probability"]) == pytest.approx(17 / 18) and rows[0]["resamples"] == "500"


def test_report_shows_the_probability_of_improvement_by_data_ratio(crossing):
    page = html.unescape((crossing.out_dir / "report.html").read_text())
    locomotion = page[page.index('id="domain-locomotion"'):page.index('id="domain-reacher2d"')]
    reacher = page[page.index('id="domain-reacher2d"'):]
    reacher = reacher[:reacher.index("</section>")]
    by_ratio = locomotion[locomotion.index("<h3>Probability of improvement by data ratio (locomotion)</h3>"):]
    at = {(i.baseline, i.ratio): i for i in crossing.improvements}

    def text(baseline: str, ratio: float) -> str:
        i = at[baseline, ratio]
        return f"{i.probability:.2f} [{i.ci[0]:.2f}, {i.ci[1]:.2f}]"
    assert "<tr><th>Comparison</th><th>1%</th><th>100%</th></tr>" in by_ratio
    assert f"<tr><td>lamo > dt</td><td>{text('dt', 0.01)}</td><td>{text('dt', 1.0)}</td></tr>" in by_ratio
    assert text("dt", 0.01).startswith("0.94 [") and text("dt", 1.0).startswith("0.06 [")
    # bc shares no task at 1 %, and one of the two at 100 %
    assert "<tr><td>lamo > bc</td><td>—</td><td>1.00 [1.00, 1.00] [1/2 tasks]</td></tr>" in by_ratio
    # the pooled table keeps its rows: one per baseline, over all ratios
    pooled = locomotion[locomotion.index("<h3>Probability of improvement (locomotion)</h3>"):
                        locomotion.index("<h3>Probability of improvement by data ratio")]
    assert pooled.count("<td>lamo > dt</td>") == 1 and f"<td>{text('dt', None)}</td><td>4</td>" in pooled
    assert "Probability of improvement" not in reacher  # no lamo there
    markdown = (crossing.out_dir / "tables.md").read_text()
    assert f"| lamo > dt | {text('dt', 0.01)} | {text('dt', 1.0)} |" in markdown
    assert "Probability of improvement by data ratio (locomotion)" in (crossing.out_dir / "tables.tex").read_text()
    assert "improvement_vs_ratio.png" in page and "improvement_vs_ratio.png" in {p.name for p in crossing.files}


def test_bootstrap_resamples_within_cells():
    # Resampling within each cell keeps the mean of cell means at 5; pooled resampling would not.
    assert stratified_bootstrap([np.zeros(3), np.full(3, 10.0)], mean_of_cell_means, 1000) == (5.0, 5.0)
    low, high = stratified_bootstrap([np.array([0.0, 10.0])], mean_of_cell_means, 1000)
    assert low == 0.0 and high == 10.0


def test_failed_and_unfinished_runs_are_listed_and_excluded(aggregates):
    result, printed = aggregates
    assert sorted((r.trial_id, reason) for r, reason in result.excluded) == [
        ("bc.hopper-medium.r1.s1", "unfinished (RUNNING)"), ("dt.walker2d-medium.r1.s1", "failed")]
    assert list(result.cell("dt", "walker2d-medium", 1.0).scores) == [100.0]  # not the failed 1000
    assert "dt.walker2d-medium.r1.s1: failed" in printed and "bc.hopper-medium.r1.s1: unfinished" in printed
    runs = {row["trial_id"]: row for row in read_csv(result.out_dir / "runs.csv")}
    assert runs["dt.walker2d-medium.r1.s1"]["score"] == "" and runs["dt.walker2d-medium.r1.s1"]["excluded"] == "failed"
    assert runs["dt.walker2d-medium.r1.s0"]["score"] == "100.0"


def test_fewer_seeds_than_asked_are_flagged(aggregates):
    result, printed = aggregates
    assert "100.0 (target 3600) [1/2 seeds]" in printed
    assert "12.0 [1/2 seeds]" in printed
    cells = {(r["algorithm"], r["task"], r["ratio"]): r for r in read_csv(result.out_dir / "cells.csv")}
    assert cells["dt", "walker2d-medium", "1.0"]["fewer_seeds_than_asked"] == "True"
    assert cells["lamo", "walker2d-medium", "1.0"]["fewer_seeds_than_asked"] == "False"


def test_cost_counts_every_run(aggregates):
    result, printed = aggregates
    rows = {row[0]: row for row in cost_table(result).rows}
    assert rows["lamo"] == ["lamo", "10", "10.00", "5.00", "0", "0.00", "0.00"]
    assert rows["dt"] == ["dt", "8", "8.00", "4.00", "0", "0.00", "0.00"]  # the failed run's hour was spent too
    assert rows["Sweep"] == ["Sweep", "20", "19.00", "9.50", "0", "0.00", "0.00"]  # the running one logged none yet
    assert "Cost: 19.00 wall hours, 9.50 GPU-hours over 20 runs." in printed


def test_outputs_written_and_logged_to_the_parent_run(store, aggregates):
    result, _ = aggregates
    names = {p.name for p in result.files}
    assert {"tables.md", "tables.tex", "table.csv", "cells.csv", "domains.csv", "improvement.csv", "cost.csv",
            "score_vs_ratio.png", "learning_curves.png", "aggregate_intervals.png", "improvement_vs_ratio.png",
            "report.html"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.files)
    latex = (result.out_dir / "tables.tex").read_text()
    assert r"\textbf{135.0 $\pm$ 91.9 (target 3600)}" in latex and "Average (locomotion)" in latex
    table = {row["Task"]: row for row in read_csv(result.out_dir / "table.csv")}
    assert list(table)[-1] == "Average (reacher2d)"  # each domain's block ends with its average
    assert table["Average (locomotion)"]["lamo"] == "60.0" and table["Average (locomotion)"]["bc"] == "12.0 [1/4 cells]"
    markdown = (result.out_dir / "tables.md").read_text()
    # an average over fewer cells or tasks than the others is flagged and never marked best
    assert "| Average (locomotion) |  | **60.0** | 46.2 | 12.0 [1/4 cells] |" in markdown
    assert "| locomotion | 100% | **85.0** | 62.5 | 12.0 [1/2 tasks] |" in markdown
    logged = {Path(a.path).name for a in store.client.list_artifacts(result.parent_run_id, "aggregate/paper")}
    assert names <= logged


def test_html_report_has_a_section_per_domain_with_a_table_per_task(aggregates):
    """A paper-sized sweep's report stays readable: per domain a table per task with the algorithms as rows and
    the data ratios as columns; the long lists (excluded runs, the paper's one-table layout) collapsed."""
    page = html.unescape((aggregates[0].out_dir / "report.html").read_text())
    sections = page.split('<section class="domain"')[1:]
    assert [s[:s.index(">")] for s in sections] == [' id="domain-locomotion"', ' id="domain-reacher2d"']
    locomotion, reacher = (s[:s.index("</section>")] for s in sections)
    assert [t for t in ("<h3>hopper-medium</h3>", "<h3>walker2d-medium</h3>", "<h3>reacher2d-medium</h3>")
            if t in locomotion] == ["<h3>hopper-medium</h3>", "<h3>walker2d-medium</h3>"]
    assert "<h3>reacher2d-medium</h3>" in reacher and "hopper-medium" not in reacher
    hopper = locomotion[locomotion.index("<h3>hopper-medium</h3>"):locomotion.index("<h3>walker2d-medium</h3>")]
    assert "<th>Algorithm</th><th>10%</th><th>100%</th>" in hopper
    assert ("<tr><td>lamo</td><td><b>15.0 ± 7.1 (target 3600)</b></td><td><b>35.0 ± 7.1 (target 3600)</b></td>"
            "</tr>" in hopper)
    assert "<tr><td>bc</td><td></td><td>12.0 [1/2 seeds]</td></tr>" in hopper
    assert "<h3>Aggregates (locomotion)</h3>" in locomotion and "<td>lamo > dt</td>" in locomotion
    assert "<td>lamo > dt</td>" not in reacher  # each domain's own improvements (reacher2d has no dt)
    # the average per domain: algorithms × domains, an incomplete average flagged
    overview = page[page.index('<div id="average">'):page.index("<section")]
    assert "<th>Algorithm</th><th>locomotion</th><th>reacher2d</th>" in overview
    assert "<tr><td>bc</td><td>12.0 [1/4 cells]</td><td></td></tr>" in overview
    assert "<details><summary>Excluded runs (2: not FINISHED)</summary>" in page
    assert page.index("<details><summary>Every cell in the paper's layout") > page.index('<div id="cost">')


# --- fidelity notes ------------------------------------------------------------------------------------------

def one_line(text: str) -> str:
    """Text with its line wrapping undone (the terminal wraps long notes)."""
    return " ".join(text.split())


def test_fidelity_notes_in_every_report_follow_the_sweeps_runs(store, aggregates, tmp_path):
    reacher, reacher_printed = run(store, "bc-reacher2d", tmp_path, log_artifacts=False)
    result, printed = aggregates
    mixed = {n.topic: n for n in result.notes}
    only_bc = {n.topic: n for n in reacher.notes}
    # lamo, dt and bc on D4RL hopper and walker2d files and on generated reacher2d, at two data ratios
    assert mixed["training data: whole trajectories"].text.startswith("The sequence models (lamo, dt) train")
    assert "Locomotion (hopper-medium, walker2d-medium)" in mixed["simulator: locomotion"].text
    assert "Data ratios 10%" in mixed["training data: seeded subsets"].text
    assert only_bc.keys() < mixed.keys()
    for sweep, printed_text in ((result, printed), (reacher, reacher_printed)):
        markdown = (sweep.out_dir / "tables.md").read_text()
        page = html.unescape((sweep.out_dir / "report.html").read_text())
        latex = (sweep.out_dir / "tables.tex").read_text()
        for note in sweep.notes:
            assert f"**{note.topic}**: {note.text} (source: {note.source})" in markdown
            assert note.text in page and note.source in page
            assert one_line(note.text) in one_line(printed_text)
            assert f"% {note.topic}: {note.text}" in latex
    # nothing of what the BC sweep did not run
    for report in (reacher.out_dir / "tables.md", reacher.out_dir / "report.html"):
        content = report.read_text().lower()
        for absent in ("kitchen", "locomotion", "language", "lm_coef", "sequence models", "ratio_dataset"):
            assert absent not in content, (report.name, absent)
    assert "kitchen" not in reacher_printed.lower() and "language" not in reacher_printed.lower()


# --- headline numbers on the parent run ---------------------------------------------------------------------

def test_headline_numbers_on_the_parent_run(store, aggregates):
    result, _ = aggregates
    logged = {key: value for key, value in store.client.get_run(result.parent_run_id).data.metrics.items()
              if key.startswith("headline/")}
    expected = {}
    for s in result.domains:
        if s.cells == s.cells_expected:
            expected[f"headline/paper/{s.domain}/mean/{s.algorithm}"] = s.mean
            expected[f"headline/paper/{s.domain}/iqm/{s.algorithm}"] = s.iqm
    assert logged == pytest.approx(expected)
    assert "headline/paper/locomotion/mean/lamo" in logged and "headline/paper/reacher2d/iqm/lamo" in logged
    # bc has 1 of the 4 locomotion cells: an average over fewer cells does not compare, so it is not logged
    assert not [key for key in logged if key.endswith("/bc")]
    # a sorted runs table puts one statistic's algorithms side by side
    assert sorted(logged)[:3] == ["headline/paper/locomotion/iqm/dt", "headline/paper/locomotion/iqm/lamo",
                                  "headline/paper/locomotion/mean/dt"]


def test_no_headline_without_logging(store, tmp_path):
    result, _ = run(store, "protocols", tmp_path, log_artifacts=False)
    assert not [key for key in store.client.get_run(result.parent_run_id).data.metrics if key.startswith("headline/")]


# --- bad input ---------------------------------------------------------------------------------------------

def test_unknown_sweep_lists_the_sweeps_found(store, tmp_path, capsys):
    assert main(["--sweep", "nope", "--tracking-uri", store.uri, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: unknown sweep 'nope'")
    assert "protocols (protocols-aaaaaaaaaa, RUNNING)" in error and "aggregates (aggregates-bbbbbbbbbb" in error
    assert "restarted (restarted-9999999999, RUNNING, superseded)" in error


def test_sweep_name_means_the_most_recent_and_id_selects_one(store, tmp_path):
    assert run(store, "renamed", tmp_path / "a", log_artifacts=False)[0].sweep_id == "renamed-ffffffffff"
    assert run(store, "renamed-eeeeeeeeee", tmp_path / "b", log_artifacts=False)[0].cells[0].mean == 1.0


def test_a_restarted_sweep_reads_its_current_parent_only(store, tmp_path):
    result, _ = run(store, "restarted-9999999999", tmp_path / "a", log_artifacts=False)
    assert [c.mean for c in result.cells] == [2.0] and len(result.runs) == 1
    superseded = [p for p in store.client.search_runs([store.experiment_id], "tags.superseded = 'true'")]
    result, _ = run(store, superseded[0].info.run_id, tmp_path / "b", log_artifacts=False)  # on purpose, by run id
    assert [c.mean for c in result.cells] == [1.0]


def test_no_finished_run_is_an_error(store, tmp_path):
    with pytest.raises(AggregationError, match=r"no finished trial run .*FAILED: 1"):
        run(store, "all-failed", tmp_path)


def test_protocol_needing_missing_evaluations_is_an_error(store, tmp_path):
    with pytest.raises(AggregationError, match=r"protocol paper needs evaluations at steps > 80% .*"
                                               r"bc.hopper-medium.r1.s0 \(last evaluation at step 800 of "
                                               r"config.num_steps=1000\).*--protocol last"):
        run(store, "early-evals", tmp_path)
    assert run(store, "early-evals", tmp_path, "last", log_artifacts=False)[0].cells[0].mean == 9.0


def test_unknown_experiment_or_store(store, tmp_path, capsys):
    with pytest.raises(AggregationError, match=f"no experiment 'other'.*experiments found: .*{EXPERIMENT}"):
        aggregate_sweep(store.uri, "other", "aggregates")
    assert main(["--sweep", "x", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no tracking store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_runs_as_a_script(store, tmp_path):
    done = subprocess.run([sys.executable, "orchestrator/aggregate.py", "--sweep", "protocols", "--tracking-uri",
                           store.uri, "--out", str(tmp_path), "--no-log", "--resamples", "100"],
                          cwd=REPO, check=False, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "50.0 ± 7.1 (target 76)" in done.stdout and (tmp_path / "report.html").is_file()


# --- the layout as tracking.py writes it, read back ---------------------------------------------------------

def test_reports_made_faster_than_they_are_sent_go_in_few_requests_and_all_arrive(tmp_path):
    """A trial reports every 100 steps, several times a second: the sender gathers what queued while it waited
    into one log_batch, within MLflow's 1,000 metrics a request, and loses nothing."""
    from mlflow.tracking import MlflowClient

    from orchestrator import delivery, tracking

    writer = tracking.SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", EXPERIMENT, "batching-0123456789")
    parent = writer.start_sweep("batching", {"seeds": [0], "ratios": [1.0]})
    record = make_record("bc", "hopper-medium", 1.0, 0, {"num_steps": 40_000}, sweep_id="batching-0123456789")
    run_id, _ = writer.trial_run(parent, record)
    sizes = []

    class CountingClient(MlflowClient):
        def log_batch(self, run_id, metrics=(), **kwargs):
            sizes.append(len(metrics))
            return super().log_batch(run_id, metrics=metrics, **kwargs)

    hook = delivery.MlflowReport(writer.uri, run_id, str(tmp_path))
    hook._client = CountingClient(writer.uri)
    keys = ["train/loss", "train/grad_norm", "train/steps_per_second"]
    for step in range(100, 40_001, 100):  # 400 reports, 1,200 metrics
        hook(step, {key: step / 100 + i for i, key in enumerate(keys)}, [])
    hook.close()

    assert sum(sizes) == 1200 and max(sizes) <= delivery.MlflowReport.MAX_METRICS_PER_BATCH
    assert 2 <= len(sizes) <= 5, sizes  # not one request per report
    for i, key in enumerate(keys):
        history = sorted((m.step, m.value) for m in MlflowClient(writer.uri).get_metric_history(run_id, key))
        assert history == [(step, step / 100 + i) for step in range(100, 40_001, 100)]


def read_run_by_run(mlflow_client, experiment_id: str, parent_run_id: str) -> list[TrialRun]:
    """What the bulk reader must give, read with MLflow's own per-run calls: a get_run for a reused trial's
    original, a get_metric_history per run and eval metric (one value per step, the latest logged)."""
    runs = []
    for run in mlflow_client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                                          "tags.role = 'trial'", max_results=1000):
        original = run.data.tags.get("reused_from")
        measured = mlflow_client.get_run(original) if original else run
        curves = {key.split("/")[1]: sorted({m.step: m.value for m in mlflow_client.get_metric_history(
                      measured.info.run_id, key)}.items())
                  for key in measured.data.metrics
                  if key.startswith("eval/") and key.endswith("/normalized_mean") and key.count("/") == 2}
        runs.append(TrialRun(run_id=run.info.run_id, record=TrialRecord.from_json(run.data.tags["trial_record"]),
                             status=run.info.status, curves=curves,
                             wall_seconds=measured.data.metrics.get("cost/wall_seconds", 0.0),
                             gpu_hours=measured.data.metrics.get("cost/gpu_hours", 0.0), reused_from=original,
                             source_sweep=run.data.tags.get("reused_from_sweep") or run.data.tags["sweep_id"],
                             fingerprint=measured.data.tags.get("fingerprint", ""),
                             started=measured.info.start_time))
    return sorted(runs, key=lambda r: r.run_id)


def every_sweep(mlflow_client, experiment_id: str) -> list[str]:
    return [p.info.run_id for p in mlflow_client.search_runs([experiment_id], "tags.role = 'sweep'")]


@pytest.mark.parametrize("batch", [(100, 25_000), (3, 10)], ids=["server limits", "tiny batches"])
def test_bulk_reader_reads_what_run_by_run_reads_do(store, monkeypatch, batch):
    """From a sqlite store: the same TrialRuns as MLflow's per-run calls, for every sweep of the store (reused
    trials, failed and running ones, a step logged twice), also when a key's runs take several requests and an
    answer is full (asked again in halves, down to one run's own paged history)."""
    from orchestrator import tracking

    monkeypatch.setattr(tracking, "BULK_RUNS", batch[0])
    monkeypatch.setattr(tracking, "BULK_VALUES", batch[1])
    mlflow_client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    parents = every_sweep(mlflow_client, experiment_id)
    assert len(parents) >= 9
    for parent in parents:
        read = sorted(tracking.read_trial_runs(mlflow_client, experiment_id, parent), key=lambda r: r.run_id)
        assert read == read_run_by_run(mlflow_client, experiment_id, parent)
    [reusing] = [p for p in parents if mlflow_client.get_run(p).data.tags["sweep_id"] == "reusing-7777777777"]
    runs = {r.seed: r for r in tracking.read_trial_runs(mlflow_client, experiment_id, reusing)}
    assert runs[0].reused_from and runs[0].curves["target_3600"] == [(s, 30.0) for s in STEPS]  # the original's
    assert (runs[0].wall_seconds, runs[0].source_sweep) == (3600.0, "aggregates-bbbbbbbbbb")
    assert runs[1].curves["target_3600"][-1] == (1000, 35.0)  # logged twice at step 1000: the later value


def test_bulk_reader_through_a_real_server_in_few_requests(store, tmp_path, monkeypatch):
    """Through `mlflow server` (its bulk endpoint): the same TrialRuns as from the store itself, every sweep read
    in fewer requests than it has trial runs and eval metrics."""
    import requests

    from orchestrator import tracking
    from tests.services import start_mlflow_server, stop_process_group

    sent = []
    send = requests.Session.send
    monkeypatch.setattr(requests.Session, "send", lambda session, request, **kw: sent.append(request.url)
                        or send(session, request, **kw))
    monkeypatch.setattr(tracking, "BULK_RUNS", 4)  # several requests per key, as a paper-sized sweep needs
    local_client, experiment_id = tracking.open_store(store.uri, EXPERIMENT)
    uri, server, _ = start_mlflow_server(store.uri, tmp_path)
    try:
        served, served_experiment = tracking.open_store(uri, EXPERIMENT)
        assert served_experiment == experiment_id
        for parent in every_sweep(local_client, experiment_id):
            sent.clear()
            read = tracking.read_trial_runs(served, experiment_id, parent)
            assert sorted(read, key=lambda r: r.run_id) == read_run_by_run(local_client, experiment_id, parent)
            # a search, one for the reused trials' originals, and per eval metric one for each 4 runs that have it
            runs_with = Counter(label for r in read for label in r.curves)
            assert len(sent) == 1 + any(r.reused_from for r in read) + sum(-(-n // 4) for n in runs_with.values())
            assert sum(tracking.HISTORY_BULK_ENDPOINT in url for url in sent) == len(sent) - 1 - any(
                r.reused_from for r in read)
            if len(read) == 20:  # the "aggregates" sweep: 10 requests, where run by run took 50
                assert len(sent) == 10 and len(read) + sum(len(r.curves) for r in read) == 50
    finally:
        stop_process_group(server)


def test_reads_back_what_the_sweep_tracker_writes(tmp_path):
    from orchestrator import delivery, tracking

    writer = tracking.SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", EXPERIMENT, "roundtrip-0123456789")
    parent = writer.start_sweep("roundtrip", {"seeds": [3, 4], "ratios": [0.1]})
    record = make_record("lamo", "hopper-medium", 0.1, 4, {"num_steps": 500, "eval_every": 250},
                         sweep_id="roundtrip-0123456789")
    # Notes as the sweep's validation pass puts them in the record (orchestrator/preflight.py; test_sweep_inputs.py)
    notes = ("the file has no `timeouts` key: episodes end only at terminals",
             ("1 episode(s) longer than the task's horizon 1000 (the longest has 1,250 steps) were split every "
              "1000 steps"))
    record = dataclasses.replace(record, dataset=dataclasses.replace(record.dataset, notes=notes))
    run_id, finished = writer.trial_run(parent, record)
    assert finished is None
    hook = delivery.MlflowReport(writer.uri, run_id, str(tmp_path))
    for step, value in [(250, 41.0), (500, 43.0)]:
        hook(step, {"eval/target_3600/normalized_mean": value, "eval/target_1800/normalized_mean": value - 1,
                    "eval/best_normalized_mean": value, "eval/target_3600/return_mean": 1000.0}, [])
    hook.close()
    writer.finish_trial(run_id, failed=False, wall_seconds=7200.0, gpus=0.5)

    mlflow_client, experiment_id = tracking.open_store(writer.uri, EXPERIMENT)
    found = tracking.find_sweep(mlflow_client, experiment_id, "roundtrip")
    assert found.info.run_id == parent
    assert tracking.sweep_identity(found) == ("roundtrip-0123456789", "roundtrip")
    assert tracking.asked_seeds(found.data.params) == 2
    [run] = tracking.read_trial_runs(mlflow_client, experiment_id, parent)
    assert (run.run_id, run.trial_id, run.algorithm, run.task, run.domain, run.ratio, run.seed, run.status) == (
        run_id, "lamo.hopper-medium.r0.1.s4", "lamo", "hopper-medium", "locomotion", 0.1, 4, "FINISHED")
    assert tracking.trial_record(mlflow_client.get_run(run_id)) == record  # the record, unchanged
    assert run.curves == {"target_3600": [(250, 41.0), (500, 43.0)], "target_1800": [(250, 40.0), (500, 42.0)]}
    assert run.record == record  # the record itself, not copies of its fields
    assert run.num_steps == 500 and run.config["eval_episodes"] == 20 and run.config["backbone"] == "gpt2"
    assert (run.wall_seconds, run.gpu_hours) == (7200.0, 1.0)
    assert run.dataset_notes == notes  # the dataset's notes reach the aggregator, and its report's fidelity notes
    [listed] = [n.text for n in fidelity_notes([run]) if n.topic == "training data: dataset notes"]
    assert listed.endswith(f"hopper-medium: {notes[0]}; {notes[1]}.")


# --- layers ------------------------------------------------------------------------------------------------

def orchestrator_imports(root: Path) -> dict[str, set[str]]:
    """orchestrator module -> the orchestrator modules it imports, at the top or inside functions alike."""
    graph = {}
    for path in sorted(root.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                if node.module == "orchestrator":  # from orchestrator import report, tracking
                    imported |= {f"orchestrator.{alias.name}" for alias in node.names}
        graph[f"orchestrator.{path.stem}"] = imported
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done or module not in graph:
            return
        for imported in sorted(graph[module]):
            visit(imported, path + [module])
        done.add(module)

    for module in graph:
        visit(module, [])
    return cycles


def test_aggregator_layers_import_downwards_without_a_circle():
    graph = orchestrator_imports(REPO / "orchestrator")
    assert import_cycles(graph) == []
    # statistics apart from rendering and from MLflow; rendering apart from MLflow
    assert not graph["orchestrator.scores"] & {"orchestrator.aggregate", "orchestrator.report",
                                               "orchestrator.tracking", "mlflow", "matplotlib", "rich"}
    assert not {m.split(".")[0] for m in graph["orchestrator.scores"]} & {"mlflow", "matplotlib", "rich"}
    for rendering in ("orchestrator.report", "orchestrator.plots"):
        assert not graph[rendering] & {"orchestrator.aggregate", "orchestrator.tracking"}
        assert not {m.split(".")[0] for m in graph[rendering]} & {"mlflow"}
    assert "orchestrator.report" not in graph["orchestrator.plots"]
    # the store is read in one place: tracking.py, which knows nothing of the statistics; a trial actor loads
    # the delivery thread and the layout, never the aggregator
    assert not {m.split(".")[0] for m in graph["orchestrator.aggregate"]} & {"mlflow"}
    assert not graph["orchestrator.tracking"] & {"orchestrator.scores", "orchestrator.fidelity", "orchestrator.report"}
    assert not graph["orchestrator.delivery"] & {"orchestrator.scores", "orchestrator.fidelity",
                                                 "orchestrator.aggregate"}


# --- the HTML report in a real browser ---------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", *args],
                          check=False, capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_headless_chromium(aggregates, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("headless Chromium not installed: apt-get install -y chromium")
    import matplotlib.image

    report = aggregates[0].out_dir / "report.html"
    dom = chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile-dom").stdout
    # the average per domain; locomotion: 2 tasks, aggregates, ratio means, improvement pooled and per ratio;
    # reacher2d: 1 task and aggregates; cost; excluded runs and the paper's layout, collapsed
    assert dom.count("<table>") == 12 and "Average (locomotion)" in dom and "[1/2 seeds]" in dom
    assert dom.count('<img alt="') == 4 and dom.count('src="data:image/png;base64,') == 4
    assert dom.count("<figcaption>") == 4 and "logarithmic" in dom  # each plot says what it shows
    notes = dom[dom.index('<ul class="fidelity">'):]
    notes = notes[:notes.index("</ul>")]
    assert notes.count("<li>") == len(aggregates[0].notes) > 0  # the fidelity notes, one item each
    assert "http://" not in dom and "https://" not in dom  # self-contained

    screenshot = tmp_path / "report.png"
    started = time.monotonic()
    chromium(f"--screenshot={screenshot}", "--window-size=1280,2000", report.as_uri(), profile=tmp_path / "profile")
    assert screenshot.is_file(), "chromium wrote no screenshot"
    pixels = matplotlib.image.imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    non_white = (pixels < 0.95).any(axis=-1).mean()
    assert pixels.std() > 0.05 and non_white > 0.02, (pixels.std(), non_white, time.monotonic() - started)
    shutil.copy(screenshot, aggregates[0].out_dir / "report_screenshot.png")  # left for a human to look at
