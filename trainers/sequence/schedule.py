"""The sequence models' learning-rate schedules (`Config.lr_schedule`), as multipliers of the configured rate.

- `warmup`: linear warm-up over `warmup_steps` updates, then constant (LaMo's and DT's D4RL code).
- `warmup_cosine`: linear warm-up over `warmup_steps` updates, then a cosine down to 10 % of the rate at the run's
  last update, as a function of the update count alone, so every data ratio of a task gets the same schedule. The
  cosine is Decision Transformer's and LaMo's formula (DT mingpt/trainer_atari.py; LaMo experiment-atari/core.py
  CustomLRScheduler.get_lr: max(0.1, 0.5 · (1 + cos(π · progress)))), with progress counted in updates over the run.
  LaMo's Atari default (trainers/sequence/config.py `ATARI`).
- `dt_atari`: DT's Atari schedule as written: the same formula over action tokens (unpadded targets seen), warm-up
  over `warmup_tokens`, the floor from `final_tokens` on (DT's run_dt_atari.py: 2 · |data| · 3K, so a 1 % subset
  reaches it 10× sooner than a 10 % one).

Why not LaMo's own: its core.py passes the running token total to `scheduler.step(tokens)`, which adds it to its
counter again, so the counter grows with the square of the update count. With its config (warm-up 375e6 tokens,
final 260e9) and 128 × 30 action tokens per update, the warm-up ends at update 442, the floor is first reached at
update 11,637, and from there the cosine's argument keeps growing: the rate swings between 10 % and 100 % for the
rest of training. `lamo_atari_mean_multiplier` replays that counter: over 100K updates it averages 0.53 of the rate;
`warmup_cosine` with LaMo's 500 warm-up updates averages 0.51, without the swings. DT's schedule over LaMo's data
sizes averaged 0.10–0.14 by issue 26's audit (not recomputed here), and differently for each data ratio.
"""

from __future__ import annotations

import numpy as np

COSINE_FLOOR = 0.1  # DT and LaMo: the rate never falls below 10 %
LAMO_ATARI_WARMUP_TOKENS, LAMO_ATARI_FINAL_TOKENS = 375e6, 260e9  # experiment-atari/cfgs/config.yaml


def cosine_multiplier(progressed, warmup, final):
    """Linear warm-up to 1 over `warmup`, then max(0.1, 0.5 · (1 + cos(π · progress))), progress reaching 1 at
    `final` and held there; `progressed` in the same unit (updates or tokens), a number or an array."""
    progressed = np.asarray(progressed, dtype=np.float64)
    warm = progressed / max(1.0, warmup)
    progress = np.clip((progressed - warmup) / max(1.0, final - warmup), 0.0, 1.0)
    cosine = np.maximum(COSINE_FLOOR, 0.5 * (1.0 + np.cos(np.pi * progress)))
    result = np.where(progressed < warmup, warm, cosine)
    return float(result) if result.ndim == 0 else result


def step_multiplier(schedule: str, update, warmup_steps: int, num_steps: int):
    """The multiplier of update number `update` (1 for the first; a number or an array) under a schedule counted
    in updates."""
    if schedule == "warmup":
        result = np.minimum(np.asarray(update, dtype=np.float64) / max(1, warmup_steps), 1.0)
        return float(result) if result.ndim == 0 else result
    if schedule == "warmup_cosine":
        return cosine_multiplier(update, warmup_steps, num_steps)
    raise ValueError(f"lr_schedule {schedule!r} is not counted in updates")


def mean_multiplier(schedule: str, warmup_steps: int, num_steps: int) -> float | None:
    """The mean multiplier over a run's updates (None for `dt_atari`, which depends on the data)."""
    if schedule == "dt_atari":
        return None
    return float(np.mean(step_multiplier(schedule, np.arange(1, num_steps + 1), warmup_steps, num_steps)))


def lamo_atari_mean_multiplier(num_steps: int, tokens_per_update: float) -> float:
    """The mean multiplier of LaMo's Atari scheduler as its code runs it: after update n its counter holds
    Σ_{m≤n} (m · tokens_per_update) (the running total, added each update); the first update runs at 0."""
    done = np.arange(num_steps, dtype=np.float64)  # updates finished before each update
    counter = tokens_per_update * done * (done + 1) / 2
    warm = counter / LAMO_ATARI_WARMUP_TOKENS
    progress = (counter - LAMO_ATARI_WARMUP_TOKENS) / (LAMO_ATARI_FINAL_TOKENS - LAMO_ATARI_WARMUP_TOKENS)
    swinging = np.maximum(COSINE_FLOOR, 0.5 * (1.0 + np.cos(np.pi * progress)))  # progress is never clamped there
    return float(np.where(counter < LAMO_ATARI_WARMUP_TOKENS, warm, swinging).mean())
