"""Pure RL math: chunk-level GAE, GRPO group advantages, the clipped PPO and value losses (docs/algorithms.md).
The algorithms in ``rlsys.learner.algorithms`` call these; nothing here knows about configs or Ray."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def chunk_gae(
    rewards: np.ndarray, values: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
    bootstrap: np.ndarray, last_value: np.ndarray, gamma: float, lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE over T chunk-steps of N envs (time-major [T, N]); returns (advantages, returns).

    rewards: chunk rewards (sum of executed sub-step rewards). A chunk is done if any sub-step
    ended the episode; nothing flows past a done. On truncation (time limit) the value of the
    final observation is bootstrapped into the reward (``bootstrap``); on termination it is not.
    ``last_value`` is V of the observation after the last chunk-step.
    """
    t_len = rewards.shape[0]
    done = (terminated | truncated).astype(np.float32)
    r = rewards.astype(np.float32) + gamma * np.where(truncated & ~terminated, bootstrap, 0.0)
    adv = np.zeros_like(r)
    next_adv = np.zeros_like(last_value, dtype=np.float32)
    next_value = last_value.astype(np.float32)
    for t in reversed(range(t_len)):
        delta = r[t] + gamma * next_value * (1.0 - done[t]) - values[t]
        next_adv = delta + gamma * lam * (1.0 - done[t]) * next_adv
        adv[t] = next_adv
        next_value = values[t]
    return adv, adv + values.astype(np.float32)


def grpo_advantages(
    returns: np.ndarray, groups: np.ndarray, eps: float = 1e-6, filter_degenerate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Group-normalised episode advantages ``(R - mean_g) / (std_g + eps)``.

    returns, groups: [E] (one entry per episode). Returns (advantages [E], keep [E] bool); with
    ``filter_degenerate`` groups whose returns are all equal (success rate 0 or 1) are dropped.
    """
    adv = np.zeros_like(returns, dtype=np.float32)
    keep = np.ones(len(returns), bool)
    for g in np.unique(groups):
        m = groups == g
        r = returns[m].astype(np.float32)
        adv[m] = (r - r.mean()) / (r.std() + eps)
        if filter_degenerate and np.ptp(r) == 0:
            keep[m] = False
    return adv, keep


def normalize(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise over valid entries."""
    m = mask.float()
    n = m.sum().clamp_min(1.0)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return (x - mean) / (var.sqrt() + eps)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return (x * m).sum() / m.sum().clamp_min(1.0)


@dataclass
class PolicyLossStats:
    loss: torch.Tensor
    clip_fraction: float
    approx_kl: float
    ratio_mean: float
    ratio_max: float
    ratio_dev: float  # max |r - 1|: 0 (within fp32 noise) on the first minibatch of fresh samples


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
    clip_low: float, clip_high: float,
) -> PolicyLossStats:
    """``-mean(min(r A, clip(r, 1 - eps_lo, 1 + eps_hi) A))`` over valid entries."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = -masked_mean(torch.min(ratio * adv, clipped * adv), mask)
    with torch.no_grad():
        m = mask.bool()
        r = ratio[m] if m.any() else torch.ones(1)
        lr = log_ratio[m] if m.any() else torch.zeros(1)
        clip_frac = ((r < 1.0 - clip_low) | (r > 1.0 + clip_high)).float().mean().item()
        approx_kl = ((r - 1.0) - lr).mean().item()  # k3 estimator, >= 0
    return PolicyLossStats(loss, clip_frac, approx_kl, r.mean().item(), r.max().item(), (r - 1).abs().max().item())


def value_loss(
    value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
    clip: float, kind: str, huber_delta: float,
) -> torch.Tensor:
    """Clipped value loss (max of clipped/unclipped), Huber(delta) or 0.5 * MSE."""
    v_clipped = old_value + torch.clamp(value - old_value, -clip, clip) if clip > 0 else value

    def err(v: torch.Tensor) -> torch.Tensor:
        if kind == "huber":
            return torch.nn.functional.huber_loss(v, returns, reduction="none", delta=huber_delta)
        return 0.5 * (v - returns) ** 2

    return masked_mean(torch.max(err(value), err(v_clipped)), mask)
