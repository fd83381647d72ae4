"""``rlsys import``: a local pretrained pi0 / pi0.5 folder -> an rlsys checkpoint (safetensors + JSON)
that ``rlsys train`` (``init_checkpoint``), ``eval`` and ``serve`` start from. (An SFT run whose
policy names ``policy.pretrained`` loads the folder the same way: ``rlsys.sft.load_pretrained``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlsys.checkpoint import save_policy
from rlsys.config import ConfigError, TrainConfig
from rlsys.evaluation import env_spec
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.sft import load_pretrained, load_sft_demos, normalization_stats


def import_pretrained(cfg: TrainConfig, out: str | Path, demos: str | None = None) -> dict[str, Any]:
    if not cfg.policy.pretrained:
        raise ConfigError("policy.pretrained: empty; name the local folder to import (--set policy.pretrained=DIR)")
    _, embodiment = env_spec(cfg.env)  # the env the checkpoint will drive (fails on a bad env / task)
    if embodiment.action_dim > cfg.policy.action_channels:
        raise ConfigError(f"policy.action_channels: the model has {cfg.policy.action_channels}; "
                          f"env {cfg.env.name} needs {embodiment.action_dim}")
    policy = FlowPolicy(cfg.policy)
    demo_dir = demos or cfg.sft.demos
    stats = normalization_stats(load_sft_demos(cfg, demo_dir, embodiment)) if demo_dir else None
    report = load_pretrained(policy, stats, demo_dir)
    save_policy(out, policy, cfg.env, embodiment, meta={"stage": "import", "pretrained": cfg.policy.pretrained,
                                                        **report})
    print(f"import: {cfg.policy.model} from {cfg.policy.pretrained}: {len(report['missing'])} missing keys "
          f"{report['missing'][:8]}, {len(report['unexpected'])} unexpected {report['unexpected'][:8]}; "
          f"normalisation from {report['normalization']}")
    print(f"import: checkpoint {out} (rlsys train --set init_checkpoint={out}; rlsys eval --ckpt {out})")
    return report
