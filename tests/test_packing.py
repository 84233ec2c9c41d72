"""Packing on a cluster, without GPUs: a multi-node `ray.cluster_utils.Cluster` (a head with trial slots and no CPU,
a worker node declaring one GPU that does not exist). The sweep driver joins it through RAY_ADDRESS, as
`ray job submit` would have it do.

- Four 0.25-GPU trials: the plan says 4 at once; each trial trains in its own Tune actor on the GPU node, all four
  at the same time on its one GPU, each with CUDA_VISIBLE_DEVICES as Ray assigned it. (The plan across several
  GPU nodes is tested on its own in tests/test_spec.py.)
- A trial through Ray Train holds only a `trial_slot` itself: its driver runs on the head, which has no CPU.
- A trial larger than any node (2 GPUs per worker) is refused before anything is submitted or recorded.
- Resources per algorithm: in one sweep on the GPU node, bc's trials take their registered quarter of the GPU (four
  at once) while dt's take the sweep-wide whole GPU (alone), each charged its own GPUs in `cost/gpu_hours`.

Where each trial ran comes from its MLflow run's placement tags (orchestrator/tracking.py), written by the trial
itself from Ray's runtime context; whether trials ran together, from the runs' start and end times.
"""

from __future__ import annotations

import pytest

from tests.sweep_helpers import mlflow_runs, run_sweep, tiny_spec, write_spec


@pytest.fixture
def gpu_cluster():
    """A head with trial slots and no CPU, and a worker node with 4 CPUs and one (declared) GPU."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "resources": {"trial_slot": 4},
                                                            "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=4, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, cluster.head_node.node_id, gpu_node.node_id
    finally:
        cluster.shutdown()


def most_at_once(runs) -> int:
    """The largest number of runs that were training at the same moment (start/end times of the runs)."""
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    return max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)


def test_fractional_gpu_trials_pack_four_to_a_gpu_and_drivers_hold_only_a_trial_slot(tmp_path, gpu_cluster,
                                                                                     reacher_medium_path):
    cluster, head, gpu_node = gpu_cluster
    env = {"RAY_ADDRESS": cluster.address}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0, 1, 2, 3],
                     training={"steps": 2000, "eval_every": 2000, "eval_episodes": 2},
                     resources={"num_workers": 1, "gpus_per_worker": 0.25, "cpus_per_worker": 0.5})
    packed = run_sweep(write_spec(tmp_path, spec, "packed.yaml"), env=env, timeout=900)
    assert packed.returncode == 0, packed.stdout[-3000:]
    assert "4 trials to train, up to 4 at once" in packed.stdout, packed.stdout[:2000]
    _, trials = mlflow_runs(uri)
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    tags = [t.data.tags for t in trials]
    assert {t["placement.role"] for t in tags} == {"in_place"}
    assert {t["placement.cuda_visible_devices"] for t in tags} == {"0"}  # the node's one GPU, as Ray assigned it
    assert {t["placement.node_id"] for t in tags} == {gpu_node}
    assert most_at_once(trials) == 4  # four 0.25-GPU trials on one GPU

    # Through Ray Train: the trial's own actor only drives (no CPU, a trial slot: on the CPU-less head).
    driven = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], name="driven",
                       resources={"num_workers": 1, "cpus_per_worker": 1, "trainer": "ray_train"})
    result = run_sweep(write_spec(tmp_path, driven, "driven.yaml"), env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    (run,) = [t for t in mlflow_runs(uri)[1] if t.data.tags["sweep_id"].startswith("driven-")]
    assert run.info.status == "FINISHED"
    assert (run.data.tags["placement.role"], run.data.tags["placement.node_id"]) == ("driver", head)

    # Larger than any node: refused before anything is submitted or recorded. (bc's own entry asks the 2 GPUs: the
    # sweep-wide ones alone would be capped at bc's registered share of a GPU, which fits.)
    too_big = tiny_spec(tmp_path, reacher_medium_path, seeds=[0], name="too-big",
                        algorithms=[{"name": "bc", "overrides": {"hidden_dims": [32, 32]},
                                     "resources": {"gpus_per_worker": 2}}],
                        tracking={"uri": f"sqlite:///{tmp_path}/refused.db"},
                        resources={"num_workers": 1, "gpus_per_worker": 2, "cpus_per_worker": 1})
    refused = run_sweep(write_spec(tmp_path, too_big, "too_big.yaml"), env=env, timeout=300)
    assert refused.returncode != 0
    assert "2 GPU" in refused.stdout and "node" in refused.stdout, refused.stdout[-2000:]
    assert not (tmp_path / "refused.db").exists() or mlflow_runs(f"sqlite:///{tmp_path}/refused.db") == ([], [])
    assert not list((tmp_path / "ray_results").glob("too-big-*"))


def test_each_trial_holds_its_own_algorithms_resources(tmp_path, gpu_cluster, reacher_medium_path):
    cluster, _, gpu_node = gpu_cluster
    spec = tiny_spec(tmp_path, reacher_medium_path, seeds=[0, 1, 2, 3],
                     training={"steps": 2000, "eval_every": 2000, "eval_episodes": 2},
                     resources={"num_workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 1})
    spec["algorithms"].append({"name": "dt", "steps": 200, "eval_every": 200,
                               "overrides": {"n_embd": 16, "n_layer": 1, "warmup_steps": 10}})
    result = run_sweep(write_spec(tmp_path, spec), env={"RAY_ADDRESS": cluster.address}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "8 trials to train, up to 4 at once" in result.stdout, result.stdout[:2000]
    _, trials = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    bc = [t for t in trials if t.data.tags["algorithm"] == "bc"]
    dt = [t for t in trials if t.data.tags["algorithm"] == "dt"]
    assert len(bc) == len(dt) == 4 and all(t.info.status == "FINISHED" for t in trials)
    assert {t.data.tags["placement.node_id"] for t in trials} == {gpu_node}
    assert most_at_once(bc) == 4  # a quarter of the GPU each
    assert most_at_once(dt) == 1  # the whole GPU: alone, beside no bc trial either
    assert all(d.info.end_time <= b.info.start_time or b.info.end_time <= d.info.start_time for d in dt for b in bc)
    for run, gpus in [(r, 0.25) for r in bc] + [(r, 1.0) for r in dt]:
        metrics = run.data.metrics
        assert metrics["cost/gpu_hours"] == pytest.approx(metrics["cost/wall_seconds"] / 3600 * gpus, rel=1e-6)


def test_tune_asks_each_trials_resources_from_its_own_algorithm(tmp_path, reacher_medium_path):
    """What `tune.with_resources` is given: a function of the trial's config (a record, or a stack of one cell)."""
    from orchestrator.spec import expand_trials, load_spec
    from orchestrator.sweep import trial_shapes_of
    from orchestrator.trial import SweepContext, trial_placement

    spec = tiny_spec(tmp_path, reacher_medium_path, resources={"gpus_per_worker": 1, "cpus_per_worker": 4})
    spec["algorithms"] += [{"name": "dt", "resources": {"num_workers": 2}}, {"name": "iql", "resources": {
        "cpus_per_worker": 2}}]
    loaded = load_spec(write_spec(tmp_path, spec))
    bc, _, dt, _, iql, _ = expand_trials(loaded)
    context = SweepContext("sqlite://", "e", loaded.sweep_id, "parent", "out", "train", trial_shapes_of(loaded),
                           worker_retries=0, max_outage_s=1, searching=False)

    def bundles(config):
        return trial_placement(context, config).bundles

    assert bundles({"record": bc.to_dict()}) == [{"CPU": 1, "GPU": 0.25}]  # bc's registered share
    assert bundles({"stack": [iql.to_dict()]}) == [{"CPU": 2, "GPU": 0.25}]  # the entry's CPUs over the share
    assert bundles({"record": dt.to_dict()}) == [{"trial_slot": 1}]  # two DDP workers: the trial only drives
    assert context.shape(dt).gpus == 2 and context.shape(bc).gpus == 0.25  # what its GPU-hours are charged by
