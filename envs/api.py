"""The env API every simulator wrapper implements.

A wrapper is a ``gymnasium.Env`` subclass of :class:`RobotEnv`:

- observation: ``{"images": uint8 [C, Hi, Wi, 3], "proprio": float32 [P]}``
- action: float32 ``[A]`` in ``[-1, 1]`` (the embodiment's native action layout)
- ``info`` after reset/step: ``instruction`` (str), ``task`` (str), ``success`` (bool)
- ``terminated`` means success (or unrecoverable failure); ``truncated`` the time limit
- ``embodiment`` (:class:`Embodiment`) describes the robot for the Qwen-VLA prompt

Wrappers are registered with ``rlsys.registry.ENVS`` (``make_env(**kwargs) -> RobotEnv``).
:func:`execute_chunk` runs an action chunk on one env; ``rlsys.envs.pool.EnvPool`` vectorises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np


class ActionError(ValueError):
    """An action handed to an env has the wrong shape/dtype or non-finite values."""


@dataclass(frozen=True)
class Embodiment:
    """What the Qwen-VLA embodiment prompt says about a robot."""

    robot: str  # e.g. "a Franka Panda arm"
    arms: str  # "single arm" | "dual arms"
    control_hz: float
    action_dim: int  # real action channels (<= the policy's padded K)
    proprio_dim: int
    action_names: tuple[str, ...]


def validate_action(action: Any, dim: int) -> np.ndarray:
    """Return ``action`` as float32 ``[dim]`` or raise ActionError naming the problem."""
    arr = np.asarray(action)
    if arr.shape != (dim,):
        raise ActionError(f"action: expected shape ({dim},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ActionError(f"action: expected a float array, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ActionError(f"action: contains NaN or inf: {arr}")
    return arr.astype(np.float32)


class RobotEnv(gym.Env):
    """Base class of rlsys env wrappers (see module docstring for the contract)."""

    embodiment: Embodiment
    cameras: tuple[str, ...]
    task_names: tuple[str, ...]
    max_episode_steps: int  # control steps before truncation

    @property
    def instruction(self) -> str:
        raise NotImplementedError

    def privileged_state(self) -> dict[str, np.ndarray]:
        """Simulator state for scripted experts (not for policies)."""
        raise NotImplementedError(f"{type(self).__name__} exposes no privileged state")


@dataclass
class ChunkStep:
    """Result of executing one action chunk on one env.

    rewards [H] float32 (0 where not run), exec_mask [H] bool; ``obs``/``info`` are the last ones.
    ``bad``: a sub-step returned NaN/inf in its observation or reward (the chunk stopped there).
    """

    obs: dict[str, np.ndarray]
    rewards: np.ndarray
    exec_mask: np.ndarray
    terminated: bool
    truncated: bool
    success: bool
    info: dict[str, Any]
    bad: bool = False

    @property
    def reward(self) -> float:
        return float(self.rewards.sum())

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


def execute_chunk(env: gym.Env, actions: np.ndarray, length: int | None = None) -> ChunkStep:
    """Run up to ``length`` (default H) sub-steps of ``actions [H, A]``; stop at the first done.

    Rewards are summed by the caller (``ChunkStep.reward``); ``exec_mask`` says which ran.
    """
    actions = np.asarray(actions)
    if actions.ndim != 2:
        raise ActionError(f"action chunk: expected [H, A], got shape {actions.shape}")
    h = actions.shape[0]
    length = h if length is None else length
    if not 1 <= length <= h:
        raise ActionError(f"action chunk: length must be in 1..{h}, got {length}")
    rewards = np.zeros(h, np.float32)
    mask = np.zeros(h, bool)
    terminated = truncated = success = False
    obs: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    bad = False
    for i in range(length):
        obs, r, terminated, truncated, info = env.step(actions[i])
        rewards[i] = r
        mask[i] = True
        success = success or bool(info["success"])
        bad = not (np.isfinite(r) and all(np.all(np.isfinite(v)) for v in obs.values()))
        if terminated or truncated or bad:
            break
    return ChunkStep(obs, rewards, mask, bool(terminated), bool(truncated), success, info, bad)


def reset_task(options: dict[str, Any], task_names: tuple[str, ...], rng: np.random.Generator) -> str:
    """``options["task"]`` (one of ``task_names``), else a draw from the env's RNG."""
    task = options.get("task")
    if task is None:
        return task_names[int(rng.integers(len(task_names)))]
    if task not in task_names:
        from rlsys.configtools import ConfigError

        raise ConfigError(f"reset options.task: {task!r} is not one of this env's tasks {task_names}")
    return str(task)


def init_state_index(options: dict[str, Any], seed: int | None, rng: np.random.Generator, count: int,
                     allowed: tuple[int, ...] = ()) -> int:
    """Fixed-initial-state suites (LIBERO init files, SimplerEnv episode grid): ``options["init_state"]``
    (taken modulo ``count``), else the reset seed, else a draw from the env's RNG. ``allowed``
    (``env.init_states``) restricts the seeded and random choices, i.e. training resets, to those ids:
    ``allowed[seed % len(allowed)]``; an explicit ``options["init_state"]`` (evaluation) is not restricted."""
    for j in allowed:
        if not 0 <= j < count:
            from rlsys.configtools import ConfigError

            raise ConfigError(f"env.init_states: {j} is not an init state of this task (allowed 0..{count - 1})")
    j = options.get("init_state")
    if j is not None:
        return int(j) % count
    j = int(seed) if seed is not None else int(rng.integers(1 << 30))
    return allowed[j % len(allowed)] if allowed else j % count


def run_expert_episode(env: Any, seed: int = 0, options: dict[str, Any] | None = None) -> tuple[bool, int]:
    """One episode driven by ``env.expert()`` from privileged state -> (success, control steps).

    Success means the env terminated with ``info["success"]`` and the success reward 1.0."""
    env.reset(seed=seed, options=options)
    expert = env.expert()
    for step in range(1, env.max_episode_steps + 1):
        _, reward, terminated, truncated, info = env.step(expert.act(env.privileged_state()))
        if terminated or truncated:
            return bool(terminated and info["success"] and reward == 1.0), step
    return False, env.max_episode_steps
