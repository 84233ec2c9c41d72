"""Data ratios: a cell's subset of whole trajectories, the same on every machine.

A data ratio keeps floor(ratio · E) whole trajectories, drawn without replacement by a generator seeded from
(dataset identity, episode count, ratio, seed), so one cell of a sweep trains on the same trajectories on every
machine and each seed on its own subset; the kept ids are the subset's `episode_ids` (logged with the trial).
The official LaMo code drew its subsets from the unseeded global RNG (one subset per task and ratio for every
seed); that is not reproduced.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from trainers.data.trajectories import DatasetError, TrajectoryDataset


def subset_seed(dataset_name: str, num_episodes: int, ratio: float, seed: int) -> int:
    """A platform-independent seed for one (dataset, ratio, seed) cell (Python's hash() is salted per process)."""
    key = f"{dataset_name}|{num_episodes}|{ratio!r}|{seed}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def subsample_trajectories(dataset: TrajectoryDataset, ratio: float, seed: int) -> TrajectoryDataset:
    """Keep floor(ratio · E) whole trajectories drawn without replacement (uniformly, or in proportion to their
    length when the dataset's `ratio_sampling` says so); the kept ids are `episode_ids`."""
    if not 0.0 < ratio <= 1.0:
        raise DatasetError(f"data ratio must be in (0, 1], got {ratio}")
    total = dataset.num_episodes
    if ratio == 1.0:
        return dataset
    count = math.floor(ratio * total + 1e-9)
    if count == 0:
        raise DatasetError(f"data ratio {ratio} of {dataset.name} selects no trajectory: the dataset has {total} "
                           f"trajectories, so the smallest usable ratio is {1 / total:.6g}")
    rng = np.random.default_rng(subset_seed(dataset.name, total, ratio, seed))
    # Sorted so the subset keeps the file's order; which ids are chosen depends only on the seed.
    if dataset.ratio_sampling == "length":
        lengths = dataset.episodes.lengths
        positions = np.sort(rng.choice(total, size=count, replace=False, p=lengths / lengths.sum()))
    else:
        positions = np.sort(rng.choice(total, size=count, replace=False))
    return dataset.select_episodes(positions)


def top_fraction_by_return(dataset: TrajectoryDataset, fraction: float) -> TrajectoryDataset:
    """The highest-return trajectories (at least one), e.g. BC-10 %'s training set."""
    count = max(1, math.floor(fraction * dataset.num_episodes + 1e-9))
    order = np.argsort(-dataset.episode_returns(), kind="stable")[:count]
    return dataset.select_episodes(np.sort(order))
