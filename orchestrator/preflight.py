"""The validation pass over what a sweep's trials need, run before Ray starts and before anything is written.

After the sweep file itself (orchestrator/spec.py), this checks the world the trials will meet:
- every external input an algorithm declares (a pre-trained model, a language corpus), for every trial;
- that each algorithm can act in each task's action space (continuous-only algorithms refuse discrete tasks);
- every dataset file the grid needs, opened and validated in full (readable HDF5, keys, shapes against the
  task's spaces, finite values, episode flags against the task's data horizon), its digest taken, and every cell's
  data-ratio subset computed, so a ratio that selects nothing is refused here rather than inside a trial.
All problems are reported together, each naming the sweep file, the field and the file or key at fault. What
it learns about the datasets is written into the trial records (`DatasetIdentity`), and what was done to a
file's episodes (split at the data horizon, kept whole past the evaluation's, no timeouts key) is returned as
notes for the driver to print; the records carry them too, and the report's fidelity notes list them.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import gymnasium as gym

from orchestrator.spec import SweepSpec
from trainers.data.checksums import sha256_of_tree
from trainers.data.loading import forget_loaded_datasets, load_task_dataset
from trainers.data.subsets import subsample_trajectories
from trainers.data.trajectories import DatasetError
from trainers.runtime.record import TrialRecord
from trainers.runtime.registry import external_inputs, supports_discrete_actions
from trainers.runtime.tasks import get_task


class SweepInputError(RuntimeError):
    """Datasets, models or corpora the sweep needs are missing or unusable; the message lists every one."""


def _where_algorithm(spec: SweepSpec, spec_file: Path, algorithm: str) -> str:
    index = next(i for i, a in enumerate(spec.algorithms) if a.name == algorithm)
    return f"{spec_file}: algorithms[{index}] ({algorithm})"


def _where_task(spec: SweepSpec, spec_file: Path, task: str) -> str:
    index = next(i for i, t in enumerate(spec.tasks) if t.name == task)
    return f"{spec_file}: tasks[{index}] ({task})"


def _check_inputs(records: list[TrialRecord], spec: SweepSpec, spec_file: Path, problems: list[str]) -> None:
    checked: set[tuple[str, str]] = set()
    for record in records:
        for declared in external_inputs(record.algorithm, record.algorithm_config()):
            if (declared.field, declared.value) in checked:
                continue
            checked.add((declared.field, declared.value))
            try:
                declared.check(declared.value)
            except (OSError, ValueError) as error:
                problems.append(f"{_where_algorithm(spec, spec_file, record.algorithm)}: {declared.field} "
                                f"({declared.what}) {declared.value!r}: {error}")


def _check_action_spaces(records: list[TrialRecord], spec: SweepSpec, spec_file: Path,
                         problems: list[str]) -> None:
    for algorithm, task in dict.fromkeys((r.algorithm, r.task) for r in records):
        space = get_task(task).action_space
        if isinstance(space, gym.spaces.Discrete) and not supports_discrete_actions(algorithm):
            problems.append(f"{_where_algorithm(spec, spec_file, algorithm)}: cannot act in task {task}'s discrete "
                            f"action space {space}; it needs continuous (Box) actions")


def _validate_datasets(records: list[TrialRecord], spec: SweepSpec, spec_file: Path,
                       problems: list[str]) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """Per (task, file): the identity fields every record of it gets, and the notes about its episodes."""
    identities: dict[tuple[str, str], dict] = {}
    notes = []
    cells: dict[tuple[str, str], set[tuple[float, int]]] = defaultdict(set)
    for record in records:
        cells[(record.task, record.dataset.source)].add((record.ratio, record.seed))
    for (task_name, source), ratios_and_seeds in cells.items():
        task_spec = next(t for t in spec.tasks if t.name == task_name)
        where = _where_task(spec, spec_file, task_name)
        if not Path(source).exists():
            field = "dataset" if task_spec.dataset else "(the d4rl cache convention)"
            try:  # the loader's own message lists where it looked and how to get the file
                load_task_dataset(get_task(task_name), task_spec.dataset)
            except DatasetError as error:
                problems.append(f"{where}: {field}: {error}")
            continue
        try:
            dataset = load_task_dataset(get_task(task_name), source, task_spec.long_episodes)
        except DatasetError as error:
            problems.append(f"{where}: {error}")
            continue
        subsets = {}
        for ratio, seed in sorted(ratios_and_seeds):
            try:
                subsets[(ratio, seed)] = subsample_trajectories(dataset, ratio, seed).num_episodes
            except DatasetError as error:
                problems.append(f"{where}: ratio {ratio:g}: {error}")
        notes += [f"{source}: {note}" for note in dataset.notes]
        digest, size = sha256_of_tree(source)
        identities[(task_name, source)] = {
            "digest": digest, "size_bytes": size,
            "episodes": dataset.num_episodes, "transitions": len(dataset), "notes": dataset.notes,
            "subsets": subsets}
    return identities, notes


def validate_sweep_inputs(records: list[TrialRecord], spec: SweepSpec, spec_file: str | Path
                          ) -> tuple[list[TrialRecord], list[str]]:
    """The records with their datasets' identities filled in, and notes to print; SweepInputError listing every
    problem found when any is."""
    spec_file = Path(spec_file)
    problems: list[str] = []
    _check_inputs(records, spec, spec_file, problems)
    _check_action_spaces(records, spec, spec_file, problems)
    identities, notes = _validate_datasets(records, spec, spec_file, problems)
    forget_loaded_datasets()
    if problems:
        raise SweepInputError("\n".join(problems))
    validated = []
    for record in records:
        fields = dict(identities[(record.task, record.dataset.source)])
        subset = fields.pop("subsets")[(record.ratio, record.seed)]
        validated.append(dataclasses.replace(record, dataset=dataclasses.replace(
            record.dataset, subset_episodes=subset, **fields)))
    return validated, list(dict.fromkeys(notes))
