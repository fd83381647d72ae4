"""LoRA adapters (peft) on a policy model's linear layers: ``policy.lora_rank`` / ``lora_alpha`` /
``lora_parts`` / ``lora_targets``. In the parts given, the adapters are all that trains (every weight
of those parts freezes); the other parts keep their setting. The adapters start at zero (peft's B = 0), so an adapted
policy computes what the weights it was built from compute."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from rlsys.policy.model import PolicyModel
from rlsys.types import ContractError


def apply_lora(model: PolicyModel, cfg: Any) -> set[int]:
    """Inject the adapters in place; -> the ids of the weights of the adapted parts (now frozen)."""
    import peft  # the vla extra

    targets = [name for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in cfg.lora_targets
               and model.part_of(name) in cfg.lora_parts]
    if not targets:
        raise ContractError(f"policy.lora_targets {list(cfg.lora_targets)} match no linear layer in "
                            f"policy.lora_parts {list(cfg.lora_parts)} of the {cfg.model} model")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    peft.inject_adapter_in_model(peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=targets), model)
    frozen: set[int] = set()
    for name, p in model.named_parameters():  # peft freezes everything else: restore what it found
        if ".lora_" in name:
            p.requires_grad_(True)
        elif model.part_of(name) in cfg.lora_parts:
            p.requires_grad_(False)
            frozen.add(id(p))
        else:
            p.requires_grad_(before[name])
    return frozen


def base_state_for_lora(state: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """A state written without adapters, for a policy with them: an adapted layer's weight goes to its
    ``base_layer``; the adapters come from ``own`` (the adapted policy's fresh, zero-effect ones)."""
    out = {}
    for k, v in state.items():
        based = re.sub(r"\.(weight|bias)$", r".base_layer.\1", k)
        out[based if k not in own and based in own else k] = v
    out.update({k: v for k, v in own.items() if ".lora_" in k and k not in out})
    return out
