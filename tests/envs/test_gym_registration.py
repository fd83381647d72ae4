"""gymnasium sees every rlsys env as ``rlsys/<Name>-v0``: ``gymnasium.make`` and ``make_vec`` build
them, gymnasium's env checker passes with no warnings, third-party envs registered with rlsys appear."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rlsys.envs.gym import gym_id, register_envs
from rlsys.registry import ENVS


def test_every_env_has_a_gymnasium_id():
    ids = register_envs()
    assert ids == [gym_id(n) for n in ENVS.names()]
    assert {"rlsys/Tabletop-v0", "rlsys/LiberoSpatial-v0", "rlsys/SimplerBridge-v0", "rlsys/RoboTwin-v0"} <= set(ids)
    assert all(i in gym.registry for i in ids)


def checked(env_id: str, **kwargs) -> None:
    """make (with gymnasium's passive checker), reset and step, then the full checker: no warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gym.make(env_id, **kwargs)
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs) and "instruction" in info
        env.step(env.action_space.sample())
        check_env(env.unwrapped)
        env.close()
    ours = [str(w.message) for w in caught if "gymnasium" in w.filename or "rlsys" in str(w.filename)]
    assert not ours, ours


def test_tabletop_through_gymnasium_make_passes_the_env_checker():
    checked("rlsys.envs:rlsys/Tabletop-v0", tasks=["lift"], image_size=32)


def test_make_vec_steps_a_batch():
    envs = gym.make_vec("rlsys/Tabletop-v0", num_envs=2, vectorization_mode="sync", tasks=["lift"], image_size=32)
    obs, _ = envs.reset(seed=0)
    assert obs["images"].shape == (2, 2, 32, 32, 3) and obs["proprio"].shape == (2, 8)
    obs, reward, terminated, truncated, _ = envs.step(np.zeros((2, 7), np.float32))
    assert reward.shape == terminated.shape == truncated.shape == (2,)
    envs.close()


def test_libero_through_gymnasium_make_passes_the_env_checker():
    pytest.importorskip("libero", reason="the libero extra")
    checked("rlsys/LiberoSpatial-v0", tasks=["0"], image_size=32)


def test_a_third_party_env_registered_with_rlsys_appears_in_gymnasium(monkeypatch):
    monkeypatch.setitem(ENVS._entries, "my_tabletop", "rlsys.envs.tabletop.env:make_env")
    try:
        assert "rlsys/MyTabletop-v0" in register_envs()
        env = gym.make("rlsys/MyTabletop-v0", tasks=["lift"], image_size=32)
        assert env.reset(seed=1)[0]["images"].shape == (2, 32, 32, 3)
        env.close()
    finally:
        gym.registry.pop("rlsys/MyTabletop-v0", None)
