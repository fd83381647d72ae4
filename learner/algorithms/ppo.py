"""PPO on the stored denoising transitions: chunk-level GAE, the clipped ratio of the recomputed
Gaussian log-probs, a clipped value loss (settings: ``ppo``)."""

from __future__ import annotations

import numpy as np
import torch

from rlsys.learner.algorithms import Advantages, Algorithm, Loss, Minibatch, clipped_surrogate
from rlsys.learner.losses import chunk_gae, normalize, value_loss
from rlsys.types import Segment


class PPO(Algorithm):
    def advantages(self, segments: list[Segment], valid: list[np.ndarray]) -> tuple[list[Advantages],
                                                                                  dict[str, float]]:
        p = self.cfg.ppo
        out = []
        for seg, ok in zip(segments, valid):
            t, n = seg.shape
            boot = seg.bootstrap_value if p.bootstrap_truncated else np.zeros_like(seg.bootstrap_value)
            adv, ret = chunk_gae(seg.rewards.sum(-1), seg.chunk.value.reshape(t, n), seg.terminated,
                                 seg.truncated, boot, seg.last_value, p.gamma, p.lam)
            out.append(Advantages(adv, ret, ok))
        if p.adv_norm and out:  # over every valid chunk-step of the update
            adv = torch.from_numpy(np.concatenate([a.advantages.reshape(-1) for a in out]))
            mask = torch.from_numpy(np.concatenate([a.valid.reshape(-1) for a in out]))
            flat = normalize(adv, mask).numpy()
            start = 0
            for a in out:
                a.advantages = flat[start: start + a.advantages.size].reshape(a.advantages.shape)
                start += a.advantages.size
        return out, {}

    def loss(self, mb: Minibatch) -> Loss:
        p = self.cfg.ppo
        rc, out = clipped_surrogate(self, mb, p.clip_low, p.clip_high, p.entropy_coef)
        critic = self.critic_loss(rc.value, mb)
        out.critic = critic.critic
        out.metrics.update(critic.metrics)
        return out

    def critic_loss(self, value: torch.Tensor, mb: Minibatch) -> Loss:
        p = self.cfg.ppo
        mask = torch.ones_like(value, dtype=torch.bool)
        vl = value_loss(value, mb.old_value, mb.returns, mask, p.value_clip, p.value_loss, p.huber_delta)
        return Loss(actor=torch.zeros((), device=value.device), critic=p.value_coef * vl, approx_kl=0.0,
                    metrics={"value_loss": vl.item()})
