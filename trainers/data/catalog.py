"""Where the external datasets come from: D4RL's hdf5 files (one table) and the Minari ids the tasks read.

D4RL registers each dataset id with a URL (d4rl/infos.py, ``DATASET_URLS``; the Gym-MuJoCo v2 entries are
generated there as ``gym_mujoco_v2/<env>_<flavour with _>-v2.hdf5``, the kitchen ones listed). The d4rl package
caches a download as ``$D4RL_DATASET_DIR/<last part of the URL>`` (d4rl/offline_env.py, ``filepath_from_url``),
so that last part is the file name a task looks up: users who have the real files use them unchanged.

Sizes and SHA-256 digests: D4RL publishes neither, and none could be measured here (no network), so every entry
below says ``None`` = unknown rather than a guessed value. A fetch without a known digest still checks the
server's Content-Length and that the file reads as D4RL's hdf5 layout, and prints the size and SHA-256 it got so
they can be recorded in this table.

Minari datasets are named by their Minari id (``mujoco/hopper/medium-v0``); a task names one as
``minari:<id>``, and the `minari` package locates, downloads and checks it (trainers/data/minari_datasets.py).
"""

from __future__ import annotations

from dataclasses import dataclass

D4RL_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
MINARI_PREFIX = "minari:"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable dataset file."""

    dataset_id: str  # the registry's name for it, e.g. "hopper-medium-v2"
    url: str
    size: int | None = None  # bytes; None: unknown
    sha256: str | None = None  # hex digest; None: unknown

    @property
    def file_name(self) -> str:
        """The name the d4rl package caches it under: the URL's last part."""
        return self.url.rsplit("/", 1)[-1]


def _locomotion_v2(env: str, flavour: str) -> RemoteFile:
    return RemoteFile(f"{env}-{flavour}-v2", f"{D4RL_BASE_URL}/gym_mujoco_v2/{env}_{flavour.replace('-', '_')}-v2.hdf5")


# Every D4RL file a task reads. Size and sha256 are None (unknown) for all of them: see the module docstring.
D4RL_FILES: dict[str, RemoteFile] = {
    entry.dataset_id: entry for entry in [
        *(_locomotion_v2(env, flavour) for env in ("hopper", "halfcheetah", "walker2d")
          for flavour in ("random", "medium", "medium-replay", "medium-expert", "expert")),
        RemoteFile("kitchen-complete-v0",
                   f"{D4RL_BASE_URL}/kitchen/mini_kitchen_microwave_kettle_light_slider-v0.hdf5"),
        RemoteFile("kitchen-partial-v0", f"{D4RL_BASE_URL}/kitchen/kitchen_microwave_kettle_light_slider-v0.hdf5"),
    ]
}


def is_minari_id(dataset_id: str) -> bool:
    return dataset_id.startswith(MINARI_PREFIX)


def minari_id(dataset_id: str) -> str:
    """The id the `minari` package knows ("mujoco/hopper/medium-v0") from ours ("minari:mujoco/hopper/medium-v0")."""
    return dataset_id.removeprefix(MINARI_PREFIX)
