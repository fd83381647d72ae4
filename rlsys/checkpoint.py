"""Checkpoints, the one module that writes and reads them.

A policy checkpoint is ``model.safetensors`` + ``config.json`` (+ ``normalization.json``); a training
checkpoint (an RL run's ``checkpoint/``, an SFT's progress) adds ``optimizer.safetensors`` and
``trainer.json`` (step or iteration, versions, RNG states) so a run continues where it stopped.
An RL checkpoint of a policy with frozen parts (``policy.freeze``, LoRA) holds only the weights
that train, and ``base.json`` names the complete checkpoint the run started from (with the sha256
of its weights): loading reads that one's weights first, then these.
Writes are atomic: everything goes to a temporary sibling folder that is renamed into place, so
a crash never leaves a half-written checkpoint. Loading never unpickles: only safetensors + JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file as load_numpy_file
from safetensors.numpy import save as save_numpy
from safetensors.torch import load_file

from rlsys.config import EnvConfig, PolicyConfig, stored_config, to_dict
from rlsys.configtools import ConfigError, from_dict
from rlsys.envs.api import Embodiment
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.policy.lora import base_state_for_lora
from rlsys.policy.spec import TRANSFORMERS_MODELS, read_model_config, tokenizer_file

FORMAT = "rlsys-policy-v1"
MODEL_CONFIG = "model_config.json"  # a transformers model's config, in its checkpoint
TOKENIZER = "tokenizer.json"
# policy settings a checkpoint's weights do not depend on: a run may choose its own (where the model's
# files come from: the checkpoint carries them; how many actions run; bf16; what trains)
LORA_SETTINGS = ("lora_rank", "lora_alpha", "lora_parts", "lora_targets")
RUN_SETTINGS = ("pretrained", "model_config", "tokenizer", "execute_steps", "bf16", "freeze")


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or incompatible with the requested config."""


MANIFEST = "manifest.json"  # every other file's size and sha256, written last
BASE = "base.json"  # a trained-only checkpoint: the complete checkpoint holding the frozen weights
IMITATION = "imitation.safetensors"  # an RL checkpoint's imitation memory (rft, ppo_rft)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    (folder / MANIFEST).write_text(json.dumps({p.name: [p.stat().st_size, file_digest(p)] for p in files}, indent=1))


def verify_manifest(folder: Path) -> None:
    """CheckpointError naming the first file that is missing, truncated or changed since it was written
    (folders written before manifests existed pass)."""
    mf = folder / MANIFEST
    if not mf.is_file():
        return
    try:
        want = json.loads(mf.read_text())
    except ValueError as e:
        raise CheckpointError(f"{mf}: damaged ({e})") from None
    for name, (size, digest) in want.items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (the manifest lists it)")
        hint = f" (edited on purpose? delete {mf.name} to accept it)"
        if f.stat().st_size != size:
            raise CheckpointError(f"{f}: {f.stat().st_size} bytes, written as {size}: truncated or damaged{hint}")
        if file_digest(f) != digest:
            raise CheckpointError(f"{f}: contents differ from when it was written (sha256): damaged{hint}")


def atomic_dir_write(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(tmp_dir)``, add the manifest, then move ``tmp_dir`` to ``path`` (replacing an older
    one): a reader sees the old folder or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        write_manifest(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


NORM_KEYS = ("action_mean", "action_std", "proprio_mean", "proprio_std")


def save_policy(path: str | os.PathLike, policy: Any, env_cfg: EnvConfig, embodiment: Embodiment,
                meta: dict[str, Any] | None = None, extra: dict[str, bytes] | None = None) -> Path:
    """Write a checkpoint folder atomically; ``extra`` adds files (name -> bytes) to the same folder."""
    state = {k: v.detach().cpu().contiguous().numpy() for k, v in policy.state_dict().items()}
    return save_state(path, state, policy.cfg, env_cfg, embodiment, meta, extra)


def save_state(path: str | os.PathLike, state: dict[str, np.ndarray], policy_cfg: PolicyConfig, env_cfg: EnvConfig,
               embodiment: Embodiment, meta: dict[str, Any] | None = None, extra: dict[str, bytes] | None = None,
               base: str | os.PathLike | None = None) -> Path:
    """``save_policy`` from a state dict of arrays (no policy built). ``base``: ``state`` holds only the
    trained entries; the complete checkpoint ``base`` holds the rest (named, with its weights' sha256,
    in ``base.json``)."""
    config = {"format": FORMAT, "policy": to_dict(policy_cfg), "env": to_dict(env_cfg),
              "embodiment": asdict(embodiment), "meta": meta or {}}
    if base is not None:
        base = Path(base).resolve()
        if (base / BASE).is_file():
            raise CheckpointError(f"{base}: holds only trained weights itself; a base must be complete")
        link = {"path": str(base), "model_sha256": file_digest(base / "model.safetensors"), "entries": len(state)}
        norm = json.loads((base / "normalization.json").read_text())
    else:
        norm = {k: np.asarray(state[k]).tolist() for k in NORM_KEYS}
    model_files = self_contained_model_files(policy_cfg)
    tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}

    def write(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(save_numpy(tensors))
        for name, data in model_files.items():
            (tmp / name).write_bytes(data)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "normalization.json").write_text(json.dumps(norm, indent=2))
        if base is not None:
            (tmp / BASE).write_text(json.dumps(link, indent=2))
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)

    return atomic_dir_write(path, write)


def base_weights(path: Path, device: str = "cpu") -> dict[str, Any] | None:
    """The frozen weights a trained-only checkpoint ``path`` leaves to its base (None for a complete
    one); the base must be where ``base.json`` says, unchanged."""
    link_file = path / BASE
    if not link_file.is_file():
        return None
    try:
        link = json.loads(link_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{link_file}: not valid JSON ({e}): damaged") from None
    base = Path(link["path"])
    weights = base / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path} holds only the weights RL trained; the frozen rest is in its base checkpoint "
                              f"{base}, which is missing (restore it there, or point {link_file} at a copy)")
    verify_manifest(base)
    if file_digest(weights) != link["model_sha256"]:
        raise CheckpointError(f"{weights}: not the base {path} was trained from (its sha256 changed since)")
    try:
        return load_file(str(weights), device=device)
    except Exception as e:
        raise CheckpointError(f"{weights}: unreadable ({e}): truncated or damaged") from None


def self_contained_model_files(cfg: PolicyConfig) -> dict[str, bytes]:
    """A transformers model's own config (and tokenizer) go into the checkpoint, so it loads where
    the pretrained folder is absent (``rlsys eval`` / ``serve`` on another machine)."""
    if cfg.model not in TRANSFORMERS_MODELS:
        return {}
    files = {MODEL_CONFIG: json.dumps(read_model_config(cfg), indent=1).encode()}
    tok = tokenizer_file(cfg)
    if tok is not None:
        files[TOKENIZER] = tok.read_bytes()
    return files


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(
            f"{path}: not a checkpoint (missing config.json; expected model.safetensors + config.json)"
        )
    try:
        data = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e}): damaged") from None
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    return data


def load_policy(path: str | os.PathLike, expect: PolicyConfig | None = None, device: str = "cpu",
                critic: str | None = None, noise_head: bool = False,
                ) -> tuple[Any, EnvConfig, Embodiment, dict[str, Any]]:
    """-> (policy, env config, embodiment, meta). ``expect`` (optional) must match the stored config.

    ``critic``: build the policy with this value head (``PolicyConfig.critic``). A checkpoint stored
    with another kind loads every weight but the value head, which starts fresh: the RL start from
    an SFT checkpoint, whose value head SFT never trains. ``noise_head``: add a fresh (zero, so
    mid-range std) Flow-Noise head when the checkpoint has none: Flow-Noise RL from an SFT checkpoint.
    """

    verify_manifest(Path(path))  # once per load, before anything is read
    data = read_config(path)
    weight_file = Path(path) / "model.safetensors"
    if not weight_file.exists():
        raise CheckpointError(f"{path}: no model.safetensors")
    stored = dict(data["policy"])
    if "backbone" in stored:  # written before policy.model (the tiny model's only backbone)
        stored["model"] = stored.pop("backbone")
    try:
        with stored_config():  # the policy loads without its simulator (or pretrained folder); running re-checks
            pcfg = from_dict(PolicyConfig, stored, "policy")
            ecfg = from_dict(EnvConfig, data["env"], "env")
    except ConfigError as e:
        raise CheckpointError(f"{path}: stored config is invalid: {e}") from e
    fresh_critic = critic is not None and critic != pcfg.critic
    if fresh_critic:
        pcfg = replace(pcfg, critic=critic)
    fresh_noise = noise_head and not pcfg.noise_head
    if fresh_noise:
        pcfg = replace(pcfg, noise_head=True)
    # LoRA on a checkpoint written without it (an imported or SFT model): fresh, zero-effect adapters
    fresh_lora = expect is not None and expect.lora_rank > 0 and pcfg.lora_rank == 0
    if fresh_lora:
        assert expect is not None
        with stored_config():
            pcfg = replace(pcfg, **{k: getattr(expect, k) for k in LORA_SETTINGS})
    if expect is not None:
        diffs = [f"policy.{k}: checkpoint {v!r} vs requested {getattr(expect, k)!r}"
                 for k, v in to_dict(pcfg).items() if to_dict(expect)[k] != v and k not in RUN_SETTINGS]
        if diffs:
            raise CheckpointError(f"{path}: incompatible policy config: " + "; ".join(diffs))
    if pcfg.model in TRANSFORMERS_MODELS:  # the architecture from the checkpoint's own files
        own = {"pretrained": "", "model_config": str(Path(path) / MODEL_CONFIG),
               "tokenizer": str(Path(path) / TOKENIZER) if (Path(path) / TOKENIZER).is_file() else ""}
        if not (Path(path) / MODEL_CONFIG).is_file():
            raise CheckpointError(f"{path}: a {pcfg.model} checkpoint without its {MODEL_CONFIG}")
        with stored_config():
            pcfg = replace(pcfg, **own)
    policy = FlowPolicy(pcfg)
    try:
        raw = load_file(str(weight_file), device=device)
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise CheckpointError(f"{weight_file}: unreadable ({e}): truncated or damaged") from None
    def renamed(weights: dict[str, Any]) -> dict[str, Any]:  # keys written before policy.model
        return {("model." + k if k.startswith(("backbone.", "expert.")) else k): v for k, v in weights.items()}

    state = renamed(raw)
    frozen = base_weights(Path(path), device)
    if frozen is not None:  # a trained-only checkpoint: its base's weights under these
        own = policy.state_dict()
        base_state = renamed(frozen)
        if any(".lora_" in k for k in own) and not any(".lora_" in k for k in base_state):
            base_state = base_state_for_lora(base_state, own)
        state = {**{k: v for k, v in base_state.items() if k in own}, **state}
    fresh = tuple(head for head, new in (("value_head.", fresh_critic), ("noise_head.", fresh_noise)) if new)
    if fresh:
        state = {k: v for k, v in state.items() if not k.startswith(fresh)}
        state.update({k: v for k, v in policy.state_dict().items() if k.startswith(fresh)})
    if fresh_lora:
        state = base_state_for_lora(state, policy.state_dict())
    try:
        missing, unexpected = policy.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{path}: weights do not match the stored config: {e}") from e
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    emb = dict(data["embodiment"])
    emb["action_names"] = tuple(emb["action_names"])
    return policy.to(device), ecfg, Embodiment(**emb), data["meta"]


def save_rotating(run_dir: Path, iteration: int, keep: int, save: Any) -> Path:
    """``save(folder)`` into ``run_dir/checkpoints/iter_NNNNNN`` (atomic), then point the
    ``run_dir/checkpoint`` link at it (atomic) and delete all but the ``keep`` newest."""
    root = run_dir / "checkpoints"
    folder = save(root / f"iter_{iteration:06d}")
    link, tmp = run_dir / "checkpoint", run_dir / ".checkpoint.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("checkpoints") / folder.name)
    if link.is_dir() and not link.is_symlink():  # a run written before checkpoints rotated
        shutil.rmtree(link)
    os.replace(tmp, link)
    for old in sorted(p for p in root.glob("iter_*") if p.is_dir())[:-keep]:
        trash = root / f".trash-{old.name}"  # out of sight first: a half-deleted folder is never a candidate
        os.rename(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    for stale in [*root.glob(".iter_*.tmp-*"), *root.glob(".trash-*")]:  # what a kill interrupted
        shutil.rmtree(stale, ignore_errors=True)
    return folder


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """A run's checkpoints, newest first (``checkpoints/iter_*``; a pre-rotation ``checkpoint`` folder)."""
    found = sorted((p for p in (run_dir / "checkpoints").glob("iter_*") if p.is_dir()), reverse=True)
    legacy = run_dir / "checkpoint"
    if not found and legacy.is_dir() and not legacy.is_symlink():
        found = [legacy]
    return [p for p in found if (p / "trainer.json").exists()]


def save_training_checkpoint(path: str | os.PathLike, policy: Any, env_cfg: EnvConfig, embodiment: Embodiment,
                             trainer: dict[str, Any], optimizer: dict[str, np.ndarray],
                             meta: dict[str, Any] | None = None, files: dict[str, bytes] | None = None) -> Path:
    """A policy checkpoint plus what continuing needs (``training_files``)."""
    return save_policy(path, policy, env_cfg, embodiment, meta=meta, extra=training_files(trainer, optimizer, files))


def training_files(trainer: dict[str, Any], optimizer: dict[str, np.ndarray],
                   files: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """What a training checkpoint adds to a policy checkpoint: ``trainer`` (JSON: step or iteration,
    versions, RNG states, optimiser scalars), ``optimizer`` (its tensors) and ``files`` (name -> bytes)."""
    return {"optimizer.safetensors": save_numpy(optimizer), "trainer.json": json.dumps(trainer).encode(),
            **(files or {})}


def load_training_checkpoint(path: str | os.PathLike, expect: PolicyConfig | None = None, device: str = "cpu"
                             ) -> tuple[Any, Embodiment, dict[str, Any], dict[str, np.ndarray]]:
    """-> (policy, embodiment, trainer JSON, optimizer tensors) of a ``save_training_checkpoint`` folder."""
    path = Path(path)
    for name in ("trainer.json", "optimizer.safetensors"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: no {name}: a policy checkpoint, not a training checkpoint to resume")
    policy, _, embodiment, _ = load_policy(path, expect=expect, device=device)
    try:
        trainer = json.loads((path / "trainer.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{path / 'trainer.json'}: not valid JSON ({e}): damaged") from None
    try:
        optimizer = load_numpy_file(str(path / "optimizer.safetensors"))
    except Exception as e:
        raise CheckpointError(f"{path / 'optimizer.safetensors'}: unreadable ({e}): truncated or damaged") from None
    return policy, embodiment, trainer, optimizer


def read_imitation(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """A training checkpoint's imitation memory, None where it has none."""
    f = Path(path) / IMITATION
    if not f.is_file():
        return None
    try:
        return load_numpy_file(str(f))
    except Exception as e:
        raise CheckpointError(f"{f}: unreadable ({e}): truncated or damaged") from None


def optimizer_state(optimizer: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A torch optimiser's state as flat numpy arrays (``"<param>.<name>"``, for safetensors) + JSON-able
    scalars (param groups, step counts)."""
    sd = optimizer.state_dict()
    tensors: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {"param_groups": sd["param_groups"], "steps": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if k == "step":
                scalars["steps"][str(pid)] = float(v)
            else:
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous().numpy()
    return tensors, scalars


def load_optimizer_state(optimizer: Any, tensors: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
    """Inverse of ``optimizer_state`` (tensors land on the device of the optimiser's parameters)."""
    import torch

    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = torch.from_numpy(np.array(v))
    for pid, step in scalars["steps"].items():
        state.setdefault(int(pid), {})["step"] = torch.tensor(step)
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
