"""Memory of four trials on one node reading one Atari-sized dataset: a copy each (the old path) against the node
cache (trainers/data/node_cache.py: converted once, memory-mapped by every trial).

    python -m bench.node_memory [--frames 100000] [--trials 4] [--batches 300]

Writes a synthetic DQN Replay run (breakout-medium-gen's layout: gzip .npy checkpoints of (N, 84, 84) uint8 frames;
100,000 frames is 0.7 GB of arrays) into a temporary directory, then starts `--trials` processes at once, each doing
what a trial does with its data (trainers/runtime/core.py): load the task's dataset, build the window sampler and
draw batches of 64 windows of 30 steps (trainers/data/samplers.py), which touches most frames. With every process
holding its data, it reads each one's RSS and PSS (proportional set size: a page shared by k processes counts 1/k
in each) from /proc/<pid>/smaps_rollup. "before" is LAMO_DATASET_CACHE=off, a private copy per process (the old
path, the baseline, measured in the same run); "after" starts from an empty node cache, so one of the processes
converts the data while the others wait for it. A row of processes that only import what a trial imports shows
what a process holds before any data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

TASK = "breakout-medium-gen"


def write_run(root: Path, frames: int) -> Path:
    """A DQN Replay run directory with one checkpoint of `frames` rows: frames with some structure (gzip has real
    work to do, as with real Atari frames), random actions and rewards, an episode end every ~1,000 steps."""
    from trainers.data.dqn_replay import REPLAY_LOGS, store_file_name, write_npy_gz

    rng = np.random.default_rng(0)
    run = root / "Breakout" / "1"
    (run / REPLAY_LOGS).mkdir(parents=True)
    observations = np.zeros((frames, 84, 84), np.uint8)
    for start in range(0, frames, 10_000):  # blocks of noisy bands, so that pages differ
        block = observations[start:start + 10_000]
        block[:, 10:70:4, :] = rng.integers(0, 256, (len(block), 1, 84), dtype=np.uint8)
    arrays = {"observation": observations, "action": rng.integers(0, 4, frames).astype(np.int32),
              "reward": rng.choice([0.0, 1.0], frames, p=[0.95, 0.05]).astype(np.float32),
              "terminal": (rng.random(frames) < 1e-3).astype(np.uint8)}
    for key, values in arrays.items():
        write_npy_gz(run / REPLAY_LOGS / store_file_name(key, 10), values)
    return run


def memory(pid: int) -> dict[str, int]:
    """RSS, PSS and private bytes of a process, from the kernel's summary of its mappings."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, amount = line.split(":")
        values[key] = int(amount.split()[0]) * 1024
    return {"rss": values["Rss"], "pss": values["Pss"],
            "private": values["Private_Clean"] + values["Private_Dirty"]}


def child(run: Path, batches: int) -> None:
    """One trial-like process: load through the trial's path, sample, report, then hold still until told to exit
    (batches 0: imports only, what a process holds before any data)."""
    from trainers.data.loading import load_task_dataset
    from trainers.data.samplers import WindowSampler
    from trainers.runtime.tasks import get_task

    task = get_task(TASK)
    if batches == 0:
        print(json.dumps({"pid": os.getpid(), "load_seconds": 0.0, "frames_bytes": 0}), flush=True)
        return sys.stdin.readline()
    started = time.perf_counter()
    dataset = load_task_dataset(task, run, shared=True)  # LAMO_DATASET_CACHE=off: the old, private read
    loaded = time.perf_counter() - started
    sampler = WindowSampler(dataset, task.context_len, task.return_scale)
    rng = np.random.default_rng(os.getpid())
    for _ in range(batches):
        sampler.sample(64, rng)
    report = {"pid": os.getpid(), "load_seconds": loaded, "frames_bytes": dataset.observations.nbytes}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()


def measure(run: Path, trials: int, batches: int, cache: str) -> list[dict]:
    env = {**os.environ, "LAMO_DATASET_CACHE": cache}
    processes = [subprocess.Popen([sys.executable, "-m", "bench.node_memory", "--child", str(run), "--batches",
                                   str(batches)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd=Path(__file__).resolve().parents[1]) for _ in range(trials)]
    try:
        reports = [json.loads(p.stdout.readline()) for p in processes]  # every process holds its data now
        return [{**report, **memory(report["pid"])} for report in reports]
    finally:
        for p in processes:
            p.communicate("\n", timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--batches", type=int, default=300, help="batches of 64 windows each process draws")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batches)
    work = Path(tempfile.mkdtemp(prefix="node-memory-"))
    try:
        run = write_run(work / "data", args.frames)
        rows = {"no data (imports only, for reference)": measure(run, args.trials, 0, "off"),
                "before: a copy per trial (LAMO_DATASET_CACHE=off)": measure(run, args.trials, args.batches, "off"),
                "after: node cache, memory-mapped": measure(run, args.trials, args.batches, str(work / "cache"))}
        frames = max(m["frames_bytes"] for measured in rows.values() for m in measured)
        table = Table("path", "RSS per trial", "PSS per trial", "private per trial", f"PSS, {args.trials} trials",
                      "load s (each)", title=f"{args.trials} trials on one node, {TASK} data: {args.frames:,} frames "
                                             f"= {frames / 2**20:,.0f} MiB, {args.batches} batches of 64 windows each")
        mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
        for label, measured in rows.items():
            mean = {key: np.mean([m[key] for m in measured]) for key in ("rss", "pss", "private")}
            table.add_row(label, mib(mean["rss"]), mib(mean["pss"]), mib(mean["private"]),
                          mib(sum(m["pss"] for m in measured)),
                          " ".join(f"{m['load_seconds']:.1f}" for m in measured))
        Console(width=140).print(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
