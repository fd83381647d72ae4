"""``vlm_dit``: a transformers image-text model as the backbone and rlsys's DiT action expert (the
reference paper's Qwen-VL + DiT architecture). The chosen layer's hidden states (``policy.vlm_layer``)
over the images and the embodiment prompt, projected to the expert's width, plus a proprio token,
are the prefix the expert cross-attends to; the actions live in the padded, masked K channels of
``policy.action_channels``.

The image preprocessing is rlsys's (no torchvision): each family (``FAMILIES``) resizes, normalises
and lays out the pixels and the image placeholder tokens as its own processor does:
PaliGemma (a fixed-size square, scaled to [-1, 1]), Qwen2.5-VL (CLIP-normalised 14 px patches,
each frame repeated over the 2-frame temporal patch, 2 x 2 patches merged into one token, the image
between vision start / end tokens, 3D rotary positions from ``mm_token_type_ids``), Qwen3-VL and
Qwen3.5 (the same layout, 16 px patches in [-1, 1]; Qwen3.5's hybrid linear-attention language
model is read through its hidden states like the others) and SmolVLM (one untiled image per camera,
[-1, 1], a pixel mask).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from torch.nn import functional as F

from rlsys.config import PolicyConfig
from rlsys.policy.backbone import Prefix
from rlsys.policy.dit import ActionExpert
from rlsys.policy.model import PolicyModel
from rlsys.policy.spec import read_model_config
from rlsys.prompt import PromptTokenizer


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, S, S, 3] in [0, 1] -> [B * C, 3, size, size]."""
    x = images.flatten(0, 1).permute(0, 3, 1, 2)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class PaliGemmaImages:
    """PaliGemma: each camera one square image of the vision tower's size, [-1, 1]; its (size /
    patch)^2 image tokens in front of the prompt."""

    def __init__(self, config: Any, image_size: int) -> None:
        vision = config.vision_config
        self.size = image_size or int(vision.image_size)
        self.per_image = (self.size // int(vision.patch_size)) ** 2
        self.image_token = int(config.image_token_id)

    def inputs(self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        b, c = images.shape[:2]
        image_ids = torch.full((b, c * self.per_image), self.image_token, dtype=tokens.dtype, device=tokens.device)
        ids = torch.cat([image_ids, tokens], 1)
        attention = torch.cat([torch.ones_like(image_ids), mask.long()], 1)
        return {"input_ids": ids, "attention_mask": attention, "pixel_values": resize(images, self.size) * 2.0 - 1.0,
                "token_type_ids": torch.zeros_like(ids)}


class QwenVLImages:
    """Qwen2.5-VL: CLIP-normalised images cut into ``patch`` px patches (the frame repeated over the
    temporal patch), ``merge`` x ``merge`` patches per token; per camera
    ``<vision_start> <image> x n <vision_end>`` in front of the prompt."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, config: Any, image_size: int) -> None:
        v = config.vision_config
        self.patch, self.merge, self.temporal = int(v.patch_size), int(v.spatial_merge_size), int(v.temporal_patch_size)
        unit = self.patch * self.merge
        self.size = image_size or 224
        if self.size % unit:
            raise ValueError(f"policy.vlm_image_size: {self.size} is not a multiple of {unit} (patch x merge)")
        self.grid = self.size // self.patch
        self.per_image = self.grid * self.grid // self.merge**2
        self.ids = {k: int(getattr(config, f"{k}_token_id")) for k in ("image", "vision_start", "vision_end")}

    def inputs(self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        b, c = images.shape[:2]
        x = resize(images, self.size)
        mean = torch.tensor(self.MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std)[:, None].expand(-1, self.temporal, -1, -1, -1)
        n, g, m, p = x.shape[0], self.grid, self.merge, self.patch
        x = x.reshape(n, self.temporal, 3, g // m, m, p, g // m, m, p)
        pixels = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(n * g * g, 3 * self.temporal * p * p)
        one = [self.ids["vision_start"], *[self.ids["image"]] * self.per_image, self.ids["vision_end"]]
        image_ids = torch.tensor(one * c, dtype=tokens.dtype, device=tokens.device).expand(b, -1)
        ids = torch.cat([image_ids, tokens], 1)
        attention = torch.cat([torch.ones_like(image_ids), mask.long()], 1)
        return {"input_ids": ids, "attention_mask": attention, "pixel_values": pixels,
                "image_grid_thw": torch.tensor([[1, g, g]] * n, device=tokens.device),
                "mm_token_type_ids": (ids == self.ids["image"]).long()}


class SmolVLMImages:
    """SmolVLM: each camera one image of the vision tower's size (no tiling), [-1, 1], with a pixel
    mask; (size / patch)^2 / scale_factor^2 image tokens per camera in front of the prompt (with the
    model's own tokenizer, between its <fake_token_around_image><global-img> markers)."""

    def __init__(self, config: Any, image_size: int) -> None:
        vision = config.vision_config
        self.size = image_size or int(vision.image_size)
        self.per_image = (self.size // int(vision.patch_size)) ** 2 // int(config.scale_factor) ** 2
        self.image_token = int(config.image_token_id)
        self.around: list[int] = []  # set from the tokenizer where there is one (VLMDiT)
        self.start: list[int] = []

    def inputs(self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        b, c = images.shape[:2]
        one = [*self.around, *self.start, *[self.image_token] * self.per_image, *self.around]
        image_ids = torch.tensor(one * c, dtype=tokens.dtype, device=tokens.device).expand(b, -1)
        ids = torch.cat([image_ids, tokens], 1)
        pixels = (resize(images, self.size) * 2.0 - 1.0).reshape(b, c, 3, self.size, self.size)
        return {"input_ids": ids, "attention_mask": torch.cat([torch.ones_like(image_ids), mask.long()], 1),
                "pixel_values": pixels,
                "pixel_attention_mask": torch.ones(b, c, self.size, self.size, dtype=torch.bool, device=ids.device)}


class Qwen3VLImages(QwenVLImages):
    """Qwen3-VL: Qwen2.5-VL's layout (16 px patches in its configs) with images scaled to [-1, 1]."""

    MEAN = (0.5, 0.5, 0.5)
    STD = (0.5, 0.5, 0.5)


FAMILIES: dict[str, Any] = {"paligemma": PaliGemmaImages, "qwen2_5_vl": QwenVLImages, "qwen3_vl": Qwen3VLImages,
                            "qwen3_5": Qwen3VLImages,  # Qwen3.5: Qwen3-VL's vision tower and layout
                            "smolvlm": SmolVLMImages}


class VLMDiT(PolicyModel):
    part_prefixes = {"vision": ("vlm.vision_tower.", "vlm.multi_modal_projector.", "vlm.visual.", "vlm.vision_model.",
                                "vlm.connector."),
                     "language": ("vlm.",), "expert": ("proj.", "proprio.", "expert.")}

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        spec = read_model_config(cfg)
        family = spec.pop("model_type")
        spec.pop("transformers_version", None)
        config = transformers.AutoConfig.for_model(family, **spec)
        self.vlm = transformers.AutoModel.from_config(config)
        self.vlm.eval()  # no dropout: rollout and recompute see the same function
        self.images = FAMILIES[family](config, cfg.vlm_image_size)
        tok = PromptTokenizer(cfg).hf if family == "smolvlm" else None
        if tok is not None:  # the image markers of SmolVLM's prompt format
            self.images.around = [tok.token_to_id("<fake_token_around_image>")]
            self.images.start = [tok.token_to_id("<global-img>")]
        self.layer = cfg.vlm_layer
        hidden = int(config.text_config.hidden_size)
        w = cfg.width
        self.proj = nn.Sequential(nn.Linear(hidden, w), nn.LayerNorm(w))
        self.proprio = nn.Sequential(nn.Linear(cfg.proprio_dim, w), nn.GELU(), nn.Linear(w, w))
        self.expert = ActionExpert(cfg)
        self.horizon, self.channels = cfg.action_horizon, cfg.action_channels
        self.width = self.feature_width = w

    def encode(self, inputs: dict[str, torch.Tensor]) -> Prefix:
        kw = self.images.inputs(inputs["images"], inputs["tokens"], inputs["token_mask"])
        out = self.vlm(**kw, output_hidden_states=True, use_cache=False)
        tokens = self.proj(out.hidden_states[self.layer])
        tokens = torch.cat([tokens, self.proprio(inputs["proprio"])[:, None]], 1)
        mask = torch.cat([kw["attention_mask"].bool(), torch.ones_like(tokens[:, :1, 0], dtype=torch.bool)], 1)
        m = mask[..., None].to(tokens.dtype)
        return Prefix(tokens, mask, (tokens * m).sum(1) / m.sum(1))

    def velocity(self, context: Prefix, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.expert(x, t, context)

    def cat(self, contexts: list[Prefix]) -> Prefix:
        return Prefix(*(torch.cat([getattr(c, f) for c in contexts]) for f in ("tokens", "mask", "pooled")))

    def load_pretrained(self, folder: str | Path) -> dict[str, list[str]]:
        """The vision-language model's weights from a local folder (its own key names); the action
        expert, projections and heads start fresh (SFT trains them)."""
        loaded, info = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32,
                                                              output_loading_info=True)
        self.vlm.load_state_dict(loaded.state_dict())
        return {k: sorted(info.get(f"{k}_keys", [])) for k in ("missing", "unexpected")}
