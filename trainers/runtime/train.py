"""Run one trial by hand, without a sweep:

    python -m trainers.runtime.train --algo lamo --task reacher2d-medium --ratio 0.1 --seed 0 --steps 2000 \\
        --set backbone=models/tiny-gpt2 --set lm_corpus=builtin

One worker runs the trial core right here (no Ray); `--num-workers N` runs N DDP workers in a Ray Train
TorchTrainer (local Ray, or the cluster in RAY_ADDRESS). Metrics are printed and appended to
<output>/metrics.jsonl; the final weights (LoRA adapter via peft, safetensors), the trial record and the
per-episode evaluation returns are written to <output>/. Run the same command again and it resumes from the
checkpoint in <output>/checkpoint (one worker) or the Ray Train run (several).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from trainers.data.loading import resolve_dataset_path
from trainers.data.trajectories import DatasetError
from trainers.runtime.algorithm import ConfigError
from trainers.runtime.core import LocalReport, run_local
from trainers.runtime.record import make_record
from trainers.runtime.registry import ALGORITHMS
from trainers.runtime.tasks import get_task


def parse_overrides(pairs: list[str]) -> dict:
    """key=value pairs; values are Python literals when they parse as one (1e-4, None, True), else strings."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", required=True, help=f"one of {', '.join(ALGORITHMS)}")
    parser.add_argument("--task", required=True)
    parser.add_argument("--ratio", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="gradient steps (default: the algorithm's)")
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-episodes", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter override")
    parser.add_argument("--dataset", help="explicit dataset file (default: the d4rl cache convention)")
    parser.add_argument("--num-workers", type=int, default=1, help="DDP workers; more than 1 runs on Ray Train")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (with --num-workers > 1)")
    parser.add_argument("--output", default="outputs/trial", help="directory for metrics and final artifacts")
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts (Ray Train)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        for key, value in (("num_steps", args.steps), ("eval_every", args.eval_every),
                           ("eval_episodes", args.eval_episodes)):
            if value is not None:
                overrides[key] = value
        record = make_record(args.algo, args.task, args.ratio, args.seed, overrides, args.dataset)
        resolve_dataset_path(get_task(args.task), args.dataset)  # a missing file is named before any work
    except (ConfigError, DatasetError, KeyError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    output = str(Path(args.output).resolve())
    if args.num_workers == 1:
        run_local(record, output)
    else:
        import ray

        from trainers.runtime.distributed import fit_distributed

        if not ray.is_initialized():
            ray.init(configure_logging=False)
        result = fit_distributed(record, output, num_workers=args.num_workers, storage=str(Path(output, "ray")),
                                 run_name=record.trial_id, report=LocalReport(output),
                                 gpus_per_worker=1.0 if args.gpu else 0.0, max_failures=args.max_failures)
        if result.error:
            print(f"error: trial failed: {result.error}", file=sys.stderr)
            return 1
    print(f"artifacts in {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
