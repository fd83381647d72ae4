"""``EnvWorkerCore``: owns env pools and turns policy chunks into ``Segment``s.

Plain class (tests construct it in-process); ``rlsys.actors.system`` wraps it in a Ray actor.
Inference is reached through two callables, ``submit(obs) -> handle`` and ``wait(handle) ->
ActionChunk`` (Ray: ``actor.infer.remote`` / ``ray.get``), so with two or more env groups one
group steps its simulators while the other group's observations are being inferred.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rlsys.config import TrainConfig
from rlsys.envs.pool import EnvPool, PoolChunk
from rlsys.prompt import ObservationBuilder
from rlsys.types import ActionChunk, Observation, Segment

Submit = Callable[[Observation], Any]
Wait = Callable[[Any], ActionChunk]

_MASK63 = np.uint64(2**63 - 1)


def noise_keys(seed: int, episode_ids: np.ndarray, chunk_index: np.ndarray) -> np.ndarray:
    """[N] int64 seeds for the sampler noise of N observations: a splitmix64-style hash of (run seed,
    episode id, chunk index in the episode). Distinct episodes and chunks get unrelated keys."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15)
        for part in (episode_ids, chunk_index):
            x = (x ^ np.asarray(part).astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
            x ^= x >> np.uint64(31)
            x = x * np.uint64(0x94D049BB133111EB)
            x ^= x >> np.uint64(29)
    return (x & _MASK63).astype(np.int64)


class EnvWorkerCore:
    def __init__(self, cfg: TrainConfig, worker_index: int, episodic: bool = False) -> None:
        self.cfg, self.index, self.episodic = cfg, worker_index, episodic
        n, groups = cfg.env.num_envs, cfg.rollout.env_groups
        if n % groups:
            raise ValueError(f"env.num_envs={n} must be divisible by rollout.env_groups={groups}")
        per = n // groups
        base = worker_index * n
        grpo_g = cfg.grpo.group_size
        self.pools = []
        for g in range(groups):
            ids = np.arange(base + g * per, base + (g + 1) * per)
            # GRPO: envs of one seed group start every episode from the same state
            seed_groups = list(ids // grpo_g) if episodic else None
            self.pools.append(EnvPool(cfg.env, seed=cfg.seed, num_envs=per, env_id_offset=int(ids[0]),
                                      seed_groups=seed_groups))
        self.embodiment = self.pools[0].embodiment
        self.builder = ObservationBuilder(cfg.policy, self.embodiment)
        self._obs: list[dict[str, np.ndarray] | None] = [None] * groups
        self._chunk_index = [np.zeros(per, np.int64) for _ in range(groups)]  # chunks into each env's episode
        self.env_steps = 0
        self.episodes_done = 0
        self.successes = 0

    def _observation(self, g: int) -> Observation:
        obs = self._obs[g]
        assert obs is not None
        pool = self.pools[g]
        keys = noise_keys(self.cfg.seed, pool.episode_ids(), self._chunk_index[g])
        return dataclasses.replace(self.builder(obs["images"], obs["proprio"], pool.instructions), noise_key=keys)

    def _advance(self, g: int, before: np.ndarray) -> None:
        """After a chunk: each env's chunk index goes on, or starts again where a new episode began."""
        self._chunk_index[g] = np.where(self.pools[g].episode_ids() == before, self._chunk_index[g] + 1, 0)

    def rollout(self, submit: Submit, wait: Wait, values: Callable[[Observation], np.ndarray],
                iteration: int | None = None) -> Segment:
        """Collect one segment: T chunk-steps (PPO), or one full episode per env (episodic/GRPO).

        Episodic: every env starts its episode number ``iteration`` (its seed), so a seeded run's
        iteration k sees the same start states and the same sampler noise however it got there."""
        h = self.cfg.policy.exec_horizon  # actions run per chunk; the rest are masked out of the log-probs
        groups = len(self.pools)
        if self.episodic or any(o is None for o in self._obs):
            for g, pool in enumerate(self.pools):
                self._obs[g] = pool.reset(episode=iteration if self.episodic else None)[0]
                self._chunk_index[g][:] = 0
        max_chunks = -(-self.pools[0].max_episode_steps // h) + 1
        t_len = max_chunks if self.episodic else self.cfg.rollout.chunks_per_segment
        done = [np.zeros(p.num_envs, bool) for p in self.pools]
        rec: list[list[tuple[Observation, ActionChunk, PoolChunk, np.ndarray]]] = [[] for _ in range(groups)]
        pending = [submit(self._observation(g)) for g in range(groups)]
        for t in range(t_len):
            for g, pool in enumerate(self.pools):
                obs = self._observation(g)
                chunk = wait(pending[g])
                active = ~done[g]
                res = pool.execute_chunk(chunk.actions[:, :, : self.embodiment.action_dim],
                                         lengths=np.where(active, h, 0), autoreset=not self.episodic)
                rec[g].append((obs, chunk, res, active))
                self._obs[g] = res.obs
                self._advance(g, res.episode_ids)
                if self.episodic:
                    done[g] |= res.terminated | res.truncated
                last = t == t_len - 1 or (self.episodic and all(d.all() for d in done))
                if not last:
                    pending[g] = submit(self._observation(g))
            if self.episodic and all(d.all() for d in done):
                break
        return self._segment(rec, values)

    def _segment(self, rec: list[list[Any]], values: Callable[[Observation], np.ndarray]) -> Segment:
        t_len = min(len(r) for r in rec)
        # stack groups side by side: [T, N]
        obs = [Observation.concat([rec[g][t][0] for g in range(len(rec))]) for t in range(t_len)]
        chunks = [ActionChunk.concat([rec[g][t][1] for g in range(len(rec))]) for t in range(t_len)]
        res = [[rec[g][t][2] for g in range(len(rec))] for t in range(t_len)]
        active = np.stack([np.concatenate([rec[g][t][3] for g in range(len(rec))]) for t in range(t_len)])

        def cat(f: Callable[[PoolChunk], np.ndarray]) -> np.ndarray:
            return np.stack([np.concatenate([f(r) for r in row]) for row in res])

        terminated, truncated = cat(lambda r: r.terminated), cat(lambda r: r.truncated)
        bad = cat(lambda r: r.bad)
        episode_ids = cat(lambda r: r.episode_ids)
        exec_mask = cat(lambda r: r.exec_mask)
        # bootstrap V(final obs) where the time limit cut an episode (one batched value call)
        bootstrap = np.zeros(terminated.shape, np.float32)
        trunc_idx = np.argwhere(truncated & ~terminated & ~bad)
        if len(trunc_idx):
            # the finished episode's last frame, with the prompt tokens of that episode
            rows = [obs[t].index(np.array([i])) for t, i in trunc_idx]
            finals = [self._locate(i) for _, i in trunc_idx]
            images = np.stack([rec[g][t][2].final_obs["images"][j] for (t, _), (g, j) in zip(trunc_idx, finals)])
            proprio = np.stack([rec[g][t][2].final_obs["proprio"][j] for (t, _), (g, j) in zip(trunc_idx, finals)])
            head = Observation.concat(rows)
            fobs = self.builder(images, proprio, [""] * len(rows))
            fobs = dataclasses.replace(fobs, tokens=head.tokens, token_mask=head.token_mask)
            bootstrap[trunc_idx[:, 0], trunc_idx[:, 1]] = values(fobs)
        last_obs = Observation.concat([self._observation(g) for g in range(len(rec))])
        last_value = values(last_obs).astype(np.float32)
        valid = active & exec_mask.any(-1)
        for t, i in np.argwhere(bad):  # drop the whole episode that produced NaN/inf
            valid[episode_ids[:, i] == episode_ids[t, i], i] = False
        self.env_steps += int(exec_mask.sum())
        ended = (terminated | truncated) & valid
        self.episodes_done += int(ended.sum())
        self.successes += int((cat(lambda r: r.success) & ended).sum())
        return Segment(
            obs=Observation.concat(obs),
            chunk=ActionChunk.concat(chunks),
            versions=np.stack([np.concatenate([np.full(rec[g][t][1].batch_size, rec[g][t][1].version)
                                               for g in range(len(rec))]) for t in range(t_len)]).astype(np.int64),
            rewards=cat(lambda r: r.rewards).astype(np.float32),
            exec_mask=exec_mask,
            terminated=terminated,
            truncated=truncated,
            success=cat(lambda r: r.success),
            bootstrap_value=bootstrap,
            last_value=last_value,
            episode_ids=episode_ids,
            env_ids=np.concatenate([p.env_ids for p in self.pools]),
            valid=valid,
        )

    def _locate(self, i: int) -> tuple[int, int]:
        per = self.pools[0].num_envs
        return int(i // per), int(i % per)

    def null_rollout(self, chunks: int) -> tuple[int, float]:
        """Step every env with zero actions for ``chunks`` chunk-steps (no policy): the simulator's own
        speed on this worker. Returns (env steps, seconds)."""
        h = self.cfg.policy.exec_horizon
        for g, pool in enumerate(self.pools):
            if self._obs[g] is None:
                self._obs[g] = pool.reset()[0]
        t0, steps = time.perf_counter(), 0
        for _ in range(chunks):
            for pool in self.pools:
                res = pool.execute_chunk(np.zeros((pool.num_envs, h, self.embodiment.action_dim), np.float32))
                steps += int(res.exec_mask.sum())
        return steps, time.perf_counter() - t0

    def stats(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "episodes": self.episodes_done, "successes": self.successes,
                "restarts": sum(p.restarts for p in self.pools),
                "recycled": sum(p.recycled for p in self.pools),
                "bad_episodes": sum(p.bad_episodes for p in self.pools)}

    def close(self) -> None:
        for p in self.pools:
            p.close()


