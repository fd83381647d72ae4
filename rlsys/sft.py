"""Supervised flow-matching training from demos (``rlsys sft``): the starting point for RL."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlsys.checkpoint import save_policy
from rlsys.config import TrainConfig
from rlsys.envs.demos import DemoSet, expert_demos, load_demos
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.progress import Progress
from rlsys.prompt import ObservationBuilder
from rlsys.types import Observation


def random_shift(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """DrQ-style augmentation: pad by edge replication and crop back at a random offset.
    images [B, C, S, S, 3] uint8 (one offset per sample and camera)."""
    b, c, s = images.shape[:3]
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty_like(images)
    offs = rng.integers(0, 2 * pad + 1, (b, c, 2))
    for i in range(b):
        for j in range(c):
            y, x = offs[i, j]
            out[i, j] = padded[i, j, y : y + s, x : x + s]
    return out


class SFTData:
    """All demo frames as policy inputs plus the next-H action chunks."""

    def __init__(self, demos: DemoSet, builder: ObservationBuilder, horizon: int) -> None:
        self.obs = builder(demos.images, demos.states, demos.instructions)
        self.actions, self.valid = demos.action_chunks(horizon)

    def __len__(self) -> int:
        return self.obs.batch_size

    def batch(
        self, idx: np.ndarray, rng: np.random.Generator, shift: int
    ) -> tuple[Observation, np.ndarray, np.ndarray]:
        obs = self.obs.index(idx)
        if shift:
            obs = dataclasses.replace(obs, images=random_shift(obs.images, shift, rng))
        return obs, self.actions[idx], self.valid[idx]


STD_FLOOR = 1e-2


def normalization_stats(demos: DemoSet) -> dict[str, np.ndarray]:
    """Per-channel mean/std of actions and proprio. Constant channels get std 1; near-constant ones
    a floor of 0.01 (else tiny closed-loop drift, e.g. a yaw that never varies in the demos,
    becomes a huge normalised input)."""

    def std(x: np.ndarray) -> np.ndarray:
        s = x.std(0)
        return np.where(s < 1e-6, 1.0, np.maximum(s, STD_FLOOR)).astype(np.float32)

    return {"action_mean": demos.actions.mean(0), "action_std": std(demos.actions),
            "proprio_mean": demos.states.mean(0), "proprio_std": std(demos.states)}


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_sft(policy: FlowPolicy, data: SFTData, cfg: TrainConfig, seed: int = 0,
              shift: int = 4, log: Any = None) -> list[dict[str, float]]:
    """Run ``cfg.sft.steps`` AdamW steps of the masked flow-matching loss; returns the loss log."""
    s = cfg.sft
    opt = torch.optim.AdamW(policy.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    running, t0 = 0.0, time.time()
    policy.train()
    with Progress("sft", total=s.steps) as bar:
        for step in range(s.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, s.steps, s.lr)
            idx = rng.integers(0, len(data), s.batch_size)
            obs, actions, valid = data.batch(idx, rng, shift)
            loss = policy.sft_loss(obs, actions, valid, s.timestep_sampling, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            running += loss.item()
            if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
                n = (step % s.log_every) + 1
                rate = (step + 1) * s.batch_size / (time.time() - t0)
                row = {"step": step + 1, "loss": running / n, "samples_per_s": rate}
                history.append(row)
                running = 0.0
                if log is not None:
                    log(row)
            bar.advance(status=f"loss {loss.item():.4f}")
    return history


def sft_device(name: str) -> str:
    """``sft.device`` -> a torch device; ``cuda`` where torch has none is an error, not a slow CPU run."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"sft.device=cuda but torch {torch.__version__} sees no CUDA device "
                         f"(CUDA build {torch.version.cuda}); use sft.device=cpu or auto")
    return name


def check_demos_match(ds: DemoSet, cfg: TrainConfig, demo_dir: str | Path) -> None:
    """The demos must come from the config's simulator, cameras and image size."""
    rl = ds.info["rlsys"]
    if rl["env"] != cfg.env.name or tuple(rl["cameras"]) != cfg.env.cameras or rl["image_size"] != cfg.env.image_size:
        raise ValueError(f"demos in {demo_dir} were recorded with env={rl['env']} cameras={rl['cameras']} "
                         f"image_size={rl['image_size']}, but the config has env={cfg.env.name} "
                         f"cameras={list(cfg.env.cameras)} image_size={cfg.env.image_size}")


def run_sft(cfg: TrainConfig, out_dir: str | Path, demos: str | None = None) -> dict[str, Any]:
    """``rlsys sft``: demos (given, or generated by the scripted expert) -> SFT -> checkpoint -> eval."""
    from rlsys.evaluation import evaluate, task_names, write_result

    out = Path(out_dir)
    torch.manual_seed(cfg.seed)
    demo_dir = demos or cfg.sft.demos
    if not demo_dir:
        demo_dir = str(out.parent / f"{out.name}_demos")
        if not (Path(demo_dir) / "meta" / "info.json").exists():  # else generated by an earlier run
            expert_demos(cfg.env, demo_dir, cfg.sft.demos_per_task, workers=cfg.sft.demo_workers)
    ds = load_demos(demo_dir)
    check_demos_match(ds, cfg, demo_dir)
    device = sft_device(cfg.sft.device)
    policy = FlowPolicy(cfg.policy).to(device)
    policy.set_normalization(**normalization_stats(ds))
    data = SFTData(ds, ObservationBuilder(cfg.policy, ds.embodiment), cfg.policy.action_horizon)
    print(f"sft: {len(ds.episode_lengths)} episodes, {len(data)} frames from {demo_dir} on {device}", flush=True)
    t0 = time.time()
    history = train_sft(policy, data, cfg, seed=cfg.seed)
    train_s = time.time() - t0
    save_policy(out, policy, cfg.env, ds.embodiment,
                meta={"stage": "sft", "demos": str(demo_dir), "episodes": len(ds.episode_lengths),
                      "steps": cfg.sft.steps, "train_seconds": train_s})
    (out / "sft_log.json").write_text(json.dumps(history, indent=2))
    result: dict[str, Any] = {"checkpoint": str(out), "train_seconds": train_s, "final_loss": history[-1]["loss"]}
    if cfg.sft.eval_episodes:
        tasks = task_names(cfg.env)
        with Progress("sft eval", total=cfg.sft.eval_episodes * len(tasks)) as bar:
            ev = evaluate(policy, cfg.env, ds.embodiment, cfg.sft.eval_episodes, tasks,
                          num_envs=cfg.eval_num_envs, video_dir=out / "eval" / "videos", progress=bar.advance,
                          init_state_offset=cfg.eval_init_state_offset, init_states=cfg.eval_init_states)
        write_result(out / "eval", ev, f"SFT {out}")
        result["eval"] = ev
        print(f"sft eval (ODE): mean success {100 * ev['mean_success']:.1f}% "
              + ", ".join(f"{t} {100 * r['success']:.0f}%" for t, r in ev["tasks"].items()), flush=True)
    return result
