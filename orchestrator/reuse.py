"""Incremental sweeps: before anything trains, find earlier FINISHED runs that computed exactly what a trial of
this sweep would (the same fingerprint and code: orchestrator/fingerprint.py) and let them stand for it.

For every trial of the sweep (its records, after the validation pass), the experiment's FINISHED trial runs with
its fingerprint are looked at, newest first, skipping this sweep's own runs (a resumed sweep continues them
through Tune; after `--restart` they are superseded and retrained):
- the newest whose code digest matches and that holds an evaluation at its last step for every label it was
  evaluated on (the protocols read the final evaluation and the ones before it) is **reused**: not trained again,
  counted as done, aggregated as if this sweep had trained it, shown in this sweep's parent run as a light child
  run pointing at it (orchestrator/tracking.py, `reuse_trial`). When several qualify, the newest is taken and
  the choice is said;
- one whose code differs is **stale**: the trial is retrained and the files that changed are named;
- one that lacks its final evaluation is not reused either, and is named with why.
Failed, killed and unfinished runs are never candidates. `--no-reuse` trains everything.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from orchestrator.fingerprint import Fingerprint, changed_files
from orchestrator.tracking import (
    CODE_FILES_TAG,
    CODE_TAG,
    FINGERPRINT_TAG,
    SWEEP_ID_TAG,
    TrackingError,
    eval_label,
    finished_fingerprinted_runs,
    latest_metrics,
    open_store,
)
from trainers.runtime.record import TrialRecord


@dataclass
class ReusePlan:
    reused: list[tuple[TrialRecord, object]] = field(default_factory=list)  # (record, the original run)
    to_train: list[TrialRecord] = field(default_factory=list)
    stale: dict[str, tuple[object, list[str]]] = field(default_factory=dict)  # trial id -> (run, changed files)
    incomplete: dict[str, tuple[object, str]] = field(default_factory=dict)  # trial id -> (run, why not reused)
    choices: list[str] = field(default_factory=list)  # which of several equal runs was taken
    # Trials to train whose own sweep already finished them (a resume skips them: Tune, or the trial's FINISHED run)
    finished_here: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return len(self.reused) + len(self.to_train)


def _sweep_of(run) -> str:
    return run.data.tags.get(SWEEP_ID_TAG, "?")


def _finished_at(run) -> str:
    when = datetime.fromtimestamp((run.info.end_time or run.info.start_time or 0) / 1000, timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def missing_evaluation(run, num_steps: int) -> str | None:
    """Why a FINISHED run cannot be scored like a trained one (None when it can): every evaluation label it has
    must reach its last step."""
    labels = {m.key: m.step for m in latest_metrics(run) if eval_label(m.key) is not None}
    if not labels:
        return "it holds no evaluation"
    short = sorted(key for key, step in labels.items() if step < num_steps)
    if short:
        return f"its last evaluation of {', '.join(short)} is before its last step {num_steps:,}"
    return None


def plan_reuse(records: list[TrialRecord], fingerprints: dict[str, Fingerprint], candidates: list,
               sweep_id: str) -> ReusePlan:
    """Which trials earlier runs stand for; `candidates` are FINISHED fingerprinted runs, newest first."""
    by_fingerprint, own = defaultdict(list), set()
    for run in candidates:
        if _sweep_of(run) != sweep_id:
            by_fingerprint[run.data.tags[FINGERPRINT_TAG]].append(run)
        else:
            own.add((run.data.tags[FINGERPRINT_TAG], run.data.tags.get(CODE_TAG)))
    plan = ReusePlan()
    for record in records:
        mine = fingerprints[record.trial_id]
        if (mine.inputs, mine.code) in own:
            plan.finished_here.add(record.trial_id)
        usable = []
        for run in by_fingerprint.get(mine.inputs, []):
            if run.data.tags.get(CODE_TAG) != mine.code:
                plan.stale.setdefault(record.trial_id, (run, changed_files(
                    json.loads(run.data.tags.get(CODE_FILES_TAG, "{}")), mine.files)))
                continue
            why = missing_evaluation(run, record.num_steps)
            if why:
                plan.incomplete.setdefault(record.trial_id, (run, why))
                continue
            usable.append(run)
        if not usable:
            plan.to_train.append(record)
            continue
        chosen = usable[0]
        plan.reused.append((record, chosen))
        plan.stale.pop(record.trial_id, None)
        plan.incomplete.pop(record.trial_id, None)
        if len(usable) > 1:
            runs = ", ".join(f"{r.info.run_id} of {_sweep_of(r)}" for r in usable)
            newest = f"{chosen.info.run_id} of {_sweep_of(chosen)} (finished {_finished_at(chosen)})"
            plan.choices.append(f"{record.trial_id}: {len(usable)} earlier runs computed it ({runs}); using the "
                                f"newest, {newest}")
    return plan


def find_reusable(tracking_uri: str, experiment: str, records: list[TrialRecord],
                  fingerprints: dict[str, Fingerprint], sweep_id: str) -> ReusePlan:
    """The plan against the tracking store; a store without the experiment has nothing to reuse. A store that
    cannot be read stops the sweep (TrackingError naming it): never "reuse nothing" silently."""
    from orchestrator.tracking import StoreLookupError

    try:
        mlflow_client, experiment_id = open_store(tracking_uri, experiment)
    except StoreLookupError:
        return ReusePlan(to_train=list(records))
    try:
        candidates = finished_fingerprinted_runs(mlflow_client, experiment_id)
    except Exception as error:  # any store failure (server down, database locked)
        raise TrackingError(f"looking up finished trials to reuse in {tracking_uri} failed ({error}); nothing was "
                            f"trained. Run again when the store answers, or pass --no-reuse to train every "
                            f"trial") from None
    return plan_reuse(records, fingerprints, candidates, sweep_id)


def describe(plan: ReusePlan) -> list[str]:
    """The dry run's and the sweep's account: the counts, then per cell what is reused and from which sweep, what
    is stale (and why) and what was not reusable."""
    here = sum(r.trial_id in plan.finished_here for r in plan.to_train)
    lines = [f"{plan.total} trials: {len(plan.reused)} finished in earlier sweeps (reused), "
             + (f"{here} finished in this sweep already (resuming skips them), " if here else "")
             + f"{len(plan.to_train) - here} to train"]
    cells: dict[str, list[str]] = defaultdict(list)
    reused: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # cell -> sweep -> seeds
    for record, run in plan.reused:
        reused[record.cell_id][_sweep_of(run)].append(f"s{record.seed}")
    for cell, by_sweep in reused.items():
        cells[cell] += [f"{', '.join(seeds)} reused from {sweep}" for sweep, seeds in by_sweep.items()]
    for record in plan.to_train:
        if record.trial_id in plan.stale:
            run, files = plan.stale[record.trial_id]
            cells[record.cell_id].append(f"s{record.seed} stale: run {run.info.run_id} of {_sweep_of(run)} ran "
                                         f"other code ({', '.join(files) or 'the code digest differs'} changed); "
                                         f"retrained")
        elif record.trial_id in plan.incomplete:
            run, why = plan.incomplete[record.trial_id]
            cells[record.cell_id].append(f"s{record.seed} not reused: run {run.info.run_id} of {_sweep_of(run)} "
                                         f"finished, but {why}; retrained")
    lines += [f"  {cell}: {'; '.join(parts)}" for cell, parts in cells.items()]
    return lines + [f"  {choice}" for choice in plan.choices]
