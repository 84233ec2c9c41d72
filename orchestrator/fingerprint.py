"""A trial's fingerprint: what it computes and nothing else, so that a finished run can stand for a trial of any later
sweep (orchestrator/reuse.py).

Two parts, kept apart so that a run that differs only by code can be called *stale* and its changed files named:
- `inputs`: SHA-256 of the canonical JSON of the algorithm, task, the dataset's name and SHA-256 digest (the name
  seeds the data-ratio subsets) with the episode counts its validation found, ratio, seed, evaluation seed, and
  the resolved config — which holds the step budget, evaluation cadence and episodes, and every hyperparameter. A
  config field that names a local model or corpus (an algorithm's declared external input) enters as the SHA-256
  of its files, not its path, so the same model in another checkout or on another node is the same input;
- `code`: SHA-256 over the project's source files the trial executes: the static import closure (every `import`
  in the file, module level or not) of the algorithm's module and of the trial core (trainers/runtime/core.py),
  within trainers/ and baselines/, package `__init__` files included. The registry is counted but not followed:
  it imports every algorithm only to map names to modules, and what it resolves for this trial (the module, the
  config) is in the fingerprint already — so changing one baseline makes only its own trials stale.

Not part of it: the sweep's name, the trial id, tracking and storage locations, concurrency, resources and
placement, how often training metrics are reported (`log_every`), the orchestrator's code, and third-party
library versions and the device (a run trained on a GPU stands for the same trial on a laptop; its run records
where it ran). Where those matter to a study, `--no-reuse` trains everything.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from trainers.data.checksums import sha256_of_file, sha256_of_tree
from trainers.runtime.record import TrialRecord
from trainers.runtime.registry import declaration, external_inputs
from trainers.runtime.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]  # the project: trainers/ and baselines/ below it
PACKAGES = ("trainers", "baselines")
CORE = "trainers.runtime.core"
NOT_FOLLOWED = frozenset({"trainers.runtime.registry"})


@dataclass(frozen=True)
class Fingerprint:
    inputs: str  # SHA-256 of what the trial computes on (code aside)
    code: str  # SHA-256 over `files`
    files: dict[str, str]  # project-relative path -> SHA-256 of each source file in the closure


def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path, module: str) -> set[str]:
    """Project modules a file imports anywhere in it (absolute or relative), with every package on the way."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(filter(None, [*parts, base]))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import module`
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in PACKAGES:
                found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return found


@functools.lru_cache(maxsize=None)
def code_files(roots: tuple[str, ...], root: Path = ROOT) -> dict[str, str]:
    """Project-relative path -> SHA-256 of every source file in the import closure of the `roots` modules."""
    seen: set[str] = set()
    files: dict[str, str] = {}
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module, root)
        if path is None:  # a name imported from a module (a function, a class), not a module itself
            continue
        files[path.relative_to(root).as_posix()] = sha256_of_file(path)
        if module not in NOT_FOLLOWED:
            pending += sorted(_imported(path, module) - seen)
    return dict(sorted(files.items()))


def digest_of(files: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{path}\0{sha}\n" for path, sha in files.items()).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _content_digest(path: str) -> str:
    return "sha256:" + sha256_of_tree(path)[0]


def _config_by_content(record: TrialRecord) -> dict:
    """The resolved config with every local model or corpus the algorithm declares replaced by its files' digest."""
    config = dict(record.config)
    for declared in external_inputs(record.algorithm, record.algorithm_config()):
        if Path(declared.value).exists():
            config[declared.field] = _content_digest(str(Path(declared.value).resolve()))
    return config


def trial_code(record: TrialRecord, root: Path = ROOT) -> dict[str, str]:
    """The source files the record's trial executes (module doc)."""
    module = declaration(record.algorithm, get_task(record.task)).build.__module__
    return code_files((module, CORE), root)


def fingerprint(record: TrialRecord, root: Path = ROOT) -> Fingerprint:
    """The record's fingerprint; its dataset identity must come from the sweep's validation pass (digest set)."""
    if not record.dataset.digest:
        raise ValueError(f"{record.trial_id}: its dataset has no digest yet (the sweep's validation pass sets it)")
    dataset = record.dataset
    payload = {"algorithm": record.algorithm, "task": record.task, "ratio": record.ratio, "seed": record.seed,
               "eval_seed": record.eval_seed, "config": _config_by_content(record),
               "dataset": {"name": dataset.name, "digest": dataset.digest, "episodes": dataset.episodes,
                           "transitions": dataset.transitions, "subset_episodes": dataset.subset_episodes}}
    inputs = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    files = trial_code(record, root)
    return Fingerprint(inputs, digest_of(files), files)


def changed_files(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The source files that differ between two closures (edited, added or removed), sorted."""
    return sorted(path for path in before.keys() | now.keys() if before.get(path) != now.get(path))
