"""The algorithm registry and the algorithms' configs: every field typed and ranged, domain settings, no import
circle between the contracts, the registry and the algorithms."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.runtime.algorithm import AlgorithmDeclaration, ConfigError
from trainers.runtime.registry import (
    ALGORITHMS,
    config_fields,
    external_inputs,
    make_config,
    supports_discrete_actions,
)
from trainers.runtime.tasks import DOMAIN_TRAINING, TASKS, get_task

REPO = Path(__file__).resolve().parents[1]


def test_every_registered_algorithm_has_a_config_with_the_loop_fields():
    for name in ALGORITHMS:
        assert {"num_steps", "eval_every", "eval_episodes", "batch_size"} <= set(config_fields(name)), name


def test_every_algorithm_module_is_registered_and_every_entry_names_one_of_its_presets():
    """Adding an algorithm is one module declaring `ALGORITHM` and one registry line: a module nobody registered,
    or an entry naming a preset its module does not declare, fails here."""
    declared = {}
    for path in [*REPO.glob("baselines/**/*.py"), *REPO.glob("trainers/**/*.py")]:
        if re.search(r"^ALGORITHM = AlgorithmDeclaration\(", path.read_text(), flags=re.M):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            declared[id(importlib.import_module(module).ALGORITHM)] = module
    entries = [e for entry in ALGORITHMS.values() for e in (entry, entry.discrete) if e is not None]
    assert {id(e.spec) for e in entries} == set(declared), "registered declarations differ from the modules'"
    for entry in entries:
        assert isinstance(entry.spec, AlgorithmDeclaration)
        assert (entry.preset is None) == (not entry.spec.presets) and entry.preset in (None, *entry.spec.presets)


def test_every_algorithm_resolves_on_every_domain_it_can_act_in():
    """Presets and domain settings name real fields with valid values, and a domain's training settings (the
    Atari budget and cadence) reach every algorithm on it."""
    one_task_per_domain = {task.domain: task for task in TASKS.values()}
    for name in ALGORITHMS:
        for domain, task in one_task_per_domain.items():
            if task.discrete_actions and not supports_discrete_actions(name):
                continue
            config = make_config(name, task=task)
            for field, value in DOMAIN_TRAINING.get(domain, {}).items():
                assert getattr(config, field) == value, (name, domain, field)


def test_kitchen_tasks_get_the_papers_kitchen_settings_and_user_overrides_win():
    kitchen, hopper = get_task("kitchen-partial"), get_task("hopper-medium")
    assert make_config("iql", task=kitchen).temperature == 0.5
    assert make_config("iql", task=hopper).temperature == 3.0
    assert make_config("iql", {"temperature": 1.0}, task=kitchen).temperature == 1.0


def test_presets():
    assert make_config("bc_10").top_fraction == 0.1 and make_config("bc").top_fraction != 0.1
    assert make_config("dt").backbone is None and make_config("lamo").backbone == "gpt2"


@pytest.mark.parametrize("name, overrides, message", [
    ("td3_bc", {"policy_delay": 0}, "td3_bc: policy_delay: Input should be greater than 0, got 0"),
    ("bc", {"lr": -1e-3}, "bc: lr: Input should be greater than 0, got -0.001"),
    ("bc", {"lr": "fast"}, "bc: lr: Input should be a valid number, unable to parse string as a number, got 'fast'"),
    ("iql", {"expectile": 1.0}, "iql: expectile: Input should be less than 1, got 1.0"),
    ("iql", {"hidden_dims": [32, 0]}, "iql: hidden_dims.1: Input should be greater than 0, got 0"),
    ("dt", {"num_steps": 2.5}, "dt: num_steps: Input should be a valid integer, got a number with a fractional "
                               "part, got 2.5"),
    ("dt", {"embedding": "conv"}, "dt: embedding: Input should be 'linear' or 'mlp', got 'conv'"),
    ("dt", {"num_steps": 100, "eval_every": 500}, "eval_every=500 is larger than num_steps=100"),
    ("dt", {"lm_coef": 0.1}, "lm_coef=0.1 needs a language model backbone"),
    ("cql", {"cql_n_actions": 0, "discount": 1.5}, "cql: cql_n_actions: Input should be greater than 0, got 0; "
                                                   "cql: discount: Input should be less than or equal to 1, got 1.5"),
])
def test_every_field_is_checked_for_type_and_range(name, overrides, message):
    with pytest.raises(ConfigError) as error:
        make_config(name, overrides)
    assert message in str(error.value)


def test_numbers_written_as_strings_are_taken_as_numbers():
    assert make_config("bc", {"lr": "1e-3"}).lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert make_config("iql", {"hidden_dims": [64, 64]}).hidden_dims == (64, 64)


def test_algorithms_declare_their_external_inputs():
    lamo = make_config("lamo", {"backbone": "models/x", "lm_corpus": "builtin"})
    assert [(i.field, i.value) for i in external_inputs("lamo", lamo)] == [("backbone", "models/x"),
                                                                           ("lm_corpus", "builtin")]
    assert [i.field for i in external_inputs("lamo_no_lm", make_config("lamo_no_lm"))] == ["backbone"]
    assert external_inputs("dt", make_config("dt")) == [] and external_inputs("iql", make_config("iql")) == []


def test_the_algorithms_never_import_the_registry():
    """The contracts and every algorithm import in a fresh interpreter without the registry: nothing below it
    reaches back up (a circle through an algorithm would need that)."""
    modules = ["trainers.runtime.algorithm", "baselines.iql", "baselines.cql", "baselines.bc", "baselines.td3_bc",
               "trainers.sequence.algorithm"]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nassert 'trainers.runtime.registry' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
