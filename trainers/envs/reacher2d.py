"""LaMo's sparse-reward Reacher2d task as a Gymnasium MuJoCo environment.

Also holds the scripted behaviour policies used to generate the offline datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box

XML_PATH = str(Path(__file__).resolve().parent / "assets" / "reacher2d.xml")

UPPER_LINK = 0.6
FINGERTIP_OFFSET = 0.45  # along the lower link from the elbow; the link itself is 0.4 long
ELBOW_RANGE = (-2.0, 3.5)
FRAME_SKIP = 15
DT = 0.01 * FRAME_SKIP
MAX_EPISODE_STEPS = 100
SUCCESS_L1 = 0.1
TARGET_RADIUS = (0.5, 1.0)

OBS_NAMES: tuple[str, ...] = (
    "cos_q1", "cos_q2", "sin_q1", "sin_q2",
    "dt_qvel1", "dt_qvel2",
    "fingertip_x", "fingertip_y",
    "target_x", "target_y",
    "fingertip_minus_target_x", "fingertip_minus_target_y",
)


class Reacher2dEnv(MujocoEnv, utils.EzPickle):
    """Planar two-link arm; reward 1 while the fingertip is within L1 distance 0.1 of the target.

    Observation (12, float64), in order:
    cos(q1), cos(q2), sin(q1), sin(q2), dt*qvel1, dt*qvel2, fingertip x, fingertip y,
    target x, target y, fingertip_x - target_x, fingertip_y - target_y  (see ``OBS_NAMES``).

    Action (2,): shoulder and elbow torques, clipped to [-1, 1]. Episodes last exactly
    100 steps: never terminated, truncated on step 100 (even without a TimeLimit wrapper).
    The target is a mocap body, so qpos/qvel hold only the two arm joints.
    """

    metadata: dict[str, Any] = {
        "render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"],
        "render_fps": int(round(1.0 / DT)),
    }

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        utils.EzPickle.__init__(self, render_mode, **kwargs)
        MujocoEnv.__init__(
            self,
            XML_PATH,
            FRAME_SKIP,
            observation_space=Box(low=-np.inf, high=np.inf, shape=(12,), dtype=np.float64),
            render_mode=render_mode,
            default_camera_config={"distance": 3.0, "elevation": -90.0, "azimuth": 90.0,
                                   "lookat": np.zeros(3)},
            **kwargs,
        )
        self._fingertip = self.model.site("fingertip").id
        self._target_site = self.model.site("target").id
        self._elapsed_steps = 0

    def _distance_l1(self) -> float:
        delta = self.data.site_xpos[self._fingertip, :2] - self.data.site_xpos[self._target_site, :2]
        return float(np.abs(delta).sum())

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        ctrl = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.do_simulation(ctrl, self.frame_skip)
        # mj_step leaves xpos from before its last substep; refresh it so the fingertip in the
        # observation and the reward describe the same post-step state as qpos.
        mujoco.mj_kinematics(self.model, self.data)
        self._elapsed_steps += 1
        distance = self._distance_l1()
        success = distance < SUCCESS_L1
        if self.render_mode == "human":
            self.render()
        truncated = self._elapsed_steps >= MAX_EPISODE_STEPS
        info = {"distance_l1": distance, "success": bool(success)}
        return self._get_obs(), float(success), False, truncated, info

    def reset_model(self) -> np.ndarray:
        self._elapsed_steps = 0
        qpos = self.np_random.uniform(-2.0, 2.0, size=2)
        # Uniform in area: the radius density grows linearly, so sample r^2 uniformly.
        r_lo, r_hi = TARGET_RADIUS
        radius = np.sqrt(self.np_random.uniform(r_lo**2, r_hi**2))
        angle = self.np_random.uniform(-np.pi, np.pi)
        self.data.mocap_pos[0] = [radius * np.cos(angle), radius * np.sin(angle), 0.0]
        # set_state runs mj_forward, which also refreshes the target site from mocap_pos.
        self.set_state(qpos, np.zeros(2))
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        distance = self._distance_l1()
        return {"distance_l1": distance, "success": bool(distance < SUCCESS_L1)}

    def _get_obs(self) -> np.ndarray:
        q = self.data.qpos[:2]
        tip = self.data.site_xpos[self._fingertip, :2]
        target = self.data.site_xpos[self._target_site, :2]
        return np.concatenate(
            [np.cos(q), np.sin(q), DT * self.data.qvel[:2], tip, target, tip - target]
        ).astype(np.float64)


# PD gains (torque per rad, per rad/s). Joint damping 1 and the 1 N m torque cap already limit
# speed to ~1 rad/s, so gains barely change reach time; KD mainly stops overshoot out of the
# 0.1 success box. Sweep over 50 seeded expert episodes (KP, KD -> mean return):
# (4, 0) 82.8, (8, 0) 82.2, (8, 1) 85.9, (15, 1) 85.0, (30, 0) 72.1, (30, 1) 83.6.
KP = 8.0
KD = 1.0


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Wrap to (-pi, pi]."""
    return np.pi - np.mod(np.pi - angle, 2.0 * np.pi)


def scripted_reacher_action(observations: np.ndarray) -> np.ndarray:
    """IK + PD controller from observations alone: (n, 12) -> (n, 2) torques in [-1, 1]."""
    obs = np.atleast_2d(np.asarray(observations, dtype=np.float64))
    q1 = np.arctan2(obs[:, 2], obs[:, 0])
    q2 = np.arctan2(obs[:, 3], obs[:, 1])
    # atan2 folds elbow angles above pi into (3.5 - 2*pi, -2), a band the limit forbids, so map
    # it back; the threshold sits mid-band to tolerate soft-limit penetration just below -2.
    q2 = np.where(q2 < 0.5 * (ELBOW_RANGE[0] + ELBOW_RANGE[1] - 2 * np.pi), q2 + 2 * np.pi, q2)
    qd = obs[:, 4:6] / DT
    gx, gy = obs[:, 8], obs[:, 9]

    r2 = gx**2 + gy**2
    cos_elbow = (r2 - UPPER_LINK**2 - FINGERTIP_OFFSET**2) / (2 * UPPER_LINK * FINGERTIP_OFFSET)
    elbow = np.arccos(np.clip(cos_elbow, -1.0, 1.0))

    # Both elbow-up and elbow-down solutions; pick the cheaper reachable one.
    best_err = np.full((obs.shape[0], 2), np.inf)
    best_cost = np.full(obs.shape[0], np.inf)
    for e2 in (elbow, -elbow):
        e1 = np.arctan2(gy, gx) - np.arctan2(FINGERTIP_OFFSET * np.sin(e2),
                                             UPPER_LINK + FINGERTIP_OFFSET * np.cos(e2))
        # The shoulder is unlimited, so take the short way round; the elbow cannot wrap
        # through its limits, so its error is a plain difference.
        err = np.stack([_wrap(e1 - q1), e2 - q2], axis=1)
        cost = np.abs(err).sum(axis=1)
        cost = np.where(e2 < ELBOW_RANGE[0], np.inf, cost)
        better = cost < best_cost
        best_err[better] = err[better]
        best_cost = np.where(better, cost, best_cost)

    return np.clip(KP * best_err - KD * qd, -1.0, 1.0)


# p_random: per-step probability of a uniform random action instead of the controller;
# noise_std: Gaussian noise added to the controller output before clipping.
# "medium" targets the paper's PPO-medium data (return ~20-40); sweep over 100 episodes
# (p_random, noise_std -> mean return): (0.5, 0.5) 47.9, (0.5, 1.0) 28.3, (0.6, 0.5) 36.9,
# (0.6, 1.0) 21.4, (0.7, 1.0) 12.1. Measured with the chosen values, 2 x 200 seeded episodes
# (seeds 0-199 and 1000-1199, one env per seed, rng seeded with the first seed):
# expert 86.4 / 87.1 (std 6), medium 28.9 / 29.3 (std 12-14), random 0.5 / 0.6 (std 2-3).
REACHER2D_BEHAVIOURS: dict[str, dict[str, float]] = {
    "expert": {"p_random": 0.0, "noise_std": 0.1},
    "medium": {"p_random": 0.5, "noise_std": 1.0},
    "random": {"p_random": 1.0, "noise_std": 0.0},
}


def reacher2d_behaviour_action(
    observations: np.ndarray, level: str, rng: np.random.Generator
) -> np.ndarray:
    """Behaviour action for dataset generation at noise ``level`` ("expert"/"medium"/"random")."""
    spec = REACHER2D_BEHAVIOURS[level]
    obs = np.atleast_2d(observations)
    n = obs.shape[0]
    random_action = rng.uniform(-1.0, 1.0, size=(n, 2))
    if spec["p_random"] >= 1.0:
        return random_action
    action = scripted_reacher_action(obs) + rng.normal(0.0, spec["noise_std"], size=(n, 2))
    use_random = rng.random(n) < spec["p_random"]
    return np.clip(np.where(use_random[:, None], random_action, action), -1.0, 1.0)


if "Reacher2d-v0" not in gymnasium.registry:
    gymnasium.register(
        id="Reacher2d-v0",
        entry_point="trainers.envs.reacher2d:Reacher2dEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )
