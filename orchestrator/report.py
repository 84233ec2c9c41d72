"""What the aggregator produces from an `Aggregate`: tables (Markdown, CSV, LaTeX, HTML, terminal), the
fidelity notes, the PNG plots (orchestrator/plots.py) and one self-contained HTML report (images as data URIs,
no external JS or CSS).

Every table is built once as a `Table` of display strings and rendered to each format, so the terminal, the
Markdown file, the LaTeX file and the report always show the same numbers.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.plots import CAPTIONS, write_plots
from orchestrator.scores import Aggregate, Cell, domain_order, task_order

NOT_IN_LATEX = ("Sources", "Excluded runs", "Cost")  # the paper's tables only
SEED_FLAG_NOTE = "[n/k seeds]: the cell has fewer finished seeds than the sweep asked for"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    bold: list[set[int]] = field(default_factory=list)  # per row, the columns to emphasise (best score)
    rules: set[int] = field(default_factory=set)  # row indices a horizontal rule goes above
    notes: list[str] = field(default_factory=list)

    def add(self, row: list[str], bold: set[int] | None = None, rule: bool = False) -> None:
        if rule and self.rows:
            self.rules.add(len(self.rows))
        self.rows.append(row)
        self.bold.append(bold or set())


def _number(x: float, digits: int = 1) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _interval(estimate: float, ci: tuple[float, float], digits: int = 1) -> str:
    return f"{_number(estimate, digits)} [{_number(ci[0], digits)}, {_number(ci[1], digits)}]"


def ratio_text(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def cell_text(cell: Cell | None) -> str:
    """"76.2 ± 3.1 (target 40)", with "[2/3 seeds]" when seeds are missing."""
    if cell is None:
        return ""
    text = _number(cell.mean) if cell.n < 2 else f"{cell.mean:.1f} ± {cell.std:.1f}"
    if cell.target is not None:
        text += f" (target {cell.target})"
    if cell.flagged:
        text += f" [{cell.n}/{cell.asked} seeds]"
    return text


def _tasks_at(result: Aggregate, domain: str, ratio: float) -> int:
    """How many of the domain's tasks any algorithm has a cell for at `ratio`."""
    return len({c.task for c in result.cells if (c.domain, c.ratio) == (domain, ratio)})


def _best_columns(values: list[float], offset: int) -> set[int]:
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return set()
    return {offset + i for i, v in enumerate(values) if v == max(finite)}


# --- tables ------------------------------------------------------------------------------------------------

def main_table(result: Aggregate) -> Table:
    """The paper's layout: rows tasks × ratios grouped by domain, columns algorithms, each domain's average last."""
    algorithms = result.algorithms
    table = Table(f"Normalized score, protocol {result.protocol}", ["Task", "Ratio", *algorithms],
                  notes=[f"Protocol: {result.protocol_text}.", "Cells: mean ± sample std over seeds.", SEED_FLAG_NOTE])
    summaries = {(s.algorithm, s.domain): s for s in result.domains}
    for domain in sorted({c.domain for c in result.cells}, key=domain_order):
        keys = sorted({(c.task, c.ratio) for c in result.cells if c.domain == domain},
                      key=lambda k: (task_order(k[0]), k[1]))
        first = True
        for task, ratio in keys:
            cells = [result.cell(a, task, ratio) for a in algorithms]
            table.add([task, ratio_text(ratio), *map(cell_text, cells)],
                      _best_columns([c.mean if c else math.nan for c in cells], 2), rule=first)
            first = False
        averages, texts = [], []
        for algorithm in algorithms:
            summary = summaries.get((algorithm, domain))
            # an average over fewer cells is shown, flagged, and never marked best
            complete = summary is not None and summary.cells == summary.cells_expected
            averages.append(summary.mean if complete else math.nan)
            texts.append("" if summary is None else _number(summary.mean) + (
                f" [{summary.cells}/{summary.cells_expected} cells]" if summary.cells < summary.cells_expected else ""))
        table.add([f"Average ({domain})", "", *texts], _best_columns(averages, 2), rule=True)
    return table


def domain_table(result: Aggregate) -> Table:
    table = Table("Aggregates per domain", ["Domain", "Algorithm", "Mean [95% CI]", "IQM [95% CI]", "Cells", "Runs"],
                  notes=[(f"95% percentile intervals from a stratified bootstrap ({result.resamples} resamples; seeds "
                          f"resampled within each task × ratio cell). Mean: over cells of the per-cell mean. IQM: "
                          f"interquartile mean of all run scores (Agarwal et al. 2021).")])
    previous = None
    for s in result.domains:
        table.add([s.domain, s.algorithm, _interval(s.mean, s.mean_ci), _interval(s.iqm, s.iqm_ci),
                   f"{s.cells}/{s.cells_expected}", str(s.runs)], rule=s.domain != previous)
        previous = s.domain
    return table


def ratio_table(result: Aggregate) -> Table:
    algorithms = result.algorithms
    table = Table("Mean over tasks per data ratio", ["Domain", "Ratio", *algorithms])
    previous = None
    for domain, ratio in sorted({(r.domain, r.ratio) for r in result.ratios}, key=lambda k: (domain_order(k[0]), k[1])):
        tasks = _tasks_at(result, domain, ratio)
        values = {r.algorithm: r for r in result.ratios if (r.domain, r.ratio) == (domain, ratio)}
        texts = [_number(values[a].mean) + ("" if values[a].tasks == tasks else f" [{values[a].tasks}/{tasks} tasks]")
                 if a in values else "—" for a in algorithms]
        complete = [values[a].mean if a in values and values[a].tasks == tasks else math.nan for a in algorithms]
        table.add([domain, ratio_text(ratio), *texts], _best_columns(complete, 2), rule=domain != previous)
        previous = domain
    return table


def improvement_table(result: Aggregate) -> Table:
    """Each domain's probabilities of improvement over all its data ratios."""
    table = Table("Probability of improvement", ["Domain", "Comparison", "P(X > Y) [95% CI]", "Cells"],
                  notes=[("P(X > Y) per task × ratio cell from the Mann-Whitney U statistic, averaged over the cells "
                          "both algorithms have; stratified bootstrap interval (rliable).")])
    for i in result.pooled_improvements:
        table.add([i.domain, f"{i.reference} > {i.baseline}", _interval(i.probability, i.ci, 2), str(i.cells)])
    return table


def ratio_improvement_table(result: Aggregate, domain: str) -> Table | None:
    """One domain's probabilities of improvement per data ratio: a row per comparison, a column per ratio, so a
    reader sees at which ratio LaMo's edge appears. None when they span fewer than two ratios (the pooled row
    says it all)."""
    mine = {(i.baseline, i.ratio): i for i in result.ratio_improvements if i.domain == domain}
    ratios = sorted({ratio for _, ratio in mine})
    if len(ratios) < 2:
        return None
    tasks_at = {r: _tasks_at(result, domain, r) for r in ratios}

    def text(baseline: str, ratio: float) -> str:
        found = mine.get((baseline, ratio))
        if found is None:
            return "—"
        return _interval(found.probability, found.ci, 2) + ("" if found.cells == tasks_at[ratio] else
                                                             f" [{found.cells}/{tasks_at[ratio]} tasks]")

    table = Table(f"Probability of improvement by data ratio ({domain})", ["Comparison", *map(ratio_text, ratios)],
                  notes=[("P(X > Y) [95% CI] per task from the Mann-Whitney U statistic, averaged over the tasks "
                          "both algorithms have at the ratio; stratified bootstrap interval (rliable). [n/k tasks]: "
                          "over n of the ratio's k tasks; —: no task at that ratio both algorithms have.")])
    reference = next(iter(mine.values())).reference
    for baseline in dict.fromkeys(b for b, _ in mine):  # summarize's order: the registry's
        table.add([f"{reference} > {baseline}", *(text(baseline, r) for r in ratios)])
    return table


def _cost_columns(runs) -> list[str]:
    spent = [r for r in runs if not r.reused_from]
    reused = [r for r in runs if r.reused_from]
    return [str(len(spent)), _number(sum(r.wall_seconds for r in spent) / 3600, 2),
            _number(sum(r.gpu_hours for r in spent), 2), str(len(reused)),
            _number(sum(r.wall_seconds for r in reused) / 3600, 2), _number(sum(r.gpu_hours for r in reused), 2)]


def cost_table(result: Aggregate) -> Table:
    table = Table("Cost", ["Algorithm", "Runs", "Wall hours", "GPU-hours", "Reused runs", "Reused wall hours",
                           "Reused GPU-hours"],
                  notes=["Every run counts, failed and unfinished ones included: their time was spent. Reused runs "
                         "were trained by earlier sweeps (orchestrator/reuse.py): their cost is shown apart."])
    for algorithm in result.algorithms:
        table.add([algorithm, *_cost_columns([r for r in result.runs if r.algorithm == algorithm])])
    table.add(["Sweep", *_cost_columns(result.runs)], rule=True)
    return table


def sources_table(result: Aggregate) -> Table:
    """Which sweep trained each cell's runs (rows only when the runs come from more than one sweep)."""
    table = Table("Sources", ["Algorithm", "Task", "Ratio", "Sweeps (runs)"],
                  notes=["The sweep each run was trained in: a reused run's original sweep, or each sweep of a "
                         "several-sweep aggregation (the newest run of each computation)."])
    if len({r.source_sweep for r in result.runs}) < 2 and not any(r.reused_from for r in result.runs):
        return table
    for c in result.cells:
        sources = Counter(r.source_sweep for r in result.runs if r.cell == (c.algorithm, c.task, c.ratio))
        table.add([c.algorithm, c.task, ratio_text(c.ratio), ", ".join(f"{s} ({n})" for s, n in sources.items())])
    return table


def excluded_table(result: Aggregate) -> Table:
    table = Table("Excluded runs", ["Trial", "Status", "Reason", "Run id"])
    for run, reason in result.excluded:
        table.add([run.trial_id, run.status, reason, run.run_id])
    return table


def overview_table(result: Aggregate) -> Table:
    """Algorithms × domains: each domain's mean over its task × ratio cells (the paper's headline number)."""
    domains = sorted({s.domain for s in result.domains}, key=domain_order)
    table = Table("Average per domain", ["Algorithm", *domains],
                  notes=["Mean over the domain's task × ratio cells of the per-cell mean over seeds; "
                         "[n/k cells]: fewer cells than the domain has, never marked best."])
    summaries = {(s.algorithm, s.domain): s for s in result.domains}
    best = {}
    for d in domains:
        complete = [s.mean for s in result.domains if s.domain == d and s.cells == s.cells_expected]
        best[d] = max(complete) if len(complete) >= 2 else None
    for algorithm in result.algorithms:
        row, bold = [algorithm], set()
        for j, d in enumerate(domains, 1):
            s = summaries.get((algorithm, d))
            row.append("" if s is None else _number(s.mean) + (
                f" [{s.cells}/{s.cells_expected} cells]" if s.cells < s.cells_expected else ""))
            if s is not None and s.cells == s.cells_expected and s.mean == best[d]:
                bold.add(j)
        table.add(row, bold)
    return table


def task_table(result: Aggregate, task: str) -> Table:
    """One task: algorithms as rows, its data ratios as columns (a screen's width for the paper's 12 algorithms)."""
    ratios = sorted({c.ratio for c in result.cells if c.task == task})
    algorithms = [a for a in result.algorithms if any(result.cell(a, task, r) for r in ratios)]
    table = Table(task, ["Algorithm", *map(ratio_text, ratios)])
    columns = [[result.cell(a, task, r) for a in algorithms] for r in ratios]
    best = [_best_columns([c.mean if c else math.nan for c in column], 0) for column in columns]
    for i, algorithm in enumerate(algorithms):
        table.add([algorithm, *(cell_text(column[i]) for column in columns)],
                  {j + 1 for j, rows in enumerate(best) if i in rows})
    return table


def domain_tables(result: Aggregate, domain: str) -> list[Table]:
    """The domain's section of the report: a table per task, then its aggregates, ratio means and improvements
    (over all its ratios, then per ratio)."""
    tasks = sorted({c.task for c in result.cells if c.domain == domain}, key=task_order)
    tables = [task_table(result, task) for task in tasks]
    aggregates = domain_table(result)
    kept = [i for i, row in enumerate(aggregates.rows) if row[0] == domain]
    tables.append(Table(f"Aggregates ({domain})", aggregates.header[1:], [aggregates.rows[i][1:] for i in kept],
                        [set() for _ in kept], notes=aggregates.notes))
    ratios = sorted({r.ratio for r in result.ratios if r.domain == domain})
    if len(ratios) > 1:
        means = {(r.algorithm, r.ratio): r for r in result.ratios if r.domain == domain}
        tasks_at = {r: _tasks_at(result, domain, r) for r in ratios}

        def mean_text(algorithm: str, ratio: float) -> str:
            found = means.get((algorithm, ratio))
            if found is None:
                return "—"
            return _number(found.mean) + ("" if found.tasks == tasks_at[ratio] else
                                          f" [{found.tasks}/{tasks_at[ratio]} tasks]")

        table = Table(f"Mean over tasks per data ratio ({domain})", ["Algorithm", *map(ratio_text, ratios)])
        for algorithm in [a for a in result.algorithms if any((a, r) in means for r in ratios)]:
            table.add([algorithm, *(mean_text(algorithm, r) for r in ratios)])
        tables.append(table)
    improvements = improvement_table(result)
    kept = [i for i, row in enumerate(improvements.rows) if row[0] == domain]
    if kept:
        tables.append(Table(f"Probability of improvement ({domain})", improvements.header[1:],
                            [improvements.rows[i][1:] for i in kept], [set() for _ in kept],
                            notes=improvements.notes))
    by_ratio = ratio_improvement_table(result, domain)
    if by_ratio is not None:
        tables.append(by_ratio)
    return tables


def all_tables(result: Aggregate) -> list[Table]:
    tables = [main_table(result), domain_table(result), ratio_table(result)]
    if result.improvements:
        tables.append(improvement_table(result))
        domains = sorted({c.domain for c in result.cells}, key=domain_order)
        tables += [t for d in domains if (t := ratio_improvement_table(result, d)) is not None]
    sources = sources_table(result)
    return tables + ([sources] if sources.rows else []) + [excluded_table(result), cost_table(result)]


# --- renderers ---------------------------------------------------------------------------------------------

def to_markdown(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    rows = [[f"**{c}**" if j in bold and c else c for j, c in enumerate(row)]
            for row, bold in zip(table.rows, table.bold)]
    lines = [f"### {table.title}", "", line(table.header), line(["---"] * len(table.header)), *map(line, rows)]
    if not table.rows:
        lines.append(line(["(none)"] + [""] * (len(table.header) - 1)))
    return "\n".join(lines + [""] + [f"{n}  " for n in table.notes]) + "\n"


def _latex_escape(text: str) -> str:
    for plain, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                           ("±", r"$\pm$"), ("—", "--"), (">", r"$>$")):
        text = text.replace(plain, escaped)
    return text


def to_latex(table: Table) -> str:
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(table.title)}}}",
             r"\begin{tabular}{ll" + "r" * (len(table.header) - 2) + "}", r"\toprule",
             " & ".join(map(_latex_escape, table.header)) + r" \\", r"\midrule"]
    for i, (row, bold) in enumerate(zip(table.rows, table.bold)):
        if i in table.rules:
            lines.append(r"\midrule")
        cells = [rf"\textbf{{{_latex_escape(c)}}}" if j in bold else _latex_escape(c) for j, c in enumerate(row)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: Table, level: int = 2) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for i, (row, bold) in enumerate(zip(table.rows, table.bold)):
        cells = "".join(f"<td>{'<b>' if j in bold else ''}{html.escape(c)}{'</b>' if j in bold else ''}</td>"
                        for j, c in enumerate(row))
        row_class = ' class="rule"' if i in table.rules else ""
        body.append(f"<tr{row_class}>{cells}</tr>")
    if not table.rows:
        body.append(f"<tr><td colspan=\"{len(table.header)}\">(none)</td></tr>")
    notes = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in table.notes)
    return (f"<h{level}>{html.escape(table.title)}</h{level}>\n<table><thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + f"\n</tbody></table>\n{notes}\n")


FIDELITY_TITLE = "Fidelity notes: how these runs differ from the official setup"


def fidelity_markdown(result: Aggregate) -> str:
    lines = [f"### {FIDELITY_TITLE}", ""]
    lines += [f"- **{n.topic}**: {n.text} (source: {n.source})" for n in result.notes] or ["- (none known)"]
    return "\n".join(lines) + "\n"


def fidelity_latex(result: Aggregate) -> str:
    """As comments: the notes travel with the tables without becoming part of a paper's page."""
    return "\n".join([f"% {FIDELITY_TITLE}:"] + [f"% {n.topic}: {n.text} (source: {n.source})"
                                                   for n in result.notes]) + "\n"


def fidelity_html(result: Aggregate) -> str:
    items = "".join(f"<li><b>{html.escape(n.topic)}</b>: {html.escape(n.text)} "
                    f"<span class=\"source\">Source: {html.escape(n.source)}</span></li>\n" for n in result.notes)
    return f"<h2>{html.escape(FIDELITY_TITLE)}</h2>\n<ul class=\"fidelity\">\n{items or '<li>(none known)</li>'}</ul>\n"


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _blank(x: float) -> float | str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else x


def write_csvs(result: Aggregate, out: Path) -> list[Path]:
    """Tidy numeric files next to the display tables, for anyone who wants to re-plot."""
    scores = {}
    for c in result.cells:
        scores.update({run_id: score for run_id, score in zip(c.run_ids, c.scores)})
    cell_of = {r.run_id: result.cell(*r.cell) for r in result.runs}
    excluded = {r.run_id: reason for r, reason in result.excluded}
    cost: dict[tuple, list[float]] = {}
    for r in result.runs:
        spent = cost.setdefault(r.cell, [0.0, 0.0])
        spent[0] += r.wall_seconds
        spent[1] += r.gpu_hours
    return [
        write_csv(out / "cells.csv", ["algorithm", "domain", "task", "ratio", "label", "mean", "std", "n", "asked",
                                      "fewer_seeds_than_asked", "ci_low", "ci_high", "wall_seconds", "gpu_hours"],
                  [[c.algorithm, c.domain, c.task, c.ratio, c.label or "", _blank(c.mean), _blank(c.std), c.n, c.asked,
                    c.flagged, _blank(c.ci[0]), _blank(c.ci[1]), *cost[c.algorithm, c.task, c.ratio]]
                   for c in result.cells]),
        write_csv(out / "runs.csv", ["run_id", "trial_id", "algorithm", "domain", "task", "ratio", "seed", "status",
                                     "label", "score", "excluded", "wall_seconds", "gpu_hours", "source_sweep",
                                     "reused_from"],
                  [[r.run_id, r.trial_id, r.algorithm, r.domain, r.task, r.ratio, r.seed, r.status,
                    (cell_of[r.run_id].label or "") if r.run_id in scores else "", scores.get(r.run_id, ""),
                    excluded.get(r.run_id, ""), r.wall_seconds, r.gpu_hours, r.source_sweep, r.reused_from or ""]
                   for r in result.runs]),
        write_csv(out / "domains.csv", ["algorithm", "domain", "mean", "mean_ci_low", "mean_ci_high", "iqm",
                                        "iqm_ci_low", "iqm_ci_high", "cells", "cells_expected", "runs", "resamples"],
                  [[s.algorithm, s.domain, s.mean, *s.mean_ci, s.iqm, *s.iqm_ci, s.cells, s.cells_expected, s.runs,
                    result.resamples] for s in result.domains]),
        write_csv(out / "ratios.csv", ["algorithm", "domain", "ratio", "mean", "tasks"],
                  [[r.algorithm, r.domain, r.ratio, r.mean, r.tasks] for r in result.ratios]),
        write_csv(out / "improvement.csv", ["domain", "reference", "baseline", "ratio", "probability", "ci_low",
                                            "ci_high", "cells", "resamples"],  # ratio empty: over all ratios
                  [[i.domain, i.reference, i.baseline, _blank(i.ratio), i.probability, *i.ci, i.cells,
                    result.resamples] for i in result.improvements]),
    ]


# --- report and terminal -----------------------------------------------------------------------------------

_STYLE = """body{font-family:sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0;font-size:14px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eef}td:first-child,th:first-child{text-align:left}tr.rule td{border-top:2px solid #444}
.note{font-size:12px;color:#555;margin:2px 0}.protocol{background:#ffd;padding:6px;border:1px solid #cc9}
ul.fidelity{font-size:14px;max-width:1100px}ul.fidelity li{margin:4px 0}.source{color:#777;font-size:12px}
nav{font-size:14px;margin:0.5em 0}nav a{margin-right:1em}
section.domain{border-top:3px solid #447;margin-top:1.5em}h3{margin:0.9em 0 0.2em;font-size:16px}
details{margin:0.8em 0}summary{cursor:pointer;font-weight:bold;font-size:17px}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}"""


def _collapsed(summary: str, body: str) -> str:
    """A long list shut by default: a 700-run sweep's per-run and per-cell rows would bury the tables."""
    return f"<details><summary>{html.escape(summary)}</summary>\n{body}</details>\n"


def write_html(result: Aggregate, tables: list[Table], images: list[Path], path: Path) -> Path:
    """The report: the average per domain, then a section per domain (a table per task with algorithms as rows and
    data ratios as columns, the domain's aggregates), the fidelity notes, the plots and the cost; the excluded runs,
    the sources and the paper's one-table layout collapsed."""
    figures = "".join(f"<figure><img alt=\"{html.escape(p.stem)}\" src=\"data:image/png;base64,"
                      f"{base64.b64encode(p.read_bytes()).decode()}\"><figcaption>{html.escape(p.name)}: "
                      f"{html.escape(CAPTIONS.get(p.name, ''))}</figcaption></figure>\n" for p in images)
    by_title = {t.title: t for t in tables}
    excluded, cost, sources = by_title["Excluded runs"], by_title["Cost"], by_title.get("Sources")
    domains = sorted({c.domain for c in result.cells}, key=domain_order)
    sections = "".join(
        f"<section class=\"domain\" id=\"domain-{html.escape(d)}\"><h2>Domain: {html.escape(d)}</h2>\n"
        + "".join(to_html(t, level=3) for t in domain_tables(result, d)) + "</section>\n" for d in domains)
    contents = [("#average", "Average per domain"), *((f"#domain-{d}", d) for d in domains),
                ("#fidelity", "Fidelity notes"), ("#plots", "Plots"), ("#cost", "Cost")]
    nav = "<nav>" + "".join(f"<a href=\"{href}\">{html.escape(text)}</a>" for href, text in contents) + "</nav>\n"
    finished = len(result.runs) - len(result.excluded)
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Sweep {html.escape(result.sweep_id)}</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>Sweep {html.escape(result.sweep_name)}</h1>\n"
            f"<p>Sweep id {html.escape(result.sweep_id)}, MLflow parent run {html.escape(result.parent_run_id)}; "
            f"{finished} finished runs aggregated, {len(result.excluded)} excluded.</p>\n"
            f"<p class=\"protocol\">Protocol: {html.escape(result.protocol_text)}.</p>\n"
            + nav + "<div id=\"average\">" + to_html(overview_table(result)) + "</div>\n"
            + "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in tables[0].notes[1:])  # protocol: above
            + sections
            + f"<div id=\"fidelity\">{fidelity_html(result)}</div>\n<h2 id=\"plots\">Plots</h2>\n{figures}"
            + f"<div id=\"cost\">{to_html(cost)}</div>\n"
            + _collapsed(f"Excluded runs ({len(excluded.rows)}: not FINISHED)", to_html(excluded, level=3))
            + (_collapsed(f"Sources ({len(sources.rows)} cells)", to_html(sources, level=3)) if sources else "")
            + _collapsed("Every cell in the paper's layout (tasks × ratios by algorithms, as in tables.md and "
                         "tables.tex)", to_html(tables[0], level=3))
            + "</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


def write_outputs(result: Aggregate, out: Path) -> list[Path]:
    """Every file of the aggregate into `out`: tables, CSVs, plots and report.html."""
    out.mkdir(parents=True, exist_ok=True)
    tables = all_tables(result)
    files = write_csvs(result, out)
    main = tables[0]
    files.append(write_csv(out / "table.csv", main.header, main.rows))
    files.append(write_csv(out / "cost.csv", tables[-1].header, tables[-1].rows))
    (out / "tables.md").write_text(f"Sweep {result.sweep_id}. Protocol: {result.protocol_text}.\n\n"
                                   + "\n".join([to_markdown(tables[0]), fidelity_markdown(result),
                                                *map(to_markdown, tables[1:])]), encoding="utf-8")
    (out / "tables.tex").write_text(f"% Sweep {result.sweep_id}. Protocol: {result.protocol_text}.\n"
                                    + fidelity_latex(result)
                                    + "\n".join(to_latex(t) for t in tables if t.title not in NOT_IN_LATEX),
                                    encoding="utf-8")
    images = write_plots(result, out)
    files += [out / "tables.md", out / "tables.tex", *images, write_html(result, tables, images, out / "report.html")]
    return files


def _rich_table(table: Table):
    from rich.table import Table as RichTable
    from rich.text import Text

    rich_table = RichTable(title=table.title, show_lines=False)
    for i, name in enumerate(table.header):
        rich_table.add_column(name, justify="left" if i < 2 else "right")
    for i, (row, bold) in enumerate(zip(table.rows, table.bold)):
        # Text(), not markup: "[2/3 seeds]" must print as written
        rich_table.add_row(*(Text(c, style="bold green" if j in bold else "") for j, c in enumerate(row)),
                           end_section=i + 1 in table.rules)
    return rich_table


def print_summary(result: Aggregate, console) -> None:
    from rich.text import Text

    tables = all_tables(result)
    console.print(Text(f"Protocol: {result.protocol_text}.", style="bold"))
    console.print(_rich_table(tables[0]))
    for note in tables[0].notes[1:]:
        console.print(Text(note, style="dim"))
    console.print(_rich_table(tables[1]))
    if result.excluded:
        console.print(Text(f"{len(result.excluded)} run(s) excluded (not FINISHED):", style="yellow"))
        for run, reason in result.excluded:
            console.print(Text(f"  {run.trial_id}: {reason} ({run.run_id})"))
    cost = tables[-1].rows[-1]
    reused = f" (and {cost[4]} runs reused from earlier sweeps, which had cost {cost[5]} wall hours, {cost[6]} " \
             f"GPU-hours)" if cost[4] != "0" else ""
    console.print(Text(f"Cost: {cost[2]} wall hours, {cost[3]} GPU-hours over {cost[1]} runs{reused}."))
    if result.notes:
        console.print(Text(f"{FIDELITY_TITLE}:", style="bold"))
        for note in result.notes:
            console.print(Text(f"- {note.topic}: {note.text}"), Text(f" (source: {note.source})", style="dim"),
                          sep="")
    if result.out_dir is not None:
        logged = (f"; logged to parent run {result.parent_run_id} under {result.artifact_path}/, the headline "
                  f"numbers as its metrics headline/{result.protocol}/<domain>/{{mean,iqm}}/<algorithm>"
                  if result.artifact_path else "")
        console.print(Text(f"Tables, plots and report.html in {result.out_dir}{logged}"))
