"""Supervised flow-matching training from demos (``rlsys sft``): the starting point for RL."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy_file
from safetensors.numpy import save as save_numpy

from rlsys.augment import random_shift
from rlsys.checkpoint import (
    load_optimizer_state,
    load_training_checkpoint,
    optimizer_state,
    save_policy,
    save_training_checkpoint,
)
from rlsys.config import ConfigError, TrainConfig, to_dict
from rlsys.configtools import from_dict
from rlsys.envs.api import Embodiment
from rlsys.envs.demos import DemoSet, expert_demos, load_demos
from rlsys.envs.lerobot import FeatureMap, check_feature_map, read_info
from rlsys.evaluation import env_spec, evaluate, task_names, torch_device, write_result
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.policy.spec import pretrained_norm_stats
from rlsys.progress import Progress
from rlsys.prompt import ObservationBuilder
from rlsys.types import Observation


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


def load_pretrained(policy: FlowPolicy, demo_stats: dict[str, np.ndarray] | None, demo_dir: str | None
                    ) -> dict[str, Any]:
    """``policy.pretrained``'s weights into ``policy``, with the folder's norm_stats.json, else the demos'
    statistics. -> {"missing": [...], "unexpected": [...], "normalization": where the statistics came from}."""
    cfg = policy.cfg
    report: dict[str, Any] = policy.model.load_pretrained(cfg.pretrained)
    stats = pretrained_norm_stats(cfg)
    if stats is not None:
        report["normalization"] = str(Path(cfg.pretrained) / "norm_stats.json")
        policy.set_normalization(**{k: np.asarray(v, np.float32) for k, v in stats.items()})
    elif demo_stats is not None:
        report["normalization"] = f"demos {demo_dir}"
        policy.set_normalization(**demo_stats)
    else:
        raise ConfigError(f"policy.pretrained: {cfg.pretrained} has no norm_stats.json; give demos "
                          "(--demos / sft.demos) to compute the action and state statistics from")
    return report


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


class SFTCheckpointer:
    """Periodic SFT checkpoints in ``OUT.partial``: a loadable policy checkpoint plus the optimiser, the
    step, the RNG states, the loss log and the run's config, so an interrupted SFT (Ctrl-C, a killed
    job) continues where it stopped with ``resume``. The finished SFT goes to ``OUT``; the partial
    folder is then removed."""

    def __init__(self, out: Path, cfg: TrainConfig, embodiment: Any, meta: dict[str, Any]) -> None:
        self.path = out.with_name(out.name + ".partial")
        self.cfg, self.embodiment, self.meta = cfg, embodiment, meta

    def save(self, policy: FlowPolicy, opt: torch.optim.Optimizer, step: int, rng: np.random.Generator,
             gen: torch.Generator, history: list[dict[str, float]]) -> None:
        tensors, scalars = optimizer_state(opt)
        trainer = {"step": step, "optimizer": scalars, "rng": rng.bit_generator.state, "history": history,
                   "config": to_dict(self.cfg)}
        files = {"generator.safetensors": save_numpy({"state": gen.get_state().numpy()}),
                 "sft_log.json": json.dumps(history, indent=2).encode()}
        save_training_checkpoint(self.path, policy, self.cfg.env, self.embodiment, trainer, tensors,
                                 meta={**self.meta, "stage": "sft-partial", "step": step}, files=files)

    def restore(self, policy: FlowPolicy, opt: torch.optim.Optimizer, rng: np.random.Generator,
                gen: torch.Generator) -> tuple[int, list[dict[str, float]]]:
        """-> (steps done, loss log); (0, []) where no partial SFT exists."""
        if not (self.path / "trainer.json").exists():
            return 0, []
        saved, _, trainer, tensors = load_training_checkpoint(self.path, expect=policy.cfg)
        policy.load_state_dict(saved.state_dict())
        load_optimizer_state(opt, tensors, trainer["optimizer"])
        rng.bit_generator.state = trainer["rng"]
        gen.set_state(torch.from_numpy(load_numpy_file(str(self.path / "generator.safetensors"))["state"]))
        print(f"sft: resuming at step {trainer['step']} from {self.path}", flush=True)
        return int(trainer["step"]), list(trainer["history"])

    def finish(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def train_sft(policy: FlowPolicy, data: SFTData, cfg: TrainConfig, seed: int = 0, shift: int = 4,
              log: Any = None, saver: SFTCheckpointer | None = None) -> list[dict[str, float]]:
    """Run ``cfg.sft.steps`` AdamW steps of the masked flow-matching loss; returns the loss log. With
    ``saver``: continues from its last checkpoint, saves one every ``sft.checkpoint_every`` steps and
    on Ctrl-C (then re-raises)."""
    s = cfg.sft
    trainable = [p for p in policy.parameters() if p.requires_grad]  # policy.freeze'd parts stay as they are
    opt = torch.optim.AdamW(trainable, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    done, history = saver.restore(policy, opt, rng, gen) if saver else (0, [])
    running, t0, t0_step = 0.0, time.time(), done
    policy.train()
    with Progress("sft", total=s.steps) as bar:
        bar.advance(done)
        try:
            for step in range(done, s.steps):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, s.steps, s.lr)
                idx = rng.integers(0, len(data), s.batch_size)
                obs, actions, valid = data.batch(idx, rng, shift)
                loss = policy.sft_loss(obs, actions, valid, s.timestep_sampling, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                opt.step()
                done = step + 1
                running += loss.item()
                if done % s.log_every == 0 or done == s.steps:
                    n = (step % s.log_every) + 1
                    row = {"step": done, "loss": running / n,
                           "samples_per_s": (done - t0_step) * s.batch_size / (time.time() - t0)}
                    history.append(row)
                    running = 0.0
                    if log is not None:
                        log(row)
                if saver and done % s.checkpoint_every == 0 and done < s.steps:
                    saver.save(policy, opt, done, rng, gen, history)
                bar.advance(status=f"loss {loss.item():.4f}")
        except KeyboardInterrupt:
            if saver:
                saver.save(policy, opt, done, rng, gen, history)
                print(f"\nsft: interrupted at step {done}/{s.steps}; checkpoint and loss log in {saver.path} "
                      "(resume: the same command with --resume)", flush=True)
            raise
    return history


def demo_feature_map(cfg: TrainConfig) -> FeatureMap:
    """The dataset features the config maps onto the env's cameras, state and action."""
    s = cfg.sft
    default = FeatureMap.default(cfg.env.cameras)
    return FeatureMap(cameras=s.image_keys or default.cameras, state=s.state_key, action=s.action_key)


def check_demos(cfg: TrainConfig, demo_dir: str | Path) -> None:
    """The demo folder is a readable LeRobotDataset whose features the config's map names (from its
    metadata alone: before Ray, a run directory or any simulator)."""
    try:
        check_feature_map(read_info(demo_dir), demo_feature_map(cfg), demo_dir)
    except ValueError as e:  # a foreign dataset's keys, or a version rlsys does not read
        raise ConfigError(f"sft.demos: {e}") from None


def load_sft_demos(cfg: TrainConfig, demo_dir: str | Path, embodiment: Embodiment | None = None) -> DemoSet:
    """The demos SFT and the imitation steps train on. A folder rlsys recorded must come from the config's
    simulator, cameras and image size. Any other LeRobotDataset (v3.0 / v2.1) is read through the
    config's feature map (``sft.image_keys`` / ``state_key`` / ``action_key``), its frames resized to
    ``env.image_size``; its state and action must have the env's widths (``embodiment``: the env's,
    asked of the simulator when not given)."""
    s = cfg.sft
    info = read_info(demo_dir)
    fmap = demo_feature_map(cfg)
    rl = info.get("rlsys")
    if rl is not None and fmap == FeatureMap.default(cfg.env.cameras):
        recorded = (rl["env"], tuple(rl["cameras"]), rl["image_size"])
        if recorded != (cfg.env.name, cfg.env.cameras, cfg.env.image_size):
            raise ValueError(f"demos in {demo_dir} were recorded with env={rl['env']} cameras={rl['cameras']} "
                             f"image_size={rl['image_size']}, but the config has env={cfg.env.name} "
                             f"cameras={list(cfg.env.cameras)} image_size={cfg.env.image_size}")
        return load_demos(demo_dir, max_per_task=s.max_episodes_per_task)
    check_demos(cfg, demo_dir)  # the keys, before any simulator starts
    if embodiment is None:
        embodiment = env_spec(cfg.env)[1]
    try:
        return load_demos(demo_dir, fmap, embodiment, image_size=cfg.env.image_size,
                          max_per_task=s.max_episodes_per_task)
    except ValueError as e:  # the mapped state or action is not as wide as the env's
        raise ConfigError(f"sft.demos: {e}") from None


# measured on 2 idle CPU cores (tabletop, two 64 px cameras, tiny policy): for the plan each run prints
SFT_STEPS_PER_S_2CORES = {32: 6.8, 64: 3.6}
DEMO_EPISODES_PER_MIN_2CORES = 600.0


def sft_plan(cfg: TrainConfig) -> list[str]:
    """What the SFT stage will do, with the time it should take on 2 idle CPU cores (tabletop)."""
    s = cfg.sft
    tabletop = cfg.env.name == "tabletop"
    tasks = (len(cfg.env.tasks) or 6) if tabletop else max(1, len(cfg.env.tasks))
    lines = []
    if not s.demos:
        n = s.demos_per_task * tasks
        est = f" (~{n / DEMO_EPISODES_PER_MIN_2CORES:.0f} min)" if tabletop else ""
        lines.append(f"{n} scripted-expert demos ({s.demos_per_task}/task){est}")
    rate = SFT_STEPS_PER_S_2CORES.get(s.batch_size) if tabletop and cfg.policy.width == 128 else None
    est = f" (~{s.steps / rate / 60:.0f} min)" if rate else ""
    lines.append(f"{s.steps} SFT steps of batch {s.batch_size}{est}, a checkpoint every {s.checkpoint_every} steps")
    if s.eval_episodes:
        lines.append(f"evaluation: {s.eval_episodes} episodes/task (ODE)")
    return lines


def run_sft(cfg: TrainConfig, out_dir: str | Path, demos: str | None = None, resume: bool = False) -> dict[str, Any]:
    """``rlsys sft``: demos (given, or generated by the scripted expert) -> SFT -> checkpoint -> eval.
    ``resume``: continue from ``OUT.partial`` where an interrupted SFT left one."""
    out = Path(out_dir)
    torch.manual_seed(cfg.seed)
    demo_dir = demos or cfg.sft.demos
    if not demo_dir:
        demo_dir = str(out.parent / f"{out.name}_demos")
        if not (Path(demo_dir) / "meta" / "info.json").exists():  # else generated by an earlier run
            expert_demos(cfg.env, demo_dir, cfg.sft.demos_per_task, workers=cfg.sft.demo_workers)
            print(f"sft: demos written to {demo_dir}", flush=True)
    demo_dir = str(Path(demo_dir).resolve())  # the checkpoint's meta names it: absolute, valid from any cwd
    ds = load_sft_demos(cfg, demo_dir)
    device = torch_device(cfg.sft.device, "sft.device")
    policy = FlowPolicy(cfg.policy)
    if cfg.policy.pretrained:  # the folder's weights (and its statistics where it has them)
        report = load_pretrained(policy, normalization_stats(ds), demo_dir)
        print(f"sft: {cfg.policy.model} weights from {cfg.policy.pretrained} ({len(report['missing'])} missing, "
              f"{len(report['unexpected'])} unexpected keys); normalisation from {report['normalization']}", flush=True)
    else:
        policy.set_normalization(**normalization_stats(ds))
    policy = policy.to(device)
    data = SFTData(ds, ObservationBuilder(cfg.policy, ds.embodiment), cfg.policy.action_horizon)
    print(f"sft: {len(ds.episode_lengths)} episodes, {len(data)} frames from {demo_dir} on {device}", flush=True)
    meta = {"stage": "sft", "demos": str(demo_dir), "episodes": len(ds.episode_lengths), "steps": cfg.sft.steps}
    saver = SFTCheckpointer(out, cfg, ds.embodiment, meta)
    if not resume and saver.path.exists():
        print(f"sft: starting over; {saver.path} from an earlier run is replaced (--resume continues it)", flush=True)
        saver.finish()
    t0 = time.time()
    history = train_sft(policy, data, cfg, seed=cfg.seed, saver=saver)
    train_s = time.time() - t0
    save_policy(out, policy, cfg.env, ds.embodiment, meta={**meta, "train_seconds": train_s})
    saver.finish()
    (out / "sft_log.json").write_text(json.dumps(history, indent=2))
    result: dict[str, Any] = {"checkpoint": str(out), "train_seconds": train_s, "final_loss": history[-1]["loss"]}
    print(f"sft: checkpoint {out} (loss log {out / 'sft_log.json'})", flush=True)
    if cfg.sft.eval_episodes:
        tasks = task_names(cfg.env)
        with Progress("sft eval", total=cfg.sft.eval_episodes * len(tasks)) as bar:
            ev = evaluate(policy, cfg.env, ds.embodiment, cfg.sft.eval_episodes, tasks, seed=cfg.seed,
                          num_envs=cfg.eval_num_envs, video_dir=out / "eval" / "videos", progress=bar.advance,
                          init_state_offset=cfg.eval_init_state_offset, init_states=cfg.eval_init_states)
        write_result(out / "eval", ev, f"SFT {out}")
        result["eval"] = ev
        print(f"sft eval (ODE): mean success {100 * ev['mean_success']:.1f}% "
              + ", ".join(f"{t} {100 * r['success']:.0f}%" for t, r in ev["tasks"].items())
              + f" -> {out / 'eval'}", flush=True)
    return result


def resume_sft(out_dir: str | Path) -> dict[str, Any]:
    """``rlsys sft --resume OUT``: continue an interrupted SFT with the config it started with."""
    partial = Path(out_dir).with_name(Path(out_dir).name + ".partial")
    if not (partial / "trainer.json").exists():
        raise FileNotFoundError(f"{partial}: no interrupted SFT to resume (no trainer.json)")
    cfg = from_dict(TrainConfig, json.loads((partial / "trainer.json").read_text())["config"])
    return run_sft(cfg, out_dir, resume=True)
