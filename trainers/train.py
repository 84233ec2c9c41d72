"""Run one trial by hand, without a sweep: local Ray (or the cluster in RAY_ADDRESS), one TorchTrainer.

    python -m trainers.train --algo lamo --task reacher2d-medium --ratio 0.1 --seed 0 --steps 2000 \\
        --set backbone=models/tiny-gpt2 --set lm_corpus=builtin

Metrics are printed and appended to <output>/metrics.jsonl; the final weights (LoRA adapter via peft,
safetensors), resolved config and per-episode evaluation returns are written to <output>/.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import asdict
from pathlib import Path

from trainers.datasets import DatasetError, resolve_dataset_path
from trainers.loop import LocalReport, TrialConfig, train_loop_per_worker
from trainers.registry import ALGORITHMS, ConfigError, make_config
from trainers.tasks import get_task


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


def run_trial(trial: TrialConfig, num_workers: int = 1, use_gpu: bool = False, storage_path: str | None = None,
              max_failures: int = 0, report=None, *, cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None,
              run_name: str | None = None, callbacks: list | None = None):
    """Fit one TorchTrainer for the trial (starting Ray locally if it is not running) and return its Result.

    A second call with the same run name and storage path resumes the run from its latest checkpoint (Train V2
    restores a run it finds there), which is how a resumed sweep continues its trials."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(configure_logging=False)
    storage = storage_path if storage_path and "://" in storage_path else \
        str(Path(storage_path or Path(trial.output_dir) / "ray").resolve())  # a URI (s3://, gs://) stays as given
    gpus = (1.0 if use_gpu else 0.0) if gpus_per_worker is None else gpus_per_worker
    per_worker = {"CPU": cpus_per_worker} | ({"GPU": gpus} if gpus > 0 else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial": asdict(trial), "report": report},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(name=run_name or f"{trial.algorithm}-{trial.task}-{trial.ratio:g}-{trial.seed}",
                             storage_path=storage, failure_config=FailureConfig(max_failures=max_failures),
                             callbacks=callbacks),
    )
    return trainer.fit()


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
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--output", default="outputs/trial", help="directory for metrics and final artifacts")
    parser.add_argument("--max-failures", type=int, default=0, help="worker-group restarts from the last checkpoint")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        for key, value in (("num_steps", args.steps), ("eval_every", args.eval_every),
                           ("eval_episodes", args.eval_episodes)):
            if value is not None:
                overrides[key] = value
        make_config(args.algo, overrides)  # fail on a bad name, field or missing file before starting Ray
        resolve_dataset_path(get_task(args.task), args.dataset)
    except (ConfigError, DatasetError, KeyError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    output = str(Path(args.output).resolve())
    trial = TrialConfig(algorithm=args.algo, task=args.task, ratio=args.ratio, seed=args.seed,
                        hyperparameters=overrides, dataset_path=args.dataset, output_dir=output)
    result = run_trial(trial, args.num_workers, args.gpu, max_failures=args.max_failures,
                       report=LocalReport(output))
    if result.error:
        print(f"error: trial failed: {result.error}", file=sys.stderr)
        return 1
    print(f"artifacts in {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
