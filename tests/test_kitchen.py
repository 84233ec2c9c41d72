"""FrankaKitchen-v1 in D4RL's kitchen layout, on the real MuJoCo simulator."""

from __future__ import annotations

import importlib.util
import os

import mujoco
import numpy as np
import pytest

from trainers.envs import kitchen
from trainers.envs.kitchen import (
    KITCHEN_COMPLETE_TASKS,
    KITCHEN_PARTIAL_TASKS,
    make_kitchen_env,
)

# D4RL KitchenBase._get_task_goal() for KitchenMicrowaveKettleLightSliderV0, written out by hand
# from D4RL's OBS_ELEMENT_INDICES / OBS_ELEMENT_GOALS so it does not depend on our code.
D4RL_GOAL = np.zeros(30)
D4RL_GOAL[22] = -0.75  # microwave
D4RL_GOAL[23:30] = [-0.23, 0.75, 1.62, 0.99, 0.0, 0.0, -0.06]  # kettle
D4RL_GOAL[17:19] = [-0.69, -0.05]  # light switch
D4RL_GOAL[19] = 0.37  # slide cabinet

EXACT = {"robot_noise_ratio": 0.0, "object_noise_ratio": 0.0}  # observe the sim state exactly


def _settle(env) -> None:
    mujoco.mj_forward(env.unwrapped.model, env.unwrapped.data)


def test_task_lists_match_d4rl() -> None:
    assert KITCHEN_COMPLETE_TASKS == ("microwave", "kettle", "light switch", "slide cabinet")
    assert KITCHEN_PARTIAL_TASKS == KITCHEN_COMPLETE_TASKS


def _kitchen_model() -> tuple[mujoco.MjModel, mujoco.MjData]:
    from gymnasium_robotics.utils import mujoco_utils

    xml = os.path.join(
        os.path.dirname(mujoco_utils.__file__),
        "../envs/assets/kitchen_franka/kitchen_assets/kitchen_env_model.xml",
    )
    model = mujoco.MjModel.from_xml_path(xml)
    return model, mujoco.MjData(model)


def test_patch_is_installed_and_reads_every_joint_slice() -> None:
    kitchen.patch_joint_getters()
    from gymnasium_robotics.utils import mujoco_utils

    assert mujoco_utils.get_joint_qpos is kitchen._get_joint_qpos
    assert mujoco_utils.get_joint_qvel is kitchen._get_joint_qvel
    model, data = _kitchen_model()
    data.qpos[:] = np.arange(model.nq)
    data.qvel[:] = np.arange(model.nv)
    for j in range(model.njnt):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)
        n_qpos, n_qvel = (7, 6) if name == "kettle" else (1, 1)  # kettle is the free joint
        start_qpos, start_qvel = model.jnt_qposadr[j], model.jnt_dofadr[j]
        qpos = mujoco_utils.get_joint_qpos(model, data, name)
        qvel = mujoco_utils.get_joint_qvel(model, data, name)
        assert qpos.tolist() == list(range(start_qpos, start_qpos + n_qpos))
        assert qvel.tolist() == list(range(start_qvel, start_qvel + n_qvel))


def test_unpatched_franka_kitchen_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    hinge = mujoco.mjtJoint.mjJNT_HINGE
    if hinge == np.int32(int(hinge)):
        pytest.skip("this MuJoCo compares enums to numpy ints correctly; nothing to show")
    import gymnasium as gym
    from gymnasium_robotics.utils import mujoco_utils

    make_kitchen_env(["microwave"]).close()  # installs the patch and registers the env
    model, data = _kitchen_model()
    # The root cause, then the failure it causes, with the original getters put back.
    assert model.jnt_type[0] == hinge and not hinge == model.jnt_type[0]
    # The originals, from a fresh copy of the module the patch replaced them in.
    spec = importlib.util.spec_from_file_location("pristine_mujoco_utils", mujoco_utils.__file__)
    pristine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pristine)
    for name in ("get_joint_qpos", "get_joint_qvel"):
        monkeypatch.setattr(mujoco_utils, name, getattr(pristine, name))
    with pytest.raises(AssertionError):
        mujoco_utils.get_joint_qpos(model, data, "robot:panda0_joint1")
    with pytest.raises(AssertionError):
        gym.make("FrankaKitchen-v1", tasks_to_complete=["microwave"])


def test_observation_layout_and_spaces() -> None:
    env = make_kitchen_env(KITCHEN_COMPLETE_TASKS, **EXACT)
    obs, _ = env.reset(seed=0)
    qpos = env.unwrapped.data.qpos
    assert env.observation_space.shape == (60,) and obs.shape == (60,)
    assert obs.dtype == np.float64 and np.isfinite(obs).all()
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs[:9], qpos[:9])  # robot joint positions
    np.testing.assert_array_equal(obs[9:30], qpos[9:30])  # object positions, D4RL order
    np.testing.assert_array_equal(obs[30:], D4RL_GOAL)
    assert env.action_space.shape == (9,)
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    env.close()


def test_goal_vector_for_a_single_task() -> None:
    env = make_kitchen_env(["microwave"], **EXACT)
    obs, _ = env.reset(seed=0)
    expected = np.zeros(30)
    expected[22] = -0.75
    np.testing.assert_array_equal(obs[30:], expected)
    env.close()


def test_default_noise_is_d4rl_sized() -> None:
    env = make_kitchen_env(KITCHEN_COMPLETE_TASKS)
    obs, _ = env.reset(seed=1)
    diff = np.abs(obs[:30] - env.unwrapped.data.qpos)
    assert 0 < diff[:9].max() <= 0.1 * 0.1  # ratio 0.1 x amplitude 0.1
    assert (diff[9:] <= 0.1 * kitchen.D4RL_OBJ_POS_NOISE_AMP + 1e-12).all() and diff[9:].max() > 0
    # Our object amplitudes are FrankaKitchen's config values for qpos9..qpos28 (+ qpos29).
    amp = env.unwrapped.robot_env.robot_pos_noise_amp
    np.testing.assert_array_equal(kitchen.D4RL_OBJ_POS_NOISE_AMP[:20], amp[9:29])
    env.close()


def test_stepping_zero_and_random_actions() -> None:
    env = make_kitchen_env(KITCHEN_COMPLETE_TASKS)
    env.reset(seed=0)
    env.action_space.seed(0)
    for action in [np.zeros(9)] * 20 + [env.action_space.sample() for _ in range(20)]:
        obs, reward, terminated, truncated, _ = env.step(action)
        assert obs.shape == (60,) and np.isfinite(obs).all()
        assert reward == 0.0 and not terminated and not truncated
    env.close()


def test_reward_counts_a_completed_task_once() -> None:
    env = make_kitchen_env(KITCHEN_COMPLETE_TASKS, **EXACT)
    env.reset(seed=0)
    data = env.unwrapped.data
    data.qpos[22] = -0.75  # microwave hinge at its goal
    data.qvel[:] = 0
    _settle(env)
    _, reward, terminated, _, info = env.step(np.zeros(9))
    assert reward == 1.0 and not terminated
    assert info["step_task_completions"] == ["microwave"]
    assert data.qpos[22] == pytest.approx(-0.75, abs=0.3)  # still open
    _, reward, terminated, _, _ = env.step(np.zeros(9))
    assert reward == 0.0 and not terminated  # not rewarded again


def test_all_tasks_done_terminates_with_return_4() -> None:
    env = make_kitchen_env(KITCHEN_COMPLETE_TASKS, **EXACT)
    env.reset(seed=0)
    qpos = env.unwrapped.data.qpos
    for task_qpos in (slice(17, 20), slice(22, 30)):  # light, slide, microwave, kettle
        qpos[task_qpos] = D4RL_GOAL[task_qpos]
    env.unwrapped.data.qvel[:] = 0
    _settle(env)
    _, reward, terminated, truncated, _ = env.step(np.zeros(9))
    assert reward == 4.0 and terminated and not truncated
    env.close()


def test_reset_is_reproducible() -> None:
    env = make_kitchen_env(KITCHEN_COMPLETE_TASKS)  # default noise exercises the seeded RNG
    actions = np.random.default_rng(0).uniform(-1, 1, size=(10, 9))

    def rollout(seed: int) -> np.ndarray:
        obs, _ = env.reset(seed=seed)
        return np.stack([obs] + [env.step(a)[0] for a in actions])

    first, again, other = rollout(3), rollout(3), rollout(4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], other[0])  # a different seed gives different noise
    env.close()


def test_truncates_at_max_episode_steps() -> None:
    env = make_kitchen_env(KITCHEN_COMPLETE_TASKS, max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(np.zeros(9))[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]
    env.close()


def test_default_episode_length_is_d4rl_280() -> None:
    env = make_kitchen_env(KITCHEN_COMPLETE_TASKS)
    assert env.spec is not None and env.spec.max_episode_steps == 280
    env.close()


@pytest.mark.parametrize("tasks", [[], ["microwave", "microwave"], ["toaster"]])
def test_bad_task_lists_are_rejected(tasks: list[str]) -> None:
    with pytest.raises(ValueError):
        make_kitchen_env(tasks)
