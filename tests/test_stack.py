"""Seeds trained together (trainers/runtime/stack.py): seed k of a stack computes what seed k alone computes — the same
weights after the same updates and the same evaluation returns — for every algorithm family; a seed whose loss turns
non-finite fails alone; a stack killed mid-trial resumes every seed exactly. Real simulator (reacher2d), tiny models,
data ratio 0.5 so that the seeds' subsets differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from baselines.cql import FusedCQL
from trainers.runtime.algorithm import NonFiniteLossError
from trainers.runtime.core import DirectoryCheckpoints, LocalReport, run_local
from trainers.runtime.record import make_record
from trainers.runtime.stack import StackedTrialCore, check_stack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = (0, 1, 2)
SHORT = {"num_steps": 30, "eval_every": 15, "eval_episodes": 2, "batch_size": 16}
MLP = {"hidden_dims": (32, 32)}
SEQUENCE = {"n_layer": 1, "n_embd": 32, "n_head": 2, "warmup_steps": 5, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    from trainers.sequence.language.pretrain import pretrain_tiny_gpt2

    return pretrain_tiny_gpt2(tmp_path_factory.mktemp("lm"), steps=10, n_layer=1, n_embd=32, n_head=2, seq_len=64,
                              batch=4, progress=False)


def hyperparameters(algorithm: str, tiny_lm: Path) -> dict:
    if algorithm == "dt":
        return SHORT | SEQUENCE
    if algorithm.startswith("lamo"):  # LoRA, MLP embeddings and the language loss (its own batches and stream)
        return SHORT | {"backbone": str(tiny_lm), "lm_corpus": "builtin", "lm_seq_len": 32, "warmup_steps": 5,
                        "learning_rate": 1e-3}
    extra = {"cql_n_actions": 4, "bc_steps": 10} if algorithm == "cql" else {}
    return SHORT | MLP | extra


def records_for(algorithm: str, dataset: Path, tiny_lm: Path, seeds=SEEDS, **overrides):
    return [make_record(algorithm, "reacher2d-medium", 0.5, seed, hyperparameters(algorithm, tiny_lm) | overrides,
                        str(dataset), log_every=10) for seed in seeds]


def run_stack(records, root: Path, reports=None):
    run_dirs = [root / r.trial_id for r in records]
    core = StackedTrialCore(records, run_dirs, torch.device("cpu"))
    reports = reports or [LocalReport(d, quiet=True) for d in run_dirs]
    return core.run(reports, DirectoryCheckpoints(root / "checkpoint")), run_dirs


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted((run_dir / "model").rglob("*.safetensors")):
        tensors |= {f"{file.name}:{key}": value for key, value in load_file(file).items()}
    assert tensors, run_dir
    return tensors


def evaluations(run_dir: Path) -> list[tuple[int, list[int], dict[str, float]]]:
    history = json.loads((run_dir / "evaluations.json").read_text())
    return [(e["step"], e["seeds"], {k: v for k, v in e.items() if k.startswith("eval/") and "seconds" not in k})
            for e in history]


def episode_rows(run_dir: Path) -> list[tuple]:
    """(target, episode, seed, return, length) per final evaluation episode."""
    rows = [line.split(",") for line in (run_dir / "eval_episodes.csv").read_text().splitlines()[1:]]
    return [(r[1], int(r[2]), int(r[3]), float(r[4]), int(r[6])) for r in rows]


def assert_same_evaluations(mine: Path, theirs: Path, exact: bool) -> None:
    """Every evaluation's step, episode seeds and metrics, and the final one's episodes: equal (the loop form), or
    equal up to float rounding (a fused form's batched kernels)."""
    tolerance = {"rel": 0.0, "abs": 0.0} if exact else {"rel": 1e-4, "abs": 1e-6}
    for (step, seeds, metrics), (their_step, their_seeds, their_metrics) in zip(evaluations(mine),
                                                                                evaluations(theirs), strict=True):
        assert (step, seeds) == (their_step, their_seeds)
        assert metrics == pytest.approx(their_metrics, **tolerance)
    for row, their_row in zip(episode_rows(mine), episode_rows(theirs), strict=True):
        assert row[:3] == their_row[:3] and row[3] == pytest.approx(their_row[3], **tolerance)


FUSED = {"bc", "td3_bc", "iql", "cql"}  # their seeds update as one (batched kernels): equal up to rounding


@pytest.mark.parametrize("algorithm, overrides", [
    ("bc", {}), ("td3_bc", {}), ("iql", {}), ("iql", {"deterministic_actor": True}), ("cql", {}), ("dt", {}),
    ("lamo", {})])
def test_each_stacked_seed_equals_that_seed_alone(tmp_path, reacher_medium_path, tiny_lm, algorithm, overrides,
                                                 monkeypatch):
    """The loop form gives each seed exactly its own computation (bitwise); a fused form the same up to rounding."""
    monkeypatch.setattr(FusedCQL, "on_cpu", True)  # fused on accelerators only: checked here all the same
    records = records_for(algorithm, reacher_medium_path, tiny_lm, **overrides)
    outcomes, stacked_dirs = run_stack(records, tmp_path / "stacked")
    assert [o.error for o in outcomes] == [None] * len(SEEDS)
    subsets = [json.loads((d / "trajectory_ids.json").read_text()) for d in stacked_dirs]
    assert len({tuple(s) for s in subsets}) == len(SEEDS), "ratio 0.5: each seed trains on its own episodes"
    alone_weights = []
    for record, stacked in zip(records, stacked_dirs):
        alone = tmp_path / "alone" / record.trial_id
        run_local(record, alone, LocalReport(alone, quiet=True))
        assert json.loads((alone / "trajectory_ids.json").read_text()) == \
            json.loads((stacked / "trajectory_ids.json").read_text())
        mine, theirs = weights(stacked), weights(alone)
        assert mine.keys() == theirs.keys()
        exact = algorithm not in FUSED
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6,
                                       msg=f"{record.trial_id} {key}")
        assert_same_evaluations(stacked, alone, exact)  # two evaluations: step 15 and the last
        alone_weights.append(theirs)
    first, second = alone_weights[:2]
    assert any(not torch.equal(first[k], second[k]) for k in first), "the seeds must differ from one another"


def test_seeds_keep_one_copy_of_a_pre_trained_backbone(tmp_path, reacher_medium_path, tiny_lm):
    """LaMo's frozen GPT-2 (pre-trained weights) is held once for the stack; each seed's LoRA, embeddings and heads
    stay its own; a randomly initialised backbone differs per seed and is not shared."""
    lamo = records_for("lamo", reacher_medium_path, tiny_lm)
    core = StackedTrialCore(lamo, [tmp_path / r.trial_id for r in lamo], torch.device("cpu"))
    frozen = [dict(s.algorithm.model.backbone.named_parameters()) for s in core.seeds]
    shared = [name for name, p in frozen[0].items() if not p.requires_grad]
    trained = [name for name, p in frozen[0].items() if p.requires_grad]
    assert shared and trained and core.shared_bytes == 2 * sum(frozen[0][n].numel() * 4 for n in shared)
    for other in frozen[1:]:
        assert all(other[n].data_ptr() == frozen[0][n].data_ptr() for n in shared)
        assert all(other[n].data_ptr() != frozen[0][n].data_ptr() for n in trained)
    core.close()
    random = records_for("lamo_random_init", reacher_medium_path, tiny_lm, seeds=(0, 1))
    core = StackedTrialCore(random, [tmp_path / r.trial_id for r in random], torch.device("cpu"))
    assert core.shared_bytes == 0
    core.close()


def test_iql_with_actor_dropout_trains_its_seeds_one_after_another(tmp_path, reacher_medium_path, tiny_lm):
    """Kitchen's IQL draws dropout masks inside the actor's forward from each seed's generator: no fused form."""
    records = records_for("iql", reacher_medium_path, tiny_lm, seeds=(0, 1), actor_dropout=0.1)
    core = StackedTrialCore(records, [tmp_path / r.trial_id for r in records], torch.device("cpu"))
    core.fuse()
    assert core.fused is None and core.fused_seeds == []
    core.close()
    records = records_for("iql", reacher_medium_path, tiny_lm, seeds=(0, 1))
    core = StackedTrialCore(records, [tmp_path / r.trial_id for r in records], torch.device("cpu"))
    core.fuse()
    assert core.fused is not None and len(core.fused_seeds) == 2
    core.close()


class NanAt:
    """Makes one algorithm's update raise a non-finite loss from a given update on, as a diverging seed would."""

    def __init__(self, algorithm, at: int):
        self.algorithm, self.at, self.update, self.calls = algorithm, at, algorithm.update, 0
        algorithm.update = self

    def __call__(self, batch):
        self.calls += 1
        if self.calls >= self.at:
            raise NonFiniteLossError(self.calls, {"loss": float("nan")})
        return self.update(batch)


def test_a_seed_with_a_non_finite_loss_fails_alone(tmp_path, reacher_medium_path, tiny_lm):
    """The loop form (dt): seed 1's update raises a non-finite loss from update 20 on; the others finish."""
    records = records_for("dt", reacher_medium_path, tiny_lm)
    run_dirs = [tmp_path / r.trial_id for r in records]
    core = StackedTrialCore(records, run_dirs, torch.device("cpu"))
    NanAt(core.seeds[1].algorithm, at=20)
    outcomes = core.run([LocalReport(d, quiet=True) for d in run_dirs], DirectoryCheckpoints(tmp_path / "checkpoint"))
    failed = outcomes[1]
    assert isinstance(failed.error, NonFiniteLossError) and failed.error.step == 20 and failed.result.step == 19
    assert "loss=nan" in str(failed.error)
    assert not (run_dirs[1] / "model").exists()
    for outcome, run_dir in zip(outcomes[::2], run_dirs[::2]):
        assert outcome.error is None and outcome.result.step == 30
        alone = tmp_path / "alone" / outcome.record.trial_id
        run_local(outcome.record, alone, LocalReport(alone, quiet=True))
        assert_same_evaluations(run_dir, alone, exact=True)
    # The failed seed's last checkpointed state (step 15) is kept for a retry, beside the others' final ones.
    state = DirectoryCheckpoints(tmp_path / "checkpoint").restore()["stack"]
    assert {key: entry["step"] for key, entry in state.items()} == \
        {records[0].trial_id: 30, records[1].trial_id: 15, records[2].trial_id: 30}


def test_a_fused_seed_with_a_non_finite_loss_fails_alone(tmp_path, reacher_medium_path, tiny_lm):
    """bc's fused form: seed 1's states standardised by a zero deviation make its loss non-finite at its first update,
    as alone; the other seeds finish, equal to themselves alone."""
    records = records_for("bc", reacher_medium_path, tiny_lm)
    run_dirs = [tmp_path / r.trial_id for r in records]
    core = StackedTrialCore(records, run_dirs, torch.device("cpu"))
    core.seeds[1].algorithm.normalizer.obs_std.zero_()
    outcomes = core.run([LocalReport(d, quiet=True) for d in run_dirs], DirectoryCheckpoints(tmp_path / "checkpoint"))
    assert isinstance(outcomes[1].error, NonFiniteLossError) and outcomes[1].error.step == 1
    assert "actor_loss=nan" in str(outcomes[1].error)
    for outcome, run_dir in zip(outcomes[::2], run_dirs[::2]):
        assert outcome.error is None and outcome.result.step == 30
        alone = tmp_path / "alone" / outcome.record.trial_id
        run_local(outcome.record, alone, LocalReport(alone, quiet=True))
        assert_same_evaluations(run_dir, alone, exact=False)


class KillAt(LocalReport):
    def __init__(self, run_dir, at: int):
        super().__init__(run_dir, quiet=True)
        self.at = at

    def __call__(self, step, metrics, files):
        super().__call__(step, metrics, files)
        if step == self.at and "train/loss" in metrics:
            raise KeyboardInterrupt  # stands for the process dying here: nothing after this point runs


def test_an_interrupted_stack_resumes_every_seed_exactly(tmp_path, reacher_medium_path, tiny_lm):
    records = records_for("dt", reacher_medium_path, tiny_lm, num_steps=40, eval_every=20)
    clean, _ = run_stack(records, tmp_path / "clean")
    dirs = [tmp_path / "resumed" / r.trial_id for r in records]
    reports = [KillAt(dirs[0], at=30)] + [LocalReport(d, quiet=True) for d in dirs[1:]]
    with pytest.raises(KeyboardInterrupt):
        run_stack(records, tmp_path / "resumed", reports)
    outcomes, _ = run_stack(records, tmp_path / "resumed")  # from the checkpoint at step 20
    assert [o.result.step for o in outcomes] == [40] * len(SEEDS)
    for record, outcome in zip(records, outcomes):
        lines = [json.loads(line) for line in (tmp_path / "resumed" / record.trial_id / "metrics.jsonl").open()]
        assert [m["resumed_from_step"] for m in lines if "resumed_from_step" in m] == [20]
        clean_dir = tmp_path / "clean" / record.trial_id
        assert_same_evaluations(tmp_path / "resumed" / record.trial_id, clean_dir, exact=True)
        mine, theirs = weights(tmp_path / "resumed" / record.trial_id), weights(clean_dir)
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), record.trial_id


def test_a_stack_is_one_cell_with_one_configuration(reacher_medium_path, tiny_lm):
    bc = records_for("bc", reacher_medium_path, tiny_lm, seeds=(0, 1))
    with pytest.raises(ValueError, match="each seed once"):
        check_stack([bc[0], bc[0]])
    other = records_for("bc", reacher_medium_path, tiny_lm, seeds=(1,), batch_size=8)
    with pytest.raises(ValueError, match="one cell with one configuration"):
        check_stack([bc[0], other[0]])
    with pytest.raises(ValueError, match="one cell"):
        check_stack([bc[0], records_for("iql", reacher_medium_path, tiny_lm, seeds=(1,))[0]])
    check_stack(bc)


def test_stacked_evaluation_gives_each_policy_its_own_block():
    """Two different policies evaluated together return what each returns alone, and a policy whose episodes have
    all ended is asked no more than alone (hopper: dense rewards, episodes of different lengths)."""
    from trainers.runtime.algorithm import StatelessPolicy
    from trainers.runtime.evaluation import BatchedEvaluator, evaluate_batched
    from trainers.runtime.tasks import get_task

    task = get_task("hopper-random-gen")
    calls = []

    def still(n, targets):
        def act(obs):
            calls.append(len(obs))
            return np.zeros((len(obs), 3))
        return StatelessPolicy(act)

    def kick(n, targets):
        return StatelessPolicy(lambda obs: np.tanh(obs[:, 5:8] * 3.0))

    with BatchedEvaluator(task, 3, copies=2) as evaluator:
        together = evaluator.run_many([still, kick], [(1, 2, 3), (4, 5, 6)])
    asked_together, calls[:] = len(calls), []
    alone = [evaluate_batched(task, still, 3, (1, 2, 3)), evaluate_batched(task, kick, 3, (4, 5, 6))]
    assert asked_together == len(calls) == together[0].targets[0].lengths.max()
    for mine, theirs in zip(together, alone):
        assert mine.seeds == theirs.seeds
        np.testing.assert_array_equal(mine.targets[0].returns, theirs.targets[0].returns)
        np.testing.assert_array_equal(mine.targets[0].lengths, theirs.targets[0].lengths)
    assert together[0].seeds != together[1].seeds
    assert not np.array_equal(together[0].targets[0].lengths, together[1].targets[0].lengths)


# ------------------------------------------------------------------------------------------------ through the sweep

def test_a_stacked_sweep_killed_mid_trial_resumes_each_seed_as_uninterrupted(tmp_path, reacher_medium_path):
    """`resources.seeds_per_trial: all` through the real driver (Ray Tune, MLflow): one trial trains the three seeds,
    each its own FINISHED child run; the driver SIGKILLed after the stack's first checkpoint and run again, every
    seed's run holds each evaluation step exactly once, with the values the seed computes alone, uninterrupted."""
    from mlflow.tracking import MlflowClient

    from tests.sweep_helpers import (
        kill_once_checkpointed,
        mlflow_runs,
        run_sweep,
        stop_process_tree,
        tiny_spec,
        write_spec,
    )
    from trainers.runtime.record import TrialRecord

    spec = tiny_spec(tmp_path, reacher_medium_path, ratios=[0.5], seeds=[0, 1, 2],
                     training={"steps": 3000, "eval_every": 500, "eval_episodes": 3},
                     resources={"seeds_per_trial": "all"})
    path = write_spec(tmp_path, spec)
    dry = run_sweep(path, "--dry-run", cwd=tmp_path)
    assert "3 runs in 1 trials of up to 3 seeds" in dry.stdout, dry.stdout[-2000:]
    assert "seeds per trial: 3 — 1 trials train the 3 runs (one trial per seed: 3)" in dry.stdout

    checkpoints = str(tmp_path / "ray_results" / "tiny-*" / "tune-3-seeds" / "bc.*s0+1+2" / "checkpoint_*")
    tree = kill_once_checkpointed(path, checkpoints, tmp_path)
    result = run_sweep(path, cwd=tmp_path)
    stop_process_tree(tree)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 trials finished, 0 failed" in result.stdout
    assert "done bc.reacher2d-medium.r0.5.s0+1+2: eval/best_normalized_mean" in result.stdout
    uri = spec["tracking"]["uri"]
    client = MlflowClient(uri)
    _, children = mlflow_runs(uri)
    assert sorted(c.data.tags["trial_id"] for c in children) == [f"bc.reacher2d-medium.r0.5.s{s}" for s in (0, 1, 2)]
    resumed = 0
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["placement.role"] == "stacked"
        assert child.data.tags["placement.stack"] == "bc.reacher2d-medium.r0.5.s0+1+2"
        resumed += "resumed_from_step" in child.data.metrics
        record = TrialRecord.from_json(child.data.tags["trial_record"])
        alone = tmp_path / "alone" / record.trial_id
        run_local(record, alone, LocalReport(alone, quiet=True))
        expected = {e[0]: e[2]["eval/policy/return_mean"] for e in evaluations(alone)}
        history = client.get_metric_history(child.info.run_id, "eval/policy/return_mean")
        assert sorted(m.step for m in history) == [500, 1000, 1500, 2000, 2500, 3000]  # each step once
        assert {m.step: m.value for m in history} == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert resumed == 3  # every seed continued from the stack's checkpoint


def test_the_dry_run_counts_a_stack_s_memory(reacher_medium_path, tiny_lm):
    """The plan's estimate: each seed's own state (16 bytes per trained parameter, 4 per frozen one), a pre-trained
    backbone's frozen weights once per stack, the dataset file once; a backbone that cannot be built is said."""
    from orchestrator.plan import seed_state, trial_memory
    from trainers.runtime.tasks import get_task

    bc = records_for("bc", reacher_medium_path, tiny_lm, seeds=(0,))[0]
    state = seed_state(bc)
    task = get_task("reacher2d-medium")
    obs, act = task.observation_space.shape[0], task.action_space.shape[0]
    assert (state.trainable, state.frozen, state.shared) == ((obs * 32 + 32) + (32 * 32 + 32) + (32 * act + act), 0, 0)
    size = reacher_medium_path.stat().st_size
    assert trial_memory(bc, 3, state) == size + 3 * int(size * 0.5) + 3 * 16 * state.trainable
    lamo = seed_state(records_for("lamo", reacher_medium_path, tiny_lm, seeds=(0,))[0])
    assert 0 < lamo.shared <= lamo.frozen
    assert lamo.stack_bytes(3) == 4 * lamo.shared + 3 * (16 * lamo.trainable + 4 * (lamo.frozen - lamo.shared))
    missing = seed_state(records_for("lamo", reacher_medium_path, tiny_lm, seeds=(0,),
                                     backbone=str(reacher_medium_path.parent / "no-such-model"))[0])
    assert isinstance(missing, str) and "no-such-model" in missing
