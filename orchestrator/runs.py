"""One trial's run as the tracking store holds it: the record it was made from, its status, evaluation curves
and cost. orchestrator/tracking.py reads runs back as these; the statistics (orchestrator/scores.py), the fidelity
notes and the report read them. The record is the trial's identity, resolved config and dataset identity (its
notes included: what was done to the data's episodes as it was read), exactly as the sweep resolved them (the
run's `trial_record` tag): nothing is copied out of it or turned into text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from trainers.runtime.record import TrialRecord


@dataclass
class TrialRun:
    run_id: str
    record: TrialRecord
    status: str  # MLflow run status: FINISHED, FAILED, RUNNING, KILLED
    curves: dict[str, list[tuple[int, float]]]  # eval label -> (step, normalized mean), by step
    wall_seconds: float = 0.0
    gpu_hours: float = 0.0
    reused_from: str | None = None  # the original run a reused trial stands for (its curves and cost are these)
    source_sweep: str = ""  # the sweep that trained it (the original's, for a reused trial)
    fingerprint: str = ""  # what it computes (orchestrator/fingerprint.py); "" for runs made before fingerprints
    started: int = 0  # when its training run started (ms since the epoch): the newest of one fingerprint wins

    @property
    def trial_id(self) -> str:
        return self.record.trial_id

    @property
    def algorithm(self) -> str:
        return self.record.algorithm

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def domain(self) -> str:
        return self.record.domain

    @property
    def ratio(self) -> float:
        return self.record.ratio

    @property
    def seed(self) -> int:
        return self.record.seed

    @property
    def num_steps(self) -> int:
        return self.record.num_steps

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config, as JSON values (the record's)."""
        return self.record.config

    @property
    def dataset_notes(self) -> tuple[str, ...]:
        """What was done to the dataset's episodes as the sweep read it (the record's, from its validation pass)."""
        return self.record.dataset.notes

    @property
    def cell(self) -> tuple[str, str, float]:
        return self.record.cell


def identity_key(run: TrialRun) -> str:
    """What the run computed: its fingerprint, or for a run made before fingerprints its record without the sweep
    and trial names."""
    if run.fingerprint:
        return run.fingerprint
    values = run.record.to_dict()
    values.pop("sweep_id", None)
    values.pop("trial_id", None)
    return json.dumps(values, sort_keys=True, default=str)


def newest_per_computation(runs: list[TrialRun]) -> list[TrialRun]:
    """The union of several sweeps' runs with each computation once: of runs that computed the same (a trial two
    sweeps share, a reused run and its original), the newest FINISHED one, else the newest."""
    chosen: dict[str, TrialRun] = {}
    for run in runs:
        key = identity_key(run)
        held = chosen.get(key)
        if held is None or (run.status == "FINISHED", run.started) > (held.status == "FINISHED", held.started):
            chosen[key] = run
    return list(chosen.values())

