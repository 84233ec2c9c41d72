"""The aggregator's plots of an `Aggregate`, drawn for a reader.

- score_vs_ratio.png: one panel per task, normalized score against the data ratio on a logarithmic axis
  labelled in percent (the paper's points are 0.5 %, 1 %, 10 %, 100 %); bands (error bars where a task has one
  ratio) are 95 % bootstrap intervals over seeds.
- learning_curves.png: one panel per task × ratio, one line per algorithm (the reported target, mean over
  seeds); under the paper protocol its window, the last 20 % of training, is shaded.
- aggregate_intervals.png (rliable's style): per domain the mean and the IQM with 95 % stratified-bootstrap
  intervals, and LaMo's probability of improvement over each baseline.
- improvement_vs_ratio.png: one panel per domain, LaMo's probability of improvement over each baseline against
  the data ratio (the same axis as score_vs_ratio.png) with its 95 % stratified-bootstrap interval; written only
  when LaMo shares a cell with a baseline.

Conventions: one colour per algorithm in every figure; one legend per figure, below the panels, so it never
covers data; constrained layout and a tight bounding box, so no title or label is clipped. An interval
narrower than MIN_INTERVAL_WIDTH of its axis is drawn at that width (kept inside the statistic's range) and
every estimate has a marker: a certain result — a zero-width interval, a probability of improvement of 1 —
stays visible. No pyplot: no global state, no GUI backend, safe inside a driver.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from orchestrator.scores import PAPER_WINDOW, Aggregate, domain_order, task_order

MIN_INTERVAL_WIDTH = 0.04  # of the axis span: wider than the estimate's marker, so the interval shows around it
DPI = 100
CAPTIONS = {
    "score_vs_ratio.png": "Normalized score against the data ratio (logarithmic), mean over seeds; bands (bars for "
                          "a single ratio): 95% bootstrap intervals over seeds.",
    "learning_curves.png": "Learning curves of the reported target, mean over seeds; shaded: the paper protocol's "
                           "window (the last 20% of training).",
    "aggregate_intervals.png": "Per domain: mean and IQM with 95% stratified-bootstrap intervals, and LaMo's "
                               "probability of improvement over each baseline. Diamonds: estimates; intervals "
                               f"narrower than {MIN_INTERVAL_WIDTH:.0%} of an axis are drawn at that width.",
    "improvement_vs_ratio.png": "Per domain: LaMo's probability of improvement over each baseline at each data ratio "
                                "(logarithmic), over the tasks both have there; bars: 95% stratified-bootstrap "
                                "intervals; dashed: 0.5, no edge. A ratio's points are spread slightly apart.",
}


def _grid(n: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.2)) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    figure = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.6), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for extra in axes[n:]:
        extra.set_visible(False)
    return figure, axes[:n]


def _colors(algorithms: list[str]) -> dict[str, str]:
    return {a: f"C{i % 10}" for i, a in enumerate(algorithms)}


def _legend_below(figure: Figure, handles: dict[str, object]) -> None:
    """One legend for the whole figure, outside and below the panels (constrained layout makes room)."""
    if handles:
        fits = max(1, int(figure.get_figwidth() // 1.3))  # entries per row that fit the figure's width
        figure.legend(list(handles.values()), list(handles), loc="outside lower center",
                      ncols=min(len(handles), fits), frameon=False)


def _suptitle(figure: Figure, text: str) -> None:
    """The figure's title, wrapped to its width (a one-panel figure is narrow)."""
    figure.suptitle(textwrap.fill(text, width=max(20, int(figure.get_figwidth() * 11))))


def _percent(value: float) -> str:
    return f"{value:g}%"


def _ratio_axis(axis, ratios: list[float]) -> None:
    """Logarithmic data-ratio axis in percent of the trajectories, ticked at the sweep's ratios."""
    percents = sorted({100 * r for r in ratios})
    axis.set_xscale("log")
    axis.set_xlim(percents[0] / 1.6, percents[-1] * 1.6)  # every panel the same range: panels compare
    axis.xaxis.set_major_locator(FixedLocator(percents))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _percent(value)))
    axis.xaxis.set_minor_locator(NullLocator())


def score_vs_ratio_figure(result: Aggregate) -> Figure:
    tasks = sorted({c.task for c in result.cells if c.n}, key=task_order)
    ratios = sorted({c.ratio for c in result.cells})
    figure, axes = _grid(len(tasks))
    colors, handles = _colors(result.algorithms), {}
    for axis, task in zip(axes, tasks):
        for algorithm in result.algorithms:
            cells = sorted((c for c in result.cells if (c.algorithm, c.task) == (algorithm, task) and c.n),
                           key=lambda c: c.ratio)
            if not cells:
                continue
            x = [100 * c.ratio for c in cells]
            (line,) = axis.plot(x, [c.mean for c in cells], marker="o", color=colors[algorithm], label=algorithm)
            if len(cells) > 1:
                axis.fill_between(x, [c.ci[0] for c in cells], [c.ci[1] for c in cells], color=colors[algorithm],
                                  alpha=0.2, linewidth=0)
            else:  # a band over one ratio has no width: the interval as a bar
                axis.vlines(x, cells[0].ci[0], cells[0].ci[1], color=colors[algorithm], alpha=0.6, linewidth=2)
            handles.setdefault(algorithm, line)
        _ratio_axis(axis, ratios)
        axis.set(title=task, xlabel="data ratio (% of trajectories)", ylabel="normalized score")
        axis.grid(alpha=0.3)
    _legend_below(figure, {a: handles[a] for a in result.algorithms if a in handles})
    _suptitle(figure, f"Normalized score vs data ratio (protocol {result.protocol}; bands: 95% bootstrap CI over "
                      f"seeds)")
    return figure


def _mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at every logged step; a step some seeds lack averages those that have it."""
    steps = sorted({s for curve in curves for s, _ in curve})
    table = np.full((len(curves), len(steps)), np.nan)
    index = {s: j for j, s in enumerate(steps)}
    for i, curve in enumerate(curves):
        for s, v in curve:
            table[i, index[s]] = v
    return np.array(steps), np.nanmean(table, axis=0)


def learning_curves_figure(result: Aggregate) -> Figure:
    """One panel per task × ratio, one line per algorithm: the reported target's score, mean over seeds."""
    runs = {r.run_id: r for r in result.runs}
    keys = sorted({(c.task, c.ratio) for c in result.cells if c.n}, key=lambda k: (task_order(k[0]), k[1]))
    figure, axes = _grid(len(keys), ncols=4, size=(3.6, 2.8))
    colors, handles = _colors(result.algorithms), {}
    for axis, (task, ratio) in zip(axes, keys):
        cells = [c for a in result.algorithms if (c := result.cell(a, task, ratio)) is not None and c.n]
        for cell in cells:
            steps, mean = _mean_curve([runs[i].curves[cell.label] for i in cell.run_ids])
            (line,) = axis.plot(steps, mean, marker=".", color=colors[cell.algorithm], label=cell.algorithm)
            handles.setdefault(cell.algorithm, line)
        horizons = {runs[i].num_steps for c in cells for i in c.run_ids}
        if result.protocol == "paper" and len(horizons) == 1 and None not in horizons:
            horizon = horizons.pop()
            handles.setdefault("paper window", axis.axvspan(PAPER_WINDOW * horizon, horizon, color="0.88",
                                                            zorder=0, label="paper window"))
        axis.set(title=f"{task}, {_percent(100 * ratio)}", xlabel="gradient step", ylabel="normalized score")
        axis.grid(alpha=0.3)
    _legend_below(figure, {k: handles[k] for k in [*result.algorithms, "paper window"] if k in handles})
    _suptitle(figure, f"Learning curves (reported target, mean over seeds; protocol {result.protocol})")
    return figure


def _intervals(axis, names: list[str], estimates: list[float], cis: list[tuple[float, float]], colors,
               bounds: tuple[float, float] | None = None) -> None:
    """One row per name: the interval as a bar at least MIN_INTERVAL_WIDTH of the axis wide (inside `bounds`,
    the statistic's range, when given) and the estimate as a diamond."""
    y = np.arange(len(names))[::-1]
    values = [v for ci in cis for v in ci] + list(estimates)
    span = bounds[1] - bounds[0] if bounds else (max(values) - min(values) if values else 0.0)
    minimum = MIN_INTERVAL_WIDTH * (span or max(abs(v) for v in values) or 1.0) if values else 0.0
    for yi, name, estimate, (low, high) in zip(y, names, estimates, cis):
        if high - low < minimum:
            low, high = estimate - minimum / 2, estimate + minimum / 2
            if bounds:  # a certain P = 1 is drawn as [1 - width, 1], not past 1
                shift = max(bounds[0] - low, 0.0) - max(high - bounds[1], 0.0)
                low, high = low + shift, high + shift
        axis.plot([low, high], [yi, yi], linewidth=9, alpha=0.55, color=colors.get(name, "C0"),
                  solid_capstyle="butt")
        axis.plot([estimate], [yi], marker="D", markersize=5, color="black", markeredgecolor="white",
                  markeredgewidth=0.8, zorder=3)
    axis.set_yticks(y, names)
    axis.set_ylim(-0.6, len(names) - 0.4)
    axis.grid(axis="x", alpha=0.3)


def aggregate_intervals_figure(result: Aggregate) -> Figure:
    """rliable-style interval plot: per domain the mean and IQM with 95 % CIs, and LaMo's probability of
    improvement over each baseline."""
    domains = sorted({s.domain for s in result.domains}, key=domain_order)
    columns = 3 if result.improvements else 2
    figure = Figure(figsize=(4.6 * columns, 0.6 + max(2.0, 0.45 * len(result.algorithms)) * len(domains)),
                    layout="constrained")
    axes = figure.subplots(len(domains), columns, squeeze=False)
    colors = _colors(result.algorithms)
    for row, domain in zip(axes, domains):
        summaries = [s for s in result.domains if s.domain == domain]
        names = [s.algorithm for s in summaries]
        _intervals(row[0], names, [s.mean for s in summaries], [s.mean_ci for s in summaries], colors)
        _intervals(row[1], names, [s.iqm for s in summaries], [s.iqm_ci for s in summaries], colors)
        row[0].set(title=f"{domain}: mean", xlabel="normalized score")
        row[1].set(title=f"{domain}: IQM", xlabel="normalized score")
        if columns == 3:
            mine = [i for i in result.pooled_improvements if i.domain == domain]
            _intervals(row[2], [i.baseline for i in mine], [i.probability for i in mine], [i.ci for i in mine],
                       colors, bounds=(0.0, 1.0))
            if not mine:
                row[2].text(0.5, 0.5, "no baseline shares a cell", ha="center", va="center", color="gray",
                            transform=row[2].transAxes)
            row[2].axvline(0.5, linestyle="--", color="gray", linewidth=1)
            row[2].set(title=f"{domain}: P({mine[0].reference if mine else 'lamo'} > baseline)", xlim=(-0.03, 1.03),
                       xlabel="probability of improvement")
    return figure


DODGE = 0.03  # decades between the points of neighbouring baselines at one ratio, so their bars do not overlap


def improvement_vs_ratio_figure(result: Aggregate) -> Figure:
    """One panel per domain: LaMo's probability of improvement over each baseline against the data ratio, a line
    per baseline through its estimates (markers) with its 95 % interval as a bar at each ratio."""
    domains = sorted({s.domain for s in result.domains}, key=domain_order)
    rows = result.ratio_improvements
    baselines = [a for a in result.algorithms if any(i.baseline == a for i in rows)]
    reference = rows[0].reference if rows else "lamo"
    figure, axes = _grid(len(domains))
    colors, handles = _colors(result.algorithms), {}
    for axis, domain in zip(axes, domains):
        for k, baseline in enumerate(baselines):
            mine = sorted((i for i in rows if (i.domain, i.baseline) == (domain, baseline)), key=lambda i: i.ratio)
            if not mine:
                continue
            x = [100 * i.ratio * 10 ** (DODGE * (k - (len(baselines) - 1) / 2)) for i in mine]
            (line,) = axis.plot(x, [i.probability for i in mine], marker="o", color=colors[baseline], label=baseline)
            axis.vlines(x, [i.ci[0] for i in mine], [i.ci[1] for i in mine], color=colors[baseline], alpha=0.6,
                        linewidth=2)
            handles.setdefault(baseline, line)
        if any(i.domain == domain for i in rows):
            axis.axhline(0.5, linestyle="--", color="gray", linewidth=1)  # no edge either way
        else:
            axis.text(0.5, 0.5, "no baseline shares a cell", ha="center", va="center", color="gray",
                      transform=axis.transAxes)
        _ratio_axis(axis, [c.ratio for c in result.cells])
        axis.set(title=domain, xlabel="data ratio (% of trajectories)", ylabel=f"P({reference} > baseline)",
                 ylim=(-0.05, 1.05))
        axis.grid(alpha=0.3)
    _legend_below(figure, handles)
    _suptitle(figure, f"Probability of improvement of {reference} over each baseline vs data ratio (protocol "
                      f"{result.protocol}; bars: 95% stratified-bootstrap CI)")
    return figure


def write_plots(result: Aggregate, out: Path) -> list[Path]:
    """The PNGs into `out`: improvement_vs_ratio.png only when LaMo shares a cell with a baseline (else it would
    be empty)."""
    figures = [("score_vs_ratio.png", score_vs_ratio_figure), ("learning_curves.png", learning_curves_figure),
               ("aggregate_intervals.png", aggregate_intervals_figure)]
    if result.ratio_improvements:
        figures.append(("improvement_vs_ratio.png", improvement_vs_ratio_figure))
    paths = []
    for name, make in figures:
        make(result).savefig(out / name, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
        paths.append(out / name)
    return paths
