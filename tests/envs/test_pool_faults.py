"""Simulator subprocesses that die (``kill -9``, a segfault) or hang past ``env.step_timeout_s`` are
replaced inside ``EnvPool.execute_chunk``: that env's episode comes back dropped (``bad``), counted,
and the pool keeps stepping every env."""

import os
import signal

import numpy as np
import pytest

from rlsys.config import EnvConfig
from rlsys.envs.pool import EnvPool


@pytest.mark.parametrize("fault", ["kill", "segfault", "hang", "dead_before_send"])
def test_a_dead_or_hung_simulator_is_replaced_and_its_episode_dropped(fault, capsys):
    """(dead_before_send: the process is gone before the next chunk is sent, so the send fails)"""
    cfg = EnvConfig(name="tabletop", tasks=("lift",), image_size=32, num_envs=2, subprocess=True,
                    step_timeout_s=3.0)
    with EnvPool(cfg, seed=0) as pool:
        pool.reset()
        zeros = np.zeros((2, 4, pool.embodiment.action_dim), np.float32)
        ids = pool.execute_chunk(zeros).episode_ids
        pid = pool._envs[1].proc.pid
        if fault == "kill":
            os.kill(pid, signal.SIGKILL)
        elif fault == "dead_before_send":
            os.kill(pid, signal.SIGKILL)
            pool._envs[1].proc.join(timeout=10)  # reaped: its pipe is closed before the send
        elif fault == "segfault":  # the process dies by itself, as a crashing simulator does
            os.kill(pid, signal.SIGSEGV)
        else:
            os.kill(pid, signal.SIGSTOP)  # alive, never answers (the pool's SIGKILL ends it after 3 s)
        res = pool.execute_chunk(zeros)
        assert res.bad.tolist() == [False, True] and res.truncated[1] and not res.success[1]
        assert res.episode_ids[0] == ids[0]  # env 0 carries on with its episode
        assert pool.restarts == 1 and pool.bad_episodes == 1 and pool._envs[1].proc.pid != pid
        assert "restarted (its episode is dropped; counted as rollout/sim_restarts" in capsys.readouterr().out
        nxt = pool.execute_chunk(zeros)  # the replacement steps a new episode
        assert not nxt.bad.any() and nxt.episode_ids[1] != ids[1] and nxt.exec_mask[1].all()
        assert all(np.isfinite(v).all() for v in nxt.obs.values() if v.dtype.kind == "f")


def test_recycle_every_replaces_simulators_at_episode_boundaries_without_changing_episodes():
    """env.recycle_every=2: after every 2nd episode each simulator process is replaced, and the new one
    starts the next episode from the same seed: the observations equal a pool that never recycles."""
    base = dict(name="tabletop", tasks=("lift",), image_size=32, num_envs=2, subprocess=True, max_episode_steps=4)
    with EnvPool(EnvConfig(**base, recycle_every=2), seed=3) as recycled, EnvPool(EnvConfig(**base), seed=3) as plain:
        np.testing.assert_array_equal(recycled.reset()[0]["images"], plain.reset()[0]["images"])
        pids = [e.proc.pid for e in recycled._envs]
        rng = np.random.default_rng(0)
        for _ in range(6):  # every chunk of 4 ends an episode (max_episode_steps=4)
            act = rng.uniform(-1, 1, (2, 4, recycled.embodiment.action_dim)).astype(np.float32)
            a, b = recycled.execute_chunk(act), plain.execute_chunk(act)
            assert a.terminated.tolist() == b.terminated.tolist() and a.truncated.tolist() == b.truncated.tolist()
            np.testing.assert_array_equal(a.obs["images"], b.obs["images"])  # the next episodes' first frames
            np.testing.assert_allclose(a.obs["proprio"], b.obs["proprio"], atol=1e-6)
            np.testing.assert_array_equal(a.episode_ids, b.episode_ids)
        assert recycled.recycled == 6 and recycled.restarts == 0  # 6 episodes x 2 envs / 2
        assert not {e.proc.pid for e in recycled._envs} & set(pids)


def test_recycle_every_needs_subprocess_envs():
    from rlsys.config import ConfigError

    with pytest.raises(ConfigError, match="recycle_every: got 5; allowed: 0 unless env.subprocess=true"):
        EnvConfig(name="tabletop", recycle_every=5)


def test_injected_nan_and_inf_drop_the_episode_and_the_simulator_goes_on(monkeypatch):
    """The chaos run's NaN/inf fault: with RLSYS_FAULT_INJECTION=1, SIGUSR1 makes a simulator's next step
    return a NaN observation and an inf reward. The pool drops that episode (``bad``, counted), resets the
    env and passes nothing non-finite on; the process is not replaced. Without the variable SIGUSR1 has
    no handler there (it would end the process), so the hook is off by default."""
    from rlsys.envs.pool import FAULT_INJECTION_ENV

    monkeypatch.setenv(FAULT_INJECTION_ENV, "1")
    cfg = EnvConfig(name="tabletop", tasks=("lift",), image_size=32, num_envs=2, subprocess=True)
    with EnvPool(cfg, seed=0) as pool:
        pool.reset()
        zeros = np.zeros((2, 4, pool.embodiment.action_dim), np.float32)
        ids = pool.execute_chunk(zeros).episode_ids
        pid = pool._envs[0].proc.pid
        os.kill(pid, signal.SIGUSR1)
        res = pool.execute_chunk(zeros)
        assert res.bad.tolist() == [True, False] and res.truncated[0] and not res.terminated[0]
        assert res.exec_mask[0].tolist() == [True, False, False, False]  # the chunk stopped at the bad step
        assert all(np.isfinite(v).all() for v in res.obs.values() if v.dtype.kind == "f")
        assert np.isfinite(res.rewards).all() and np.isfinite(res.final_obs["proprio"]).all()
        assert pool.bad_episodes == 1 and pool.restarts == 0 and pool._envs[0].proc.pid == pid
        nxt = pool.execute_chunk(zeros)  # a new episode on the same process
        assert not nxt.bad.any() and nxt.episode_ids[0] != ids[0] and nxt.episode_ids[1] == ids[1]
