"""What a network provides to ``FlowPolicy``: the policy-model interface.

``FlowPolicy`` owns everything the RL math depends on -- the samplers' denoising loop, the stored
chains, ``flow.transition``, the log-prob recompute, the SFT loss, the value and noise heads, the
action/proprio normalisation -- and asks the network for two things only:

- ``encode(inputs) -> context``: the observation (``FlowPolicy._tensors``: images [B, C, S, S, 3]
  in [0, 1], normalised proprio [B, P], prompt tokens and mask [B, L], action dims [B]) encoded once
  per chunk. A context has ``tokens`` [B, N, W] and ``mask`` [B, N] (the prefix the attention critic
  reads), ``pooled`` [B, W] (the pooled critic's input), ``index(rows)`` and ``cat(parts)``;
  a model may keep more in it (a KV cache).
- ``velocity(context, x [M, H, K], t [M]) -> (v [M, H, K], features [M, H, F])``, the features
  being what the Flow-Noise head reads. It must not change the context: every denoising step of a
  chunk and the learner's recompute of any subset of its rows see the same prefix.

Plus its shape (``horizon``, ``channels``, ``width``, ``feature_width``) and its parts by name
(``parts()``: ``vision``, ``language``, ``expert``), which freezing and the learner's parameter
groups use. Models are registered by name in ``rlsys.registry.MODELS`` (``policy.model``).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from rlsys.policy.spec import PARTS


class Context(Protocol):
    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def index(self, rows: torch.Tensor) -> Any: ...


class PolicyModel(nn.Module):
    horizon: int
    channels: int
    width: int  # context features (the value head's input)
    feature_width: int  # velocity features (the noise head's input)
    # parameter-name prefixes of each part, tried in this order (the first match names the part)
    part_prefixes: dict[str, tuple[str, ...]]

    def encode(self, inputs: dict[str, torch.Tensor]) -> Any:
        raise NotImplementedError

    def velocity(self, context: Any, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def cat(self, contexts: list[Any]) -> Any:
        """One context from the contexts of consecutive row blocks."""
        raise NotImplementedError

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in exactly one of ``PARTS``."""
        return split_parts(self, self.part_prefixes)

    def part_of(self, name: str) -> str | None:
        """The part a parameter or module name belongs to."""
        return next((k for k, pre in self.part_prefixes.items() if (name + ".").startswith(pre)), None)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """What encodes the observation (vision + language)."""
        p = self.parts()
        return p["vision"] + p["language"]


def split_parts(model: nn.Module, prefixes: dict[str, tuple[str, ...]]) -> dict[str, list[nn.Parameter]]:
    """Parameters of ``model`` by part, each named by the prefixes of its parameter names; a
    parameter matching no prefix is an error (a part list that forgot something would leave it
    out of freezing and of every optimizer)."""
    out: dict[str, list[nn.Parameter]] = {k: [] for k in PARTS}
    for name, p in model.named_parameters():
        part = next((k for k, pre in prefixes.items() if name.startswith(pre)), None)
        if part is None:
            raise RuntimeError(f"parameter {name!r} belongs to none of {PARTS}: extend the model's part prefixes")
        out[part].append(p)
    return out
