"""``rlsys train`` / ``python -m rlsys.train``: a run directory around the training spine.

A run directory holds ``config.yaml``, ``metrics.jsonl``, ``tb/`` (TensorBoard), ``sft/`` (the
few-shot SFT start when no ``init_checkpoint`` is given), ``eval/iter_NNNNNN/`` (tables + videos)
and ``checkpoint/`` (policy safetensors + optimizer state + trainer JSON; written atomically).
``rlsys train --resume RUN_DIR`` continues at the saved iteration with the saved config.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save as save_np

from rlsys import metrics as M
from rlsys.checkpoint import load_policy, save_policy
from rlsys.config import TrainConfig, to_dict
from rlsys.configtools import from_dict
from rlsys.envs.api import Embodiment
from rlsys.registry import ALGORITHMS


class Run:
    def __init__(self, cfg: TrainConfig, run_dir: Path, embodiment: Embodiment | None = None) -> None:
        self.cfg, self.dir = cfg, run_dir
        self.embodiment = embodiment
        self.logger = M.MetricsLogger(run_dir)
        self.start_clock()

    def start_clock(self) -> None:
        """Evaluations report ``wall_s`` from here: the start of the RL phase (after any SFT)."""
        self._t0 = time.time()

    @classmethod
    def create(cls, cfg: TrainConfig) -> Run:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.run_dir) / f"{cfg.env.name}-{cfg.algo.name}-{stamp}"
        run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return cls(cfg, run_dir)

    @classmethod
    def resume(cls, run_dir: str | Path) -> Run:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
        cfg = from_dict(TrainConfig, yaml.safe_load((run_dir / "config.yaml").read_text()))
        return cls(cfg, run_dir)

    # ---------------------------------------------------------------- metrics
    def rollout_metrics(self, segments: list[Any], system: Any, collect_s: float) -> dict[str, Any]:
        steps = sum(int(s.exec_mask.sum()) for s in segments)
        chunks = sum(int(s.valid.sum()) for s in segments)
        ended = sum(int(((s.terminated | s.truncated) & s.valid).sum()) for s in segments)
        wins = sum(int((s.success & s.valid).sum()) for s in segments)
        reward = sum(float(np.where(s.exec_mask & s.valid[..., None], s.rewards, 0.0).sum()) for s in segments)
        st = system.stats()
        infer = st["infer"]
        return {
            M.ENV_STEPS: float(steps), M.ENV_STEPS_PER_S: steps / max(collect_s, 1e-9),
            M.CHUNKS_PER_S: chunks / max(collect_s, 1e-9), M.EPISODES: float(ended),
            M.SUCCESS_RATE: wins / ended if ended else 0.0, M.REWARD_PER_STEP: reward / max(steps, 1),
            M.ACTOR_RESTARTS: float(system.worker_restarts), M.DISCARDED_SEGMENTS: float(system.discarded_segments),
            M.BAD_EPISODES: float(sum(e["bad_episodes"] for e in st["env"])),
            M.INFER_BATCH_SIZE: float(np.mean([i["batch_size"] for i in infer])),
            M.INFER_LATENCY_S: float(np.mean([i["latency_s"] for i in infer])),
            M.INFER_QUEUE_DEPTH: float(max(i["queue_peak"] for i in infer)),
            M.INFER_LATENCY_HIST: [x for i in infer for x in i["latencies"]],
            M.INFER_GPU_MEMORY_GB: float(max(i.get("gpu_memory_gb", 0.0) for i in infer)),
        }

    # ---------------------------------------------------------------- eval + checkpoints
    def _policy(self, system: Any) -> Any:
        import ray

        from rlsys.policy.flow_policy import FlowPolicy
        from rlsys.weights import load_numpy_state

        version, (ref,) = ray.get(system.learner.publish.remote())
        policy = FlowPolicy(self.cfg.policy)
        load_numpy_state(policy, ray.get(ref))
        return policy, version

    def evaluate(self, system: Any, iteration: int) -> float:
        from rlsys.evaluation import evaluate, write_result

        policy, version = self._policy(system)
        out = self.dir / "eval" / f"iter_{iteration:06d}"
        res = evaluate(policy, self.cfg.env, self.embodiment, self.cfg.eval_episodes, seed=self.cfg.seed,
                       num_envs=self.cfg.eval_num_envs,
                       video_dir=out / "videos", init_state_offset=self.cfg.eval_init_state_offset,
                       init_states=self.cfg.eval_init_states)
        res.update({"iteration": iteration, "version": version, "wall_s": time.time() - self._t0})
        write_result(out, res, f"iteration {iteration}")
        return float(res["mean_success"])

    def checkpoint(self, system: Any, iteration: int) -> Path:
        import ray

        from rlsys.policy.flow_policy import FlowPolicy
        from rlsys.weights import load_numpy_state

        st = ray.get(system.learner.training_state.remote())
        policy = FlowPolicy(self.cfg.policy)
        load_numpy_state(policy, st["policy"])
        trainer = {"iteration": iteration, "version": st["version"], "learner_iteration": st["iteration"],
                   "optimizer": st["optimizer_scalars"], "rng": st["rng"]}
        extra = {"optimizer.safetensors": save_np(st["optimizer"]) if st["optimizer"] else save_np({}),
                 "trainer.json": json.dumps(trainer).encode()}
        meta = {"stage": "rl", "iteration": iteration, "version": st["version"]}
        return save_policy(self.dir / "checkpoint", policy, self.cfg.env, self.embodiment, meta=meta, extra=extra)

    def load_checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
        from rlsys.weights import state_to_numpy

        ck = self.dir / "checkpoint"
        policy, _, self.embodiment, _ = load_policy(ck, expect=self.cfg.policy)
        trainer = json.loads((ck / "trainer.json").read_text())
        state = {"policy": state_to_numpy(policy), "optimizer": load_np(str(ck / "optimizer.safetensors")),
                 "optimizer_scalars": trainer["optimizer"], "version": trainer["version"],
                 "iteration": trainer["learner_iteration"], "rng": trainer["rng"]}
        return state["policy"], state, int(trainer["iteration"])


def initial_policy_state(run: Run) -> dict[str, np.ndarray]:
    """From ``init_checkpoint``, else run the few-shot SFT into ``RUN_DIR/sft`` first."""
    from rlsys.sft import run_sft
    from rlsys.weights import state_to_numpy

    cfg = run.cfg
    ckpt = cfg.init_checkpoint
    if not ckpt:
        print(f"train: no init_checkpoint; running few-shot SFT ({cfg.sft.demos_per_task} demos/task) first",
              flush=True)
        ckpt = str(run.dir / "sft")
        run_sft(cfg, ckpt)
    policy, _, run.embodiment, _ = load_policy(ckpt, expect=cfg.policy, critic=cfg.policy.critic,
                                               noise_head=cfg.policy.noise_head)
    return state_to_numpy(policy)


def imitation_demo_dir(cfg: TrainConfig, run_dir: Path) -> Path:
    """The demos of ``imitation.demos``: ``sft.demos``, else the folder the init checkpoint's meta
    names, else the run's own few-shot SFT's."""
    from rlsys.checkpoint import read_config

    if cfg.sft.demos:
        d, source = Path(cfg.sft.demos), "sft.demos"
    elif cfg.init_checkpoint:
        named = read_config(cfg.init_checkpoint)["meta"].get("demos")
        if not named:
            raise ValueError(f"imitation.demos=true: init_checkpoint {cfg.init_checkpoint} names no demo folder in "
                             "its meta; set sft.demos=DIR (the demos it was trained on)")
        d, source = Path(named), f"init_checkpoint {cfg.init_checkpoint}"
    else:
        d, source = run_dir / "sft_demos", "the run's own few-shot SFT"
    if not (d / "meta" / "info.json").exists():
        raise FileNotFoundError(f"imitation.demos=true: {d} (from {source}) is not a demo folder (no meta/info.json); "
                                "set sft.demos=DIR or imitation.demos=false")
    return d


def uses_demo_frames(cfg: TrainConfig) -> bool:
    """The algorithm imitates and ``imitation.demos`` puts the SFT demos in its memory."""
    return bool(ALGORITHMS.get(cfg.algo.name).imitates and cfg.imitation.demos)


def imitation_demo_frames(cfg: TrainConfig, run: Run) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """(obs, actions [F, H, A], valid [F, H]) of every demo frame for ``imitation.demos``, else None."""
    if not uses_demo_frames(cfg):
        return None
    from rlsys.envs.demos import load_demos
    from rlsys.prompt import ObservationBuilder
    from rlsys.sft import SFTData, check_demos_match

    d = imitation_demo_dir(cfg, run.dir)
    ds = load_demos(d)
    check_demos_match(ds, cfg, d)
    data = SFTData(ds, ObservationBuilder(cfg.policy, run.embodiment), cfg.policy.action_horizon)
    print(f"train: imitation memory starts with {len(data)} demo frames from {d}", flush=True)
    return data.obs, data.actions, data.valid


def train(cfg: TrainConfig, resume: str | None = None) -> dict[str, Any]:
    from rlsys.actors.system import RaySystem, start_ray

    # placement the machine cannot hold fails in start_ray: before a run directory, the SFT or any actor
    if resume:
        run = Run.resume(resume)
        start_ray(run.cfg)
        init_state, training_state, start = run.load_checkpoint()
    else:
        if uses_demo_frames(cfg) and (cfg.sft.demos or cfg.init_checkpoint):
            imitation_demo_dir(cfg, Path(cfg.run_dir))  # a missing demo folder fails before any run directory
        start_ray(cfg)
        run = Run.create(cfg)
        init_state, training_state, start = initial_policy_state(run), None, 0
    cfg = run.cfg
    print(f"train: run directory {run.dir}", flush=True)
    system = RaySystem(cfg, init_state, episodic=ALGORITHMS.get(cfg.algo.name).episodic,
                       demo_frames=imitation_demo_frames(cfg, run))
    try:
        if training_state is not None:
            import ray

            ray.get(system.learner.load_training_state.remote(training_state))
        from rlsys.learner.loop import train_loop

        run.start_clock()
        last = train_loop(run, system, start)
    finally:
        system.shutdown()
        run.logger.close()
    return {"run_dir": str(run.dir), "last": last}


if __name__ == "__main__":
    from rlsys.cli import main

    main(["train", *sys.argv[1:]])
