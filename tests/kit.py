"""Shared test helpers: a small, fast config and real rollouts on the tabletop (no mocks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rlsys.actors.env_worker import EnvWorkerCore
from rlsys.actors.inference import InferenceEngine
from rlsys.config import load_config
from rlsys.policy.flow_policy import FlowPolicy

SMALL = [
    "env.tasks=[lift]", "env.cameras=[agentview]", "env.image_size=32", "env.num_envs=2",
    "policy.num_cameras=1", "policy.image_size=32", "policy.width=32", "policy.heads=2",
    "policy.backbone_layers=1", "policy.expert_layers=1",
    "rollout.chunks_per_segment=3", "rollout.num_env_workers=2", "rollout.env_groups=1",
    "algo.epochs=1", "algo.minibatches=2", "iterations=2", "eval_every=2", "eval_episodes=1",
    "checkpoint_every=1",
]


def small_cfg(tmp: Path, *extra: str, preset: str = "tabletop_ppo"):
    return load_config(preset, [*SMALL, f"run_dir={tmp}", *extra])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def core_and_engine(cfg, episodic: bool = False):
    """An env worker's core and an inference engine on a fresh seeded policy (version 0)."""
    torch.manual_seed(0)
    engine = InferenceEngine(cfg, FlowPolicy(cfg.policy))
    engine.version = 0
    core = EnvWorkerCore(cfg, 0, episodic=episodic)
    return core, engine


def rollout(cfg, segments: int = 1, episodic: bool = False):
    """``segments`` consecutive real rollout segments of ``cfg`` and the rollout weights' engine."""
    core, engine = core_and_engine(cfg, episodic)
    segs = [core.rollout(engine.infer, lambda c: c, engine.values) for _ in range(segments)]
    core.close()
    return segs, engine


REPO = Path(__file__).resolve().parents[1]
# RoboTwin runs in its own interpreter (scripts/setup_robotwin.sh) with the offline assets beside the repo
ROBOTWIN_PYTHON = os.environ.get("RLSYS_ROBOTWIN_PYTHON", str(REPO / ".venv-robotwin" / "bin" / "python"))
ROBOTWIN_ASSETS = Path(os.environ.get("RLSYS_ROBOTWIN_ASSETS", REPO.parent / "shared" / "assets" / "robotwin"))
