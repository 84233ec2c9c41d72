"""The sweep file: validation of every field and every trial's configuration (all problems together, each
naming the file and the field), the grid of trial records, the plan of a dry run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.plan import compute_estimate, local_nodes
from orchestrator.spec import SpecError, expand_trials, load_spec

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"name": "mini", "algorithms": ["dt"], "tasks": ["reacher2d-medium"]}


def write(tmp_path: Path, content) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def test_shipped_sweeps_are_valid_and_expand_to_their_grids():
    quickstart = load_spec(REPO / "sweeps" / "quickstart.yaml")
    assert len(expand_trials(quickstart)) == 7 * 2 * 2  # algorithms × ratios × seeds
    paper = load_spec(REPO / "sweeps" / "lamo_paper.yaml")
    trials = expand_trials(paper)
    assert len(trials) == 12 * (4 + 4 + 4 + 3 + 3 + 1) * 3
    assert {(t.task, t.ratio) for t in trials if t.task == "kitchen-complete"} == {
        ("kitchen-complete", 0.3), ("kitchen-complete", 0.5), ("kitchen-complete", 1.0)}
    # LaMo's 100K steps and the baselines' 1M, each from its own config
    assert compute_estimate(trials).gradient_steps == 3 * 19 * (7 * 100_000 + 5 * 1_000_000)


def test_grid_order_ids_and_configs_resolved_once(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL | {
        "algorithms": [{"name": "dt", "overrides": {"n_embd": 64}, "steps": 50}, "bc"],
        "ratios": [0.5, 1.0], "seeds": [0, 1], "training": {"steps": 10, "eval_every": 5}}))
    trials = expand_trials(spec)
    assert [(t.algorithm, t.ratio, t.seed) for t in trials][:3] == [("dt", 0.5, 0), ("dt", 0.5, 1), ("dt", 1.0, 0)]
    assert trials[0].trial_id == "dt.reacher2d-medium.r0.5.s0" and len({t.trial_id for t in trials}) == len(trials)
    # preset, then the sweep's training settings, then the algorithm's own, then its overrides — resolved here
    assert (trials[0].config["num_steps"], trials[0].config["eval_every"], trials[0].config["n_embd"]) == (50, 5, 64)
    assert trials[0].config["activation_function"] == "relu" and trials[-1].config["num_steps"] == 10
    assert all(t.sweep_id == spec.sweep_id and t.domain == "reacher2d" for t in trials)
    assert trials[0].algorithm_config().n_embd == 64


def test_the_same_spec_always_gets_the_same_sweep_id(tmp_path):
    first = load_spec(write(tmp_path, MINIMAL)).sweep_id
    assert first == load_spec(write(tmp_path, MINIMAL)).sweep_id
    assert first != load_spec(write(tmp_path, MINIMAL | {"seeds": [0, 1]})).sweep_id


BAD = {
    "unknown algorithm": (MINIMAL | {"algorithms": ["dtt"]}, r"algorithms\[0\]\.name: unknown algorithm 'dtt'; valid algorithms: lamo"),
    "unknown task": (MINIMAL | {"tasks": ["hoper-medium"]}, r"tasks\[0\]\.name: unknown task 'hoper-medium'; known tasks:"),
    "bad ratio": (MINIMAL | {"ratios": [0.0, 0.5]}, r"ratios: data ratios must be in \(0, 1\], got \[0\.0\]"),
    "bad task ratio": (MINIMAL | {"tasks": [{"name": "hopper-medium", "ratios": [1.5]}]}, r"tasks\[0\]\.ratios: data ratios"),
    "unknown field": (MINIMAL | {"seed": [0]}, r"seed: Extra inputs are not permitted"),
    "unknown hyperparameter": (MINIMAL | {"algorithms": [{"name": "lamo", "overrides": {"lora_rank": 8}}]},
                               r"algorithms\[0\] \(lamo.*\): lamo: unknown hyperparameter\(s\) lora_rank; valid: "
                               r".*lora_r"),
    "fractional gpus with ddp": (MINIMAL | {"resources": {"num_workers": 2, "gpus_per_worker": 0.5}},
                                 r"resources: .*gpus_per_worker=0.5 is fractional, which needs num_workers: 1"),
    "negative steps": (MINIMAL | {"training": {"steps": -5}}, r"training\.steps: Input should be greater than 0"),
    "repeated seed": (MINIMAL | {"seeds": [0, 1, 0]}, r"seeds: seeds must be unique; repeated: 0 \(each would run"),
    "negative seed": (MINIMAL | {"seeds": [-1]}, r"seeds: seeds must be ≥ 0"),
    "repeated ratio": (MINIMAL | {"ratios": [0.5, 0.5]}, r"ratios: ratios must be unique; repeated: 0\.5"),
    "repeated algorithm": (MINIMAL | {"algorithms": ["dt", "bc", "dt"]}, r"algorithms: algorithm names must be unique"),
    "repeated task": (MINIMAL | {"tasks": ["hopper-medium", "hopper-medium"]}, r"tasks: task names must be unique"),
    "seed as text": (MINIMAL | {"seeds": ["zero"]}, r"seeds\[0\]: Input should be a valid integer.*got 'zero'"),
    "override out of range": (MINIMAL | {"algorithms": [{"name": "iql", "overrides": {"expectile": 1.5}}]},
                              r"algorithms\[0\] \(iql.*\): iql: expectile: Input should be less than 1, got 1\.5"),
    "override of the wrong type": (MINIMAL | {"algorithms": [{"name": "bc", "overrides": {"hidden_dims": "big"}}]},
                                   r"algorithms\[0\] \(bc.*\): bc: hidden_dims: Input should be a valid tuple"),
    "cadence beyond the budget": (MINIMAL | {"training": {"steps": 100, "eval_every": 500}},
                                  r"algorithms\[0\] \(dt.*\): dt: config: eval_every=500 is larger than "
                                  r"num_steps=100"),
    "lm loss without a language model": (MINIMAL | {"algorithms": [{"name": "dt", "overrides": {"lm_coef": 0.1}}]},
                                         r"lm_coef=0\.1 needs a language model backbone"),
    "search value out of range": (MINIMAL | {"algorithms": ["bc"], "search": {
        "kind": "optuna", "space": {"lr": {"choice": [1e-3, -1e-3]}}}},
        r"search\.space\.lr: the value -0\.001 is invalid for bc: bc: lr: Input should be greater than 0"),
    "bad long_episodes": (MINIMAL | {"tasks": [{"name": "hopper-medium", "long_episodes": "drop"}]},
                          r"tasks\[0\]\.long_episodes: Input should be 'split' or 'refuse'"),
    "optuna without space": (MINIMAL | {"search": {"kind": "optuna"}}, r"search: .*needs a non-empty search\.space"),
    "bad distribution": (MINIMAL | {"search": {"kind": "optuna", "space": {"learning_rate": {"normal": [0, 1]}}}},
                         r"space\.learning_rate: expected exactly one of uniform, loguniform, int, choice"),
    "bad name": (MINIMAL | {"name": "my sweep!"}, r"name: expected letters, digits"),
    "missing tasks": ({"name": "x", "algorithms": ["dt"]}, r"tasks: Field required"),
    "not a mapping": ("- just\n- a list\n", r"expected a mapping of sweep fields at the top level, got list"),
    "not yaml": ("name: [unclosed\n", r"not valid YAML"),
}


@pytest.mark.parametrize("case", BAD)
def test_malformed_specs_name_the_file_and_the_field(tmp_path, case):
    content, message = BAD[case]
    path = write(tmp_path, content)
    with pytest.raises(SpecError, match=message) as error:
        load_spec(path)
    assert str(error.value).startswith(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # nothing else written


def test_all_errors_are_reported_together(tmp_path):
    path = write(tmp_path, {"name": "x", "algorithms": ["nope"], "tasks": ["nada"], "ratios": [2.0]})
    with pytest.raises(SpecError) as error:
        load_spec(path)
    lines = str(error.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: ") for line in lines)


def test_yaml_numbers_are_read_as_the_user_meant_them(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 and 1e5 as strings; the sweep reads them as YAML 1.2 and every user does."""
    path = write(tmp_path, "name: mini\nalgorithms:\n  - name: bc\n    overrides: {lr: 1e-3}\n"
                           "tasks: [reacher2d-medium]\ntraining: {steps: 2e3, eval_every: 1e3}\n")
    (trial,) = expand_trials(load_spec(path))
    assert (trial.config["lr"], trial.config["num_steps"], trial.config["eval_every"]) == (1e-3, 2000, 1000)


def test_missing_sweep_file(tmp_path):
    with pytest.raises(SpecError, match="no such sweep file"):
        load_spec(tmp_path / "absent.yaml")


def test_dry_run_plan_counts_resources_and_compute(tmp_path):
    from rich.console import Console

    from orchestrator.plan import InsufficientResources, compute_estimate, describe, resource_plan

    spec = load_spec(write(tmp_path, MINIMAL | {
        "algorithms": [{"name": "dt", "steps": 100, "eval_every": 50}, {"name": "bc", "steps": 100, "eval_every": 50}],
        "seeds": [0, 1], "training": {"eval_episodes": 2}, "resources": {"cpus_per_worker": 2}}))
    trials = expand_trials(spec)
    plan = resource_plan(spec, local_nodes(8, 0))
    assert (plan.cpus_per_trial, plan.concurrent_trials, plan.limited_by, plan.in_place) == (2, 4, "CPUs", True)
    estimate = compute_estimate(trials)
    # dt: 2 evaluations × 2 episodes × 2 targets × 100 steps; bc: the same with one "target"
    assert estimate.gradient_steps == 4 * 100 and estimate.evaluation_env_steps == 2 * (800 + 400)
    with pytest.raises(InsufficientResources, match="one trial needs 2 CPUs and 0 GPUs .* the cluster has 1 CPUs"):
        resource_plan(spec, local_nodes(1, 0))
    console = Console(record=True, width=120)
    describe(spec, trials, console, 8, 0, for_cluster=True)
    text = console.export_text()
    assert "4 trials" in text and "4 concurrent trials (limited by CPUs)" in text and "400 gradient steps" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


def test_a_trial_is_placed_on_one_node_not_on_the_cluster_totals():
    from orchestrator.plan import InsufficientResources, resource_plan

    spec = load_spec(REPO / "sweeps" / "lamo_paper.yaml")  # one worker × 1 GPU each
    eight_gpu_nodes = [{"CPU": 32, "GPU": 4}, {"CPU": 32, "GPU": 4}, {"CPU": 4, "trial_slot": 8}]
    plan = resource_plan(spec, eight_gpu_nodes)
    assert (plan.gpus_per_trial, plan.concurrent_trials, plan.limited_by, plan.in_place) == (1, 8, "GPUs", True)
    quarter = spec.resources.model_copy(update={"gpus_per_worker": 0.25, "cpus_per_worker": 2})
    plan = resource_plan(spec.model_copy(update={"resources": quarter}), eight_gpu_nodes)
    assert (plan.concurrent_trials, plan.limited_by) == (32, "GPUs")  # four trials share each GPU
    whole = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus_per_worker": 3.0})})
    with pytest.raises(InsufficientResources, match="each worker on one node"):  # 3 GPUs in all, 1 per node
        resource_plan(whole, [{"CPU": 8, "GPU": 1}] * 3)


def test_paper_sweep_states_20_evaluation_episodes_for_the_sequence_models(tmp_path):
    """LaMo evaluates 20 episodes per target return (run.sh); the baselines keep their references' 10."""
    spec = load_spec(REPO / "sweeps" / "lamo_paper.yaml")
    sequence_models = {"lamo", "lamo_no_lm", "lamo_random_init", "lamo_full_ft", "lamo_linear_emb", "dt", "wiki_rl"}
    for algorithm in spec.algorithms:
        stated = algorithm.overrides.get("eval_episodes")
        assert stated == (20 if algorithm.name in sequence_models else None), algorithm.name
    for trial in expand_trials(spec):
        assert trial.config["eval_episodes"] == (20 if trial.algorithm in sequence_models else 10), trial.algorithm
