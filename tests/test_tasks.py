"""The task registry: what a task declares is what its environment is."""

from __future__ import annotations

from trainers.runtime.tasks import TASKS


def test_every_tasks_declared_spaces_are_its_environments():
    """Nothing builds an environment to learn a task's spaces, so the declarations must be exact: shape, dtype
    and bounds (the baselines scale actions by the Box's bounds)."""
    spaces = {}
    for task in TASKS.values():
        if id(task.make_env) not in spaces:  # one environment per factory (all flavours of a game share one)
            env = task.make_env()
            spaces[id(task.make_env)] = env.observation_space, env.action_space
            env.close()
        observation, action = spaces[id(task.make_env)]
        assert task.observation_space == observation, task.name
        assert task.action_space == action, task.name
        assert task.observation_space.dtype == observation.dtype and task.action_space.dtype == action.dtype
    assert {task.discrete_actions for task in TASKS.values()} == {True, False}
