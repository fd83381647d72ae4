"""Self-imitation memory (``algo.sil_coef``): the policy's own successful episodes, chunk by chunk.

An episode's outcome is known only when it ends, often in a later segment than its first chunks,
so chunks wait in ``pending`` (by global episode id) until their episode ends: on success every
chunk of it enters a FIFO of at most ``capacity`` chunks; on failure, time-out or a dropped
(invalid) chunk the episode is forgotten. The learner adds a flow-matching loss on batches drawn
from the FIFO, with the executed actions as targets (the measured signal of
``benchmarks/self_imitation.py``). The memory is not checkpointed: a resumed run refills it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlsys.types import Observation, Segment


@dataclass
class _Part:
    obs: Observation
    actions: np.ndarray  # [n, H, K] env-space executed chunk (padded channels 0)
    valid: np.ndarray  # [n, H] bool: sub-steps that ran


class SuccessMemory:
    def __init__(self, capacity: int, max_pending_iters: int = 8) -> None:
        self.capacity = capacity
        self.max_pending_iters = max_pending_iters
        self.pending: dict[int, tuple[int, list[_Part]]] = {}  # episode id -> (last seen iteration, parts)
        self.parts: list[_Part] = []
        self.size = 0
        self.episodes_added = 0
        self._cat: _Part | None = None

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
            part = _Part(seg.obs.index(rows), np.array(seg.chunk.actions[rows]), exec_mask[rows].copy())
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

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[Observation, np.ndarray, np.ndarray]:
        """-> (obs, actions [B, H, K], valid [B, H]) drawn uniformly with replacement."""
        if self.size == 0:
            raise ValueError("the self-imitation memory is empty")
        if self._cat is None:
            self._cat = _Part(Observation.concat([p.obs for p in self.parts]),
                              np.concatenate([p.actions for p in self.parts]),
                              np.concatenate([p.valid for p in self.parts]))
        idx = rng.integers(0, self.size, batch)
        return self._cat.obs.index(idx), self._cat.actions[idx], self._cat.valid[idx]
