"""Seeds trained together: one process trains several seeds of one cell, each exactly as it would train alone.

    StackedTrialCore(records, run_dirs).run(reports, checkpoints) -> [SeedOutcome, one per record]

The records are one cell's (same algorithm, task, ratio and resolved config) and differ only in their seed. A
sweep with `resources.seeds_per_trial` > 1 makes such a stack the unit of work of a Tune trial (orchestrator/trial.py);
every seed still has its own MLflow child run, files and outcome, so the aggregator and the reuse of finished trials
see ordinary per-seed runs.

What the seeds share: the process, its imports and start-up; the dataset file, read once (each seed keeps its own
subset, seeded by ratio and seed as alone); one copy of a pre-trained backbone's frozen weights (an algorithm's
`shared_parameters()`, checked equal before they are shared: one GPT-2 in memory for every seed's LoRA); and one
evaluation loop over every seed's environments (`BatchedEvaluator.run_many`: each seed's policy on its own block,
with its own episode seeds).

What stays each seed's own — so that seed k stacked computes what seed k alone computes (tests/test_stack.py checks
weights and evaluation returns for every algorithm family): its data subset, its algorithm (weights, optimiser
state, learning-rate schedule, gradient clipping, noise generator), its batch-sampling stream and torch's global
stream (dropout in the sequence models), which are swapped in around each of its updates, its evaluation seeds
(eval seed, its seed, step), its checkpointed state, its metrics and its files.

How: the seeds step in lockstep and evaluate together at the cadence's steps. An algorithm that declares a fused
form (`AlgorithmDeclaration.fused_seeds`, e.g. bc's `FusedBC`) updates all its seeds as one — each network's seeds as
one batched tensor, one kernel for every seed, its weights and optimiser state written back into each seed's
algorithm (`sync`) before it is evaluated, checkpointed or exported; seed k then equals seed k alone up to float
rounding. Every other algorithm runs the loop form: one update per seed in turn, each its own kernels (bitwise what
the seed computes alone).

Faults: a NonFiniteLossError in one seed ends that seed alone (its outcome carries the error and its step; its last
checkpointed state stays in the stacked checkpoint, so a retry resumes it from there); the others go on. Any other
exception ends the trial, every seed with it. The checkpoint is `{"stack": {trial id: that seed's single-trial
state}}`; a resumed stack continues every seed from its own entry.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainers.data.samplers import to_torch
from trainers.data.subsets import subsample_trajectories
from trainers.runtime.algorithm import Algorithm, NonFiniteLossError
from trainers.runtime.core import (
    TRAJECTORY_IDS_FILE,
    Checkpoints,
    ReportHook,
    TrialResult,
    build_for_record,
    dataset_report,
    default_device,
    load_record_dataset,
    report_resumption,
    write_json,
    write_trial_files,
)
from trainers.runtime.cpu_allocator import keep_freed_memory_for_reuse
from trainers.runtime.evaluation import BatchedEvaluator
from trainers.runtime.record import TrialRecord
from trainers.runtime.registry import declaration
from trainers.runtime.tasks import get_task


@dataclass
class SeedOutcome:
    """How one seed of a stack ended: its result, or the error that ended it (then `result.step` is where)."""

    record: TrialRecord
    result: TrialResult
    error: BaseException | None = None


@dataclass
class _Seed:
    record: TrialRecord
    run_dir: Path
    dataset: object
    algorithm: Algorithm
    rng: np.random.Generator  # batch sampling, as a trial alone: default_rng([seed, rank 0])
    torch_states: dict  # torch's global streams while this seed runs: {"torch": CPU state, "cuda": state or None}
    result: TrialResult = field(default_factory=lambda: TrialResult(step=0))
    report: ReportHook | None = None
    error: BaseException | None = None
    saved: dict | None = None  # its latest checkpointed state
    running: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def live(self) -> bool:
        return self.error is None

    def state(self) -> dict:
        """What a trial alone checkpoints (trainers/runtime/core.py), this seed's streams as rank 0's."""
        streams = {"sampler": self.rng.bit_generator.state} | self.torch_states
        return {"algorithm": self.algorithm.state_dict(), "rng": [streams], "step": self.result.step,
                "history": self.result.history}


def mean_evaluation(metrics: Sequence[dict]) -> dict[str, float]:
    """The seeds' mean of each evaluation metric (`eval/...`) they all have: what a stack tells Tune."""
    keys = [k for k in (metrics[0] if metrics else {}) if k.startswith("eval/") and all(k in m for m in metrics)]
    return {key: float(np.mean([float(m[key]) for m in metrics])) for key in keys}


def share_frozen_weights(algorithms: Sequence[Algorithm]) -> int:
    """Point every seed's `shared_parameters()` at the first seed's tensors where they are equal (same name, shape,
    dtype, device and values), freeing the copies; returns the bytes freed. Nothing trains or writes these weights,
    so every seed computes exactly what it computed with its own copy."""
    if not hasattr(algorithms[0], "shared_parameters"):
        return 0
    first, freed = algorithms[0].shared_parameters(), 0
    for algorithm in algorithms[1:]:
        for name, parameter in algorithm.shared_parameters().items():
            original = first.get(name)
            if original is None or original is parameter or original.data_ptr() == parameter.data_ptr():
                continue
            alike = (original.shape, original.dtype, original.device) == (parameter.shape, parameter.dtype,
                                                                          parameter.device)
            if alike and torch.equal(original, parameter):
                freed += parameter.numel() * parameter.element_size()
                parameter.data = original.data
    return freed


def check_stack(records: Sequence[TrialRecord]) -> None:
    """ValueError unless the records are one cell's, with one configuration, each seed once."""
    if not records:
        raise ValueError("a stack needs at least one trial record")
    first = records[0]
    seeds = [r.seed for r in records]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a stack trains each seed once; got seeds {seeds}")
    for record in records[1:]:
        if record.cell != first.cell or record.config != first.config or record.dataset != first.dataset:
            raise ValueError(f"a stack is one cell with one configuration: {record.trial_id} differs from "
                             f"{first.trial_id}")
    if any(record.sampled for record in records):
        raise ValueError("search samples are trained one per trial, not stacked")


class StackedTrialCore:
    """Several seeds of one cell, built on construction (one dataset read, each seed's subset and algorithm, one
    evaluator with a block of environments per seed), trained by `run`."""

    def __init__(self, records: Sequence[TrialRecord], run_dirs: Sequence[str | os.PathLike],
                 device: torch.device | None = None, share_frozen: bool = True):
        check_stack(records)
        keep_freed_memory_for_reuse()
        self.device = device or default_device()
        self.task = get_task(records[0].task)
        self.config = records[0].algorithm_config(self.task)
        whole = load_record_dataset(records[0], self.task)
        self.seeds: list[_Seed] = []
        self.shared_bytes = 0  # frozen weights the seeds share instead of holding a copy each
        for record, run_dir in zip(records, run_dirs, strict=True):
            dataset = subsample_trajectories(whole, record.ratio, record.seed)
            algorithm = build_for_record(record, self.task, self.device, dataset)
            if share_frozen and self.seeds:  # at once, so that the next seed's build reuses the copy it frees
                self.shared_bytes += share_frozen_weights([self.seeds[0].algorithm, algorithm])
            torch.manual_seed(record.seed * 7919)  # what a trial alone sets (rank 0), kept as this seed's streams
            streams = {"torch": torch.get_rng_state(),
                       "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
            self.seeds.append(_Seed(record, Path(run_dir), dataset, algorithm, np.random.default_rng([record.seed, 0]),
                                    streams))
        self.fused, self.fused_seeds = None, []  # the fused form, once `run` restored the seeds (`fuse`)
        targets = self.task.target_returns if self.seeds[0].algorithm.return_conditioned else None
        self.evaluator = BatchedEvaluator(self.task, self.config.eval_episodes, targets, copies=len(self.seeds))

    # --- each seed's torch streams --------------------------------------------------------------------------

    def _enter(self, seed: _Seed) -> None:
        torch.set_rng_state(seed.torch_states["torch"])
        if seed.torch_states["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(seed.torch_states["cuda"], self.device)

    def _leave(self, seed: _Seed) -> None:
        seed.torch_states = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}

    # --- the loop -------------------------------------------------------------------------------------------

    def _restore(self, state: dict | None) -> None:
        for seed in self.seeds:
            own = (state or {}).get("stack", {}).get(seed.record.trial_id)
            if own is None:
                continue
            seed.algorithm.load_state_dict(own["algorithm"])
            seed.result.step, seed.result.history = own["step"], own["history"]
            streams = own["rng"][0]
            seed.rng.bit_generator.state = streams["sampler"]
            seed.torch_states = {"torch": streams["torch"], "cuda": streams["cuda"]}
            seed.saved = own

    def _batch(self, seed: _Seed):
        return to_torch(seed.algorithm.sampler.sample(self.config.batch_size, seed.rng), self.device)

    def _record(self, seed: _Seed, outcome: dict[str, float] | NonFiniteLossError) -> None:
        """An update's metrics, or its non-finite loss, which ends this seed only."""
        if isinstance(outcome, NonFiniteLossError):
            outcome.step = outcome.step if outcome.step is not None else seed.result.step + 1
            seed.error = outcome
            if seed.report is not None:
                seed.report.close()  # what it reported until now is delivered; the driver records the failure
            return
        for name, value in outcome.items():
            seed.running[name].append(value)
        seed.result.step += 1

    def _update(self, seed: _Seed) -> None:
        """One update of one seed under its own streams (the loop form)."""
        batch = self._batch(seed)
        self._enter(seed)
        try:
            outcome = seed.algorithm.update(batch)
        except NonFiniteLossError as error:
            outcome = error
        finally:
            self._leave(seed)
        self._record(seed, outcome)

    def fuse(self) -> None:
        """The fused form over the seeds that still train, where the algorithm has one and they are at one step."""
        if self.fused is not None:
            self.fused.sync()
        training = [s for s in self.seeds if s.live and s.result.step < self.config.num_steps]
        make = declaration(self.seeds[0].record.algorithm, self.task).fused_seeds
        together = make is not None and len(training) > 1 and len({s.result.step for s in training}) == 1
        self.fused = make([s.algorithm for s in training]) if together else None  # None: no fused form for its config
        self.fused_seeds = training if self.fused is not None else []

    def sync(self) -> None:
        """Each seed's algorithm up to date with the fused form's state (before it acts, is saved or exported)."""
        if self.fused is not None:
            self.fused.sync()

    def train_step(self) -> list[_Seed]:
        """One update of every seed that still trains (fused, else one after another); returns those that made it."""
        training = [s for s in self.seeds if s.live and s.result.step < self.config.num_steps]
        if self.fused is not None and training == self.fused_seeds:
            for seed, outcome in zip(training, self.fused.update([self._batch(s) for s in training])):
                self._record(seed, outcome)
            if any(not s.live for s in training):
                self.fuse()  # without the failed seeds
        else:
            for seed in training:
                self._update(seed)
        return [s for s in training if s.live]

    def evaluate(self, seeds: list[_Seed]) -> None:
        """One evaluation loop for the given seeds, each at its own step with its own episode seeds."""
        self.sync()
        started = time.perf_counter()
        results = self.evaluator.run_many(
            [seed.algorithm.policy for seed in seeds],
            [(seed.record.eval_seed, seed.record.seed, seed.result.step) for seed in seeds])
        seconds = time.perf_counter() - started
        for seed, result in zip(seeds, results):
            seed.result.final = result
            metrics = result.summary() | {"eval/seconds": seconds}
            seed.result.history.append({"step": seed.result.step, **metrics, "seeds": result.seeds})
            if seed.report is not None:
                seed.report(seed.result.step, metrics, [])

    def run(self, reports: Sequence[ReportHook | None], checkpoints: Checkpoints) -> list[SeedOutcome]:
        config = self.config
        for seed, report in zip(self.seeds, reports, strict=True):
            seed.report = report
        self._restore(checkpoints.restore())
        self.fuse()
        for seed in self.seeds:
            if seed.report is None:
                continue
            if seed.saved is not None:
                report_resumption(seed.report, seed.result.step, seed.result.history)
            seed.report(seed.result.step, dataset_report(seed.dataset),
                        [write_json(seed.run_dir, TRAJECTORY_IDS_FILE, [int(i) for i in seed.dataset.episode_ids])])

        started = time.perf_counter()
        while training := self.train_step():
            for seed in training:
                step = seed.result.step
                if seed.report is not None and (step % seed.record.log_every == 0 or step == config.num_steps):
                    elapsed = time.perf_counter() - started
                    seed.report(step, {f"train/{k}": float(np.mean(v)) for k, v in seed.running.items()}
                                | {"train/steps_per_second": len(next(iter(seed.running.values()))) /
                                   max(elapsed, 1e-9)}, [])
                    seed.running.clear()
            if any(s.result.step % s.record.log_every == 0 for s in training):
                started = time.perf_counter()
            due = [s for s in training if s.result.step % config.eval_every == 0 or s.result.step == config.num_steps]
            if due:
                self.evaluate(due)
                self._checkpoint(checkpoints)
                started = time.perf_counter()

        self.sync()
        finished = [s for s in self.seeds if s.live]
        unevaluated = [s for s in finished if s.result.final is None]  # resumed after its last checkpoint
        if unevaluated:
            self.evaluate(unevaluated)
        for seed in finished:
            seed.result.files = write_trial_files(seed.algorithm, seed.record, seed.run_dir, seed.result)
            if seed.report is not None:
                seed.report(seed.result.step, {}, seed.result.files)
                seed.report.close()
        self.close()
        return [SeedOutcome(s.record, s.result, s.error) for s in self.seeds]

    def _checkpoint(self, checkpoints: Checkpoints) -> None:
        """Every live seed's state now, a failed seed's as last saved; Tune hears the live seeds' mean evaluation."""
        self.sync()
        live = [s for s in self.seeds if s.live]
        for seed in live:
            seed.saved = seed.state()
        state = {"stack": {s.record.trial_id: s.saved for s in self.seeds if s.saved is not None}}
        metrics = mean_evaluation([s.result.history[-1] for s in live if s.result.history])
        checkpoints.save(state, {"step": max(s.result.step for s in live), **metrics,
                                 "stack/seeds_running": float(len(live))})

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluator = None
