"""Flow-matching math shared by rollout sampling and learner recompute (derivation: docs/algorithms.md).

Convention (pi0 style): ``x_t = t * eps + (1 - t) * a``, velocity target ``u = eps - a``;
sampling integrates from ``t = 1`` (noise) to ``t = 0`` (action) on the grid ``t_k = 1 - k/S``,
``x_{k+1} = x_k - dt * v(x_k, t_k)``. ``chain[:, 0]`` is the initial noise.

:func:`transition` is the one place that owns the time grid, the noise schedule, which steps are
stochastic, the channel mask and the dtype; ``FlowPolicy.sample`` and
``FlowPolicy.log_prob_and_value`` both call it, so sampling and recompute cannot disagree.
Samplers are strategy objects: ``ODE()``, ``FlowSDE(noise_level)``, ``FlowNoise(sigma_min, sigma_max)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from rlsys.registry import SAMPLERS

LOG_2PI = math.log(2 * math.pi)


def time_grid(num_steps: int) -> torch.Tensor:
    """``t_k = 1 - k / S`` for k = 0..S, float32 [S+1]."""
    return 1.0 - torch.arange(num_steps + 1, dtype=torch.float32) / num_steps


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise ``log N(x; mean, std^2)`` (std > 0)."""
    z = (x - mean) / std
    return -0.5 * z * z - torch.log(std) - 0.5 * LOG_2PI


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Element-wise entropy ``0.5 * log(2 pi e std^2)``."""
    return 0.5 * (LOG_2PI + 1.0) + torch.log(std)


def gaussian_kl(mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor
                ) -> torch.Tensor:
    """Element-wise ``KL(N(mean_p, std_p^2) || N(mean_q, std_q^2))`` (std > 0)."""
    return torch.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5


def flow_sde_step(
    x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, dt: float, noise_level: float, num_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-SDE transition with the ODE's marginals: returns (mean, std) of ``x_{k+1}``.

    ``sigma = a * sqrt(t / (1 - t))`` (at t = 1 the denominator is ``1 - t_1 = 1/S``),
    ``mean = x - dt v - sigma^2 dt / (2 t) * (x + (1 - t) v)``, ``std = sigma * sqrt(dt)``.
    With ``a = 0`` this is exactly the Euler step.
    """
    one_minus_t = torch.where(t >= 1.0, torch.full_like(t, 1.0 / num_steps), 1.0 - t)
    sigma = noise_level * torch.sqrt(t / one_minus_t)
    mean = x - dt * v - (sigma**2 * dt / (2 * t)) * (x + (1.0 - t) * v)
    return mean, sigma * math.sqrt(dt)


class Sampler:
    """Strategy for the denoising transitions. Subclasses set the stochastic-step choice and the
    (mean, std) of stochastic transitions; deterministic steps are always the Euler step."""

    noise_level: float = 0.0
    needs_noise_head = False

    @classmethod
    def from_config(cls, cfg) -> Sampler:  # cfg: rlsys.config.SamplerConfig
        return cls()

    def step_mask(self, batch: int, num_steps: int, generator: torch.Generator | None) -> torch.Tensor:
        """[B, S] bool: which transitions are stochastic for each sample."""
        return torch.zeros(batch, num_steps, dtype=torch.bool)

    @classmethod
    def required_heads(cls) -> dict[str, str]:
        """The ``PolicyConfig`` flags this sampler needs set -> what each adds to the policy."""
        return {"noise_head": "a noise head (the Flow-Noise std)"} if cls.needs_noise_head else {}

    def num_stochastic(self, step_mask):
        """[B, S] step mask (numpy or torch) -> [B]: stochastic transitions per sample."""
        return step_mask.sum(1)

    def stochastic(
        self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, dt: float, num_steps: int,
        noise_h: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of a stochastic transition; ``noise_h`` is the policy's noise-head output."""
        raise NotImplementedError


@dataclass(frozen=True)
class ODE(Sampler):
    """Deterministic Euler integration (evaluation)."""


@dataclass(frozen=True)
class FlowSDE(Sampler):
    """One stochastic transition per sample, its index drawn uniformly (optionally never the last)
    and stored with the chain."""

    noise_level: float = 0.5
    exclude_last_step: bool = False

    @classmethod
    def from_config(cls, cfg) -> Sampler:
        return cls(noise_level=cfg.noise_level, exclude_last_step=cfg.exclude_last_step)

    def step_mask(self, batch: int, num_steps: int, generator: torch.Generator | None) -> torch.Tensor:
        high = num_steps - 1 if self.exclude_last_step and num_steps > 1 else num_steps
        k = torch.randint(0, high, (batch,), generator=generator)
        return torch.nn.functional.one_hot(k, num_steps).bool()

    def stochastic(self, x, v, t, dt, num_steps, noise_h):
        return flow_sde_step(x, v, t, dt, self.noise_level, num_steps)


@dataclass(frozen=True)
class FlowNoise(Sampler):
    """Every transition stochastic; std from the policy's learned noise head."""

    sigma_min: float = 0.08
    sigma_max: float = 0.16
    needs_noise_head = True

    @classmethod
    def from_config(cls, cfg) -> Sampler:
        return cls(sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)

    def step_mask(self, batch: int, num_steps: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.ones(batch, num_steps, dtype=torch.bool)

    def log_var(self, h: torch.Tensor) -> torch.Tensor:
        """``l = lmin + (lmax - lmin) (tanh(h) + 1) / 2`` with ``l = log sigma^2``."""
        lmin, lmax = 2 * math.log(self.sigma_min), 2 * math.log(self.sigma_max)
        return lmin + (lmax - lmin) * (torch.tanh(h) + 1.0) / 2.0

    def stochastic(self, x, v, t, dt, num_steps, noise_h):
        if noise_h is None:
            raise ValueError("FlowNoise needs the policy's noise head (policy.noise_head: true)")
        return x - dt * v, torch.exp(self.log_var(noise_h.float()) / 2.0)


def transition(
    sampler: Sampler,
    x: torch.Tensor,
    v: torch.Tensor,
    k: torch.Tensor,
    num_steps: int,
    stochastic: torch.Tensor,
    channel_mask: torch.Tensor,
    noise_h: torch.Tensor | None = None,
    grid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of ``x_{k+1}`` given ``x = x_k`` and ``v = v(x_k, t_k)``, all float32.

    x, v: [M, H, K]; k: [M] step indices; stochastic: [M] bool; channel_mask: [M, K] bool;
    grid: ``time_grid(num_steps)`` already on x's device (else made here).
    Deterministic steps (and padded channels) get the Euler mean and std 0. No host sync and no
    branch on tensor values: a CUDA graph can capture it.
    """
    x, v = x.float(), v.float()
    t = (time_grid(num_steps).to(x.device) if grid is None else grid)[k].view(-1, 1, 1)
    dt = 1.0 / num_steps
    euler = x - dt * v
    if type(sampler).stochastic is Sampler.stochastic:  # a sampler with no stochastic transitions (ODE)
        return euler, torch.zeros_like(x)
    mean_s, std_s = sampler.stochastic(x, v, t, dt, num_steps, noise_h)
    std_s = torch.broadcast_to(std_s, x.shape)
    on = stochastic.view(-1, 1, 1) & channel_mask.view(channel_mask.shape[0], 1, -1)
    mean = torch.where(stochastic.view(-1, 1, 1), mean_s, euler)
    std = torch.where(on, std_s, torch.zeros_like(std_s))
    return mean, std


def reduce_log_prob(
    logp_steps: torch.Tensor,
    exec_mask: torch.Tensor,
    action_dim: torch.Tensor,
    num_stochastic: torch.Tensor,
    mode: Literal["chunk_level", "token_level"],
) -> torch.Tensor:
    """Chunk log-prob from per-horizon-step sums ``logp_steps [B, H]``.

    chunk_level: sum over executed horizon steps (real channels, stochastic steps);
    token_level: that sum divided by the number of summed elements
    (executed steps x action_dim x stochastic steps). Rollout and learner both call this.
    """
    total = (logp_steps * exec_mask.float()).sum(-1)
    if mode == "chunk_level":
        return total
    count = exec_mask.float().sum(-1) * action_dim.float() * num_stochastic.float()
    return total / count.clamp_min(1.0)


def build_sampler(cfg) -> Sampler:  # cfg: rlsys.config.SamplerConfig
    """Build the sampler strategy named in ``cfg`` through the registry."""

    return SAMPLERS.get(cfg.name).from_config(cfg)
