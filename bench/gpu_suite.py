"""The GPU suite: what the sweeps' GPU path does on one CUDA device, in a few minutes on an H200.

    python -m bench.gpu_suite [--device cuda] [--steps 30] [--trial-steps 1500]
    python -m bench.gpu_suite --device cpu --quick       # the same code on tiny sizes, to check it on a CPU

1. LaMo's train step at GPT-2 small's size (12 layers × 768, random init: weights cannot be downloaded where this
   project is built), batch 64, K 20, bf16 autocast, λ = 0 and λ = 0.1 — steps/s and peak GPU memory;
2. one full LaMo evaluation with that model: hopper, its 4 target returns × 20 episodes, 1,000-step horizon,
   batched — seconds;
3. fractional trials packed by the sweep: four 0.25-GPU LaMo trials at once against one trial alone, each through
   `python orchestrator/sweep.py` (local Ray, Tune, MLflow) — updates/s of all trials together;
4. a 2-rank DDP step with CUDA tensors — ms per step and whether the ranks end with the same weights. Two ranks
   share the one GPU, so they talk over gloo (NCCL refuses two ranks on one device); a multi-GPU trial
   (trainers/runtime/distributed.py) uses NCCL;
5. seeds trained together (trainers/runtime/stack.py) at paper sizes: k = 1, 3, 5 seeds of LaMo (GPT-2 small,
   bf16, λ 0.1; the loop form over one shared frozen backbone), dt (3 × 128, batch 64; loop form), IQL and TD3+BC
   (256-wide MLPs, batch 256; fused) in one trial — seed-updates/s and peak GPU memory (bench/stacked_seeds.py's
   measurement). The issue's goals: k = 5 ≥ 3× the seed-updates/s of k = 1 for the MLP baselines and dt, ≥ 1.5× for
   LaMo.

    python -m bench.gpu_suite --parts 5      # one part alone
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from gymnasium.spaces import Box
from rich.console import Console

from bench.orchestration import run_training_seconds, trial_runs
from bench.sequence_step import hopper_like

REPO = Path(__file__).resolve().parents[1]


def backbone(directory: Path, quick: bool) -> Path:
    """A GPT-2 model directory as a user's download would be (save_pretrained), with the byte tokenizer the
    language loss reads: GPT-2 small's architecture, or a 2-layer one with --quick."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainers.sequence.language.tokenizers import ByteTokenizer

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2) if quick else GPT2Config()).save_pretrained(directory)
    ByteTokenizer().save(directory)
    return directory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model_dir: Path, lm_coef: float, steps: int, device: torch.device):
    """LaMo built as a trial builds it (bf16 autocast): steps/s over `steps` updates after two warm-up updates,
    peak GPU memory in GiB, and the algorithm."""
    from trainers.data.samplers import to_torch
    from trainers.runtime.algorithm import TrainingSetup
    from trainers.runtime.registry import build_algorithm, make_config
    from trainers.runtime.tasks import get_task

    torch.manual_seed(0)
    setup = TrainingSetup(task=get_task("hopper-medium"), dataset=hopper_like(), device=device, seed=0,
                          observation_space=Box(-np.inf, np.inf, (11,)), action_space=Box(-1, 1, (3,)))
    config = make_config("lamo", {"backbone": str(model_dir), "lm_coef": lm_coef, "lm_corpus": "builtin",
                                  "context_len": 20, "precision": "bf16"})
    algorithm = build_algorithm("lamo", config, setup)
    rng = np.random.default_rng(0)
    batches = [to_torch(algorithm.sampler.sample(64, rng), device) for _ in range(steps + 2)]
    for batch in batches[:2]:
        algorithm.update(batch)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for batch in batches[2:]:
        algorithm.update(batch)
    synchronize(device)
    speed = steps / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return speed, peak, algorithm


def evaluation_seconds(algorithm, episodes: int, horizon: int) -> tuple[float, int]:
    """One batched evaluation of the algorithm's policy on Hopper-v5 (every target × `episodes`): seconds and
    environment steps."""
    from trainers.runtime.evaluation import evaluate_batched
    from trainers.runtime.tasks import get_task

    task = replace(get_task("hopper-medium"), horizon=horizon)
    started = time.perf_counter()
    result = evaluate_batched(task, algorithm.policy, episodes, seed=0, target_returns=task.target_returns)
    return time.perf_counter() - started, int(sum(t.lengths.sum() for t in result.targets))


def sweep_throughput(work: Path, dataset: Path, model_dir: Path, trials: int, gpu_share: float, steps: int) -> dict:
    """`trials` LaMo trials through the sweep command, each holding `gpu_share` of a GPU (none on a CPU): their
    updates/s together (each trial's updates over its training time, summed: they run at the same time) and how
    many trained at once."""
    work.mkdir()
    spec = {"name": f"gpu-suite-{trials}", "tasks": [{"name": "reacher2d-medium", "dataset": str(dataset)}],
            "algorithms": [{"name": "lamo", "overrides": {"backbone": str(model_dir), "lm_corpus": "builtin",
                                                          "lm_coef": 0.0, "precision": "bf16"}}],
            "ratios": [1.0], "seeds": list(range(trials)),
            "training": {"steps": steps, "eval_every": steps, "eval_episodes": 4},
            "resources": {"num_workers": 1, "gpus_per_worker": gpu_share, "cpus_per_worker": 1},
            "tracking": {"uri": f"sqlite:///{work}/mlflow.db"}, "storage": str(work / "ray_results")}
    (work / "sweep.yaml").write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "orchestrator" / "sweep.py"), "--spec", str(work / "sweep.yaml")],
                          cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the {trials}-trial sweep failed:\n{(done.stdout + done.stderr)[-3000:]}")
    client, runs = trial_runs(spec["tracking"]["uri"])
    rates = [steps / run_training_seconds(client, r) for r in runs]
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    at_once = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    return {"updates_per_s": sum(rates), "per_trial": statistics.median(rates), "at_once": at_once, "wall": wall}


def ddp_rank(rank: int, device_type: str, steps: int, port: int, results) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    device = torch.device(device_type)
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(),
                                                        torch.nn.Linear(1024, 256)).to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator(device=device).manual_seed(rank)  # each rank its own batches

    def step():
        loss = model(torch.randn(512, 256, device=device, generator=generator)).square().mean()
        optimizer.zero_grad()
        loss.backward()  # gradients averaged across the ranks here
        optimizer.step()

    step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    milliseconds = 1000 * (time.perf_counter() - started) / steps
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()  # gloo gathers CPU tensors only
    gathered = [torch.zeros_like(weights) for _ in range(2)]
    dist.all_gather(gathered, weights)
    results.put((rank, milliseconds, torch.equal(gathered[0], gathered[1])))
    dist.destroy_process_group()


def ddp_step(device: torch.device, steps: int) -> tuple[float, bool]:
    """Two DDP ranks in their own processes: ms per step (the slower rank) and whether they end identical."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=ddp_rank, args=(rank, device.type, steps, port, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    outcome = [results.get(timeout=600) for _ in ranks]
    for process in ranks:
        process.join()
    if any(process.exitcode != 0 for process in ranks):
        raise RuntimeError(f"a DDP rank failed (exit codes {[p.exitcode for p in ranks]})")
    return max(ms for _, ms, _ in outcome), all(same for _, _, same in outcome)


def stacked_steps(work: Path, dataset: Path, model_dir: Path, device: torch.device, quick: bool,
                  console: Console) -> None:
    """Part 5: seed-updates/s and peak memory of k = 1, 3, 5 seeds in one trial, per algorithm."""
    from bench.stacked_seeds import updates_per_second

    base = {"num_steps": 10**6, "eval_every": 10**6, "eval_episodes": 1}
    rows = {"lamo": {"backbone": str(model_dir), "lm_corpus": "builtin", "precision": "bf16"},
            "dt": {} if not quick else {"n_layer": 1, "n_embd": 32, "n_head": 1},
            "iql": {} if not quick else {"hidden_dims": [32, 32]},
            "td3_bc": {} if not quick else {"hidden_dims": [32, 32]}}
    seconds = 1.0 if quick else 5.0
    for algorithm, params in rows.items():
        figures = {}
        updates_per_second("gpu-suite", algorithm, 1, dataset, base | params, 0.0, work, device)  # warm-up
        for k in (1, 3, 5):
            rate, _, peak = updates_per_second("gpu-suite", algorithm, k, dataset, base | params, seconds, work,
                                               device)
            figures[k] = rate, peak
        console.print(f"5. {algorithm}, k seeds in one trial: " + ", ".join(
            f"k={k} {rate:.1f} seed-updates/s" + (f" ({peak:.2f} GiB)" if device.type == "cuda" else "")
            for k, (rate, peak) in figures.items()) + f"; k=5 / k=1 {figures[5][0] / figures[1][0]:.2f}×")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the suite) or cpu (with --quick: a check of the code)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a 2-layer GPT-2, short episodes and trials")
    parser.add_argument("--steps", type=int, default=30, help="timed train steps per row")
    parser.add_argument("--trial-steps", type=int, default=1500, help="updates per sweep trial")
    parser.add_argument("--parts", default="1,2,3,4,5", help="which parts to run")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False); "
                     "use --device cpu --quick to check the code on a CPU")
    console = Console(highlight=False, soft_wrap=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    console.print(f"GPU suite on {name}{' (--quick sizes)' if args.quick else ''}; work in {work}")
    model_dir = backbone(work / "gpt2", args.quick)

    from trainers.tools.make_dataset import make_dataset

    dataset = make_dataset("reacher2d-medium", out=work / "reacher2d-medium.hdf5", seed=0, num_episodes=40)
    if "5" in parts:  # first: the newest figures, and the one part a short lease must not miss
        stacked_steps(work, dataset, model_dir, device, args.quick, console)
    same = True
    if parts & {"1", "2"}:
        parts_one_and_two(model_dir, device, args, console)
    if "3" in parts:
        part_three(work, dataset, model_dir, device, args, console)
    if "4" in parts:
        milliseconds, same = ddp_step(device, 5 if args.quick else 50)
        console.print(f"4. 2-rank DDP step ({device.type} tensors, gloo): {milliseconds:.2f} ms per step; "
                      f"ranks' weights {'identical' if same else 'DIFFERENT'} after the steps")
    return 0 if same else 1


def parts_one_and_two(model_dir: Path, device: torch.device, args, console: Console) -> None:
    algorithm = None
    for lm_coef in (0.0, 0.1):
        speed, peak, built = train_step(model_dir, lm_coef, args.steps, device)
        if algorithm is None:  # the λ = 0 model is evaluated below
            algorithm = built
        console.print(f"1. LaMo train step, GPT-2 {'2 × 64' if args.quick else 'small (12 × 768)'}, batch 64, K 20, "
                      f"bf16, λ = {lm_coef}: {speed:.2f} steps/s"
                      + (f", peak GPU memory {peak:.2f} GiB" if device.type == "cuda" else ""))

    episodes, horizon = (2, 50) if args.quick else (20, 1000)
    seconds, env_steps = evaluation_seconds(algorithm, episodes, horizon)
    console.print(f"2. one LaMo evaluation, hopper, 4 targets × {episodes} episodes, horizon {horizon}: "
                  f"{seconds:.1f} s ({env_steps:,} environment steps, {env_steps / seconds:,.0f}/s)")


def part_three(work: Path, dataset: Path, model_dir: Path, device: torch.device, args, console: Console) -> None:
    share, packed_trials = (0.25, 4) if device.type == "cuda" else (0.0, 2)
    trial_steps = 300 if args.quick else args.trial_steps
    alone = sweep_throughput(work / "alone", dataset, model_dir, 1, share, trial_steps)
    packed = sweep_throughput(work / "packed", dataset, model_dir, packed_trials, share, trial_steps)
    console.print(f"3. sweep, {trial_steps} updates per trial, {share:g} GPU each: one trial alone "
                  f"{alone['updates_per_s']:.1f} updates/s; {packed_trials} trials ({packed['at_once']} at once) "
                  f"{packed['updates_per_s']:.1f} updates/s together ({packed['per_trial']:.1f} each, "
                  f"{packed['updates_per_s'] / alone['updates_per_s']:.2f}× alone); sweep wall "
                  f"{alone['wall']:.0f} s and {packed['wall']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
