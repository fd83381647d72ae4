"""The embedded tabletop suite: conformance kit, scripted experts, bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest

from rlsys.config import ConfigError, EnvConfig
from rlsys.envs.api import run_expert_episode
from rlsys.envs.conformance import EnvConformance
from rlsys.envs.tabletop.env import TabletopEnv
from rlsys.envs.tabletop.tasks import TASKS


def run_expert(env: TabletopEnv, seed: int, task: str | None = None) -> bool:
    return run_expert_episode(env, seed, {"task": task} if task else None)[0]


class TestTabletopConformance(EnvConformance):
    config = EnvConfig(name="tabletop", cameras=("agentview", "wrist"), image_size=64)

    def solve(self, env):
        return run_expert(env, seed=11, task="stack")


def test_at_least_six_language_conditioned_tasks():
    assert len(TASKS) >= 6
    env = TabletopEnv(cameras=("agentview",))
    instructions = {env.reset(seed=s)[1]["instruction"] for s in range(40)}
    env.close()
    assert len(instructions) >= 20  # the instruction picks the objects, not just the task family


@pytest.mark.parametrize("task", sorted(TASKS))
def test_scripted_expert_success_rate(task):
    env = TabletopEnv(cameras=("agentview",), image_size=32)
    wins = sum(run_expert(env, seed, task) for seed in range(100))
    env.close()
    assert wins >= 95, f"{task}: expert solved {wins}/100"


def test_instruction_decides_the_goal():
    """Same initial state, different instruction -> the expert for one does not solve the other."""
    env = TabletopEnv(tasks=("push_left", "push_right"), cameras=("agentview",), image_size=32)
    assert run_expert(env, 5, "push_left")
    env.reset(seed=5, options={"task": "push_right"})
    assert "right" in env.instruction
    env.close()


def test_unknown_task_and_camera_name_the_options():
    with pytest.raises(ConfigError, match="Did you mean 'stack'"):
        TabletopEnv(tasks=("stak",))
    with pytest.raises(ConfigError, match="agentview"):
        TabletopEnv(cameras=("agentveiw",))


def test_bad_gl_backend_is_named():
    code = "import rlsys.envs.tabletop.env"
    env = {**os.environ, "MUJOCO_GL": "vulkan"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "MUJOCO_GL='vulkan' is not supported" in out.stderr and "osmesa" in out.stderr


def test_render_quality_switches():
    from rlsys.config import RenderConfig

    cheap = TabletopEnv(cameras=("agentview",), image_size=64)
    fancy = TabletopEnv(cameras=("agentview",), image_size=64,
                        render=RenderConfig(shadows=True, multisample=True, reflections=True))
    a = cheap.reset(seed=0)[0]["images"]
    b = fancy.reset(seed=0)[0]["images"]
    cheap.close()
    fancy.close()
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_no_episode_starts_solved():
    env = TabletopEnv(cameras=("agentview",), image_size=32)
    for task in TASKS:
        for seed in range(60):
            env.reset(seed=seed, options={"task": task})
            assert not TASKS[task].success(env.privileged_state(), env._roles), (task, seed)
    env.close()


def _expert_rewards(env: TabletopEnv) -> list[float]:
    """The per-step rewards of the scripted expert's episode from the env's current state; it must succeed."""
    expert, rewards = env.expert(), []
    for _ in range(env.max_episode_steps):
        _, r, terminated, truncated, info = env.step(expert.act(env.privileged_state()))
        rewards.append(r)
        if terminated or truncated:
            break
    assert terminated and info["success"]
    return rewards


def test_shaped_lift_reward_is_progress_plus_the_success_reward():
    """env.reward=shaped: each step adds the change of the lift-progress potential, so an expert
    episode's return is 1 (success) + final - initial potential; sparse and shaped agree on success."""
    from rlsys.envs.tabletop.tasks import lift_progress

    env = TabletopEnv(tasks=("lift",), cameras=(), reward="shaped")
    env.reset(seed=3)
    start = lift_progress(env.privileged_state(), env._roles)
    rewards = _expert_rewards(env)
    end = lift_progress(env.privileged_state(), env._roles)
    assert sum(rewards) == pytest.approx(1.0 + end - start, abs=1e-6)
    assert 0.0 <= start < 0.3 < end <= 1.0  # the expert reached, held and raised the cube
    assert max(rewards[:-1]) < 0.4  # the largest step is the grip (0.3): none rivals the success reward
    with pytest.raises(ConfigError, match="shaped rewards are defined for lift only, not stack"):
        TabletopEnv(tasks=("lift", "stack"), cameras=(), reward="shaped")
    with pytest.raises(ConfigError, match="reward: 'shaped' is defined for the tabletop env only"):
        EnvConfig(name="libero_spatial", reward="shaped")


def test_unknown_reward_kind_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="allowed: sparse, shaped"):
        TabletopEnv(tasks=("lift",), cameras=(), reward="dense")
