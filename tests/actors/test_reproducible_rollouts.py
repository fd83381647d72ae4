"""What makes a seeded run reproducible, piece by piece (no Ray): a row's sampler noise comes from its
own key, so it does not depend on which rows share its inference batch; episodic rollouts start
iteration k from the same states and noise however the worker got there (a fresh worker after a
resume, or one that ran iterations 0..k-1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kit import core_and_engine, small_cfg

from rlsys.actors.env_worker import EnvWorkerCore, noise_keys
from rlsys.types import ContractError


def test_noise_keys_are_distinct_and_depend_on_every_part():
    ids = np.arange(6, dtype=np.int64) * 1_000_000
    keys = noise_keys(0, ids, np.zeros(6, np.int64))
    assert keys.dtype == np.int64 and (keys >= 0).all() and len(set(keys.tolist())) == 6
    assert not np.array_equal(keys, noise_keys(1, ids, np.zeros(6, np.int64)))  # the run seed
    assert not np.array_equal(keys, noise_keys(0, ids, np.ones(6, np.int64)))  # the chunk in the episode
    assert not np.array_equal(keys, noise_keys(0, ids + 1, np.zeros(6, np.int64)))  # the episode
    np.testing.assert_array_equal(keys, noise_keys(0, ids, np.zeros(6, np.int64)))


def test_a_rows_noise_does_not_depend_on_its_batch(tmp_path):
    cfg = small_cfg(tmp_path, "env.num_envs=4")
    core, engine = core_and_engine(cfg)
    try:
        core.pools[0].reset()
        core._obs[0] = core.pools[0].reset()[0]
        obs = core._observation(0)
    finally:
        core.close()
    assert obs.noise_key is not None and obs.noise_key.shape == (4,)
    whole = engine.infer(obs)
    for i in range(4):  # each row alone, then the rows in another order
        alone = engine.infer(obs.index(slice(i, i + 1)))
        np.testing.assert_array_equal(alone.chain[0, 0], whole.chain[i, 0])  # the initial noise
        np.testing.assert_array_equal(alone.step_mask[0], whole.step_mask[i])  # the stochastic step
        np.testing.assert_allclose(alone.chain[0], whole.chain[i], atol=1e-5)
    flipped = engine.infer(obs.index(np.array([3, 2, 1, 0])))
    np.testing.assert_allclose(flipped.chain[::-1], whole.chain, atol=1e-5)
    # without keys the worker's own generator draws: another call, other noise
    bare = obs.without_keys()
    assert not np.array_equal(engine.infer(bare).chain[:, 0], engine.infer(bare).chain[:, 0])


def test_noise_keys_travel_with_the_rows(tmp_path):
    cfg = small_cfg(tmp_path)
    core, _ = core_and_engine(cfg)
    try:
        core._obs[0] = core.pools[0].reset()[0]
        obs = core._observation(0)
    finally:
        core.close()
    from rlsys.types import Observation

    np.testing.assert_array_equal(obs.index(np.array([1])).noise_key, obs.noise_key[1:])
    np.testing.assert_array_equal(Observation.concat([obs, obs]).noise_key, np.tile(obs.noise_key, 2))
    assert Observation.concat([obs, obs.without_keys()]).noise_key is None  # only where every part has keys
    with pytest.raises(ContractError, match="Observation.noise_key: expected dtype int64"):
        Observation(**{**obs.arrays(), "noise_key": obs.noise_key.astype(np.int32)})


def test_episodic_iteration_k_is_the_same_on_a_fresh_worker(tmp_path):
    """Iteration 2 collected by a worker that ran iterations 0 and 1, and by a fresh one (as after a
    resume): the same start states, actions, rewards and denoising chains."""
    cfg = small_cfg(tmp_path, "algo.name=grpo", "grpo.group_size=2")
    torch.manual_seed(0)
    veteran, engine = core_and_engine(cfg, episodic=True)
    fresh = EnvWorkerCore(cfg, 0, episodic=True)
    try:
        first = [veteran.rollout(engine.infer, lambda c: c, engine.values, iteration=i) for i in range(3)]
        again = fresh.rollout(engine.infer, lambda c: c, engine.values, iteration=2)
    finally:
        veteran.close()
        fresh.close()
    a, b = first[2], again
    np.testing.assert_array_equal(a.obs.images, b.obs.images)
    np.testing.assert_array_equal(a.episode_ids, b.episode_ids)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    np.testing.assert_array_equal(a.success, b.success)
    np.testing.assert_allclose(a.chunk.chain, b.chunk.chain, atol=1e-5)
    # GRPO's group shares a start state, not its noise; other iterations start elsewhere
    np.testing.assert_array_equal(a.obs.images[0], a.obs.images[1])
    assert not np.array_equal(a.chunk.chain[0, 0], a.chunk.chain[1, 0])
    assert not np.array_equal(first[1].chunk.chain[:, 0], a.chunk.chain[:, 0])
