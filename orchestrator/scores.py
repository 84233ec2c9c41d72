"""Scores and statistics of a sweep: its trial runs -> one score per run under a named protocol -> cells,
domain aggregates with intervals, probability of improvement. Pure: no MLflow, no rendering, no files.

Layout of the aggregator (imports point down only, no circle):

    orchestrator/aggregate.py   the CLI and `aggregate_sweep`: tracking -> scores -> report, then the parent run
    orchestrator/report.py      tables, plots, the HTML report and the terminal summary of an `Aggregate`
    orchestrator/tracking.py    the MLflow run layout: writes a sweep's runs, reads them back as `TrialRun`s
    orchestrator/runs.py        `TrialRun`: one run's record, status, evaluation curves and cost
    orchestrator/scores.py      this module: data classes, protocols, scoring and statistics
    orchestrator/fidelity.py    what the scored runs differ in from the official setup (a knowledge table)

Scores are the D4RL-normalized evaluation means the loop logs as `eval/<label>/normalized_mean` (step =
gradient step), where <label> is `target_<R>` for return-conditioned algorithms and `policy` otherwise.

Protocols (one score per run and label first, then one label per algorithm × task × ratio cell):
- paper: LaMo's "last 20K of 100K steps". Per label, the mean of the evaluations at steps strictly after 80 % of
  the run's `config.num_steps`: at LaMo's cadence
  (100,000 steps, an evaluation every 2,500) the last 8 of 40 evaluations; the one at 80,000 ends the first 80 %.
- last:  per label, the value at the run's final evaluation step (CORL's "last").
- best:  per label, the maximum over all evaluations of the run (CORL's "best").
In every protocol the cell reports the label whose mean over the cell's seeds is highest (ties: the higher
target return), and the table names it. Only labels every finished run of the cell has are candidates.

Statistics: per cell mean, sample standard deviation (ddof=1) and count over seeds. Per algorithm × domain the
mean over cells (the paper's headline) and the interquartile mean over all run scores, each with a 95 %
percentile interval from a stratified bootstrap (seeds resampled within each task × ratio cell) — Agarwal et
al. 2021, "Deep RL at the Edge of the Statistical Precipice" (rliable). Probability of improvement of LaMo over
each baseline: per cell P(X > Y) = U / (n·m) from the Mann-Whitney U statistic, averaged over cells, with a
stratified bootstrap interval (rliable's `probability_of_improvement`); once over all of a domain's cells, and
once per data ratio over the cells (tasks) at that ratio, which shows where LaMo's edge appears (the paper: the
language model helps most when data are scarce). Only FINISHED runs are scored; failed
and unfinished runs are listed and excluded. Cost (wall time, GPU-hours) sums every run, since it was spent.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from orchestrator.fidelity import FidelityNote, fidelity_notes
from orchestrator.runs import TrialRun
from trainers.runtime.registry import ALGORITHMS
from trainers.runtime.tasks import TASKS, Domain

PROTOCOLS = {
    "paper": "paper (LaMo): per run and target return, the mean normalized score of the evaluations in the last "
             "20% of training (steps > 0.8 x config.num_steps: on D4RL-style tasks the last 8 of LaMo's 40 "
             "evaluations, 100K steps evaluated every 2.5K); per algorithm x task x ratio the target with the "
             "highest mean over seeds is reported and named",
    "last": "last (CORL): per run and target return, the normalized score at the final evaluation; per "
            "algorithm x task x ratio the target with the highest mean over seeds is reported and named",
    "best": "best (CORL): per run and target return, the maximum normalized score over training; per "
            "algorithm x task x ratio the target with the highest mean over seeds is reported and named",
}
PAPER_WINDOW = 0.8  # the paper's "last 20 % of training steps": evaluations at steps > 0.8 · num_steps
REFERENCE_ALGORITHM = "lamo"
DOMAIN_ORDER = typing.get_args(Domain)


class AggregationError(ValueError):
    """A sweep that cannot be aggregated as asked; the message says what was found instead."""


@dataclass
class Cell:
    """One algorithm × task × ratio: the finished runs' scores under the chosen label."""
    algorithm: str
    domain: str
    task: str
    ratio: float
    label: str | None  # chosen eval label, None when no run finished
    run_ids: list[str]  # finished runs, by seed
    seeds: list[int]
    scores: np.ndarray
    asked: int  # seeds the sweep asked for
    ci: tuple[float, float] = (np.nan, np.nan)  # bootstrap 95 % interval of the mean over seeds

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return float(self.scores.mean()) if self.n else np.nan

    @property
    def std(self) -> float:
        return float(self.scores.std(ddof=1)) if self.n > 1 else np.nan

    @property
    def flagged(self) -> bool:
        return self.n < self.asked

    @property
    def target(self) -> str | None:
        """'40' for label target_40; None for `policy` (not return-conditioned) or no label."""
        return self.label.removeprefix("target_") if self.label and self.label.startswith("target_") else None


@dataclass
class DomainSummary:
    algorithm: str
    domain: str
    mean: float  # mean over cells of the per-cell mean
    mean_ci: tuple[float, float]
    iqm: float  # interquartile mean over all run scores of the domain
    iqm_ci: tuple[float, float]
    cells: int  # cells with at least one finished run
    cells_expected: int  # cells any algorithm of the sweep has in this domain
    runs: int

    @property
    def complete(self) -> bool:
        """Whether the average covers every cell of the domain (only then is it comparable to the others)."""
        return self.cells == self.cells_expected


@dataclass
class RatioSummary:
    algorithm: str
    domain: str
    ratio: float
    mean: float  # mean over tasks of the per-cell mean
    tasks: int


@dataclass
class Improvement:
    """P(reference > baseline) over the cells of a domain both algorithms have: all of them (ratio None), or
    those at one data ratio."""
    domain: str
    reference: str
    baseline: str
    probability: float  # P(reference > baseline), averaged over shared cells
    ci: tuple[float, float]
    cells: int
    ratio: float | None = None  # None: pooled over all the domain's ratios


@dataclass
class Aggregate:
    sweep_id: str
    sweep_name: str
    parent_run_id: str
    protocol: str
    runs: list[TrialRun]
    excluded: list[tuple[TrialRun, str]]
    cells: list[Cell]
    domains: list[DomainSummary]
    ratios: list[RatioSummary]
    improvements: list[Improvement]
    resamples: int
    notes: list[FidelityNote] = field(default_factory=list)  # how the scored runs differ from the official setup
    files: list[Path] = field(default_factory=list)
    out_dir: Path | None = None
    artifact_path: str | None = None  # where the files are on the parent run, once logged

    @property
    def protocol_text(self) -> str:
        return PROTOCOLS[self.protocol]

    @property
    def algorithms(self) -> list[str]:
        return sorted({c.algorithm for c in self.cells}, key=algorithm_order)

    @cached_property
    def _cell_index(self) -> dict[tuple[str, str, float], Cell]:
        return {(c.algorithm, c.task, c.ratio): c for c in self.cells}

    def cell(self, algorithm: str, task: str, ratio: float) -> Cell | None:
        return self._cell_index.get((algorithm, task, ratio))

    @property
    def pooled_improvements(self) -> list[Improvement]:
        """The probabilities of improvement over all of each domain's cells."""
        return [i for i in self.improvements if i.ratio is None]

    @property
    def ratio_improvements(self) -> list[Improvement]:
        """The probabilities of improvement per data ratio."""
        return [i for i in self.improvements if i.ratio is not None]


# --- ordering: the registry's order, so tables read the same in every sweep ---------------------------------

def algorithm_order(name: str) -> tuple:
    names = list(ALGORITHMS)
    return (names.index(name), "") if name in names else (len(names), name)


def task_order(name: str) -> tuple:
    names = list(TASKS)
    return (names.index(name), "") if name in names else (len(names), name)


def domain_order(name: str) -> tuple:
    return (DOMAIN_ORDER.index(name), "") if name in DOMAIN_ORDER else (len(DOMAIN_ORDER), name)


def _label_order(label: str) -> tuple:
    """Higher target returns first, so a tie goes to the higher target."""
    try:
        return (0, -float(label.removeprefix("target_")))
    except ValueError:
        return (1, label)


def run_order(run: TrialRun) -> tuple:
    """Grid order: algorithm, task, ratio, seed."""
    return algorithm_order(run.algorithm), task_order(run.task), run.ratio, run.seed


# --- scores ------------------------------------------------------------------------------------------------

def run_scores(run: TrialRun, protocol: str) -> dict[str, float]:
    """One score per eval label under `protocol`; a label with no evaluation the protocol can use is left out."""
    scores = {}
    for label, curve in run.curves.items():
        steps = np.array([s for s, _ in curve], dtype=float)
        values = np.array([v for _, v in curve], dtype=float)
        if protocol == "paper":
            horizon = run.num_steps
            # Strictly after: the evaluation at 80 % closes the first 80 % of training (LaMo: 8 of 40, not 9).
            window = values[steps > PAPER_WINDOW * horizon]
            if len(window):
                scores[label] = float(window.mean())
        elif protocol == "last":
            scores[label] = float(values[-1])
        elif protocol == "best":
            scores[label] = float(values.max())
        else:
            raise AggregationError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
    return scores


def _missing_evaluations(protocol: str, finished: list[TrialRun], scored: dict[str, dict[str, float]]) -> str:
    lacking = [r for r in finished if not scored[r.run_id]]
    if not lacking:
        return ""
    def describe(r: TrialRun) -> str:
        steps = [s for curve in r.curves.values() for s, _ in curve]
        if not steps:
            return f"{r.trial_id} (no eval/<label>/normalized_mean metric)"
        return f"{r.trial_id} (last evaluation at step {max(steps)} of config.num_steps={r.num_steps})"
    need = {"paper": f"evaluations at steps > {PAPER_WINDOW:.0%} of config.num_steps",
            "last": "at least one evaluation", "best": "at least one evaluation"}[protocol]
    hint = "; --protocol last or best uses earlier evaluations" if protocol == "paper" else ""
    listed = ", ".join(map(describe, lacking[:10])) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
    return f"protocol {protocol} needs {need}; {len(lacking)} finished run(s) have none: {listed}{hint}"


def build_cells(runs: list[TrialRun], protocol: str, asked: int | None) -> list[Cell]:
    """Cells of every algorithm × task × ratio the sweep has runs for, scored from their finished runs."""
    finished = [r for r in runs if r.status == "FINISHED"]
    scored = {r.run_id: run_scores(r, protocol) for r in finished}
    problem = _missing_evaluations(protocol, finished, scored)
    if problem:
        raise AggregationError(problem)
    by_cell: dict[tuple, list[TrialRun]] = {}
    for run in runs:
        by_cell.setdefault(run.cell, []).append(run)
    if asked is None:  # the spec's seeds were not recorded: the fullest cell is what was asked
        asked = max(len({r.seed for r in cell_runs}) for cell_runs in by_cell.values())
    cells = []
    for (algorithm, task, ratio), cell_runs in by_cell.items():
        done = [r for r in cell_runs if r.status == "FINISHED"]
        label = None
        if done:
            common = set.intersection(*(set(scored[r.run_id]) for r in done))
            if not common:
                labels = "; ".join(f"{r.trial_id}: {sorted(scored[r.run_id])}" for r in done)
                raise AggregationError(f"{algorithm} on {task} at ratio {ratio:g}: the finished runs share no eval "
                                       f"label ({labels})")
            means = {lab: np.mean([scored[r.run_id][lab] for r in done]) for lab in common}
            label = max(sorted(common, key=_label_order), key=lambda lab: means[lab])  # max keeps the first of ties
        cells.append(Cell(algorithm=algorithm, domain=cell_runs[0].domain, task=task, ratio=ratio, label=label,
                          run_ids=[r.run_id for r in done], seeds=[r.seed for r in done],
                          scores=np.array([scored[r.run_id][label] for r in done]), asked=asked))
    return cells


# --- robust statistics (Agarwal et al. 2021; rliable) ------------------------------------------------------

def _trim_mean(values: np.ndarray, proportion: float, axis: int | None = 0):
    from scipy.stats import (
        trim_mean,  # here, not at module load: every trial actor imports this module's types
    )

    return trim_mean(values, proportion, axis=axis)


def interquartile_mean(scores: np.ndarray) -> float:
    """Mean of the middle 50 % of the scores (25 % trimmed from each end), rliable's IQM."""
    return float(_trim_mean(np.asarray(scores, dtype=float), 0.25))


def stratified_bootstrap(samples: list[np.ndarray], statistic, resamples: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of `statistic(resampled)` where each stratum (a cell's seeds) is resampled with
    replacement on its own. `statistic` gets one (resamples, n_cell) array per stratum, returns (resamples,)."""
    rng = np.random.default_rng(seed)
    resampled = [s[rng.integers(0, len(s), size=(resamples, len(s)))] for s in map(np.asarray, samples)]
    low, high = np.percentile(statistic(resampled), [2.5, 97.5])
    return float(low), float(high)


def mean_of_cell_means(strata: list[np.ndarray]) -> np.ndarray:
    return np.mean([s.mean(axis=-1) for s in strata], axis=0)


def pooled_iqm(strata: list[np.ndarray]) -> np.ndarray:
    return _trim_mean(np.concatenate(strata, axis=-1), 0.25, axis=-1)


def _pairwise_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + ½ P(X = Y) over the last axis of x and y: the Mann-Whitney U statistic divided by n·m."""
    diff = x[..., :, None] - y[..., None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))


def probability_of_improvement(x_cells: list[np.ndarray], y_cells: list[np.ndarray], resamples: int,
                               seed: int = 0) -> tuple[float, tuple[float, float]]:
    """rliable's probability of improvement: per cell P(X > Y), averaged over cells, with a stratified interval
    (both algorithms' seeds resampled independently within each cell)."""
    estimate = float(np.mean([_pairwise_improvement(np.asarray(x), np.asarray(y)) for x, y in zip(x_cells, y_cells)]))
    def statistic(strata: list[np.ndarray]) -> np.ndarray:
        half = len(strata) // 2
        return np.mean([_pairwise_improvement(x, y) for x, y in zip(strata[:half], strata[half:])], axis=0)
    return estimate, stratified_bootstrap(list(x_cells) + list(y_cells), statistic, resamples, seed)


def summarize(cells: list[Cell], resamples: int, reference: str = REFERENCE_ALGORITHM
              ) -> tuple[list[DomainSummary], list[RatioSummary], list[Improvement]]:
    """Per algorithm × domain, per algorithm × domain × ratio, and LaMo against each baseline per domain and per
    domain × ratio. The improvements come domain by domain (DOMAIN_ORDER): first the pooled rows (ratio None), one
    per baseline in the registry's order, then the per-ratio rows, baseline by baseline and each baseline's ratios
    ascending; a baseline or ratio without a cell both algorithms have gets no row."""
    scored = [c for c in cells if c.n]
    for c in scored:
        c.ci = stratified_bootstrap([c.scores], mean_of_cell_means, resamples)
    domains, ratios, improvements = [], [], []
    for domain in sorted({c.domain for c in cells}, key=domain_order):
        expected = len({(c.task, c.ratio) for c in cells if c.domain == domain})
        algorithms = sorted({c.algorithm for c in cells if c.domain == domain}, key=algorithm_order)
        for algorithm in algorithms:
            mine = [c for c in scored if (c.algorithm, c.domain) == (algorithm, domain)]
            if not mine:
                continue
            strata = [c.scores for c in mine]
            domains.append(DomainSummary(
                algorithm=algorithm, domain=domain, mean=float(np.mean([c.mean for c in mine])),
                mean_ci=stratified_bootstrap(strata, mean_of_cell_means, resamples),
                iqm=interquartile_mean(np.concatenate(strata)),
                iqm_ci=stratified_bootstrap(strata, pooled_iqm, resamples),
                cells=len(mine), cells_expected=expected, runs=sum(c.n for c in mine)))
            for ratio in sorted({c.ratio for c in mine}):
                at = [c.mean for c in mine if c.ratio == ratio]
                ratios.append(RatioSummary(algorithm, domain, ratio, float(np.mean(at)), len(at)))
        if reference not in algorithms:
            continue
        ours = {(c.task, c.ratio): c for c in scored if (c.algorithm, c.domain) == (reference, domain)}
        pooled, per_ratio = [], []
        for baseline in algorithms:
            theirs = {(c.task, c.ratio): c for c in scored if (c.algorithm, c.domain) == (baseline, domain)}
            shared = [key for key in ours if key in theirs]
            if baseline == reference or not shared:
                continue
            for ratio in [None, *sorted({r for _, r in shared})]:
                keys = [k for k in shared if ratio is None or k[1] == ratio]
                estimate, ci = probability_of_improvement([ours[k].scores for k in keys],
                                                          [theirs[k].scores for k in keys], resamples)
                (pooled if ratio is None else per_ratio).append(
                    Improvement(domain, reference, baseline, estimate, ci, len(keys), ratio))
        improvements += pooled + per_ratio
    return domains, ratios, improvements


# --- the whole pass ----------------------------------------------------------------------------------------

def excluded_runs(runs: list[TrialRun]) -> list[tuple[TrialRun, str]]:
    """The runs that are not scored, each with the reason."""
    return [(r, "failed" if r.status == "FAILED" else f"unfinished ({r.status})")
            for r in runs if r.status != "FINISHED"]


def aggregate_runs(runs: list[TrialRun], protocol: str, *, sweep_id: str, sweep_name: str, parent_run_id: str,
                   asked: int | None = None, resamples: int = 2000, reference: str = REFERENCE_ALGORITHM
                   ) -> Aggregate:
    """Everything the report shows, from a sweep's trial runs (in any order)."""
    if protocol not in PROTOCOLS:
        raise AggregationError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
    runs = sorted(runs, key=run_order)
    excluded = excluded_runs(runs)
    if len(excluded) == len(runs):
        states = ", ".join(f"{s}: {sum(r.status == s for r in runs)}" for s in sorted({r.status for r in runs}))
        raise AggregationError(f"sweep {sweep_id} has no finished trial run to aggregate "
                               f"({len(runs)} trial runs{'; ' + states if runs else ''})")
    cells = build_cells(runs, protocol, asked)
    domains, ratios, improvements = summarize(cells, resamples, reference)
    scored = [r for r in runs if r.status == "FINISHED"]
    return Aggregate(sweep_id=sweep_id, sweep_name=sweep_name, parent_run_id=parent_run_id, protocol=protocol,
                     runs=runs, excluded=excluded, cells=cells, domains=domains, ratios=ratios,
                     improvements=improvements, resamples=resamples, notes=fidelity_notes(scored))
