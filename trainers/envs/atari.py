"""Atari: the games LaMo evaluates on and their evaluation environment, built from Gymnasium's own wrappers.

The environment is the one LaMo's Atari code evaluates in (srzer/LaMo-2023 experiment-atari/core.py:
`gym.make('breakout-medium-v0', stack=4)`), as d4rl-atari builds it (takuseno/d4rl-atari d4rl_atari/envs.py,
AtariEnv with its defaults): `{Game}NoFrameskip-v4` — no frame skip inside ALE, no sticky actions
(repeat_action_probability 0), ALE's cap of 108,000 frames per episode — then `AtariPreprocessing` (up to 30
no-op starts, frame skip 4 with a max over the last two frames, 84×84 grayscale by INTER_AREA, no terminal on
life loss, uint8) and a stack of the last 4 frames. Rewards are the game's own (d4rl-atari clip_reward=False),
so evaluation returns are game scores.

Frame stacks at an episode's start: the evaluation repeats the first frame (gym's FrameStack, and Gymnasium's
FrameStackObservation default padding "reset"), while LaMo's training windows and d4rl-atari's `_stack` pad
with zero frames. Both are kept as the original has them (trainers/data/samplers.py pads the data with zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

FRAME_SHAPE = (84, 84)  # AtariPreprocessing screen_size 84
FRAME_STACK = 4  # frames per state (LaMo buffer.stack_frame 4, d4rl-atari FrameStack num_stack 4)
FRAME_SKIP = 4
ALE_MAX_FRAMES = 108_000  # {Game}NoFrameskip-v4: max_num_frames_per_episode


@dataclass(frozen=True)
class AtariGame:
    name: str  # lower case, as in task names: "breakout"
    ale_name: str  # ROM and environment id, and the game's directory in the DQN Replay layout: "Breakout"
    num_actions: int  # ALE's minimal action set for the game (full_action_space=False)
    random_score: float  # Nature-DQN random-agent score: normalizes to 0
    human_score: float  # Nature-DQN human score: normalizes to 100
    target_returns: tuple[float, ...]
    horizon: int  # evaluation steps at most (agent steps, after frame skip)


# Random and human scores: Mnih et al. 2015 (Nature), as LaMo's experiment-atari/get_hns.py lists them.
# Targets: Breakout 90 and 120 from LaMo (experiment-atari/cfgs/env/breakout.yaml rtg_target); Qbert 14,000 and
# Pong 20 from Decision Transformer (kzl/decision-transformer atari/mingpt/trainer_atari.py get_returns), as LaMo
# ships configs for Breakout only. Horizon: Breakout 4096 = LaMo's max_timestep (breakout.yaml), which also
# caps its evaluation loop; Qbert and Pong run to ALE's own cap (108,000 frames / frame skip 4).
GAMES: dict[str, AtariGame] = {
    "breakout": AtariGame("breakout", "Breakout", 4, 1.7, 31.8, (90.0, 120.0), 4096),
    "qbert": AtariGame("qbert", "Qbert", 6, 163.9, 13_455.0, (14_000.0,), ALE_MAX_FRAMES // FRAME_SKIP),
    "pong": AtariGame("pong", "Pong", 6, -20.7, 9.3, (20.0,), ALE_MAX_FRAMES // FRAME_SKIP),
}


def get_game(name: str) -> AtariGame:
    key = name.lower()
    if key not in GAMES:
        raise ValueError(f"unknown Atari game {name!r}; known games: {', '.join(GAMES)}")
    return GAMES[key]


def make_atari_env(game: str, frame_stack: int = FRAME_STACK) -> gym.Env:
    """The evaluation environment of a game: observations (frame_stack, 84, 84) uint8, Discrete actions."""
    import ale_py  # registers the ALE environments (ale-py ≥ 0.9 ships the ROMs)

    gym.register_envs(ale_py)
    spec = get_game(game)
    env = gym.make(f"{spec.ale_name}NoFrameskip-v4")
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=FRAME_SKIP, screen_size=FRAME_SHAPE[0],
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    if frame_stack > 1:
        env = gym.wrappers.FrameStackObservation(env, frame_stack)
    return env
