"""``tiny``: rlsys's own 2M-parameter model (a FiLM CNN + transformer backbone, a DiT action expert):
trains on 2 CPU cores in minutes."""

from __future__ import annotations

import torch

from rlsys.config import PolicyConfig
from rlsys.policy.backbone import Prefix, TinyBackbone
from rlsys.policy.dit import ActionExpert
from rlsys.policy.model import PolicyModel


class TinyModel(PolicyModel):
    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.backbone = TinyBackbone(cfg)
        self.expert = ActionExpert(cfg)
        self.horizon, self.channels = cfg.action_horizon, cfg.action_channels
        self.width = self.feature_width = cfg.width

    def encode(self, inputs: dict[str, torch.Tensor]) -> Prefix:
        return self.backbone(inputs["images"], inputs["proprio"], inputs["tokens"], inputs["token_mask"])

    def velocity(self, context: Prefix, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.expert(x, t, context)

    def cat(self, contexts: list[Prefix]) -> Prefix:
        return Prefix(*(torch.cat([getattr(c, f) for c in contexts]) for f in ("tokens", "mask", "pooled")))

    # the transformer over image, proprio and word tokens plays the language model's part
    part_prefixes = {"vision": ("backbone.blocks.", "backbone.keypoints.", "backbone.cam_emb", "backbone.patch_pos"),
                     "language": ("backbone.",), "expert": ("expert.",)}
