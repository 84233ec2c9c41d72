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
    "negative gpus of an algorithm": (MINIMAL | {"algorithms": ["dt", {"name": "bc", "resources": {
        "gpus_per_worker": -0.5}}]}, r"algorithms\[1\] \(bc\)\.resources\.gpus_per_worker: Input should be greater "
                                     r"than or equal to 0, got -0\.5"),
    "unknown resource of an algorithm": (MINIMAL | {"algorithms": [{"name": "bc", "resources": {"gpus": 1}}]},
                                         r"algorithms\[0\] \(bc\)\.resources\.gpus: Extra inputs are not permitted"),
    "sweep-wide resource in an algorithm": (MINIMAL | {"algorithms": [{"name": "bc", "resources": {
        "seeds_per_trial": 3}}]}, r"algorithms\[0\] \(bc\)\.resources: seeds_per_trial is sweep-wide"),
    "fractional gpus with ddp in an algorithm": (MINIMAL | {"algorithms": ["dt", {"name": "bc", "resources": {
        "num_workers": 2, "gpus_per_worker": 0.5}}]},
        r"algorithms\[1\] \(bc\)\.resources: gpus_per_worker=0\.5 is fractional, which needs num_workers: 1"),
    "ddp in an algorithm of a stacked sweep": (MINIMAL | {"algorithms": [{"name": "dt", "resources": {
        "num_workers": 2}}], "resources": {"seeds_per_trial": 2}},
        r"algorithms\[0\] \(dt\)\.resources: seeds_per_trial=2 trains a cell's seeds in the trial's own process"),
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
    (shape,) = plan.shapes  # a CPU sweep: every algorithm in the sweep-wide shape
    assert shape.algorithms == ("dt", "bc")
    assert (shape.cpus_per_trial, plan.concurrent_trials, plan.limited_by, shape.in_place) == (2, 4, "CPUs", True)
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

    spec = load_spec(REPO / "sweeps" / "lamo_paper.yaml")  # one worker × 1 GPU each for the sequence models
    eight_gpu_nodes = [{"CPU": 32, "GPU": 4}, {"CPU": 32, "GPU": 4}, {"CPU": 4, "trial_slot": 8}]
    lamo = resource_plan(spec, eight_gpu_nodes).of("lamo")
    assert (lamo.gpus_per_trial, lamo.concurrent_trials, lamo.limited_by, lamo.in_place) == (1, 8, "GPUs", True)
    quarter = spec.resources.model_copy(update={"gpus_per_worker": 0.25, "cpus_per_worker": 2})
    plan = resource_plan(spec.model_copy(update={"resources": quarter}), eight_gpu_nodes)
    assert (plan.of("lamo").concurrent_trials, plan.of("lamo").limited_by) == (32, "GPUs")  # four share each GPU
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


# --- resources per algorithm ------------------------------------------------------------------------------------

def resources_of(spec, name: str) -> tuple:
    r = spec.algorithm_resources(name)
    return r.num_workers, r.gpus_per_worker, r.cpus_per_worker


def test_each_algorithm_takes_its_entry_then_its_gpu_share_then_the_sweep_wide_resources(tmp_path):
    algorithms = ["lamo", "bc", {"name": "iql", "resources": {"gpus_per_worker": 0.5}},
                  {"name": "dt", "resources": {"cpus_per_worker": 2}}]
    gpu = load_spec(write(tmp_path, MINIMAL | {"algorithms": algorithms,
                                               "resources": {"gpus_per_worker": 1, "cpus_per_worker": 4}}))
    assert resources_of(gpu, "lamo") == (1, 1, 4)  # no share registered: the sweep-wide whole GPU
    assert resources_of(gpu, "bc") == (1, 0.25, 1)  # an MLP's registered share on a GPU sweep
    assert resources_of(gpu, "iql") == (1, 0.5, 1)  # the entry's field over the share, the share's other field kept
    assert resources_of(gpu, "dt") == (1, 1, 2)

    # The sweep-wide value is the most a trial holds: a share never raises it.
    thin = load_spec(write(tmp_path, MINIMAL | {"algorithms": ["bc"], "resources": {"gpus_per_worker": 0.1,
                                                                                    "cpus_per_worker": 0.5}}))
    assert resources_of(thin, "bc") == (1, 0.1, 0.5)

    # A CPU-only sweep stays CPU-only: no share applies; an entry may still ask for a GPU itself.
    cpu = load_spec(write(tmp_path, MINIMAL | {"algorithms": ["lamo", "bc", {"name": "iql", "resources": {
        "gpus_per_worker": 0.5}}], "resources": {"cpus_per_worker": 2}}))
    assert (resources_of(cpu, "lamo"), resources_of(cpu, "bc")) == ((1, 0, 2), (1, 0, 2))
    assert resources_of(cpu, "iql") == (1, 0.5, 2)

    # Several workers need whole GPUs (DDP): the share, a fraction, does not apply to them.
    ddp = load_spec(write(tmp_path, MINIMAL | {"algorithms": ["bc", {"name": "td3_bc", "resources": {
        "num_workers": 1}}], "resources": {"num_workers": 2, "gpus_per_worker": 1}}))
    assert (resources_of(ddp, "bc"), resources_of(ddp, "td3_bc")) == ((2, 1, 1), (1, 0.25, 1))


def test_an_algorithms_unset_resources_leave_the_sweep_name_and_set_ones_change_it(tmp_path):
    plain = load_spec(write(tmp_path, MINIMAL | {"algorithms": ["bc"]})).sweep_id
    assert load_spec(write(tmp_path, MINIMAL | {"algorithms": [{"name": "bc", "resources": {}}]})).sweep_id == plain
    assert load_spec(write(tmp_path, MINIMAL | {"algorithms": [{"name": "bc", "resources": {
        "gpus_per_worker": 0.5}}]})).sweep_id != plain


def test_the_paper_grid_packs_the_mlp_baselines_four_to_a_gpu_and_says_which_rates_are_assumed(tmp_path):
    from rich.console import Console

    from orchestrator.plan import describe, local_nodes, resource_plan, waves

    spec = load_spec(REPO / "sweeps" / "lamo_paper.yaml")
    trials = [[r] for r in expand_trials(spec)]
    plan = resource_plan(spec, local_nodes(64, 8))
    sequence, mlp = plan.shapes
    assert sequence.algorithms == ("lamo", "lamo_no_lm", "lamo_random_init", "lamo_full_ft", "lamo_linear_emb", "dt",
                                   "wiki_rl")
    assert (sequence.gpus_per_trial, sequence.cpus_per_trial, sequence.concurrent_trials) == (1, 4, 8)
    assert mlp.algorithms == ("cql", "iql", "td3_bc", "bc", "bc_10")
    assert (mlp.gpus_per_trial, mlp.cpus_per_trial, mlp.concurrent_trials, mlp.limited_by) == (0.25, 1, 32, "GPUs")
    assert plan.concurrent_trials == 32  # Tune's max_concurrent_trials: the widest shape
    assert waves(plan, trials) == 50 + 9  # 399 sequence-model trials 8 at once, 285 MLP trials 32 at once

    # Every algorithm on a whole GPU (the sweep before per-algorithm resources): 86 waves of 8.
    whole = {"gpus_per_worker": 1, "cpus_per_worker": 4}
    before = spec.model_copy(update={"algorithms": [a.model_copy(update={"resources": a.resources.model_copy(
        update=whole)}) for a in spec.algorithms]})
    assert waves(resource_plan(before, local_nodes(64, 8)), trials) == 86

    console = Console(record=True, width=250)
    describe(spec, expand_trials(spec), console, 64, 8, for_cluster=True)
    text = console.export_text()
    assert "8 concurrent trials (limited by GPUs); 399 trials in 50 waves of up to 8" in text
    assert "32 concurrent trials (limited by GPUs); 285 trials in 9 waves of up to 32" in text
    assert "59 waves in all" in text and "assumed: no GPU measured" in text
    assert "(100% of them at assumed rates)" in text  # no GPU rate was measured: the plan says so
    gpu_hours = float(text.split("projected: ")[1].split(" GPU-hours")[0].replace(",", ""))
    console = Console(record=True, width=250)
    describe(before, expand_trials(before), console, 64, 8, for_cluster=True)
    before_hours = float(console.export_text().split("projected: ")[1].split(" GPU-hours")[0].replace(",", ""))
    assert gpu_hours < before_hours  # the MLP baselines charged a quarter of a GPU each


def test_a_cpu_sweep_projects_measured_rates_only_at_the_sizes_they_were_taken_at(tmp_path):
    from rich.console import Console

    from orchestrator.plan import describe, projected_hours, step_rate, unrated

    spec = load_spec(write(tmp_path, MINIMAL | {"algorithms": ["bc", {"name": "iql", "overrides": {
        "hidden_dims": [32, 32]}}], "tasks": ["hopper-medium"], "training": {"steps": 4800, "eval_every": 2400}}))
    bc, iql = expand_trials(spec)
    assert unrated(bc) is None and step_rate(bc, 0).measured  # README: 480 updates/s on one CPU thread
    assert projected_hours(bc, 0) == pytest.approx(4800 / 480 / 3600)
    assert unrated(iql) == "hidden_dims other than the preset's"
    console = Console(record=True, width=250)
    describe(spec, [bc, iql], console, 2, 0, for_cluster=True)
    text = console.export_text()
    assert "measured: bench.stacked_seeds, 1 CPU" in text and "1 runs not projected" in text
