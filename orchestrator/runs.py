"""One trial's run as the tracking store holds it: the record it was made from, its status, evaluation curves
and cost. orchestrator/tracking.py reads runs back as these; the statistics (orchestrator/scores.py), the fidelity
notes and the report read them. The record is the trial's identity, resolved config and dataset identity (its
notes included: what was done to the data's episodes as it was read), exactly as the sweep resolved them (the
run's `trial_record` tag): nothing is copied out of it or turned into text.
"""

from __future__ import annotations

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
