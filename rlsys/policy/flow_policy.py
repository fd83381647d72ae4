"""``FlowPolicy`` = a policy model (``policy.model``: rlsys's tiny one, pi0, pi0.5) + value head
(+ noise head for Flow-Noise), the samplers' denoising loop and the learner's recompute around it.

The plug-in surface is three methods: ``sample(obs, sampler) -> ActionChunk`` (rollout, keeps
every denoising state), ``log_prob_and_value(...)`` (learner recompute from stored chains) and
``sft_loss(...)`` (masked per-channel flow matching). Actions live in a normalised, zero-padded
K-channel space inside the policy; ``ActionChunk.actions`` are env-space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlsys import flow  # sampling and recompute both go through flow.time_grid / flow.transition
from rlsys.config import PolicyConfig
from rlsys.flow import Sampler, gaussian_entropy, gaussian_log_prob, reduce_log_prob
from rlsys.policy.lora import apply_lora
from rlsys.policy.model import Context, PolicyModel
from rlsys.registry import MODELS
from rlsys.types import ActionChunk, ContractError, Observation


@dataclass
class Recompute:
    """Learner-side recompute for a batch (torch, differentiable): logp/value/entropy [B]."""

    logp: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor


@dataclass
class Transitions:
    """The stored stochastic transitions of a batch under one policy's weights.

    rows [M] (batch row of each transition), x_next / mean / std / on [M, H, K]; std is 1 on
    padded channels (``on`` False) so every element-wise Gaussian term stays finite there.
    """

    rows: torch.Tensor
    x_next: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    on: torch.Tensor
    prefix: Context
    action_dim: torch.Tensor  # [B]
    num_stochastic: torch.Tensor  # [B] stochastic steps per sample


class AttentionPoolValue(nn.Module):
    """V(prefix): one learned query attends over the (masked) prefix tokens, then an MLP.

    The mean over all prefix tokens mixes the 48 text tokens in with the image and proprio tokens
    and gives the critic one fixed view of them; the query picks what predicts the return.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.query.expand(tokens.shape[0], -1, -1)
        out, _ = self.attn(q, tokens, tokens, key_padding_mask=~mask, need_weights=False)
        return self.mlp(out[:, 0]).squeeze(-1)


class FlowPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k = cfg.action_channels
        self.model: PolicyModel = MODELS.build(cfg.model, cfg)
        self.lora_frozen = apply_lora(self.model, cfg) if cfg.lora_rank else set()
        w = self.model.width
        if self.model.horizon != cfg.action_horizon or self.model.channels != k:
            raise ContractError(f"policy.model {cfg.model!r} predicts [{self.model.horizon}, {self.model.channels}] "
                                f"chunks; policy.action_horizon / action_channels are {cfg.action_horizon} / {k}")
        heads = cfg.heads if w % cfg.heads == 0 else 1
        self.value_head: nn.Module = (AttentionPoolValue(w, heads) if cfg.critic == "attention"
                                      else nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, 1)))
        self.noise_head = nn.Linear(self.model.feature_width, k) if cfg.noise_head else None
        if self.noise_head is not None:
            nn.init.zeros_(self.noise_head.weight)
            nn.init.zeros_(self.noise_head.bias)
        # normalisation statistics (buffers: saved with the weights, moved with .to(device))
        self.action_mean: torch.Tensor
        self.action_std: torch.Tensor
        self.proprio_mean: torch.Tensor
        self.proprio_std: torch.Tensor
        self.register_buffer("action_mean", torch.zeros(k))
        self.register_buffer("action_std", torch.ones(k))
        self.register_buffer("proprio_mean", torch.zeros(cfg.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(cfg.proprio_dim))
        self.freeze()

    def freeze(self) -> None:
        """``policy.freeze``: those parts of the model never train (SFT, RL, imitation steps)."""
        parts = self.model.parts()
        for name in self.cfg.freeze:
            for p in parts[name]:
                p.requires_grad_(False)

    def set_backbone_trainable(self, on: bool) -> None:
        """Switch the backbone's gradients (the learner's ``optim.train_backbone``, imitation steps);
        frozen parts stay frozen."""
        parts = self.model.parts()
        for name in ("vision", "language"):
            for p in parts[name]:
                p.requires_grad_(on and name not in self.cfg.freeze and id(p) not in self.lora_frozen)

    def frozen_ids(self) -> set[int]:
        """Parameters no optimizer may hold: policy.freeze'd parts, the weights of LoRA-adapted parts."""
        parts = self.model.parts()
        return {id(p) for name in self.cfg.freeze for p in parts[name]} | self.lora_frozen

    # ------------------------------------------------------------------ normalisation
    def set_normalization(self, action_mean: np.ndarray, action_std: np.ndarray,
                          proprio_mean: np.ndarray, proprio_std: np.ndarray) -> None:
        """Per-channel stats of one dataset (shorter vectors are padded with mean 0 / std 1)."""
        for name, vec, size in (("action_mean", action_mean, self.cfg.action_channels),
                                ("action_std", action_std, self.cfg.action_channels),
                                ("proprio_mean", proprio_mean, self.cfg.proprio_dim),
                                ("proprio_std", proprio_std, self.cfg.proprio_dim)):
            vec = np.asarray(vec, np.float32)
            if vec.shape[0] > size:
                raise ContractError(f"{name}: {vec.shape[0]} channels exceed the policy's {size}")
            buf = torch.zeros(size) if name.endswith("mean") else torch.ones(size)
            buf[: vec.shape[0]] = torch.from_numpy(vec)
            getattr(self, name).copy_(buf)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """env-space [..., A] -> normalised, zero-padded [..., K]."""
        pad = self.cfg.action_channels - actions.shape[-1]
        if pad < 0:
            raise ContractError(f"actions have {actions.shape[-1]} channels, policy has {self.cfg.action_channels}")
        a = torch.nn.functional.pad(actions.float(), (0, pad))
        return (a - self.action_mean) / self.action_std

    def denormalize_actions(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.action_std + self.action_mean

    # ------------------------------------------------------------------ building blocks
    @property
    def device(self) -> torch.device:
        return self.action_mean.device

    def _tensors(self, obs: Observation) -> dict[str, torch.Tensor]:
        c = self.cfg
        want = (c.num_cameras, c.image_size, c.image_size, 3)
        if obs.images.shape[1:] != want:
            raise ContractError(f"Observation.images: policy expects [B, {', '.join(map(str, want))}], "
                                f"got {obs.images.shape}")
        if obs.proprio.shape[1] != c.proprio_dim:
            raise ContractError(f"Observation.proprio: policy expects {c.proprio_dim} dims, got {obs.proprio.shape[1]}")
        if obs.tokens.shape[1] > c.max_tokens:
            raise ContractError(f"Observation.tokens: {obs.tokens.shape[1]} tokens > policy.max_tokens {c.max_tokens}")
        if int(obs.action_dim.max()) > c.action_channels:
            raise ContractError(f"Observation.action_dim: {int(obs.action_dim.max())} channels > "
                                f"policy.action_channels {c.action_channels}")
        dev = self.device

        def t(a: np.ndarray) -> torch.Tensor:  # arrays from Ray's object store are read-only
            return torch.from_numpy(a if a.flags.writeable else a.copy()).to(dev)

        return {
            "images": t(obs.images).float() / 255.0,
            "proprio": (t(obs.proprio) - self.proprio_mean) / self.proprio_std,
            "tokens": t(obs.tokens),
            "token_mask": t(obs.token_mask),
            "action_dim": t(obs.action_dim),
        }

    def autocast(self) -> Any:
        """bf16 autocast for the network on CUDA (``policy.bf16``); the flow math outside it is fp32."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cfg.bf16 and self.device.type == "cuda")

    def encode(self, t: dict[str, torch.Tensor]) -> Context:
        with self.autocast():
            return self.model.encode(t)

    def channel_mask(self, action_dim: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.cfg.action_channels, device=action_dim.device)[None] < action_dim[:, None]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, prefix: Context, cmask: torch.Tensor,
                 sampler: Sampler) -> tuple[torch.Tensor, torch.Tensor | None]:
        """v(x, t) on real channels (padded inputs are zeroed), plus noise-head output if needed."""
        x = x * cmask[:, None]
        with self.autocast():
            v, feat = self.model.velocity(prefix, x, t)
        v, feat = v.float(), feat.float()
        h = None
        if sampler.needs_noise_head:
            if self.noise_head is None:
                raise ContractError("this sampler needs a noise head: set policy.noise_head: true")
            h = self.noise_head(feat)
        return v, h

    def value_of(self, prefix: Context) -> torch.Tensor:
        detach = self.cfg.detach_critic_input
        if self.cfg.critic == "attention":
            tokens = prefix.tokens.float()
            return self.value_head(tokens.detach() if detach else tokens, prefix.mask)
        pooled = prefix.pooled.float()
        pooled = pooled.detach() if detach else pooled
        return self.value_head(pooled).squeeze(-1)

    # ------------------------------------------------------------------ rollout
    def draw_noise(self, batch: int, sampler: Sampler, generator: torch.Generator | None = None,
                   keys: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(step_mask [B, S], x0 [B, H, K], noise [S, B, H, K]) on the CPU, in the generator's order
        (step mask, initial noise, then one draw per step), whatever device the policy is on.
        ``keys`` [B]: row i is drawn by its own generator seeded with ``keys[i]`` instead, so it is
        the same whichever rows share its batch."""
        h, k, s = self.cfg.action_horizon, self.cfg.action_channels, self.cfg.denoise_steps
        if keys is not None:  # per row: its step mask, then its initial noise and step noises in one draw
            g, masks, draws = torch.Generator(), [], []
            for key in keys.tolist():
                g.manual_seed(key)
                masks.append(sampler.step_mask(1, s, g))
                draws.append(torch.randn(s + 1, 1, h, k, generator=g))
            z = torch.cat(draws, 1)
            return torch.cat(masks), z[0], z[1:]
        step_mask = sampler.step_mask(batch, s, generator)
        x0 = torch.randn(batch, h, k, generator=generator)
        noise = torch.stack([torch.randn(batch, h, k, generator=generator) for _ in range(s)])
        return step_mask, x0, noise

    def denoise(self, inputs: dict[str, torch.Tensor], sampler: Sampler) -> dict[str, torch.Tensor]:
        """The whole denoising chain on the policy's device, from ``_tensors`` plus ``grid``,
        ``step_mask``, ``x0`` and ``noise`` (``draw_noise``, moved there). Tensor ops only (no host
        sync, no branch on values), so ``CudaGraphDenoiser`` can capture and replay it."""
        prefix = self.encode(inputs)
        cmask = self.channel_mask(inputs["action_dim"])
        grid, step_mask, noise = inputs["grid"], inputs["step_mask"], inputs["noise"]
        b, s = step_mask.shape
        x = inputs["x0"] * cmask[:, None]
        logp_steps = torch.zeros(b, self.cfg.action_horizon, device=x.device)
        chain = [x]
        for i in range(s):
            kk = torch.full((b,), i, dtype=torch.long, device=x.device)
            v, nh = self.velocity(x, grid[kk], prefix, cmask, sampler)
            mean, std = flow.transition(sampler, x, v, kk, s, step_mask[:, i], cmask, nh, grid)
            x_next = (mean + std * noise[i]) * cmask[:, None]
            on = (step_mask[:, i, None] & cmask)[:, None, :]
            lp = gaussian_log_prob(x_next, mean, torch.where(on, std, torch.ones_like(std)))
            logp_steps = logp_steps + (lp * on).sum(-1)
            chain.append(x_next)
            x = x_next
        return {"actions": self.denormalize_actions(x) * cmask[:, None], "action_mask": cmask,
                "chain": torch.stack(chain, 1), "step_mask": step_mask, "logp_steps": logp_steps,
                "value": self.value_of(prefix)}

    def denoise_inputs(self, obs: Observation, sampler: Sampler, generator: torch.Generator | None = None
                       ) -> dict[str, torch.Tensor]:
        """``denoise``'s inputs for ``obs`` on the policy's device (checks the observation first)."""
        t = self._tensors(obs)
        step_mask, x0, noise = self.draw_noise(obs.batch_size, sampler, generator, obs.noise_key)
        dev = self.device
        return {**t, "grid": flow.time_grid(self.cfg.denoise_steps).to(dev), "step_mask": step_mask.to(dev),
                "x0": x0.to(dev), "noise": noise.to(dev)}

    @torch.no_grad()
    def sample(self, obs: Observation, sampler: Sampler, generator: torch.Generator | None = None,
               version: int = 0, denoiser: Any = None) -> ActionChunk:
        """One action chunk per observation, keeping every denoising state. ``denoiser``: a
        callable with ``denoise``'s signature (a ``CudaGraphDenoiser``); default: eager."""
        out = (denoiser or self.denoise)(self.denoise_inputs(obs, sampler, generator), sampler)
        b = obs.batch_size
        return ActionChunk(
            actions=out["actions"].float().cpu().numpy(),
            action_mask=out["action_mask"].cpu().numpy(),
            chain=out["chain"].float().cpu().numpy(),
            step_mask=out["step_mask"].cpu().numpy(),
            logp_steps=out["logp_steps"].float().cpu().numpy(),
            value=out["value"].float().cpu().numpy(),
            noise_level=np.full(b, float(sampler.noise_level), np.float32),
            version=int(version),
        )

    # ------------------------------------------------------------------ learner
    def _prefix_and_action_dim(self, obs: Observation, prefix: Context | None) -> tuple[Context, torch.Tensor]:
        """The backbone's output for ``obs`` (encoded here unless given) and its action dims."""
        if prefix is None:
            t = self._tensors(obs)
            return self.encode(t), t["action_dim"]
        # the images were converted and checked when the prefix was encoded
        return prefix, torch.as_tensor(np.array(obs.action_dim), device=self.device)

    def transitions(self, obs: Observation, chain: np.ndarray, step_mask: np.ndarray, sampler: Sampler,
                    prefix: Context | None = None) -> Transitions:
        """(mean, std) of every stored stochastic transition under the current weights.

        chain [B, S+1, H, K], step_mask [B, S] (numpy, as stored by rollout). Rows are the
        transitions ``step_mask.nonzero()``, in that order for any policy given the same mask.
        """
        dev = self.device
        prefix, action_dim = self._prefix_and_action_dim(obs, prefix)
        chain_t = torch.as_tensor(chain, device=dev).float().detach()
        smask = torch.as_tensor(step_mask, device=dev)
        s = smask.shape[1]
        cmask = self.channel_mask(action_dim)
        bi, ki = smask.nonzero(as_tuple=True)  # one row per stochastic transition
        x_k, x_next = chain_t[bi, ki], chain_t[bi, ki + 1]
        if bi.numel():
            v, nh = self.velocity(x_k, flow.time_grid(s).to(dev)[ki], prefix.index(bi), cmask[bi], sampler)
            mean, std = flow.transition(sampler, x_k, v, ki, s, torch.ones_like(bi, dtype=torch.bool),
                                        cmask[bi], nh)
        else:
            mean, std = x_next, torch.zeros_like(x_next)
        on = cmask[bi][:, None, :].expand_as(mean)
        return Transitions(rows=bi, x_next=x_next, mean=mean, std=torch.where(on, std, torch.ones_like(std)),
                           on=on, prefix=prefix, action_dim=action_dim, num_stochastic=sampler.num_stochastic(smask))

    def log_prob_and_value(self, obs: Observation, chain: np.ndarray, step_mask: np.ndarray,
                           exec_mask: np.ndarray, sampler: Sampler, mode: str,
                           prefix: Context | None = None) -> Recompute:
        """Recompute the log-prob of the stored stochastic transitions under the current weights.

        chain [B, S+1, H, K], step_mask [B, S], exec_mask [B, H] (numpy, as stored by rollout).
        ``prefix``: the backbone's output for ``obs`` if already computed (a frozen backbone's is
        the same in every epoch, so the learner encodes each sample once per update).
        """
        tr = self.transitions(obs, chain, step_mask, sampler, prefix)
        dev = self.device
        emask = torch.as_tensor(exec_mask, device=dev)
        b, h = emask.shape

        def per_sample(elementwise: torch.Tensor, how: Any) -> torch.Tensor:
            steps = torch.zeros(b, h, device=dev).index_add(0, tr.rows, (elementwise * tr.on).sum(-1))
            return reduce_log_prob(steps, emask, tr.action_dim, tr.num_stochastic, how)

        return Recompute(
            logp=per_sample(gaussian_log_prob(tr.x_next, tr.mean, tr.std), mode),
            value=self.value_of(tr.prefix),
            entropy=per_sample(gaussian_entropy(tr.std), "token_level"),
        )

    def _fm_sq_error(self, a: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prefix: Context) -> torch.Tensor:
        """Element-wise flow-matching error ``(v(x_t, t) - (eps - a))^2`` at ``x_t = t eps + (1 - t) a``;
        a, eps [M, H, K] (padded channels zeroed), t [M], prefix of M rows."""
        tt = t.view(-1, 1, 1)
        with self.autocast():
            v, _ = self.model.velocity(prefix, tt * eps + (1 - tt) * a, t)
        v = v.float()
        return (v - (eps - a)) ** 2

    @torch.no_grad()
    def encode_batch(self, obs: Observation, block: int = 256) -> Context:
        """Backbone output for ``obs`` (no gradients), computed ``block`` rows at a time."""
        return self.model.cat([self.encode(self._tensors(obs.index(np.arange(i, min(i + block, obs.batch_size)))))
                               for i in range(0, obs.batch_size, block)])

    def value(self, obs: Observation) -> torch.Tensor:
        return self.value_of(self.encode(self._tensors(obs)))

    # ------------------------------------------------------------------ SFT
    def sft_loss(self, obs: Observation, actions: np.ndarray, valid: np.ndarray,
                 timestep_sampling: str = "beta", generator: torch.Generator | None = None) -> torch.Tensor:
        """Masked flow-matching loss: per active channel average over valid horizon steps, then the
        mean over active channels (Qwen-VLA), then over the batch.

        actions [B, H, A] env-space, valid [B, H] bool (False past the episode end).
        """
        t_in = self._tensors(obs)
        prefix = self.encode(t_in)
        dev = self.device
        a = self.normalize_actions(torch.as_tensor(actions, device=dev))
        b = a.shape[0]
        cmask = self.channel_mask(t_in["action_dim"])
        a = a * cmask[:, None]
        t = sample_timesteps(b, timestep_sampling, generator).to(dev)
        eps = torch.randn(a.shape, generator=generator).to(dev) * cmask[:, None]
        err = self._fm_sq_error(a, eps, t, prefix)
        m = torch.as_tensor(valid, device=dev)[:, :, None] & cmask[:, None, :]
        per_channel = (err * m).sum(1) / m.sum(1).clamp_min(1)
        per_sample = (per_channel * cmask).sum(1) / cmask.sum(1).clamp_min(1)
        return per_sample.mean()


def sample_timesteps(n: int, how: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow time t in (0, 1] (t = 1 is noise): uniform, Beta(1.5, 1) (pi0), or logit-normal."""
    if how == "uniform":
        u = torch.rand(n, generator=generator)
    elif how == "beta":
        # Beta(1.5, 1) by inverse CDF (F(t) = t^1.5): emphasises the noisy end, as pi0 does.
        u = torch.rand(n, generator=generator) ** (1.0 / 1.5)
    elif how == "logit_normal":
        u = torch.sigmoid(torch.randn(n, generator=generator))
    else:
        raise ValueError(f"timestep_sampling {how!r}: allowed uniform, beta, logit_normal")
    return 0.001 + 0.999 * u
