"""Evaluation with deterministic (ODE) sampling: per-task success tables and a few videos.

Seeds: evaluation episode ``e`` of task index ``j`` uses seed ``EVAL_SEED_BASE + 10_000 * j + e``,
disjoint from demo seeds (``rlsys.envs.demos.DEMO_SEED_BASE``) and from training rollouts
(which draw 32-bit seeds from ``SeedSequence``). Suites with fixed initial states (LIBERO) get
``options["init_state"] = init_state_offset + e``: the community protocol is every task x its 50
init states (episode ``e`` on init state ``e``); or, with ``init_states`` given, its entries in turn
(a held-out split, e.g. SimplerEnv ids not used for training); other envs ignore the option.
The sampler's noise (the ODE's initial noise too) comes from one generator per block of episodes,
seeded by the block's task and first episode (:func:`block_generator`), so a block gets the same
noise whether it runs here or sharded over Ray tasks.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlsys.checkpoint import load_policy
from rlsys.config import EnvConfig
from rlsys.envs.pool import EnvPool, make_single_env
from rlsys.flow import ODE, Sampler, build_sampler
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.progress import Progress
from rlsys.prompt import ObservationBuilder
from rlsys.weights import load_numpy_state, state_to_numpy

EVAL_SEED_BASE = 2_000_000


def block_generator(seed: int, task_index: int, start: int) -> torch.Generator:
    """The sampler's generator for the block of episodes ``start ..`` of task ``task_index``."""
    return torch.Generator().manual_seed(EVAL_SEED_BASE + seed * 1_000_003 + 10_000 * task_index + start)


def episode_init_states(offset: int, listed: Sequence[int], start: int, n: int) -> list[int]:
    """Init-state ids of evaluation episodes ``start .. start + n - 1``."""
    return [listed[(start + i) % len(listed)] if listed else offset + start + i for i in range(n)]


def run_episodes(policy: Any, pool: Any, builder: ObservationBuilder, task: str, seeds: list[int],
                 sampler: Sampler, generator: torch.Generator, frames: list[np.ndarray] | None = None,
                 init_states: list[int] | None = None, infos: list[dict] | None = None) -> np.ndarray:
    """One episode per env of ``pool`` (len(seeds) == pool.num_envs) on ``task``; -> success [N].
    ``infos`` (if given) receives the reset infos."""
    n = pool.num_envs
    inits = init_states if init_states is not None else [None] * n
    obs, reset_infos = pool.reset(seeds=seeds, options=[{"task": task, "init_state": j} for j in inits])
    if infos is not None:
        infos.extend(reset_infos)
    done = np.zeros(n, bool)
    success = np.zeros(n, bool)
    h = policy.cfg.exec_horizon
    while not done.all():
        o = builder(obs["images"], obs["proprio"], pool.instructions)
        chunk = policy.sample(o, sampler, generator)
        a = chunk.actions[:, :, : pool.embodiment.action_dim]
        res = pool.execute_chunk(a, lengths=np.where(done, 0, h), autoreset=False)
        if frames is not None and not done[0]:
            frames.append(res.final_obs["images"][0, 0])
        ended = (res.terminated | res.truncated) & ~done
        success |= ended & res.success
        done |= ended
        obs = res.obs
    return success


def evaluate(policy: Any, env_cfg: EnvConfig, embodiment: Any, episodes_per_task: int,
             tasks: tuple[str, ...] | None = None, num_envs: int = 8, sampler: Sampler | None = None,
             seed: int = 0, video_dir: str | Path | None = None, progress: Any = None,
             init_state_offset: int = 0, init_states: Sequence[int] = (),
             videos: dict[str, list[np.ndarray]] | None = None) -> dict[str, Any]:
    """Success rate per task (ODE sampling by default), episodes run ``num_envs`` at a time.
    Each task's first episode is filmed into ``video_dir/TASK.gif``, or into ``videos[TASK]`` (frames,
    for a caller in another process to save)."""

    sampler = sampler or ODE()
    builder = ObservationBuilder(policy.cfg, embodiment)
    n = max(1, min(num_envs, episodes_per_task))
    cfg = dataclasses.replace(env_cfg, num_envs=n)
    results: dict[str, Any] = {}
    infos: list[dict] = []
    was_training = policy.training
    policy.eval()
    with EnvPool(cfg) as pool:
        all_tasks = tuple(tasks) if tasks else pool.task_names
        for j, task in enumerate(all_tasks):
            wins, frames = [], [] if video_dir or videos is not None else None
            for start in range(0, episodes_per_task, n):
                seeds = [EVAL_SEED_BASE + 10_000 * j + start + i for i in range(n)]
                inits = episode_init_states(init_state_offset, init_states, start, n)
                s = run_episodes(policy, pool, builder, task, seeds, sampler, block_generator(seed, j, start),
                                 frames if start == 0 else None, inits, infos)
                wins += s[: episodes_per_task - start].tolist()
                if progress is not None:
                    progress(min(n, episodes_per_task - start))
            results[task] = {"success": float(np.mean(wins)), "episodes": len(wins)}
            if video_dir and frames:
                save_video(Path(video_dir) / f"{task}.gif", frames)
            if videos is not None and frames:
                videos[task] = frames
    policy.train(was_training)
    mean = float(np.mean([r["success"] for r in results.values()]))
    return {"env": env_cfg.name, "tasks": results, "mean_success": mean, "sampler": sampler_name(sampler),
            "seed_base": EVAL_SEED_BASE, "init_state_offset": init_state_offset, "init_states": list(init_states),
            **asset_status(infos)}


def asset_status(infos: list[dict]) -> dict[str, str]:
    """``{"asset_status": ...}`` where the env reports one (SimplerEnv: official / stand-in; RoboTwin)."""
    found = sorted({str(i["asset_status"]) for i in infos if "asset_status" in i})
    return {"asset_status": "+".join(found)} if found else {}


def sampler_name(sampler: Sampler) -> str:
    """``ODE`` / ``FlowSDE(noise_level=0.5)``: what an eval table says it sampled with."""
    fields = ", ".join(f"{f.name}={getattr(sampler, f.name)}" for f in dataclasses.fields(sampler)) \
        if dataclasses.is_dataclass(sampler) else ""
    return f"{type(sampler).__name__}({fields})" if fields else type(sampler).__name__


def evaluate_on_ray(policy: Any, env_cfg: EnvConfig, embodiment: Any, episodes_per_task: int,
                    tasks: tuple[str, ...], num_envs: int, workers: int, video_dir: str | Path | None = None,
                    progress: Any = None, init_state_offset: int = 0,
                    init_states: Sequence[int] = (), sampler: Sampler | None = None, seed: int = 0) -> dict[str, Any]:
    """:func:`evaluate` with the episodes sharded over Ray tasks (each: an EnvPool of ``num_envs``
    simulators + a CPU policy copy; weights ``ray.put`` once). Same env seeds, init states and
    sampler noise per block as the local path, so the same results; ``workers`` blocks run at a
    time (a cluster's sim pool)."""
    import ray


    sampler = sampler or ODE()
    n = max(1, min(num_envs, episodes_per_task))
    state = ray.put(state_to_numpy(policy))
    blocks = [(j, task, start) for j, task in enumerate(tasks) for start in range(0, episodes_per_task, n)]
    pending, out, infos = [], {}, []
    for b in blocks:
        j, task, start = b
        ref = _remote_eval_block().remote(policy.cfg, state, dataclasses.replace(env_cfg, num_envs=n), embodiment, task,
                                 [EVAL_SEED_BASE + 10_000 * j + start + i for i in range(n)],
                                 episode_init_states(init_state_offset, init_states, start, n),
                                 min(n, episodes_per_task - start), bool(video_dir) and start == 0,
                                 sampler, (seed, j, start))
        pending.append(ref)
        out[ref] = b
        while len(pending) >= workers or (b is blocks[-1] and pending):
            done, pending = ray.wait(pending, num_returns=1)
            wins, frames, block_infos = ray.get(done[0])
            out[done[0]] = (*out[done[0]], wins, frames)
            infos += block_infos
            if progress is not None:
                progress(len(wins))
    results: dict[str, Any] = {}
    for task in tasks:
        rows = sorted((v for v in out.values() if v[1] == task), key=lambda v: v[2])
        wins = [w for v in rows for w in v[3]]
        results[task] = {"success": float(np.mean(wins)), "episodes": len(wins)}
        if video_dir and rows[0][4]:
            save_video(Path(video_dir) / f"{task}.gif", rows[0][4])
    mean = float(np.mean([r["success"] for r in results.values()]))
    return {"env": env_cfg.name, "tasks": results, "mean_success": mean, "sampler": sampler_name(sampler),
            "seed_base": EVAL_SEED_BASE, "init_state_offset": init_state_offset, "init_states": list(init_states),
            "ray_workers": workers, **asset_status(infos)}


def _eval_block(policy_cfg: Any, state: dict[str, np.ndarray], env_cfg: EnvConfig, embodiment: Any, task: str,
                seeds: list[int], inits: list[int], count: int, frames: bool, sampler: Sampler,
                block: tuple[int, int, int]) -> tuple[list[bool], list | None, list]:

    torch.set_num_threads(1)
    policy = FlowPolicy(policy_cfg)
    load_numpy_state(policy, state)
    policy.eval()
    video: list | None = [] if frames else None
    infos: list[dict] = []
    with EnvPool(env_cfg) as pool:
        s = run_episodes(policy, pool, ObservationBuilder(policy_cfg, embodiment), task, seeds, sampler,
                         block_generator(*block), video, inits, infos)
    return s[:count].tolist(), video, [{"asset_status": i["asset_status"]} for i in infos if "asset_status" in i]


def _remote_eval_block() -> Any:
    import ray

    return ray.remote(num_cpus=1)(_eval_block)


def save_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, [np.repeat(np.repeat(f, 2, 0), 2, 1) for f in frames], duration=1.0 / fps, loop=0)


def markdown_table(result: dict[str, Any], title: str = "") -> str:
    lines = [f"### {title}" if title else "", "| task | success | episodes |", "|---|---|---|"]
    for task, r in result["tasks"].items():
        lines.append(f"| {task} | {100 * r['success']:.1f}% | {r['episodes']} |")
    lines.append(f"| **mean** | **{100 * result['mean_success']:.1f}%** | |")
    if "asset_status" in result:
        lines.append(f"\nassets: **{result['asset_status']}**")
    return "\n".join(line for line in lines if line) + "\n"


def write_result(out_dir: str | Path, result: dict[str, Any], title: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    (out / "eval.md").write_text(markdown_table(result, title))


def env_spec(env_cfg: EnvConfig) -> tuple[tuple[str, ...], Any]:
    """(task names, embodiment) of ``env_cfg`` from one env: built here, or for a simulator that lives
    in its own interpreter (env.python) asked there. Fails on a bad env / task / camera."""

    if env_cfg.python:
        with EnvPool(env_cfg, num_envs=1) as pool:
            return tuple(pool.task_names), pool.embodiment
    env = make_single_env(env_cfg)
    try:
        return tuple(env.task_names), env.embodiment
    finally:
        env.close()


def task_names(env_cfg: EnvConfig) -> tuple[str, ...]:
    return env_spec(env_cfg)[0]


def torch_device(name: str, field: str) -> str:
    """``auto`` / ``cpu`` / ``cuda`` -> a torch device; ``cuda`` where torch has none is an error, not a
    slow CPU run."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field}=cuda but torch {torch.__version__} sees no CUDA device "
                         f"(CUDA build {torch.version.cuda}); use {field}=cpu or auto")
    return name


def run_eval_command(cfg: Any, ckpt: str, out_dir: str | None, episodes: int, tasks: list[str] | None,
                     env: str | None = None, init_state_offset: int = 0, workers: int = 0,
                     sampler: str = "ode", device: str = "cpu") -> dict[str, Any]:
    """``rlsys eval``: load a checkpoint, evaluate on its env (or ``env``), write eval.json/eval.md/videos.

    ``cfg.env`` supplies how to run (render quality, ``num_envs`` at a time, ``subprocess``: one
    simulator per process, ``max_episode_steps``); the checkpoint supplies cameras and image size.
    ``sampler``: ``ode`` (deterministic, the default protocol) or ``rollout`` (``cfg.sampler``, the
    stochastic policy RL trains, e.g. Flow-SDE at ``sampler.noise_level``).
    """

    if sampler not in ("ode", "rollout"):
        raise ValueError(f"--sampler {sampler!r}: allowed: ode, rollout")
    smp = ODE() if sampler == "ode" else build_sampler(cfg.sampler)

    policy, env_cfg, embodiment, _ = load_policy(ckpt, device=torch_device(device, "--device"))
    for flag, what in smp.required_heads().items():
        if not getattr(policy.cfg, flag):
            raise ValueError(f"--sampler rollout with sampler.name={cfg.sampler.name} needs {what}; {ckpt} has "
                             f"none (use sampler.name=flow_sde, or an RL checkpoint trained with policy.{flag})")
    e = cfg.env
    python = e.python or env_cfg.python  # a simulator in its own interpreter (RoboTwin) stays there
    env_cfg = dataclasses.replace(env_cfg, name=env or env_cfg.name, render=e.render,
                                  subprocess=e.subprocess or bool(python), python=python,
                                  max_episode_steps=e.max_episode_steps,
                                  tasks=tuple(tasks) if tasks else (() if env else env_cfg.tasks))
    all_tasks, embodiment = env_spec(env_cfg)  # fails here, before any episode, on a bad env / task / camera
    out = Path(out_dir or Path(ckpt) / "eval")
    with Progress(f"eval {env_cfg.name}", total=episodes * len(all_tasks)) as bar:
        if workers > 0:
            from rlsys.actors.system import ensure_ray

            ensure_ray(cfg, num_cpus=workers)
            result = evaluate_on_ray(policy, env_cfg, embodiment, episodes, all_tasks, e.num_envs, workers,
                                     video_dir=out / "videos", progress=bar.advance,
                                     init_state_offset=init_state_offset, init_states=cfg.eval_init_states,
                                     sampler=smp)
        else:
            result = evaluate(policy, env_cfg, embodiment, episodes, all_tasks, num_envs=e.num_envs, sampler=smp,
                              video_dir=out / "videos", progress=bar.advance, init_state_offset=init_state_offset,
                              init_states=cfg.eval_init_states)
    result["checkpoint"] = str(ckpt)
    result["out_dir"] = str(out)
    write_result(out, result, f"{env_cfg.name}: {ckpt}")
    print(markdown_table(result, f"{env_cfg.name}: {ckpt}"))
    return result
