"""Datasets converted once per node and memory-mapped by every trial on it.

Reading a dataset is expensive twice over: converting it (decompressing DQN Replay's gzip checkpoints, HDF5 to
float32, validating, splitting long episodes) takes CPU time, and the result lives in the reading process'
private memory — an Atari checkpoint is 7.1 GB of frames, so four trials on one node held four copies. Here the
converted dataset, exactly the `TrajectoryDataset` the readers produce (trainers/data/loading.py), is written once
into

    <cache>/<dataset>-<key>/manifest.json        what the entry is: key, source, its digest and stamp, every
                                                 array's shape, dtype and size in bytes, the dataset's other
                                                 fields (name, notes, metadata, ...), who built it and when
    <cache>/<dataset>-<key>/<array>.npy          observations, actions, rewards, terminals, timeouts,
                                                 next_observations (when present), episode_starts,
                                                 episode_lengths, episode_terminated, episode_truncated,
                                                 episode_ids (plain .npy, no pickles)
    <cache>/<dataset>-<key>.lock                 the build lock

and every trial opens its arrays with ``np.load(mmap_mode="r")``: their pages live once in the node's page cache,
shared by all trials, and opening an entry takes milliseconds. ``<key>`` hashes the source's identity — the
SHA-256 digest the sweep's validation pass recorded (trainers/runtime/record.py, trainers/data/checksums.py), or,
for a record made without that pass, the source's absolute path — together with everything the conversion
depends on (the task's reader, spaces and horizons, the long-episode rule, and `FORMAT`, bumped whenever a reader's
output changes).

``<cache>`` is ``$LAMO_DATASET_CACHE``, else ``$LAMO_CACHE_DIR/datasets``, else ``~/.cache/lamo-sweeps/datasets``:
give every node a local disk there (a network file system would share the files but not the page cache).
``LAMO_DATASET_CACHE=off`` turns the cache off: each process reads its own copy, as before. A cache directory
that cannot be written is an error naming it (not a silent fallback to a copy per trial, which is what the cache
exists to prevent); an entry that is already built is read without writing anything, so a read-only cache works.

An entry is used only when its manifest parses, names this key and the source's current stamp (size and newest
mtime of its files) and, when a digest is wanted, that digest, and every array file has the size and header the
manifest lists. Anything else — a truncated array, a damaged manifest, a source changed since the build — is
rebuilt, never read. Processes on one node never convert the same dataset twice: the first takes an exclusive
``fcntl.flock`` on the lock file and builds, the others wait on that lock and then open its result. A build is
written into a temporary directory beside the entry and renamed into place only when complete, so a crashed build
leaves nothing a later process would read (the lock dies with its process, and the entry's next build removes what
a killed one left). The builder hashes the source while building; a digest that differs from the wanted one means
the file changed after the sweep validated it, and is refused.

What stays shared downstream: the samplers (trainers/data/samplers.py) gather each batch from the mapped arrays,
Atari's frames included, and never copy them whole. Two forms do hold a private copy per trial: a data ratio below
1 keeps its subset as new arrays (`TrajectoryDataset.select_episodes`: ratio × the data), and the window sampler
of a vector-state dataset (D4RL, Minari) keeps its normalized float32 states (the size of `observations`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trainers.data.checksums import sha256_of_tree
from trainers.data.trajectories import DatasetError, EpisodeIndex, TrajectoryDataset

CACHE_ENV = "LAMO_DATASET_CACHE"
FORMAT = 1  # bump when a reader's output changes: every existing entry then has another key
MANIFEST = "manifest.json"

# The arrays of a TrajectoryDataset, by file stem: how to take each from a dataset.
_ARRAYS: dict[str, Callable[[TrajectoryDataset], np.ndarray | None]] = {
    "observations": lambda d: d.observations,
    "actions": lambda d: d.actions,
    "rewards": lambda d: d.rewards,
    "terminals": lambda d: d.terminals,
    "timeouts": lambda d: d.timeouts,
    "next_observations": lambda d: d.next_observations,
    "episode_starts": lambda d: d.episodes.starts,
    "episode_lengths": lambda d: d.episodes.lengths,
    "episode_terminated": lambda d: d.episodes.terminated,
    "episode_truncated": lambda d: d.episodes.truncated,
    "episode_ids": lambda d: d.episode_ids,
}


def default_cache_dir() -> Path | None:
    """$LAMO_DATASET_CACHE, else $LAMO_CACHE_DIR/datasets, else ~/.cache/lamo-sweeps/datasets; None when the
    variable says "off"."""
    configured = os.environ.get(CACHE_ENV, "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("LAMO_CACHE_DIR") or Path.home() / ".cache" / "lamo-sweeps"
    return Path(base).expanduser() / "datasets"


def source_stamp(path: Path) -> list[int]:
    """[bytes, newest mtime] of a file, or of every file under a directory: changes whenever the data does."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return [sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


@dataclass(frozen=True)
class CachedDataset:
    """A dataset opened from the node cache, and how this call obtained it."""

    dataset: TrajectoryDataset  # its arrays are read-only memory maps of the entry's files
    entry: Path  # <cache>/<dataset>-<key>
    built: bool  # True when this call converted the source, False when it found the entry
    seconds: float  # spent in this call: converting, or waiting for another process's conversion


def entry_path(source: Path, conversion: dict[str, Any], digest: str = "",
               cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the entry for this source and conversion lives (found or not)."""
    identity = {"format": FORMAT, "source": f"sha256:{digest}" if digest else f"path:{source.resolve()}",
                **conversion}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(conversion.get("dataset", source.stem))).strip("_") or "dataset"
    return Path(cache_dir or default_cache_dir()) / f"{slug}-{key}"


def shared_dataset(source: Path, conversion: dict[str, Any], build: Callable[[], TrajectoryDataset],
                   digest: str = "", cache_dir: str | os.PathLike | None = None) -> CachedDataset:
    """The dataset `build()` converts `source` into, from this node's cache: converted by this call only when no
    valid entry exists yet. `conversion` names everything the conversion depends on besides the source's bytes;
    `digest`, when given, is the SHA-256 the source must have (sha256_of_tree)."""
    started = time.perf_counter()
    source = Path(source)
    entry = entry_path(source, conversion, digest, cache_dir)
    stamp = source_stamp(source)
    found = _open_entry(entry, stamp, digest)
    if found is not None:  # the common case: no lock, no source read
        return CachedDataset(found, entry, built=False, seconds=time.perf_counter() - started)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(entry.with_name(entry.name + ".lock"), "a+b")  # "a": never truncates a lock another holds
    except OSError as error:
        raise OSError(f"the dataset cache directory {entry.parent} is not writable ({error.strerror}); set "
                      f"{CACHE_ENV} to a writable directory on this node's local disk, or {CACHE_ENV}=off to "
                      f"read a copy in every process") from None
    with lock:  # closing the file releases the lock, also when the build raises
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _open_entry(entry, stamp, digest)  # another process may have built it while this one waited
        if found is not None:
            return CachedDataset(found, entry, built=False, seconds=time.perf_counter() - started)
        _build(entry, source, stamp, conversion, build, digest, started)
        found = _open_entry(entry, stamp, digest)
    if found is None:
        raise DatasetError(f"{entry}: the entry just built does not open; is {entry.parent} being changed by "
                           f"another program?")
    return CachedDataset(found, entry, built=True, seconds=time.perf_counter() - started)


def read_manifest(entry: Path) -> dict[str, Any]:
    return json.loads((entry / MANIFEST).read_text())


# ---------------------------------------------------------------------------------------------- internals

def _open_entry(entry: Path, stamp: list[int], digest: str) -> TrajectoryDataset | None:
    """The entry's dataset, memory-mapped; None for an entry that is missing, damaged or stale."""
    try:
        manifest = read_manifest(entry)
        if (manifest["format"] != FORMAT or manifest["key"] != entry.name or manifest["source_stamp"] != stamp
                or (digest and manifest["source_digest"] != digest)):
            return None
        arrays = {}
        for name, expected in manifest["arrays"].items():
            file = entry / f"{name}.npy"
            if file.stat().st_size != expected["bytes"]:
                return None
            values = np.load(file, mmap_mode="r", allow_pickle=False)
            if list(values.shape) != expected["shape"] or values.dtype.str != expected["dtype"]:
                return None
            arrays[name] = values
        fields = manifest["dataset"]
        return TrajectoryDataset(
            name=fields["name"], observations=arrays["observations"], actions=arrays["actions"],
            rewards=arrays["rewards"], terminals=arrays["terminals"], timeouts=arrays["timeouts"],
            episodes=EpisodeIndex(arrays["episode_starts"], arrays["episode_lengths"],
                                  arrays["episode_terminated"], arrays["episode_truncated"]),
            next_observations=arrays.get("next_observations"), episode_ids=arrays["episode_ids"],
            metadata=_from_json(fields["metadata"]), source=Path(fields["source"]) if fields["source"] else None,
            notes=tuple(fields["notes"]), frame_stack=fields["frame_stack"], ratio_sampling=fields["ratio_sampling"])
    except (OSError, ValueError, KeyError, TypeError):  # json.JSONDecodeError is a ValueError; so is a short mmap
        return None


def _build(entry: Path, source: Path, stamp: list[int], conversion: dict[str, Any],
           build: Callable[[], TrajectoryDataset], digest: str, started: float) -> None:
    """Convert, check the source's digest, write everything into a temporary directory, then rename it into
    place (replacing a damaged or stale entry; processes still mapping its files keep them until they close)."""
    source_digest, _ = sha256_of_tree(source)
    if digest and source_digest != digest:
        raise DatasetError(f"{source}: its SHA-256 is now {source_digest[:12]}, but the sweep validated "
                           f"{digest[:12]}: the data changed after the sweep started; run the sweep with --restart "
                           f"or restore the data")
    dataset = build()
    for leftover in entry.parent.glob(f".{entry.name}.*"):  # a killed build's; the lock says none is running
        shutil.rmtree(leftover, ignore_errors=True)
    work = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp"))
    try:
        arrays = {}
        for name, take in _ARRAYS.items():
            values = take(dataset)
            if values is None:
                continue
            values = np.ascontiguousarray(values)
            np.save(work / f"{name}.npy", values, allow_pickle=False)
            arrays[name] = {"shape": list(values.shape), "dtype": values.dtype.str,
                            "bytes": (work / f"{name}.npy").stat().st_size}
        manifest = {
            "format": FORMAT, "key": entry.name, "conversion": conversion, "source": str(source),
            "source_stamp": stamp, "source_digest": source_digest, "arrays": arrays,
            "dataset": {"name": dataset.name, "source": str(dataset.source) if dataset.source else "",
                        "notes": list(dataset.notes), "frame_stack": dataset.frame_stack,
                        "ratio_sampling": dataset.ratio_sampling, "metadata": _to_json(dataset.metadata)},
            "built": {"host": socket.gethostname(), "pid": os.getpid(), "seconds": time.perf_counter() - started,
                      "at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
        old = None
        if entry.exists():
            old = entry.with_name(f".{entry.name}.{os.getpid()}.old")
            os.replace(entry, old)
        os.replace(work, entry)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _to_json(value: Any) -> Any:
    """Metadata as JSON, arrays and tuples tagged so that they come back as what they were."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.array(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        if "__tuple__" in value:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value
