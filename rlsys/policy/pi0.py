"""pi0 from transformers (``PI0ForConditionalGeneration``) as a velocity field that rlsys's samplers
integrate: the groundwork of the pretrained-VLA policy models (not yet selectable in the config).

``encode`` runs the vision-language prefix (camera images + prompt tokens) once per chunk into the
PaliGemma KV cache; ``velocity`` runs the action expert on ``x`` at flow time ``t`` against it. The
time convention is rlsys's (``t = 1`` noise, ``t = 0`` action; ``v`` predicts ``eps - a``), so
``flow.transition`` and the samplers apply unchanged.

The prefix cache is read, never written: every ``velocity`` call works on a view whose layers point
at the prefix tensors (``prefix_view``), so the denoising steps of a chunk, and a learner's recompute
of any subset of its rows, all attend to the same prefix. transformers changes its cache API between
minor versions (hence the exact pin in the ``vla`` extra); the cache handling lives in
``prefix_view`` alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def prefix_view(cache: Any, rows: torch.Tensor | None = None) -> Any:
    """A cache whose layers hold the prefix's key/value tensors (``rows`` of the batch only, where
    given). Appending to the view (the action expert's forward does) rebinds the view's tensors and
    leaves ``cache`` as it was."""
    view = copy.copy(cache)
    view.layers = []
    for layer in cache.layers:
        lv = copy.copy(layer)
        if rows is not None and layer.is_initialized:
            lv.keys, lv.values = layer.keys[rows], layer.values[rows]
        view.layers.append(lv)
    return view


@dataclass
class PI0Prefix:
    """The encoded prefix of a batch: its KV cache, the prompt's attention mask [B, L], the robot
    state [B, max_state_dim] (normalised, zero-padded) and the pooled prefix [B, W] (the mean of the
    last hidden states over attended tokens: the value head's input)."""

    cache: Any
    attention_mask: torch.Tensor
    state: torch.Tensor
    pooled: torch.Tensor

    def index(self, rows: torch.Tensor) -> PI0Prefix:
        return PI0Prefix(prefix_view(self.cache, rows), self.attention_mask[rows], self.state[rows], self.pooled[rows])


class PI0Velocity(nn.Module):
    """``model``: a ``PI0ForConditionalGeneration``. ``horizon`` and ``channels`` are its chunk size
    and padded action width."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.horizon = int(model.config.chunk_size)
        self.channels = int(model.config.max_action_dim)

    def encode(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor,
               attention_mask: torch.Tensor, state: torch.Tensor) -> PI0Prefix:
        """input_ids / attention_mask [B, L] (the image placeholder tokens, then the prompt);
        pixel_values [B, C, 3, S, S]; pixel_attention_mask [B, C] (cameras present); state [B, D]."""
        inner = self.model.model
        embeds = inner.embed_prefix(input_ids, pixel_values, pixel_attention_mask)
        out = inner.vlm(inputs_embeds=embeds, attention_mask=attention_mask,
                        position_ids=attention_mask.cumsum(-1) - 1,
                        token_type_ids=torch.zeros_like(embeds[..., 0]), use_cache=True)
        hidden = out.last_hidden_state
        m = attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return PI0Prefix(out.cache, attention_mask, state, pooled)

    def velocity(self, prefix: PI0Prefix, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t) [M, H, K] for x [M, H, K] at flow times t [M], against ``prefix`` (M rows)."""
        out = self.model(state=prefix.state, noise=x, timestep=t, attention_mask=prefix.attention_mask,
                         cache=prefix_view(prefix.cache))
        return out.logits
