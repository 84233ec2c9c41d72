"""The aggregator's plots as a reader sees them: rendered with Agg and inspected as artists and as pixels.

The figures are caught where the report saves them, so these tests see exactly what goes into report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orchestrator import plots, report
from orchestrator.runs import TrialRun
from orchestrator.scores import aggregate_runs
from trainers.runtime.record import make_record

PAPER_RATIOS = (0.005, 0.01, 0.1, 1.0)  # LaMo's locomotion ratios


def finished(algorithm: str, task: str, ratio: float, seed: int, score: float) -> TrialRun:
    label = "policy" if algorithm == "bc" else "target_3600"
    curve = [(step, score + (step - 1000) / 100) for step in range(100, 1001, 100)]
    record = make_record(algorithm, task, ratio, seed, {"num_steps": 1000, "eval_every": 100})
    return TrialRun(run_id=f"{algorithm}-{task}-{ratio}-{seed}", record=record, status="FINISHED",
                    curves={label: curve})


def aggregated(runs: list[TrialRun]):
    return aggregate_runs(runs, "paper", sweep_id="grid-0000000000", sweep_name="grid", parent_run_id="p",
                          resamples=200)


def sweep(levels: dict[str, float], grid: dict[str, tuple[float, ...]]):
    return aggregated([finished(algorithm, task, ratio, seed, level + 10 * np.log10(200 * ratio) + seed)
                       for algorithm, level in levels.items() for seed in range(3)
                       for task, ratios in grid.items() for ratio in ratios])


@pytest.fixture(scope="module")
def paper_grid():
    """lamo, dt and bc on hopper-medium at LaMo's ratios and on reacher2d-medium at 100 % (a one-ratio panel);
    lamo beats bc in every cell and seed, so its probability of improvement over bc is exactly 1."""
    return sweep({"lamo": 60.0, "dt": 45.0, "bc": 20.0},
                 {"hopper-medium": PAPER_RATIOS, "reacher2d-medium": (1.0,)})


@pytest.fixture(scope="module")
def quickstart_like():
    """The quickstart's shape: seven algorithms on one task at two ratios, so one narrow panel per plot."""
    return sweep({"lamo": 60.0, "lamo_random_init": 50.0, "dt": 45.0, "bc": 20.0, "td3_bc": 30.0, "iql": 35.0,
                  "cql": 25.0}, {"reacher2d-medium": (0.1, 1.0)})


def caught_figures(result, out: Path) -> dict[str, Figure]:
    """The report's figures by file stem, caught as they are saved, drawn."""
    caught = {}
    original = Figure.savefig

    def catch(figure, fname, *args, **kwargs):
        caught[Path(fname).stem] = figure
        return original(figure, fname, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", catch)
        report.write_outputs(result, out)
    assert {"score_vs_ratio", "learning_curves", "aggregate_intervals", "improvement_vs_ratio"} <= caught.keys()
    for figure in caught.values():
        FigureCanvasAgg(figure).draw()
    return caught


@pytest.fixture(scope="module")
def figures(paper_grid, tmp_path_factory) -> dict[str, Figure]:
    return caught_figures(paper_grid, tmp_path_factory.mktemp("paper-grid"))


@pytest.fixture(scope="module")
def narrow_figures(quickstart_like, tmp_path_factory) -> dict[str, Figure]:
    return caught_figures(quickstart_like, tmp_path_factory.mktemp("quickstart-like"))


def panels(figure: Figure) -> list:
    return [axis for axis in figure.axes if axis.get_visible() and axis.get_title()]


def test_score_against_a_logarithmic_ratio_axis_labelled_in_percent(figures, narrow_figures):
    figure = figures["score_vs_ratio"]
    assert {axis.get_title() for axis in panels(figure)} == {"hopper-medium", "reacher2d-medium"}
    for axis in panels(figure):
        assert axis.get_xscale() == "log", axis.get_title()
        low, high = axis.get_xlim()
        shown = [label.get_text() for label, tick in zip(axis.get_xticklabels(), axis.get_xticks())
                 if low <= tick <= high and label.get_text()]
        assert shown == ["0.5%", "1%", "10%", "100%"], axis.get_title()
    [narrow] = panels(narrow_figures["score_vs_ratio"])  # two ratios, a factor of 10 apart: still logarithmic
    assert narrow.get_xscale() == "log" and [t.get_text() for t in narrow.get_xticklabels()] == ["10%", "100%"]
    hopper = next(axis for axis in panels(figure) if axis.get_title() == "hopper-medium")
    lines = {line.get_label(): line for line in hopper.get_lines()}
    assert list(lines["lamo"].get_xdata()) == [100 * r for r in PAPER_RATIOS]  # percent of the trajectories


def test_a_one_ratio_panel_still_shows_each_algorithms_interval(paper_grid, figures):
    """A band over one ratio has no width: reacher2d-medium, at 100 % only, draws the interval as a bar."""
    reacher = next(a for a in panels(figures["score_vs_ratio"]) if a.get_title() == "reacher2d-medium")
    bars = {tuple(np.round(segment[:, 1], 6)) for bars in reacher.collections for segment in bars.get_segments()}
    cells = [paper_grid.cell(a, "reacher2d-medium", 1.0) for a in paper_grid.algorithms]
    assert bars == {tuple(np.round(c.ci, 6)) for c in cells} and all(c.ci[0] < c.ci[1] for c in cells)


@pytest.mark.parametrize("which", ["figures", "narrow_figures"])
def test_legends_and_titles_are_inside_the_figure_and_off_the_data(which, request):
    figures = request.getfixturevalue(which)
    for name, figure in figures.items():
        renderer = figure.canvas.get_renderer()
        canvas = figure.bbox.padded(1)
        legends = list(figure.legends) + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
        texts = [axis.title for axis in panels(figure)] + ([figure._suptitle] if figure._suptitle else [])
        for artist in legends + texts:
            extent = artist.get_window_extent(renderer)
            assert canvas.contains(extent.x0, extent.y0) and canvas.contains(extent.x1, extent.y1), (name, artist)
        for legend in legends:
            extent = legend.get_window_extent(renderer)
            for axis in panels(figure):
                assert not extent.overlaps(axis.get_window_extent(renderer)), (name, axis.get_title())
    assert figures["score_vs_ratio"].legends and figures["learning_curves"].legends  # a legend there is


def colored_and_dark_columns(figure: Figure, axis, y: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel columns inside `axis` where the row at data height `y` is coloured (the interval) or near black
    (the estimate's marker)."""
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)
    box = axis.get_window_extent()
    row = int(round(pixels.shape[0] - axis.transData.transform((0, y))[1]))
    band = pixels[row - 2:row + 3, int(box.x0) + 2:int(box.x1) - 1]
    colored = (band.max(axis=-1) - band.min(axis=-1) > 40).any(axis=0)
    dark = (band.max(axis=-1) < 90).any(axis=0)
    return np.flatnonzero(colored), np.flatnonzero(dark)


def test_a_probability_of_improvement_of_one_is_drawn_visibly(paper_grid, figures):
    improvement = {(i.domain, i.baseline): i for i in paper_grid.pooled_improvements}
    certain = improvement["locomotion", "bc"]
    assert certain.probability == 1.0 and certain.ci == (1.0, 1.0)  # the case that used to vanish
    figure = figures["aggregate_intervals"]
    axis = next(a for a in panels(figure) if a.get_title().startswith("locomotion: P("))
    rows = {label.get_text(): tick for label, tick in zip(axis.get_yticklabels(), axis.get_yticks())}
    colored, dark = colored_and_dark_columns(figure, axis, rows["bc"])
    width = axis.get_window_extent().width
    assert len(colored) >= 3, "the interval of P = 1 has no visible width"
    assert len(dark) >= 3, "the estimate of P = 1 has no visible marker"
    assert colored.min() > 0.9 * width and dark.min() > 0.9 * width  # drawn where 1 is, not elsewhere


def baseline_lines(axis, baselines) -> dict[str, object]:
    return {line.get_label(): line for line in axis.get_lines() if line.get_label() in baselines}


def test_improvement_against_the_data_ratio_has_a_panel_per_domain_and_a_line_per_baseline(paper_grid, figures):
    figure = figures["improvement_vs_ratio"]
    assert [axis.get_title() for axis in panels(figure)] == ["locomotion", "reacher2d"]
    score_colors = {line.get_label(): line.get_color() for line in panels(figures["score_vs_ratio"])[0].get_lines()}
    for axis, ratios in zip(panels(figure), (PAPER_RATIOS, (1.0,))):
        lines = baseline_lines(axis, {"dt", "bc"})
        assert list(lines) == ["dt", "bc"] and axis.get_xscale() == "log"
        for name, line in lines.items():
            assert list(line.get_ydata()) == [1.0] * len(ratios)  # lamo beats both everywhere
            assert line.get_color() == score_colors[name] and line.get_marker() == "o"
        # at its ratio, each baseline's point sits a little apart from the other's, within 10 % of the ratio
        x = {name: np.asarray(line.get_xdata()) / (100 * np.array(ratios)) for name, line in lines.items()}
        assert np.allclose(x["dt"], x["dt"][0]) and x["dt"][0] < 1 < x["bc"][0] < 1.1 and x["dt"][0] > 0.9
        assert axis.get_ylim()[0] < 0 and axis.get_ylim()[1] > 1
        assert [list(line.get_ydata()) for line in axis.get_lines() if line.get_linestyle() == "--"] == [[0.5, 0.5]]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["dt", "bc"]


@pytest.fixture(scope="module")
def crossing():
    """lamo ahead of dt on hopper-medium at 1 % of the data and behind at 100 %; reacher2d-medium has lamo alone."""
    levels = {("lamo", "hopper-medium", 0.01): 50.0, ("dt", "hopper-medium", 0.01): 10.0,
              ("lamo", "hopper-medium", 1.0): 10.0, ("dt", "hopper-medium", 1.0): 50.0,
              ("lamo", "reacher2d-medium", 1.0): 30.0}
    return aggregated([finished(algorithm, task, ratio, seed, level + seed)
                       for (algorithm, task, ratio), level in levels.items() for seed in range(3)])


def test_improvement_against_the_data_ratio_shows_where_lamo_is_ahead(crossing):
    figure = plots.improvement_vs_ratio_figure(crossing)
    FigureCanvasAgg(figure).draw()
    locomotion, reacher = panels(figure)
    [dt] = baseline_lines(locomotion, {"dt"}).values()
    assert list(dt.get_xdata()) == [1.0, 100.0] and list(dt.get_ydata()) == [1.0, 0.0]  # one baseline: no spread
    rows = {i.ratio: i for i in crossing.ratio_improvements}
    [bars] = locomotion.collections
    assert [tuple(segment[:, 1]) for segment in bars.get_segments()] == [rows[0.01].ci, rows[1.0].ci]
    assert [text.get_text() for text in reacher.texts] == ["no baseline shares a cell"]
    assert not reacher.get_lines()


def test_no_improvement_figure_without_lamo(tmp_path):
    result = aggregated([finished(algorithm, "hopper-medium", ratio, seed, 10.0 + seed)
                         for algorithm in ("dt", "bc") for ratio in (0.1, 1.0) for seed in range(2)])
    assert not result.improvements
    assert [path.name for path in plots.write_plots(result, tmp_path)] == [
        "score_vs_ratio.png", "learning_curves.png", "aggregate_intervals.png"]
