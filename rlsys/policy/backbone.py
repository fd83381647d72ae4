"""Backbones: observation -> prefix tokens. ``tiny`` trains on 2 CPU cores in minutes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlsys.config import PolicyConfig


@dataclass
class Prefix:
    """tokens [B, N, W], mask [B, N] bool (True = real), pooled [B, W]."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def index(self, idx: torch.Tensor) -> Prefix:
        return Prefix(self.tokens[idx], self.mask[idx], self.pooled[idx])


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinates of each feature channel -> [N, 2C] (keypoints)."""

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        n, c, h, w = feat.shape
        attn = torch.softmax(feat.flatten(2), -1).view(n, c, h, w)
        ys = torch.linspace(-1, 1, h, device=feat.device)
        xs = torch.linspace(-1, 1, w, device=feat.device)
        return torch.cat([(attn.sum(3) * ys).sum(-1), (attn.sum(2) * xs).sum(-1)], -1)


class ConvBlock(nn.Module):
    """Strided conv + GroupNorm + FiLM from the instruction embedding + GELU."""

    def __init__(self, cin: int, cout: int, k: int, text_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 2, 1)
        self.norm = nn.GroupNorm(8, cout)
        self.film = nn.Linear(text_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(text)[:, :, None, None].chunk(2, 1)
        return nn.functional.gelu(self.norm(self.conv(x)) * (1 + gamma) + beta)


class TinyBackbone(nn.Module):
    """Shared small CNN per camera, FiLM-conditioned on the instruction (RT-1 style) so features
    pick out the named objects; S/16 x S/16 patch tokens plus one spatial-softmax keypoint token
    from the S/4 map (object locations); hashed-word embeddings; a proprio token; a small pre-norm
    transformer over all prefix tokens."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        w = cfg.width
        chans = (3, 16, 32, 64, w)
        self.blocks = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], 4 if i < 3 else 3, w) for i in range(4))
        self.keypoints = nn.Sequential(nn.Conv2d(chans[2], 32, 1), SpatialSoftmax(), nn.Linear(64, w))
        patches = (cfg.image_size // 16) ** 2 + 1
        self.cam_emb = nn.Parameter(torch.zeros(cfg.num_cameras, 1, w))
        self.patch_pos = nn.Parameter(torch.randn(patches, w) * 0.02)
        self.tok_emb = nn.Embedding(cfg.vocab_size, w, padding_idx=0)
        self.tok_pos = nn.Parameter(torch.randn(cfg.max_tokens, w) * 0.02)
        self.proprio = nn.Sequential(nn.Linear(cfg.proprio_dim, w), nn.GELU(), nn.Linear(w, w))
        layer = nn.TransformerEncoderLayer(w, cfg.heads, 4 * w, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.backbone_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)

    def forward(self, images: torch.Tensor, proprio: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor) -> Prefix:
        """images [B, C, S, S, 3] float in [0, 1]; proprio [B, P] (normalised); tokens/mask [B, L]."""
        b, c = images.shape[:2]
        words = self.tok_emb(tokens)
        tm = token_mask.unsqueeze(-1).float()
        text = ((words * tm).sum(1) / tm.sum(1).clamp_min(1.0)).repeat_interleave(c, 0)  # [B*C, W]
        x = images.flatten(0, 1).permute(0, 3, 1, 2) - 0.5
        x = self.blocks[1](self.blocks[0](x, text), text)  # S/4 x S/4
        keypoints = self.keypoints(x)
        x = self.blocks[3](self.blocks[2](x, text), text)  # S/16 x S/16
        feat = torch.cat([x.flatten(2).transpose(1, 2), keypoints[:, None]], 1)
        feat = feat.view(b, c, -1, feat.shape[-1]) + self.cam_emb + self.patch_pos
        img = feat.flatten(1, 2)
        txt = words + self.tok_pos[: tokens.shape[1]]
        prop = self.proprio(proprio)[:, None]
        seq = torch.cat([img, prop, txt], 1)
        mask = torch.cat([torch.ones(b, img.shape[1] + 1, dtype=torch.bool, device=seq.device), token_mask], 1)
        out = self.norm(self.encoder(seq, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).float()
        pooled = (out * m).sum(1) / m.sum(1)
        return Prefix(out, mask, pooled)
