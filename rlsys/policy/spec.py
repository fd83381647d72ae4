"""What a ``policy.model`` needs on disk, checked from JSON alone (no transformers import), so a
wrong folder, config or size fails when the config is built, before SFT, Ray or a run directory.

A pretrained model (``policy.pretrained: DIR``) is a local folder: ``config.json`` (transformers'
config of the model), ``*.safetensors`` weights and, where the model has one, ``tokenizer.json``;
``norm_stats.json`` (optional) holds the action/state statistics it was trained with. Without
weights, ``policy.model_config`` builds a randomly initialised model: a built-in name
(``BUILTIN_CONFIGS``) or a JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlsys.configtools import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_CONFIGS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
TRANSFORMERS_MODELS = ("pi0", "pi05", "vlm_dit")
# vlm_dit backbones (rlsys.policy.vlm_dit.FAMILIES)
VLM_FAMILIES = ("paligemma", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "smolvlm")
PARTS = ("vision", "language", "expert")  # what policy.freeze names
# the linear layers LoRA can adapt (policy.lora_targets): PaliGemma / Gemma and SigLIP layer names
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "out_proj", "fc1", "fc2")


def read_model_config(cfg: Any) -> dict[str, Any]:
    """transformers' config dict of ``cfg.model`` (a PolicyConfig) from its pretrained folder or
    ``model_config``; ConfigError naming the field when either is missing or wrong."""
    if cfg.pretrained:
        root = Path(cfg.pretrained)
        if not root.is_dir():
            raise ConfigError(f"policy.pretrained: {root} is not a folder (a local copy of the model: "
                              "config.json, *.safetensors and tokenizer.json; rlsys downloads nothing)")
        missing = [n for n, ok in (("config.json", (root / "config.json").is_file()),
                                   ("*.safetensors", any(root.glob("*.safetensors")))) if not ok]
        if missing:
            raise ConfigError(f"policy.pretrained: {root} has no {' and no '.join(missing)}; found "
                              f"{sorted(p.name for p in root.iterdir())[:12]}")
        source, path = "policy.pretrained", root / "config.json"
    elif cfg.model_config:
        path = CONFIG_DIR / f"{cfg.model_config}.json"
        if not path.is_file():
            path = Path(cfg.model_config)
        if path.suffix != ".json" or not path.is_file():
            raise ConfigError(f"policy.model_config: got {cfg.model_config!r}; allowed: one of "
                              f"{', '.join(BUILTIN_CONFIGS)} or a transformers config .json file")
        source = "policy.model_config"
    else:
        raise ConfigError(f"policy.model: {cfg.model!r} needs its weights (policy.pretrained: a local folder) "
                          f"or, for random weights, policy.model_config: one of {', '.join(BUILTIN_CONFIGS)} "
                          "or a .json file")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: {path} is not valid JSON ({e})") from None
    allowed = VLM_FAMILIES if cfg.model == "vlm_dit" else (cfg.model,)
    if d.get("model_type") not in allowed:
        raise ConfigError(f"{source}: {path} is a {d.get('model_type')!r} model; policy.model {cfg.model!r} takes "
                          f"{', '.join(allowed)}")
    return dict(d)


def tokenizer_file(cfg: Any) -> Path | None:
    """The model's own tokenizer: ``policy.tokenizer``, else the pretrained folder's tokenizer.json;
    None: prompt words are hashed (``rlsys.prompt``)."""
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    if cfg.pretrained and (Path(cfg.pretrained) / "tokenizer.json").is_file():
        return Path(cfg.pretrained) / "tokenizer.json"
    return None


def check_model(cfg: Any, host: bool = True) -> None:
    """The sizes rlsys's side of a transformers model must agree on (``cfg``: a PolicyConfig).
    ``host=False`` (a config read back from a checkpoint): a pretrained folder absent from this
    machine is not an error; the checkpoint carries the model's config (rlsys.checkpoint)."""
    if cfg.lora_rank:
        if cfg.model not in TRANSFORMERS_MODELS:
            raise ConfigError(f"policy.lora_rank: LoRA adapts {', '.join(TRANSFORMERS_MODELS)}; policy.model is "
                              f"{cfg.model!r} (set 0)")
        bad = [t for t in cfg.lora_targets if t not in LORA_MODULES]
        if bad or not cfg.lora_targets:
            raise ConfigError(f"policy.lora_targets: got {list(cfg.lora_targets)}; allowed: a non-empty subset of "
                              f"{', '.join(LORA_MODULES)}")
        if not cfg.lora_parts or not set(cfg.lora_parts) <= set(PARTS):
            raise ConfigError(f"policy.lora_parts: got {list(cfg.lora_parts)}; allowed: a non-empty subset of "
                              f"{', '.join(PARTS)}")
    if cfg.model not in TRANSFORMERS_MODELS:
        for field in ("pretrained", "model_config", "tokenizer"):
            if getattr(cfg, field):
                raise ConfigError(f"policy.{field}: set for policy.model {cfg.model!r}, which builds from "
                                  f"policy.width/heads/...; it applies to {', '.join(TRANSFORMERS_MODELS)}")
        return
    if cfg.pretrained and cfg.model_config:
        raise ConfigError(f"policy.model_config: {cfg.model_config!r} beside policy.pretrained {cfg.pretrained!r}; "
                          "the pretrained folder's config.json sizes the model: set one of the two")
    if not host and cfg.pretrained and not Path(cfg.pretrained).is_dir():
        return
    d = read_model_config(cfg)
    if cfg.model == "vlm_dit":  # rlsys's expert: sized by policy.*; the backbone's special tokens bound the hash
        specials = [int(d[k]) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                         "vision_end_token_id") if k in d]
        check_vocab(cfg, min(specials) if specials else 257152)
        return
    horizon, channels = int(d.get("chunk_size", 50)), int(d.get("max_action_dim", 32))
    if cfg.action_horizon != horizon:
        raise ConfigError(f"policy.action_horizon: got {cfg.action_horizon}; the {cfg.model} model predicts chunks "
                          f"of {horizon} (its chunk_size): set {horizon}, and policy.execute_steps for how many "
                          "of them the env runs")
    if cfg.action_channels != channels:
        raise ConfigError(f"policy.action_channels: got {cfg.action_channels}; the {cfg.model} model has "
                          f"{channels} padded action channels (its max_action_dim): set {channels}")
    if cfg.model == "pi0" and cfg.proprio_dim > int(d.get("max_state_dim", 32)):
        raise ConfigError(f"policy.proprio_dim: got {cfg.proprio_dim}; the pi0 model takes at most "
                          f"{d.get('max_state_dim', 32)} state dims (its max_state_dim)")
    check_vocab(cfg, int(d.get("vlm_config", {}).get("image_token_id", 257152)))


def check_vocab(cfg: Any, special: int) -> None:
    """Hashed prompt words (no tokenizer) must stay below the model's first special (image) token id."""
    if cfg.tokenizer and not Path(cfg.tokenizer).is_file():
        raise ConfigError(f"policy.tokenizer: {cfg.tokenizer} is not a file (a tokenizers-format tokenizer.json)")
    if tokenizer_file(cfg) is None and cfg.vocab_size > special:
        raise ConfigError(f"policy.vocab_size: got {cfg.vocab_size}; without the model's tokenizer, prompt words "
                          f"are hashed below its image token id {special}: set <= {special}")


def pretrained_norm_stats(cfg: Any) -> dict[str, list[float]] | None:
    """The action / state statistics a pretrained folder ships (``norm_stats.json``, openpi's layout
    ``{"norm_stats": {"actions": {...}, "state": {...}}}`` or the inner dict alone) as
    ``FlowPolicy.set_normalization`` arguments; None where the folder has none. pi0.5 was trained on
    quantile-normalised values: its q01 / q99 map to -1 / 1 (mean = the midpoint, std = half the range)."""
    path = Path(cfg.pretrained) / "norm_stats.json" if cfg.pretrained else None
    if path is None or not path.is_file():
        return None
    d = json.loads(path.read_text())
    d = d.get("norm_stats", d)
    out: dict[str, list[float]] = {}
    for ours, theirs in (("action", "actions"), ("proprio", "state")):
        s = d.get(theirs)
        quantile = cfg.model == "pi05" and isinstance(s, dict) and {"q01", "q99"} <= set(s)
        need = ("q01", "q99") if quantile else ("mean", "std")
        if not isinstance(s, dict) or not set(need) <= set(s):
            raise ConfigError(f"policy.pretrained: {path} has no {theirs!r} statistics with {' and '.join(need)}")
        if quantile:
            lo, hi = [float(x) for x in s["q01"]], [float(x) for x in s["q99"]]
            mean, std = [(a + b) / 2 for a, b in zip(lo, hi)], [max((b - a) / 2, 1e-6) for a, b in zip(lo, hi)]
        else:
            mean, std = [float(x) for x in s["mean"]], [max(float(x), 1e-6) for x in s["std"]]
        out[f"{ours}_mean"], out[f"{ours}_std"] = mean, std
    return out
