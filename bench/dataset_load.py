"""Load + split a generated 1M-transition D4RL file: wall time and peak memory against the arrays' size.

    python -m bench.dataset_load [--steps 1000000]

The file is generated once with `trainers.tools.make_dataset` (hopper-random-gen, real Hopper-v5 physics; about
two minutes) and cached under bench/results/. A float64 copy measures the conversion path that older D4RL
files (float64 observations) take. h5py's own read is the baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from rich.table import Table

from trainers.data.d4rl import load_d4rl_dataset
from trainers.tools.make_dataset import make_dataset

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(loader: str, path: Path) -> dict:
    """Run one loader in a fresh process: its peak resident memory then covers HDF5's own buffers too."""
    out = subprocess.run([sys.executable, "-m", "bench.dataset_load", "--child", loader, str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def child(loader: str, path: Path) -> None:
    before = _rss_bytes()
    started = time.perf_counter()
    kept = LOADERS[loader](path)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "extra_peak": peak - before, "kept": kept}))


def plain_h5py_read(path: Path) -> int:
    with h5py.File(path) as f:
        arrays = {key: f[key][()] for key in ("observations", "actions", "rewards", "terminals", "timeouts",
                                              "next_observations")}
    return sum(a.nbytes for a in arrays.values())


def our_load(path: Path) -> int:
    dataset = load_d4rl_dataset(path)
    arrays = [dataset.observations, dataset.actions, dataset.rewards, dataset.terminals, dataset.timeouts,
              dataset.next_observations, dataset.episodes.starts, dataset.episodes.lengths]
    return sum(a.nbytes for a in arrays)


def float64_copy(path: Path) -> Path:
    out = path.with_name(path.stem + "-float64.hdf5")
    if not out.exists():
        with h5py.File(path) as source, h5py.File(out, "w") as f:
            for key in source:
                values = source[key][()]
                f.create_dataset(key, data=values.astype(np.float64) if values.dtype == np.float32 else values)
    return out


LOADERS = {"h5py": plain_h5py_read, "ours": our_load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("LOADER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    path = RESULTS / f"hopper-random-gen-{args.steps}.hdf5"
    if not path.exists():
        make_dataset("hopper-random-gen", out=path, num_steps=args.steps, progress=True)
    table = Table("load (fresh process each)", "seconds", "peak extra memory", "arrays kept", "peak / arrays",
                  title=f"{path.name}: {path.stat().st_size / 2**20:,.0f} MiB on disk")
    for label, file, loader in (("h5py read of the keys (baseline)", path, "h5py"),
                                ("load_d4rl_dataset: validate + split", path, "ours"),
                                ("load_d4rl_dataset, float64 file → float32", float64_copy(path), "ours")):
        m = measure(loader, file)
        table.add_row(label, f"{m['seconds']:.2f}", f"{m['extra_peak'] / 2**20:,.0f} MiB",
                      f"{m['kept'] / 2**20:,.0f} MiB", f"{m['extra_peak'] / m['kept']:.2f}×")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
