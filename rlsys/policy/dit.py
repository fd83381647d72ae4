"""DiT action expert: velocity over H x K action tokens with adaLN-Zero time conditioning and
cross-attention to the backbone's prefix tokens."""

from __future__ import annotations

import math

import torch
from torch import nn

from rlsys.config import PolicyConfig
from rlsys.policy.backbone import Prefix


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] -> [M, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class DiTBlock(nn.Module):
    def __init__(self, w: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(w, heads, batch_first=True)
        self.norm_x = nn.LayerNorm(w)
        self.cross = nn.MultiheadAttention(w, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.GELU(), nn.Linear(4 * w, w))
        self.ada = nn.Linear(w, 6 * w)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, prefix: Prefix) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada(cond)[:, None].chunk(6, -1)
        h = self.norm1(x) * (1 + sc1) + s1
        x = x + g1 * self.attn(h, h, h, need_weights=False)[0]
        x = x + self.cross(self.norm_x(x), prefix.tokens, prefix.tokens,
                           key_padding_mask=~prefix.mask, need_weights=False)[0]
        h = self.norm2(x) * (1 + sc2) + s2
        return x + g2 * self.mlp(h)


class ActionExpert(nn.Module):
    """v(x_t, t | prefix) over [M, H, K]; also returns the final features for the noise head."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        w = cfg.width
        self.inp = nn.Linear(cfg.action_channels, w)
        self.pos = nn.Parameter(torch.randn(cfg.action_horizon, w) * 0.02)
        self.time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.ctx = nn.Linear(w, w)
        self.blocks = nn.ModuleList(DiTBlock(w, cfg.heads) for _ in range(cfg.expert_layers))
        self.norm = nn.LayerNorm(w, elementwise_affine=False)
        self.final_ada = nn.Linear(w, 2 * w)
        self.out = nn.Linear(w, cfg.action_channels)
        for lin in (self.final_ada, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.width = w

    def forward(self, x: torch.Tensor, t: torch.Tensor, prefix: Prefix) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.time(timestep_embedding(t, self.width)) + self.ctx(prefix.pooled)
        h = self.inp(x) + self.pos
        for blk in self.blocks:
            h = blk(h, cond, prefix)
        shift, scale = self.final_ada(cond)[:, None].chunk(2, -1)
        h = self.norm(h) * (1 + scale) + shift
        return self.out(h), h
