"""GRPO: ``grpo.group_size`` rollouts from one initial state, each episode's advantage its return
normalised within the group, PPO's clipped ratio, no critic (settings: ``grpo``)."""

from __future__ import annotations

import numpy as np

from rlsys.learner.algorithms import Advantages, Algorithm, Loss, Minibatch, clipped_surrogate
from rlsys.learner.losses import grpo_advantages
from rlsys.types import Segment


class GRPO(Algorithm):
    uses_critic = False
    episodic = True  # one episode per env per segment: the group is env id // group size

    def advantages(self, segments: list[Segment], valid: list[np.ndarray]) -> tuple[list[Advantages],
                                                                                  dict[str, float]]:
        g = self.cfg.grpo
        out, groups, informative = [], 0, 0
        for seg, ok in zip(segments, valid):
            t, n = seg.shape
            returns = (seg.rewards.sum(-1) * seg.valid).sum(0)  # [N]: one episode per env
            group_ids = seg.env_ids // g.group_size
            ep_adv, signal = grpo_advantages(returns, group_ids)
            keep = signal if g.filter_groups else np.ones_like(signal)
            groups += len(np.unique(group_ids))
            informative += len(np.unique(group_ids[signal]))
            adv = np.broadcast_to(ep_adv, (t, n)).astype(np.float32)
            out.append(Advantages(adv, adv, ok & keep[None, :]))
        return out, ({"groups_informative": informative / groups} if groups else {})

    def loss(self, mb: Minibatch) -> Loss:
        g = self.cfg.grpo
        return clipped_surrogate(self, mb, g.clip_low, g.clip_high, g.entropy_coef)[1]
