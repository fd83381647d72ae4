"""GRPO: ``grpo.group_size`` rollouts from one initial state, each episode's advantage its return
normalised within the group, PPO's clipped ratio, no critic (settings: ``grpo``)."""

from __future__ import annotations

import numpy as np
import torch

from rlsys.learner.algorithms import Advantages, Algorithm, Loss, Minibatch
from rlsys.learner.losses import grpo_advantages, masked_mean, ppo_policy_loss
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
        rc = self.policy.log_prob_and_value(mb.obs, mb.chain, mb.step_mask, mb.exec_mask, self.sampler,
                                            self.cfg.sampler.logprob, mb.prefix)
        mask = torch.ones_like(mb.advantages, dtype=torch.bool)
        pl = ppo_policy_loss(rc.logp, mb.old_logp, mb.advantages, mask, g.clip_low, g.clip_high)
        entropy = masked_mean(rc.entropy, mask)
        actor = pl.loss - g.entropy_coef * entropy if g.entropy_coef else pl.loss
        metrics = {"policy_loss": pl.loss.item(), "clip_fraction": pl.clip_fraction, "ratio_mean": pl.ratio_mean,
                   "ratio_max": pl.ratio_max, "entropy": entropy.item(), "first_ratio_dev": pl.ratio_dev}
        return Loss(actor=actor, critic=None, approx_kl=pl.approx_kl, metrics=metrics)
