from __future__ import annotations

import pytest

from trainers.registry import ALGORITHMS, ConfigError, config_fields, make_config
from trainers.tasks import get_task


def test_every_registered_algorithm_has_a_config_with_the_loop_fields():
    for name in ALGORITHMS:
        assert {"num_steps", "eval_every", "eval_episodes", "batch_size"} <= set(config_fields(name)), name


def test_kitchen_tasks_get_the_papers_kitchen_settings_and_user_overrides_win():
    kitchen, hopper = get_task("kitchen-partial"), get_task("hopper-medium")
    assert make_config("iql", task=kitchen).temperature == 0.5
    assert make_config("iql", task=hopper).temperature == 3.0
    assert make_config("iql", {"temperature": 1.0}, task=kitchen).temperature == 1.0


def test_presets_and_bad_values():
    assert make_config("bc_10").top_fraction == 0.1 and make_config("bc").top_fraction != 0.1
    assert make_config("dt").backbone is None and make_config("lamo").backbone == "gpt2"
    with pytest.raises(ConfigError, match="td3_bc: policy_delay must be ≥ 1"):
        make_config("td3_bc", {"policy_delay": 0})
