"""Imitation of the policy's own successes (``rft``, ``ppo_rft``): the memory and the steps.

``SuccessMemory`` keeps the policy's own successful episodes, chunk by chunk.

An episode's outcome is known only when it ends, often in a later segment than its first chunks,
so chunks wait in ``pending`` (by global episode id) until their episode ends: on success every
chunk of it enters a FIFO of at most ``capacity`` chunks; on failure, time-out or a dropped
(invalid) chunk the episode is forgotten. With ``imitation.demos`` the SFT demos (every frame with
its next H actions) form a fixed ``base`` that batches draw from alongside the FIFO, uniformly over
both. The memory is part of a training checkpoint (``state`` / ``load_state``: the FIFO, the episodes
still pending and the sampling RNGs; the base is reloaded from the demos), so a resumed run or a
restarted learner imitates what the uninterrupted one would have.

``Imitation`` draws batches from it and fits them by flow matching, with the executed actions as
targets: as a loss term inside another algorithm's step (``loss``) or as steps of its own
(``steps``), at ``imitation.lr`` and with the backbone trained where ``imitation.train_backbone``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlsys.augment import random_shift
from rlsys.config import TrainConfig
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.types import Observation, Segment


@dataclass
class _Part:
    obs: Observation
    actions: np.ndarray  # [n, H, K] env-space executed chunk (padded channels 0)
    valid: np.ndarray  # [n, H] bool: sub-steps that ran


class SuccessMemory:
    def __init__(self, capacity: int, max_pending_iters: int = 8,
                 base: tuple[Observation, np.ndarray, np.ndarray] | None = None) -> None:
        self.capacity = capacity
        # fixed demo part (obs, actions [n, H, A<=K], valid [n, H]); never evicted, not in ``size``
        self.base = None if base is None else _Part(*base)
        self.base_size = 0 if base is None else len(base[1])
        self.max_pending_iters = max_pending_iters
        self.pending: dict[int, tuple[int, list[_Part]]] = {}  # episode id -> (last seen iteration, parts)
        self.parts: list[_Part] = []
        self.size = 0
        self.episodes_added = 0
        self._cat: _Part | None = None

    @property
    def available(self) -> int:
        """Chunks a batch can draw from: the FIFO's plus the base's."""
        return self.size + self.base_size

    def add(self, seg: Segment, iteration: int) -> None:
        t, n = seg.shape
        ids = seg.episode_ids.reshape(-1)
        valid = seg.valid.reshape(-1)
        ended = (seg.terminated | seg.truncated).reshape(-1)
        success = seg.success.reshape(-1)
        exec_mask = seg.exec_mask.reshape(t * n, -1)
        ran = exec_mask.any(-1)  # idle slots (an env waiting for the segment's end) ran nothing
        for eid in np.unique(ids[ran]):
            rows = np.flatnonzero((ids == eid) & ran)  # time-major: in chunk order
            if not valid[rows].all():  # a dropped episode (NaN/inf): never imitated
                self.pending.pop(int(eid), None)
                continue
            part = _Part(seg.obs.index(rows).without_keys(), np.array(seg.chunk.actions[rows]), exec_mask[rows].copy())
            _, parts = self.pending.pop(int(eid), (iteration, []))
            parts.append(part)
            if not ended[rows].any():
                self.pending[int(eid)] = (iteration, parts)
            elif success[rows].any():
                self._push(parts)
        for eid in [e for e, (it, _) in self.pending.items() if iteration - it > self.max_pending_iters]:
            del self.pending[eid]  # its end never arrived (a lost or rejected segment)

    def _push(self, parts: list[_Part]) -> None:
        self.parts.extend(parts)
        self.size += sum(len(p.actions) for p in parts)
        self.episodes_added += 1
        while self.size > self.capacity and len(self.parts) > 1:
            self.size -= len(self.parts.pop(0).actions)
        self._cat = None

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON scalars): the FIFO and the pending episodes as flat arrays (``fifo.*``,
        ``pending.*``, with their part lengths), for a checkpoint."""
        arrays: dict[str, np.ndarray] = {}
        pending = [(eid, it, part) for eid, (it, parts) in self.pending.items() for part in parts]
        for name, parts in (("fifo", self.parts), ("pending", [p for _, _, p in pending])):
            if not parts:
                continue
            for k, v in Observation.concat([p.obs for p in parts]).arrays().items():
                arrays[f"{name}.obs.{k}"] = v
            arrays[f"{name}.actions"] = np.concatenate([p.actions for p in parts])
            arrays[f"{name}.valid"] = np.concatenate([p.valid for p in parts])
            arrays[f"{name}.lengths"] = np.array([len(p.actions) for p in parts], np.int64)
        if pending:
            arrays["pending.episode"] = np.array([[eid, it] for eid, it, _ in pending], np.int64)
        return arrays, {"episodes_added": self.episodes_added, "size": self.size}

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        def parts(name: str) -> list[_Part]:
            if f"{name}.lengths" not in arrays:
                return []
            obs = Observation(**{k[len(name) + 5:]: np.array(v) for k, v in arrays.items()
                                 if k.startswith(f"{name}.obs.")})
            ends = np.cumsum(arrays[f"{name}.lengths"])
            return [_Part(obs.index(slice(a, b)), np.array(arrays[f"{name}.actions"][a:b]),
                          np.array(arrays[f"{name}.valid"][a:b])) for a, b in zip(np.r_[0, ends[:-1]], ends)]

        self.parts = parts("fifo")
        self.size = sum(len(p.actions) for p in self.parts)
        self.pending = {}
        for (eid, it), part in zip(arrays.get("pending.episode", np.zeros((0, 2), np.int64)).tolist(),
                                   parts("pending")):
            self.pending.setdefault(int(eid), (int(it), []))[1].append(part)
        self.episodes_added = int(scalars["episodes_added"])
        self._cat = None

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[Observation, np.ndarray, np.ndarray]:
        """-> (obs, actions [B, H, K], valid [B, H]) drawn uniformly with replacement from the base
        (if any) and the FIFO together."""
        if self.available == 0:
            raise ValueError("the self-imitation memory is empty")
        if self._cat is None:
            parts = ([] if self.base is None else [self.base]) + self.parts
            k = max(p.actions.shape[-1] for p in parts)  # demo actions are env-width: pad to the policy's K
            self._cat = _Part(Observation.concat([p.obs for p in parts]),
                              np.concatenate([np.pad(p.actions, ((0, 0), (0, 0), (0, k - p.actions.shape[-1])))
                                              for p in parts]).astype(np.float32),
                              np.concatenate([p.valid for p in parts]))
        idx = rng.integers(0, self.available, batch)
        return self._cat.obs.index(idx), self._cat.actions[idx], self._cat.valid[idx]


class Imitation:
    """Flow matching on ``SuccessMemory`` batches, sharing the learner's optimiser.

    ``policy_groups``: the optimiser's parameter groups of the policy (action expert, backbone), whose
    lr is ``imitation.lr`` during ``steps``; ``backbone_trains``: the backbone's setting outside them.
    """

    def __init__(self, cfg: TrainConfig, policy: FlowPolicy, optimizer: torch.optim.Optimizer,
                 policy_groups: list[dict], base: tuple[Observation, np.ndarray, np.ndarray] | None,
                 seed: int) -> None:
        self.cfg, self.policy, self.optimizer, self.policy_groups = cfg.imitation, policy, optimizer, policy_groups
        self.timestep_sampling = cfg.sft.timestep_sampling
        self.grad_clip = cfg.optim.grad_clip
        self.backbone_in_pg = cfg.optim.train_backbone
        self.memory = SuccessMemory(cfg.imitation.capacity, base=base)
        self.rng = np.random.default_rng(seed + 2)
        self.generator = torch.Generator().manual_seed(seed)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The memory and the batch-drawing RNG states, for a training checkpoint."""
        arrays, scalars = self.memory.state()
        gen = self.generator.get_state().numpy()
        return {**arrays, "generator": gen}, {**scalars, "rng": self.rng.bit_generator.state}

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        self.memory.load_state(arrays, scalars)
        self.rng.bit_generator.state = scalars["rng"]
        self.generator.set_state(torch.from_numpy(np.array(arrays["generator"])))

    def observe(self, segments: list[Segment], iteration: int) -> None:
        """Every finished episode counts, stale segments' too (imitation is off-policy)."""
        for seg in segments:
            self.memory.add(seg, iteration)

    @property
    def ready(self) -> bool:
        return self.memory.available > 0

    def loss(self) -> torch.Tensor:
        """The flow-matching loss on one batch of ``imitation.batch`` chunks from the memory."""
        obs, actions, valid = self.memory.sample(self.cfg.batch, self.rng)
        if self.cfg.image_shift:
            obs = dataclasses.replace(obs, images=random_shift(obs.images, self.cfg.image_shift, self.rng))
        return self.policy.sft_loss(obs, actions, valid, self.timestep_sampling, self.generator)

    def steps(self) -> dict[str, float]:
        """``imitation.steps`` optimiser steps on the imitation loss alone (none while the memory is
        empty); returns their metrics, ``sil_steps_run`` 0 where none ran."""
        t0 = time.perf_counter()
        losses, norms = [], []
        if self.ready:
            lrs = [g["lr"] for g in self.policy_groups]
            if self.cfg.lr:
                for g in self.policy_groups:
                    g["lr"] = self.cfg.lr
            self.policy.set_backbone_trainable(self.cfg.train_backbone or self.backbone_in_pg)
            try:
                for _ in range(self.cfg.steps):
                    loss, norm = self._step()
                    losses.append(loss)
                    norms.append(norm)
            finally:  # policy-gradient steps see their own backbone setting and lrs again
                self.policy.set_backbone_trainable(self.backbone_in_pg)
                for g, lr in zip(self.policy_groups, lrs):
                    g["lr"] = lr
        out = {"sil_steps_run": float(len(losses)), "sil_seconds": time.perf_counter() - t0,
               "sil_memory_chunks": float(self.memory.size), "sil_episodes": float(self.memory.episodes_added)}
        if losses:
            out.update(sil_loss=float(np.mean(losses)), sil_grad_norm=float(np.mean(norms)))
        return out

    def _step(self) -> tuple[float, float]:
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.policy_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        return loss.item(), float(norm)
