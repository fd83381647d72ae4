"""Env conformance kit: the contract every rlsys env wrapper must pass.

Use it by subclassing in a test module (pytest collects the inherited tests)::

    from rlsys.config import EnvConfig
    from rlsys.envs.conformance import EnvConformance

    class TestMySim(EnvConformance):
        config = EnvConfig(name="my_sim", tasks=("task_a",), image_size=64, num_envs=2)
        short_limit = 5          # an episode limit short enough to hit quickly

        def solve(self, env):    # optional: drive one episode to success (scripted expert)
            ...

It checks spaces and dtypes, seeding determinism, the reset/step contract, chunk execution,
the success flag, truncation vs termination, bad-action errors, ``close()``, gymnasium's own
env checker on a single env, and the EnvPool auto-reset contract (in-process and subprocess).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from rlsys.config import EnvConfig
from rlsys.envs.api import ActionError, Embodiment, RobotEnv, execute_chunk
from rlsys.envs.pool import EnvPool, make_single_env


class EnvConformance:
    config: EnvConfig = EnvConfig()
    short_limit: int = 5
    chunk_len: int = 4

    def solve(self, env: Any) -> bool | None:
        """Drive one episode to success and return ``True``; ``None`` skips the success test."""
        return None

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture(scope="class")
    @classmethod
    def env(cls) -> Any:
        env = make_single_env(cls.config)
        yield env
        env.close()

    def _short_env(self) -> Any:
        return make_single_env(dataclasses.replace(self.config, max_episode_steps=self.short_limit))

    def _zero_action(self, env: Any) -> np.ndarray:
        return np.zeros(env.action_space.shape, np.float32)

    # ------------------------------------------------------------------ tests
    def test_spaces_and_metadata(self, env: Any) -> None:
        assert isinstance(env, RobotEnv)
        assert isinstance(env.embodiment, Embodiment)
        obs_space = env.observation_space
        img = obs_space["images"]
        assert img.dtype == np.uint8
        assert img.shape == (len(self.config.cameras), self.config.image_size, self.config.image_size, 3)
        assert obs_space["proprio"].dtype == np.float32
        assert obs_space["proprio"].shape == (env.embodiment.proprio_dim,)
        assert env.action_space.dtype == np.float32
        assert env.action_space.shape == (env.embodiment.action_dim,)
        assert len(env.embodiment.action_names) == env.embodiment.action_dim
        assert env.embodiment.arms in ("single arm", "dual arms")
        assert len(env.task_names) >= 1

    def test_reset_step_contract(self, env: Any) -> None:
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        assert isinstance(info["instruction"], str) and info["instruction"]
        assert info["task"] in env.task_names
        assert info["success"] is False
        out = env.step(self._zero_action(env))
        assert len(out) == 5
        obs, reward, terminated, truncated, info = out
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float) and np.isfinite(reward)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        assert isinstance(info["success"], bool)

    def test_seeding_determinism(self, env: Any) -> None:
        def rollout(seed: int) -> tuple[list[np.ndarray], str]:
            obs, info = env.reset(seed=seed)
            frames = [obs["images"], obs["proprio"]]
            rng = np.random.default_rng(0)
            for _ in range(3):
                a = rng.uniform(-0.5, 0.5, env.action_space.shape).astype(np.float32)
                obs, *_ = env.step(a)
                frames += [obs["images"], obs["proprio"]]
            return frames, info["instruction"]

        a, ia = rollout(123)
        b, ib = rollout(123)
        assert ia == ib
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        insts = {rollout(s)[1] for s in range(6)} | {ia}
        c, _ = rollout(124)
        assert len(insts) > 1 or not all(np.array_equal(x, y) for x, y in zip(a, c))

    def test_chunk_execution(self, env: Any) -> None:
        env.reset(seed=1)
        actions = np.zeros((self.chunk_len, *env.action_space.shape), np.float32)
        res = execute_chunk(env, actions)
        assert res.exec_mask.shape == (self.chunk_len,) and res.rewards.shape == (self.chunk_len,)
        assert res.exec_mask.all() or res.done
        assert res.reward == pytest.approx(float(res.rewards.sum()))
        # stops at the first done: with a 2-step limit only 2 sub-steps run
        short = make_single_env(dataclasses.replace(self.config, max_episode_steps=2))
        try:
            short.reset(seed=1)
            res = execute_chunk(short, np.zeros((5, *short.action_space.shape), np.float32))
            assert res.exec_mask.tolist() == [True, True, False, False, False]
            assert res.truncated and not res.terminated
        finally:
            short.close()

    def test_truncation_not_termination(self) -> None:
        env = self._short_env()
        try:
            env.reset(seed=2)
            for t in range(self.short_limit):
                _, _, terminated, truncated, info = env.step(self._zero_action(env))
                assert not terminated, "holding still must not end the episode by termination"
                assert truncated == (t == self.short_limit - 1)
        finally:
            env.close()

    def test_success_terminates(self, env: Any) -> None:
        solved = self.solve(env)
        if solved is None:
            pytest.skip("this wrapper provides no scripted solver")
        assert solved, "the scripted solver did not reach success"

    def test_bad_actions(self, env: Any) -> None:
        env.reset(seed=3)
        shape = env.action_space.shape
        with pytest.raises(ActionError, match="shape"):
            env.step(np.zeros((shape[0] + 1,), np.float32))
        with pytest.raises(ActionError, match="NaN"):
            env.step(np.full(shape, np.nan, np.float32))
        with pytest.raises(ActionError, match="NaN or inf"):
            env.step(np.full(shape, np.inf, np.float32))
        with pytest.raises(ActionError, match="float"):
            env.step(np.zeros(shape, np.int64))

    def test_gymnasium_env_checker(self) -> None:
        from gymnasium.utils.env_checker import check_env

        env = make_single_env(self.config)
        try:
            check_env(env, skip_render_check=True)
        finally:
            env.close()

    def test_close_is_idempotent(self) -> None:
        env = make_single_env(self.config)
        env.reset(seed=0)
        env.close()
        env.close()

    @pytest.mark.parametrize("subprocess", [False, True], ids=["inprocess", "subprocess"])
    def test_pool_autoreset(self, subprocess: bool) -> None:
        cfg = dataclasses.replace(self.config, num_envs=2, subprocess=subprocess, max_episode_steps=3)
        with EnvPool(cfg, seed=7) as pool:
            obs, infos = pool.reset()
            assert obs["images"].shape[:2] == (2, len(cfg.cameras))
            first = obs["proprio"].copy()
            ids0 = pool.episode_ids().copy()
            zeros = np.zeros((2, 5, *pool.single_action_space.shape), np.float32)
            res = pool.execute_chunk(zeros)
            assert res.exec_mask.sum(1).tolist() == [3, 3]
            assert res.truncated.all() and not res.terminated.any()
            assert (pool.episode_ids() == ids0 + 1).all()
            np.testing.assert_array_equal(res.episode_ids, ids0)
            # final_obs is the finished episode's last obs; obs the new episode's first
            assert not np.array_equal(res.final_obs["proprio"], res.obs["proprio"])
        with EnvPool(cfg, seed=7) as pool:
            obs, _ = pool.reset()
            np.testing.assert_array_equal(obs["proprio"], first)  # same seed -> same start
