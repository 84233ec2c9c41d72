"""The MLflow UI a researcher sees for a sweep, rendered for real: a sweep written by the project's own tracking code
(the spec's grid through make_record and the validation pass, SweepTracker, the trials' dataset inputs,
MlflowReport, the aggregator's headline metrics) into a sqlite store, a real `mlflow server` on 127.0.0.1, and
headless Chromium using MLflow's web app like a person: open a link, wait for what it renders, click the parent
run's expander, take a screenshot. No Ray, no training. Chromium is driven over the DevTools protocol rather than
with --dump-dom, because the trials' rows only appear after a click (see below) and because waiting for the
rendered rows is both faster and surer than a fixed --virtual-time-budget.

What MLflow 3.17 does (read in its web app's code, checked here):
- the experiment tag `mlflow.experimentKind` no longer picks the view: the experiment page follows the sidebar's
  "GenAI | Model training" switch, i.e. the link's `workflowType` parameter (`genai` or `machine_learning`), else
  the browser's last choice (localStorage `mlflow.workflowType`), else GenAI. A plain link
  `#/experiments/<id>` in a fresh browser opens the GenAI Overview (traces, token usage; "Evaluation runs" in the
  sidebar) for our tagged experiment exactly as for an untagged one; `?workflowType=machine_learning` opens the
  training runs table. So the link to give researchers is `tracking.experiment_link` (what the sweep prints); the tag (still set by
  SweepTracker) only matters to MLflow versions that read it;
- the runs table nests child runs (tag `mlflow.parentRunId`) under their parent, collapsed: the parent row has an
  expander button, and its children's rows appear when it is clicked. MLflow keeps which runs are expanded in the
  browser's storage only (neither the link nor a shared view carries it), so the test clicks;
- the Dataset column is shown by default: each trial's cell reads "<name> (<digest>)" with its context tag
  ("training"); the parent run has no dataset ("-");
- metric columns are hidden in the runs table by default ("Show more columns"); the parent run's page lists its
  metrics, the headline numbers among them, and names its child runs.

Set LAMO_UI_SCREENSHOT=/some/file.png to keep a screenshot of the expanded runs table.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import delivery, tracking
from orchestrator.aggregate import aggregate_sweep
from orchestrator.preflight import validate_sweep_inputs
from orchestrator.spec import expand_trials, load_spec
from tests.services import start_mlflow_server, stop_process_group
from tests.sweep_helpers import tiny_spec, write_spec

CHROMIUM = Path("/usr/bin/chromium")
EXPERIMENT = "lamo-sweeps"
PAGE_TIMEOUT = 60  # seconds for one page to render (generous: CI machines are shared)



def require_chromium() -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"headless Chromium not installed at {CHROMIUM}: apt-get install -y chromium")

# MLflow's own markers in the rendered page (its web app's component ids and test ids, version 3.17).
EXPANDER = 'button[data-component-id$="runs_cells_runnamecellrenderer.tsx_46"]'  # only on a row with children
DATASET_BUTTON = 'button[data-testid="open-dataset-drawer"]'

# The runs grid as the page renders it; ag-grid splits each row into a pinned-left and a center part that share
# the row's run id (row-id), so the parts are merged by it.
READ_RUNS_TABLE = """(expanderSelector, datasetSelector) => {
  const text = (element) => element ? element.textContent.trim() : null;
  const rows = {};
  for (const part of document.querySelectorAll('[role="row"][row-id]')) {
    const row = rows[part.getAttribute('row-id')] ??= {};
    const name = part.querySelector('[col-id="attributes.`Run Name`"] a[href*="/runs/"]');
    if (name) { row.name = text(name); row.expander = !!part.querySelector(expanderSelector); }
    const dataset = part.querySelector('[col-id="attributes.`Dataset`"]');
    if (dataset) {  // "<name> (<digest>)" on a button that opens the dataset's drawer, its context as a tag
      const button = dataset.querySelector(datasetSelector);
      row.dataset = button ? text(button) : text(dataset);
      row.dataset_context = text(dataset.querySelector('[data-component-type="tag"]'));
    }
  }
  return {
    title: document.title,
    headers: [...document.querySelectorAll('[role="columnheader"]')].map(text).filter(Boolean),
    sidebar: [...document.querySelectorAll('nav a, nav button')].map(text).filter(Boolean),  // the app's menu
    rows: rows,
    order: [...new Set([...document.querySelectorAll('[role="row"][row-id]')]
      .sort((a, b) => a.getAttribute('row-index') - b.getAttribute('row-index')).map(r => r.getAttribute('row-id')))],
    body: document.body.innerText,
  };
}"""


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: Chromium reads
    commands on fd 3 and writes replies on fd 4, each a JSON text ended by a NUL byte). One page, one profile."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 900):
        to_chromium, chromium_reads = os.pipe()[::-1]
        chromium_writes, from_chromium = os.pipe()[::-1]
        args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", "--remote-debugging-pipe",
                "about:blank"]
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{chromium_reads} 4>&{chromium_writes}', "bash", *args],
            pass_fds=(chromium_reads, chromium_writes), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(chromium_reads)
        os.close(chromium_writes)
        self._out, self._in, self._buffer, self._id = to_chromium, from_chromium, b"", 0
        try:
            target = self._send("Target.createTarget", url="about:blank")["targetId"]
            self._session = self._send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self._page("Page.enable")
        except BaseException:
            self.close()
            raise

    def _send(self, method: str, session: str | None = None, timeout: float = 30, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:  # events and replies; keep only this command's reply
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"Chromium {method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.process.poll()}) during {method}")
            self._buffer += chunk

    def _page(self, method: str, **params):
        return self._send(method, session=self._session, **params)

    def evaluate(self, expression: str):
        reply = self._page("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression[:200]}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def call(self, function: str, *args):
        """A JavaScript function's value for the given (JSON) arguments."""
        return self.evaluate(f"({function})({', '.join(json.dumps(arg) for arg in args)})")

    def open(self, url: str) -> None:
        self._page("Page.navigate", url=url)

    def wait_for(self, condition: str, what: str, timeout: float = PAGE_TIMEOUT) -> None:
        """Poll a JavaScript condition until it holds; the page's text goes into the error when it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"(() => {{ try {{ return !!({condition}); }} catch (error) {{ return false; }} }})()"):
                return
            time.sleep(0.25)
        raise AssertionError(f"{what}: not rendered within {timeout} s; the page titled "
                             f"{self.evaluate('document.title')!r} shows:\n"
                             f"{self.evaluate('document.body && document.body.innerText')}"[:3000])

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._page("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        """Ask Chromium to quit; kill it (by its process id) when it does not."""
        if self.process.poll() is None:
            try:
                self._send("Browser.close", timeout=5)
            except (OSError, RuntimeError, TimeoutError):
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def browser(tmp_path):
    """A fresh browser (its own profile: nothing remembered from an earlier page) for one test."""
    require_chromium()
    opened = Browser(tmp_path / "chromium-profile")
    try:
        yield opened
    finally:
        opened.close()


# --- the sweep, written by the project's own code -------------------------------------------------------------

def write_sweep(root: Path, dataset: Path) -> SimpleNamespace:
    """A two-trial sweep (bc and iql on generated reacher2d data) as `orchestrator/sweep.py` would leave it in
    the store, then aggregated: the spec's grid through make_record and the validation pass (dataset digest and
    counts), the parent run, each trial's child run with its dataset input, evaluations reported through
    MlflowReport, the runs closed, and the aggregator's headline metrics on the parent."""
    from rich.console import Console

    spec_file = write_spec(root, tiny_spec(
        root, dataset, algorithms=[{"name": "bc", "overrides": {"hidden_dims": [32, 32]}}, {"name": "iql"}],
        seeds=[0], tracking={"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": EXPERIMENT}))
    spec = load_spec(spec_file)
    records, _ = validate_sweep_inputs(expand_trials(spec), spec, spec_file)
    tracker = tracking.SweepTracker(spec.tracking.uri, EXPERIMENT, spec.sweep_id)
    parent = tracker.start_sweep(spec.name, spec.model_dump(mode="json", exclude={"tracking"}), spec_file)
    trials = {}
    for score, record in zip((40.0, 25.0), records):
        run_id, _ = tracker.trial_run(parent, record)
        report = delivery.MlflowReport(tracker.uri, run_id, str(root / "outputs" / record.trial_id))
        for step in range(spec.training.eval_every, record.num_steps + 1, spec.training.eval_every):
            report(step, {"eval/policy/normalized_mean": score * step / record.num_steps}, [])
        report.close()
        tracker.finish_trial(run_id, failed=False, wall_seconds=2.0, gpus=0)
        trials[run_id] = record
    tracker.finish_sweep(parent, failed=False)
    aggregate_sweep(tracker.uri, EXPERIMENT, spec.sweep_id, "paper", root / "report",
                    Console(file=io.StringIO()), resamples=100)
    return SimpleNamespace(uri=tracker.uri, client=tracker.client, experiment_id=tracker.experiment_id,
                           sweep_id=spec.sweep_id, parent=parent, trials=trials)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, reacher_medium_path):
    root = tmp_path_factory.mktemp("ui-sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # a sweep's experiment keeps artifacts in ./mlruns: here, not in the checkout
        for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            # MlflowReport sets these with os.environ.setdefault; recorded here, so that the context undoes it
            patch.setenv(name, os.environ.get(name, ""))
            patch.delenv(name)
        yield write_sweep(root, reacher_medium_path)


@pytest.fixture(scope="module")
def mlflow_ui(sweep, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 over the sweep's sqlite store; stopped by its process id (its process group:
    SIGTERM, then SIGKILL)."""
    require_chromium()  # before starting a server no page will be read from
    uri, process, _ = start_mlflow_server(sweep.uri, tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield uri
    finally:
        stop_process_group(process)


# The parent run's page: its Metrics table (name, value) and the "Child runs" entry of "About this run".
METRICS_TABLE = '[role="table"]:has([data-component-id$="run-page_overview_runviewmetricstable.tsx_312"])'
CHILD_RUNS = '[data-testid="key-value-Child runs"]'
READ_RUN_PAGE = """(tableSelector, childRunsSelector) => {
  const table = document.querySelector(tableSelector);
  const metrics = {};
  for (const row of table.querySelectorAll('[role="row"]')) {
    const cells = row.querySelectorAll('[role="cell"]');
    if (cells.length === 2) metrics[cells[0].textContent.trim()] = cells[1].textContent.trim();
  }
  return {
    title: document.title,
    heading: [...document.querySelectorAll('h1, h2')].map(h => h.textContent.trim()).join(' | '),  // the run name
    metrics: metrics,
    child_runs: [...document.querySelectorAll(childRunsSelector + ' a')].map(a => a.textContent.trim()),
  };
}"""


def read_runs_table(browser: Browser) -> dict:
    return browser.call(READ_RUNS_TABLE, EXPANDER, DATASET_BUTTON)


# --- tests ----------------------------------------------------------------------------------------------------

def test_the_store_holds_what_the_ui_shows(sweep):
    """The layout written above, read back through MLflow's client (what the pages below render)."""
    client = sweep.client
    assert client.get_experiment(sweep.experiment_id).tags[tracking.EXPERIMENT_KIND[0]] == tracking.EXPERIMENT_KIND[1]
    for run_id, record in sweep.trials.items():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == sweep.parent and run.info.status == "FINISHED"
        (logged,) = run.inputs.dataset_inputs
        expected = tracking.dataset_input(record).dataset
        assert (logged.dataset.name, logged.dataset.digest) == (expected.name, expected.digest)
        assert record.dataset.digest.startswith(logged.dataset.digest) and len(logged.dataset.digest) == 36
    metrics = client.get_run(sweep.parent).data.metrics
    headline = {key: value for key, value in metrics.items() if key.startswith("headline/")}
    assert headline == {tracking.HEADLINE_METRIC.format(protocol="paper", domain="reacher2d", statistic=statistic,
                                                        algorithm=algorithm): score
                        for algorithm, score in (("bc", 40.0), ("iql", 25.0)) for statistic in ("mean", "iqm")}


def test_experiment_link_opens_the_training_runs_table_with_nested_trials_and_their_dataset(sweep, mlflow_ui,
                                                                                            browser, tmp_path):
    browser.open(tracking.experiment_link(mlflow_ui, sweep.experiment_id))
    browser.wait_for(f'document.querySelector(\'[role="row"][row-id="{sweep.parent}"] {EXPANDER}\')',
                     "the parent run's row with its expander")
    page = read_runs_table(browser)
    # MLflow's training runs table ("Model training" in the sidebar), not its GenAI view.
    assert page["title"].startswith("Runs - "), page["title"]
    assert {"Run Name", "Created", "Dataset"} <= set(page["headers"]), page["headers"]
    assert "Runs" in page["sidebar"] and "Evaluation runs" not in page["sidebar"], page["sidebar"]
    assert "Token Usage" not in page["body"]
    # Collapsed: only the parent's row, named by the sweep id, with an expander; the trials are behind it.
    assert page["order"] == [sweep.parent], page["rows"]
    assert page["rows"][sweep.parent] == {"name": sweep.sweep_id, "expander": True, "dataset": "-",
                                         "dataset_context": None}
    assert f"{len(sweep.trials) + 1} matching runs" in page["body"]

    browser.evaluate(f'document.querySelector(\'[role="row"][row-id="{sweep.parent}"] {EXPANDER}\').click()')
    browser.wait_for(" && ".join(f'document.querySelector(\'[role="row"][row-id="{run_id}"] {DATASET_BUTTON}\')'
                                 for run_id in sweep.trials), "the trials' rows after expanding the parent run")
    time.sleep(0.5)  # let the grid settle before the screenshot
    page = read_runs_table(browser)
    (tmp_path / "runs_table.html").write_text(browser.dom())  # for a failing assertion below
    assert page["order"][0] == sweep.parent and set(page["order"][1:]) == set(sweep.trials), page["rows"]
    for run_id, record in sweep.trials.items():
        dataset = tracking.dataset_input(record).dataset
        shown = f"{record.dataset.name} ({dataset.digest})"
        assert page["rows"][run_id] == {"name": record.trial_id, "expander": False, "dataset": shown,
                                        "dataset_context": "training"}, page["rows"][run_id]
        assert record.dataset.name == "reacher2d-medium"

    screenshot = tmp_path / "runs_table.png"
    browser.screenshot(screenshot)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("LAMO_UI_SCREENSHOT"):
        target = Path(os.environ["LAMO_UI_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, target)


def test_plain_experiment_link_opens_mlflows_genai_view(sweep, mlflow_ui, browser):
    """The control: the same experiment without `workflowType` in the link, in a fresh browser, is MLflow's GenAI
    Overview (3.17 and 3.18), where the checks above fail (no runs table). MLflow 3.17 renders an experiment without
    the `mlflow.experimentKind` tag exactly the same (checked by hand), so a tagged/untagged control cannot tell the
    tag's effect apart: there is none in this version. When this test fails because the plain link shows the runs
    table, MLflow reads the tag again (or defaults to training runs): then drop `workflowType` from the link.
    The Overview's body differs by version on an experiment with no traces: token-usage charts in 3.17, a
    first-trace guide in 3.18; either one means the Overview has rendered."""
    browser.open(f"{mlflow_ui}/#/experiments/{sweep.experiment_id}")
    browser.wait_for("document.title.startsWith('Overview - ') && ["
                     "'Token Usage', 'Send your first trace'].some(text => document.body.innerText.includes(text))",
                     "MLflow's GenAI Overview")
    page = read_runs_table(browser)
    assert "Evaluation runs" in page["sidebar"] and "Runs" not in page["sidebar"], page["sidebar"]
    assert page["rows"] == {} and "Run Name" not in page["headers"] and "Dataset" not in page["headers"]


def test_parent_run_page_shows_the_headline_metrics_and_the_child_runs(sweep, mlflow_ui, browser):
    """The aggregator's headline numbers are the parent run's metrics: its page's Metrics table lists them with
    their values (the runs table hides metric columns by default in MLflow 3.17), and "Child runs" names the
    trials."""
    headline = {key: value for key, value in sweep.client.get_run(sweep.parent).data.metrics.items()
                if key.startswith("headline/")}
    assert len(headline) == 4, headline  # {mean, iqm} x {bc, iql} in the reacher2d domain
    browser.open(f"{mlflow_ui}/#/experiments/{sweep.experiment_id}/runs/{sweep.parent}?workflowType=machine_learning")
    browser.wait_for(f"document.querySelectorAll('{METRICS_TABLE} [role=\"cell\"]').length >= {2 * len(headline)} && "
                     f"document.querySelectorAll('{CHILD_RUNS} a').length >= {len(sweep.trials)}",
                     "the parent run's Metrics table and child runs")
    shown = browser.call(READ_RUN_PAGE, METRICS_TABLE, CHILD_RUNS)
    assert shown["heading"] == sweep.sweep_id, shown
    assert {key: float(value) for key, value in shown["metrics"].items()} == pytest.approx(headline), shown
    assert set(shown["child_runs"]) == {record.trial_id for record in sweep.trials.values()}, shown
