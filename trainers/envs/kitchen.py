"""Gymnasium-Robotics ``FrankaKitchen-v1`` presented in D4RL's kitchen layout (kitchen-*-v0).

Observation, 60-d float64, exactly D4RL's ``KitchenV0._get_obs``: ``[qp, obj_qp, goal]``

* ``[0:9]``   qp: robot joint positions = ``data.qpos[0:9]`` (7 arm joints, 2 fingers), with
  D4RL's uniform observation noise (see below).
* ``[9:30]``  obj_qp: object positions = ``data.qpos[9:30]`` in the same joint order as D4RL
  (4 burner knob/flame pairs, light switch + light, slide cabinet, 2 hinge doors, microwave,
  kettle free joint xyz + quaternion wxyz).
* ``[30:60]`` goal: D4RL's ``KitchenBase._get_task_goal``: zeros, and for every task element
  its goal values at that element's *full-qpos* indices (e.g. microwave -> ``goal[22] = -0.75``).
  It is constant per task set; D4RL's dataset script writes the same vector into ``obs[30:]``.

Action (9,) in [-1, 1]: joint velocities, same as D4RL (x2, velocity-clipped, integrated from
the noisy observed qpos over dt = 40 x 2 ms, position-clipped, sent to position actuators).
Reward: number of tasks first completed at this step (joint-space distance < 0.3), so the
return counts completed tasks (max 4). Terminated once every task is done, truncated after
``max_episode_steps`` (D4RL: 280). Initial state: D4RL's fixed ``init_qpos``, zero velocity,
no reset noise (both envs). Task order is not enforced (neither in D4RL).

What differs from D4RL and cannot be mapped away:

1. Physics: MuJoCo 4 with Gymnasium-Robotics' converted assets instead of MuJoCo 2.0 with
   D4RL's adept assets (which also carry a dof-less mocap body). The qpos layout matches, but
   contacts/solver differ, so the same actions do not give bit-identical trajectories and
   replaying dataset actions open-loop drifts.
2. Noise RNG: D4RL draws from ``RandomState`` in its own order; a seed here gives a different
   (but reproducible) noise sequence than the same seed in D4RL.
3. Object noise: FrankaKitchen-v1 takes object amplitudes from ``pos_noise_amp[8:29]`` (off by
   one from D4RL's ``[9:30]``), so we switch its object noise off and add D4RL's ourselves.
4. Success test: FrankaKitchen-v1 checks the noise-free qpos, D4RL the noisy ``obj_qp``
   (noise <= 0.01 against a 0.3 threshold, so at most a boundary-case difference).
5. ``info`` holds FrankaKitchen-v1's task lists, not D4RL's ``obs_dict``/``rewards``/``score``.
6. Not an env difference but worth knowing: D4RL's *dataset* rewards are relabelled as the
   number of tasks satisfied at each step (tasks never removed), unlike the online reward.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

# D4RL kitchen-complete-v0 and kitchen-partial-v0 are both KitchenMicrowaveKettleLightSliderV0
# (only the dataset differs); Gymnasium-Robotics spells the tasks exactly as D4RL does.
KITCHEN_COMPLETE_TASKS: tuple[str, ...] = ("microwave", "kettle", "light switch", "slide cabinet")
KITCHEN_PARTIAL_TASKS: tuple[str, ...] = KITCHEN_COMPLETE_TASKS

D4RL_NOISE_RATIO = 0.1  # KitchenV0.robot_noise_ratio, used for robot *and* object positions
# franka_config.xml pos_noise_amp of qpos9..qpos29, the object slice D4RL indexes with [-21:].
D4RL_OBJ_POS_NOISE_AMP = np.array(
    [0.005] * 2 + [0.0005] * 6 + [0.005] * 3 + [0.1] * 3 + [0.005] * 3 + [0.1] * 3 + [0.005]
)
OBS_BOUND = 8.0  # D4RL's observation Box is [-8, 8]


def _import_gymnasium_robotics() -> Any:
    """Import gymnasium_robotics, dropping only the Adroit notice it prints on import."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        import gymnasium_robotics
    for line in buf.getvalue().splitlines():
        if "AdroitHand" not in line:
            print(line, file=sys.stderr)
    return gymnasium_robotics


# --- MuJoCo >= 3.12 fix ----------------------------------------------------------------------
# What changed: MuJoCo 3.12 moved to pybind11 3.1, whose enum ``__eq__`` answers False for NumPy
# integers, so ``mjtJoint.mjJNT_HINGE == np.int32(3)`` is False (the reverse order is still
# True). ``x in (A, B)`` calls ``A == x``, so gymnasium_robotics' ``get_joint_qpos/_qvel``
# (``assert model.jnt_type[j] in (mjJNT_HINGE, mjJNT_SLIDE)``) reject every hinge and slide
# joint and FrankaKitchen-v1 dies in its constructor with a bare AssertionError.
# What we do: replace those two module functions with copies that compare plain ints
# (upstream fixes it the same way, Gymnasium-Robotics PR #330). ``robot_get_obs`` and the other
# envs look the names up in the module at call time, so they all pick the fix up.
# Why it is safe: same widths and slicing as before for every joint type, on any MuJoCo
# version; only ball-joint qvel now reads 3 dofs (MuJoCo's true size) instead of 4, and the
# kitchen has no ball joints. ``set_joint_qpos/_qvel`` share the bug but the kitchen never
# calls them, so we leave them alone.
_J = mujoco.mjtJoint
_QPOS_WIDTH = {int(_J.mjJNT_FREE): 7, int(_J.mjJNT_BALL): 4,
               int(_J.mjJNT_SLIDE): 1, int(_J.mjJNT_HINGE): 1}
_QVEL_WIDTH = {**_QPOS_WIDTH, int(_J.mjJNT_FREE): 6, int(_J.mjJNT_BALL): 3}


def _joint_slice(model: mujoco.MjModel, name: str, vel: bool) -> slice:
    jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    assert jid != -1, f"Joint with name '{name}' is not part of the model!"
    jtype = int(model.jnt_type[jid])  # the whole fix: never compare a pybind enum to np.int32
    start = int(model.jnt_dofadr[jid] if vel else model.jnt_qposadr[jid])
    return slice(start, start + (_QVEL_WIDTH if vel else _QPOS_WIDTH)[jtype])


def _get_joint_qpos(model: mujoco.MjModel, data: mujoco.MjData, name: str) -> np.ndarray:
    return data.qpos[_joint_slice(model, name, vel=False)].copy()


def _get_joint_qvel(model: mujoco.MjModel, data: mujoco.MjData, name: str) -> np.ndarray:
    return data.qvel[_joint_slice(model, name, vel=True)].copy()


def patch_joint_getters() -> None:
    """Install the int-comparing joint getters into gymnasium_robotics (idempotent)."""
    _import_gymnasium_robotics()
    from gymnasium_robotics.utils import mujoco_utils

    for name, fixed in (("get_joint_qpos", _get_joint_qpos), ("get_joint_qvel", _get_joint_qvel)):
        if getattr(mujoco_utils, name) is not fixed:
            setattr(mujoco_utils, name, fixed)


class D4RLKitchenObservation(gym.Wrapper):
    """Turns FrankaKitchen-v1's dict observation into D4RL's flat 60-d ``[qp, obj_qp, goal]``."""

    def __init__(self, env: gym.Env, tasks: Sequence[str], object_noise_ratio: float) -> None:
        super().__init__(env)
        from gymnasium_robotics.envs.franka_kitchen.kitchen_env import (
            OBS_ELEMENT_GOALS,
            OBS_ELEMENT_INDICES,
        )

        self.tasks = tuple(tasks)
        self.object_noise_ratio = object_noise_ratio
        self.goal = np.zeros(30)  # unused elements (and the robot part) stay 0, as in D4RL
        for task in self.tasks:
            self.goal[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, (60,), np.float64)

    def _flat_obs(self, obs: dict[str, Any]) -> np.ndarray:
        # Inner layout: robot qpos(9), robot qvel(9), object qpos(21), object qvel(20).
        # Its robot qpos already carries D4RL-style noise, and the controller integrates from
        # exactly that value, as in D4RL.
        inner = obs["observation"]
        robot = self.env.unwrapped.robot_env
        obj_qp = inner[18:39] + self.object_noise_ratio * D4RL_OBJ_POS_NOISE_AMP * (
            robot.np_random.uniform(-1.0, 1.0, size=21)
        )
        return np.concatenate([inner[:9], obj_qp, self.goal])

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._flat_obs(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._flat_obs(obs), float(reward), terminated, truncated, info


def make_kitchen_env(tasks: Sequence[str], max_episode_steps: int = 280, **kwargs: Any) -> gym.Env:
    """FrankaKitchen-v1 for ``tasks`` with D4RL's observation layout, reward and noise.

    ``kwargs`` go to FrankaKitchen-v1 (e.g. ``render_mode``). ``robot_noise_ratio`` (default
    D4RL's 0.1) scales the robot observation noise; ``object_noise_ratio`` (default: same as
    the robot's, as in D4RL) scales the object noise we add with D4RL's amplitudes. Pass 0 for
    both to observe the simulator state exactly.
    """
    tasks = tuple(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be a non-empty list without duplicates, got {tasks!r}")
    patch_joint_getters()
    gym.register_envs(_import_gymnasium_robotics())
    robot_noise = float(kwargs.pop("robot_noise_ratio", D4RL_NOISE_RATIO))
    object_noise = float(kwargs.pop("object_noise_ratio", robot_noise))
    env = gym.make(
        "FrankaKitchen-v1",
        tasks_to_complete=list(tasks),
        max_episode_steps=max_episode_steps,
        robot_noise_ratio=robot_noise,
        object_noise_ratio=0.0,  # its object noise has off-by-one amplitudes; we add D4RL's
        # The passive checker's only finding is that the inner dict obs reuses its desired_goal
        # arrays between calls; we never hand those out (each flat obs is a new array).
        disable_env_checker=True,
        **kwargs,
    )
    return D4RLKitchenObservation(env, tasks, object_noise)
