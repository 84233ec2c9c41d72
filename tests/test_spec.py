from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.spec import SpecError, expand_trials, load_spec, total_gradient_steps

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"name": "mini", "algorithms": ["dt"], "tasks": ["reacher2d-medium"]}


def write(tmp_path: Path, content) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def test_shipped_sweeps_are_valid_and_expand_to_their_grids(tmp_path):
    quickstart = load_spec(REPO / "sweeps" / "quickstart.yaml")
    assert len(expand_trials(quickstart, tmp_path)) == 7 * 2 * 2  # algorithms × ratios × seeds
    paper = load_spec(REPO / "sweeps" / "lamo_paper.yaml")
    trials = expand_trials(paper, tmp_path)
    assert len(trials) == 12 * (4 + 4 + 4 + 3 + 3 + 1) * 3
    assert {(t.task, t.ratio) for t in trials if t.task == "kitchen-complete"} == {
        ("kitchen-complete", 0.3), ("kitchen-complete", 0.5), ("kitchen-complete", 1.0)}
    # LaMo's 100K steps and the baselines' 1M, each from its own config
    assert total_gradient_steps(paper, trials) == 3 * 19 * (7 * 100_000 + 5 * 1_000_000)


def test_grid_order_ids_and_hyperparameter_layers(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL | {
        "algorithms": [{"name": "dt", "overrides": {"n_embd": 64}, "steps": 50}, "bc"],
        "ratios": [0.5, 1.0], "seeds": [0, 1], "training": {"steps": 10, "eval_every": 5}}))
    trials = expand_trials(spec, tmp_path / "out")
    assert [(t.algorithm, t.ratio, t.seed) for t in trials][:3] == [("dt", 0.5, 0), ("dt", 0.5, 1), ("dt", 1.0, 0)]
    assert trials[0].hyperparameters == {"num_steps": 50, "eval_every": 5, "n_embd": 64}
    assert trials[-1].hyperparameters == {"num_steps": 10, "eval_every": 5}
    assert trials[0].output_dir == str(tmp_path / "out" / "dt.reacher2d-medium.r0.5.s0")
    assert len({t.output_dir for t in trials}) == len(trials)


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
                               r"algorithms\[0\]\.overrides: lamo: unknown hyperparameter\(s\) lora_rank; valid: .*lora_r"),
    "fractional gpus with ddp": (MINIMAL | {"resources": {"num_workers": 2, "gpus_per_worker": 0.5}},
                                 r"resources: .*gpus_per_worker=0.5 is fractional, which needs num_workers: 1"),
    "negative steps": (MINIMAL | {"training": {"steps": -5}}, r"training\.steps: Input should be greater than 0"),
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


def test_missing_sweep_file(tmp_path):
    with pytest.raises(SpecError, match="no such sweep file"):
        load_spec(tmp_path / "absent.yaml")


def test_dry_run_plan_counts_resources_and_compute(tmp_path):
    from rich.console import Console

    from orchestrator.plan import InsufficientResources, compute_estimate, describe, resource_plan

    spec = load_spec(write(tmp_path, MINIMAL | {
        "algorithms": [{"name": "dt", "steps": 100, "eval_every": 50}, {"name": "bc", "steps": 100, "eval_every": 50}],
        "seeds": [0, 1], "training": {"eval_episodes": 2}, "resources": {"cpus_per_worker": 2}}))
    trials = expand_trials(spec, tmp_path / "out")
    plan = resource_plan(spec, cluster_cpus=8, cluster_gpus=0)
    assert (plan.cpus_per_trial, plan.concurrent_trials, plan.limited_by) == (2, 4, "CPUs")
    estimate = compute_estimate(trials)
    # dt: 2 evaluations × 2 episodes × 2 targets × 100 steps; bc: the same with one "target"
    assert estimate.gradient_steps == 4 * 100 and estimate.evaluation_env_steps == 2 * (800 + 400)
    with pytest.raises(InsufficientResources, match="one trial needs 2 CPUs and 0 GPUs .* the cluster has 1 CPUs"):
        resource_plan(spec, cluster_cpus=1, cluster_gpus=0)
    console = Console(record=True, width=120)
    describe(spec, str(tmp_path / "out"), 8, 0, console)
    text = console.export_text()
    assert "4 trials" in text and "4 concurrent trials (limited by CPUs)" in text and "400 gradient steps" in text
    assert not (tmp_path / "out").exists()


def test_paper_sweep_is_gpu_bound_on_a_gpu_cluster():
    from orchestrator.plan import resource_plan

    plan = resource_plan(load_spec(REPO / "sweeps" / "lamo_paper.yaml"), cluster_cpus=64, cluster_gpus=8)
    assert (plan.gpus_per_trial, plan.concurrent_trials, plan.limited_by) == (1, 8, "GPUs")


def test_paper_sweep_states_20_evaluation_episodes_for_the_sequence_models(tmp_path):
    """LaMo evaluates 20 episodes per target return (run.sh); the baselines keep their references' 10."""
    from trainers.registry import make_config

    trials = expand_trials(load_spec(REPO / "sweeps" / "lamo_paper.yaml"), tmp_path)
    sequence_models = {"lamo", "lamo_no_lm", "lamo_random_init", "lamo_full_ft", "lamo_linear_emb", "dt", "wiki_rl"}
    for trial in trials:
        expected = 20 if trial.algorithm in sequence_models else 10
        assert trial.hyperparameters.get("eval_episodes") == (20 if trial.algorithm in sequence_models else None)
        assert make_config(trial.algorithm, trial.hyperparameters).eval_episodes == expected, trial.algorithm
