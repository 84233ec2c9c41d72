"""Fidelity notes: what a sweep's runs differ in from the official setup, derived from what ran.

Every report carries these notes (Markdown, HTML, LaTeX comments, the terminal footer). They are generated
from the scored runs' trial records (tasks and resolved configs): the tasks, algorithms and settings
the sweep actually used — a sweep of BC on reacher2d hears nothing about kitchen or LaMo's language loss.

`KNOWN_DIFFERENCES` is the knowledge table of what every run shares — data, settings, simulators, evaluation:
one entry per deliberate difference, with where the official setup is documented (LaMo's code is
github.com/srzer/LaMo-2023; its paths are given relative to that repository) and a function that says how the
given runs are affected (None when they are not). What depends on an algorithm's own fields is declared by the
algorithm (`AlgorithmDeclaration.differences`, trainers/runtime/algorithm.py) and only collected here, after the
settings note, each declaration given its own runs: this module knows no algorithm's fields. Adding a known
difference is one entry, here or in the algorithm's module. This module imports nothing from the aggregator: it
reads any objects with the fields of `RanTrial` (the aggregator's `TrialRun` has them).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trainers.data.d4rl import D4RLFile
from trainers.runtime.algorithm import (
    AlgorithmDeclaration,
    KnownDifference,
    RanTrial,
    listed,
)
from trainers.runtime.registry import ALGORITHMS, declaration, make_config
from trainers.runtime.tasks import TASKS, Task

LAMO_EVAL_EPISODES = {"atari": 5}  # per domain, else 20: experiment-d4rl/run.sh; experiment-atari/cfgs/config.yaml
# updates between evaluations, per domain, else 2500: experiment-d4rl/run.sh (num_steps_per_iter);
# experiment-atari/cfgs/config.yaml (train.eval_interval)
LAMO_EVAL_EVERY = {"atari": 200}


@dataclass(frozen=True)
class FidelityNote:
    topic: str
    text: str  # how this sweep's runs differ, naming the tasks, algorithms and values concerned
    source: str  # where the official setup (or this project's choice) is documented


# --- what ran ------------------------------------------------------------------------------------------------

def _in_order(names: Iterable[str], order: Iterable[str]) -> list[str]:
    order = list(order)
    return sorted(set(names), key=lambda n: (order.index(n) if n in order else len(order), n))


def _tasks(runs: list[RanTrial]) -> list[Task]:
    return [TASKS[name] for name in _in_order((r.task for r in runs), TASKS) if name in TASKS]


# --- the known differences -----------------------------------------------------------------------------------

def _episode_boundaries(runs: list[RanTrial]) -> str | None:
    files = [t.name for t in _tasks(runs) if t.generated_by is None and isinstance(t.dataset_reader, D4RLFile)]
    if not files:
        return None
    return (f"Episodes of the D4RL files ({listed(files)}) end where terminals OR timeouts is set. LaMo's "
            f"download_d4rl_datasets.py reads d4rl.qlearning_dataset, which has no timeouts and drops the last "
            f"step of every timed-out episode, and cuts every 1000 steps instead, so its trajectories can run "
            f"across two episodes.")


def _dataset_notes(runs: list[RanTrial]) -> str | None:
    """Per task, the distinct notes its runs' records carry (trainers/data/trajectories.py writes them as the data
    is read; the sweep's validation pass puts them in every record)."""
    by_task: dict[str, list[str]] = {}
    for run in runs:
        for note in getattr(run, "dataset_notes", ()):  # RanTrial's optional field
            notes = by_task.setdefault(run.task, [])
            if note not in notes:
                notes.append(note)
    if not by_task:
        return None
    return ("What was done to the training data's episodes as it was read (its dataset notes): "
            + "; ".join(f"{task}: {'; '.join(by_task[task])}" for task in _in_order(by_task, TASKS)) + ".")


def _seeded_subsets(runs: list[RanTrial]) -> str | None:
    ratios = sorted({r.ratio for r in runs if r.ratio < 1})
    if not ratios:
        return None
    shown = ", ".join(f"{100 * r:g}%" for r in ratios)
    text = (f"Data ratios {shown}: each task x ratio x seed trains on its own subset of whole trajectories, drawn "
            f"without replacement by a generator seeded from (dataset, ratio, seed), so seeds differ in data as well "
            f"as in initialisation.")
    subsampled = [r for r in runs if r.ratio < 1]
    if any(r.domain != "atari" for r in subsampled):
        text += (" LaMo's ratio_dataset.py (D4RL-style tasks) draws one subset per task and ratio with Python's "
                 "unseeded random.sample, and every seed trains on that one subset.")
    if any(r.domain == "atari" for r in subsampled):
        text += (" On Atari the draw is in proportion to trajectory length, as LaMo's AtariBuffer.ratio_dataset draws "
                 "it, but LaMo seeds that draw with the run's seed alone, so its subsets are not these.")
    return text


def _locomotion_simulator(runs: list[RanTrial]) -> str | None:
    tasks = [t for t in _tasks(runs) if t.domain == "locomotion"]
    if not tasks:
        return None
    text = (f"Locomotion ({listed(t.name for t in tasks)}) is evaluated on Gymnasium MuJoCo v5 "
            f"({listed(t.env_id for t in tasks)}, MuJoCo 3 bindings), where LaMo and D4RL use gym's mujoco-py -v2 "
            f"environments (MuJoCo 2.1): another physics build, so one policy need not score the same on both.")
    if any(t.env_id.startswith("Walker2d") for t in tasks):
        text += " Walker2d-v5 loads the v2 model (walker2d.xml, right-foot friction 0.9) the D4RL data was made with."
    return text


def _reacher2d_simulator(runs: list[RanTrial]) -> str | None:
    tasks = [t.name for t in _tasks(runs) if t.domain == "reacher2d"]
    if not tasks:
        return None
    return (f"Reacher2d ({listed(tasks)}) runs on this project's Gymnasium MuJoCo port of LaMo's task "
            f"(trainers/envs/reacher2d.py), not on LaMo's gym/mujoco-py Reacher2dEnv.")


def _kitchen_simulator(runs: list[RanTrial]) -> str | None:
    tasks = [t.name for t in _tasks(runs) if t.domain == "kitchen"]
    if not tasks:
        return None
    return (f"Kitchen ({listed(tasks)}) is evaluated on Gymnasium-Robotics FrankaKitchen-v1 (MuJoCo 3, converted "
            f"assets) presented in D4RL's 60-d observation layout, not D4RL's kitchen-*-v0 (MuJoCo 2.0, adept "
            f"assets) that LaMo uses: contacts and observation-noise draws differ, so the data's actions do not "
            f"replay identically.")


def _generated_data(runs: list[RanTrial]) -> str | None:
    parts = []
    for task in _tasks(runs):
        if task.generated_by is None:
            continue
        if task.domain == "reacher2d":
            behaviour = f"a scripted controller at the '{task.generated_by}' noise level"
            official = "LaMo's own reacher2d data, collected with PPO policies (data/data_generation_PPO)"
        elif task.domain == "atari":
            parts.append(f"{task.name}: generated by this project with a scripted ball-following policy in ALE, "
                         f"written in the DQN Replay layout (python -m trainers.tools.atari_replay generate), not "
                         f"the DQN Replay dataset's checkpoint 10 of run 1 (d4rl-atari's 'medium')")
            continue
        else:
            behaviour = ("uniform random actions" if task.generated_by == "random"
                         else f"a SAC policy trained online to a '{task.generated_by}' level")
            official = f"D4RL's {task.name.removesuffix('-gen')}-v2"
        parts.append(f"{task.name}: generated by this project with {behaviour} (python -m "
                     f"trainers.tools.make_dataset), not {official}")
    return "; ".join(parts) + "." if parts else None


def _evaluation_episodes(runs: list[RanTrial]) -> str | None:
    by_count: dict[str, set[str]] = {}
    for run in runs:
        count, official = run.config.get("eval_episodes"), LAMO_EVAL_EPISODES.get(run.domain, 20)
        if count is not None and count != official:
            by_count.setdefault(f"{count:g} (LaMo: {official})", set()).add(run.algorithm)
    if not by_count:
        return None
    shown = "; ".join(f"{count}: {listed(_in_order(algorithms, ALGORITHMS))}"
                      for count, algorithms in sorted(by_count.items(), key=lambda kv: float(kv[0].split()[0])))
    return (f"Evaluation episodes per target return and evaluation: {shown}. LaMo evaluates 20 on D4RL-style "
            f"tasks and 5 on Atari; fewer episodes make each evaluation noisier.")


def _evaluation_cadence(runs: list[RanTrial]) -> str | None:
    by_cadence: dict[tuple[str, int, int], set[str]] = {}
    for run in runs:
        every, official = run.config.get("eval_every"), LAMO_EVAL_EVERY.get(run.domain, 2500)
        if every is not None and every != official:
            by_cadence.setdefault((run.domain, every, official), set()).add(run.algorithm)
    if not by_cadence:
        return None
    shown = "; ".join(f"{domain}, every {every:,} updates (LaMo: {official:,}): {listed(_in_order(names, ALGORITHMS))}"
                      for (domain, every, official), names in sorted(by_cadence.items()))
    return (f"Evaluation cadence: {shown}. The protocols read a run's score at the evaluations it has: with a "
            f"sparser cadence the paper protocol averages fewer evaluations of the last 20 % of training, and the "
            f"best protocol picks its maximum from fewer.")


def _preset_values(algorithm: str, task: str) -> dict[str, Any]:
    """The algorithm's preset for the task (kitchen settings included), as JSON values like a record's config."""
    config = make_config(algorithm, task=TASKS.get(task))
    return json.loads(json.dumps(dataclasses.asdict(config)))  # as the trial record holds them (lists, None)


def _changed_settings(runs: list[RanTrial]) -> str | None:
    changed: dict[str, dict[str, tuple[set[str], str]]] = {}  # algorithm -> field -> (values run, preset value)
    presets: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        if run.algorithm not in ALGORITHMS:
            continue
        preset = presets.get((run.algorithm, run.task))
        if preset is None:
            preset = presets[run.algorithm, run.task] = _preset_values(run.algorithm, run.task)
        for name, default in preset.items():
            value = run.config.get(name, default)
            if value != default:
                changed.setdefault(run.algorithm, {}).setdefault(name, (set(), str(default)))[0].add(str(value))
    if not changed:
        return None
    parts = []
    for algorithm in _in_order(changed, ALGORITHMS):
        settings = ", ".join(f"{name} {' / '.join(sorted(values))} (preset {default})"
                             for name, (values, default) in changed[algorithm].items())
        parts.append(f"{algorithm}: {settings}")
    return ("Settings changed from each algorithm's preset (whose comments cite the paper or reference code for "
            "each value): "
            + "; ".join(parts) + ".")


def _seeded_evaluation(runs: list[RanTrial]) -> str | None:
    return ("Every evaluation episode is seeded from (the record's eval_seed, the trial's seed, the step), so each "
            "evaluation of a run starts from its own initial states and a resumed run replays the same ones; "
            "LaMo's evaluation resets its environment unseeded.") if runs else None


def _atari(runs: list[RanTrial]) -> str | None:
    tasks = [t for t in _tasks(runs) if t.domain == "atari"]
    if not tasks:
        return None
    return (f"Atari ({listed(t.name for t in tasks)}) runs ALE through ale-py and Gymnasium's AtariPreprocessing "
            f"(frame skip 4, 84x84 grayscale, no-op reset, no life-loss terminals, 4-frame stacks), as d4rl-atari "
            f"does with gym's wrappers; episodes of the DQN Replay files never span two checkpoint files (a file's "
            f"last, partial episode ends as a timeout). Scores are human-normalized with the Nature-DQN random and "
            f"human returns.")


KNOWN_DIFFERENCES: list[KnownDifference] = [
    KnownDifference("training data: episode boundaries",
                    "LaMo code: data/download_d4rl_datasets.py; trainers/data/trajectories.py (split_episodes)",
                    _episode_boundaries),
    KnownDifference("training data: dataset notes",
                    "the runs' trial records (dataset.notes); trainers/data/trajectories.py (enforce_horizon); "
                    "trainers/runtime/tasks.py (Task.data_horizon); LaMo code: experiment-d4rl/experiment.py "
                    "(max_ep_len), data/download_d4rl_datasets.py", _dataset_notes),
    KnownDifference("training data: seeded subsets",
                    "LaMo code: data/mujoco/ratio_dataset.py, data/kitchen/ratio_dataset.py; trainers/data/subsets.py "
                    "(subsample_trajectories)", _seeded_subsets),
    KnownDifference("training data: generated",
                    "trainers/tools/make_dataset.py, trainers/tools/atari_replay.py; trainers/runtime/tasks.py "
                    "(Task.generated_by); LaMo code: data/data_generation_PPO", _generated_data),
    KnownDifference("settings",
                    "trainers/sequence/config.py (Config, PRESETS: LaMo's run.sh and appendix); baselines/<name>.py "
                    "(Config: each field cites its reference); the runs' trial records", _changed_settings),
    KnownDifference("simulator: locomotion",
                    "trainers/runtime/tasks.py; LaMo code: experiment-d4rl/experiment.py (gym.make('<env>-medium-v2'))",
                    _locomotion_simulator),
    KnownDifference("simulator: kitchen",
                    "trainers/envs/kitchen.py (module docstring lists every difference); LaMo code: "
                    "experiment-d4rl/experiment.py (gym.make('kitchen-complete-v0'))", _kitchen_simulator),
    KnownDifference("simulator: reacher2d",
                    "trainers/envs/reacher2d.py; LaMo code: code/decision_transformer/envs/reacher_2d.py",
                    _reacher2d_simulator),
    KnownDifference("evaluation: episodes",
                    "LaMo code: experiment-d4rl/run.sh (num_eval_episodes=20); the runs' config.eval_episodes",
                    _evaluation_episodes),
    KnownDifference("evaluation: cadence",
                    "LaMo code: experiment-d4rl/run.sh (num_steps_per_iter); experiment-atari/cfgs/config.yaml "
                    "(eval_interval); trainers/runtime/tasks.py (DOMAIN_TRAINING); the runs' config.eval_every",
                    _evaluation_cadence),
    KnownDifference("simulator: atari",
                    "LaMo code: experiment-atari/buffer.py; takuseno/d4rl-atari; "
                    "trainers/envs/atari.py; trainers/data/dqn_replay.py", _atari),
    KnownDifference("evaluation: seeds",
                    "trainers/runtime/evaluation.py (episode_seeds); LaMo code: "
                    "experiment-d4rl/decision_transformer/evaluation/evaluate_episodes.py (env.reset())",
                    _seeded_evaluation),
]


ALGORITHM_NOTES_AFTER = "settings"  # the algorithms' own differences follow this entry of the table


def declared_differences(runs: list[RanTrial]) -> list[tuple[KnownDifference, list[RanTrial]]]:
    """Each algorithm declaration's differences with that declaration's runs, in registry order."""
    by_declaration: dict[int, tuple[AlgorithmDeclaration, list[RanTrial]]] = {}
    for run in sorted(runs, key=lambda r: list(ALGORITHMS).index(r.algorithm) if r.algorithm in ALGORITHMS else 0):
        if run.algorithm in ALGORITHMS:
            spec = declaration(run.algorithm, TASKS.get(run.task))
            by_declaration.setdefault(id(spec), (spec, []))[1].append(run)
    return [(difference, own) for spec, own in by_declaration.values() for difference in spec.differences]


def fidelity_notes(runs: list[RanTrial]) -> list[FidelityNote]:
    """The known differences that concern these runs, in the table's order (the algorithms' own after the
    settings), each saying how."""
    runs = list(runs)
    table: list[tuple[KnownDifference, list[RanTrial]]] = []
    for difference in KNOWN_DIFFERENCES:
        table.append((difference, runs))
        if difference.topic == ALGORITHM_NOTES_AFTER:
            table += declared_differences(runs)
    notes = []
    for difference, concerned in table:
        text = difference.describe(concerned)
        if text:
            notes.append(FidelityNote(difference.topic, text, difference.source))
    return notes
