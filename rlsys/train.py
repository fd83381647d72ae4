"""``rlsys train``: a run directory around the training spine (``rlsys.learner.loop.train_loop``).

A run directory holds ``config.yaml``, ``metrics.jsonl``, ``tb/`` (TensorBoard), ``sft/`` (the
few-shot SFT start when no ``init_checkpoint`` is given; ``sft.partial/`` while it runs),
``eval/iter_NNNNNN/`` (tables + videos), ``checkpoints/iter_NNNNNN/`` (policy safetensors + optimizer
state + trainer JSON + manifest; each written whole; the ``checkpoint_keep`` newest kept) with
``checkpoint`` linking the newest, and, at the end, ``report.png`` / ``report.html`` and
``summary.json``. ``rlsys train --resume RUN_DIR`` continues where the run stopped, with the saved
config: inside the SFT stage from its last SFT checkpoint, else at the newest complete checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml
from safetensors.numpy import save as save_numpy

from rlsys import metrics as M
from rlsys.actors.system import RaySystem, start_ray
from rlsys.checkpoint import (
    BASE,
    IMITATION,
    CheckpointError,
    checkpoint_candidates,
    load_policy,
    load_training_checkpoint,
    read_config,
    read_imitation,
    save_rotating,
    save_state,
    training_files,
)
from rlsys.config import ConfigError, TrainConfig, to_dict
from rlsys.configtools import from_dict, merge, parse_override
from rlsys.envs.api import Embodiment
from rlsys.evaluation import save_video, write_result
from rlsys.fileio import replace_text
from rlsys.learner.loop import train_loop
from rlsys.prompt import ObservationBuilder
from rlsys.registry import ALGORITHMS
from rlsys.report import make_report
from rlsys.sft import SFTData, check_demos, load_sft_demos, run_sft, sft_plan
from rlsys.weights import state_to_numpy

# what `rlsys train --resume RUN_DIR --set KEY=VALUE` may change: how long the run goes on and how often
# it evaluates and checkpoints, never what it trains or how (that would not be the same run)
RESUME_SETTABLE = ("iterations", "max_minutes", "eval_every", "eval_episodes", "checkpoint_every", "checkpoint_keep")


def write_config(path: Path, cfg: TrainConfig) -> None:
    replace_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def resume_config(run_dir: Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """The saved config of ``run_dir`` with ``overrides`` applied (and written back, atomically).
    Fails before anything starts on a folder that is not a run or an override of another key."""
    path = run_dir / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    data = yaml.safe_load(path.read_text())
    for text in overrides:
        over = parse_override(text)
        key = text.split("=", 1)[0].strip()
        if key not in RESUME_SETTABLE:
            raise ConfigError(f"--set {key}: a resumed run keeps its saved config; on --resume only "
                              f"{', '.join(RESUME_SETTABLE)} may change")
        data = merge(data, over)
    cfg = from_dict(TrainConfig, data)
    if overrides:
        write_config(path, cfg)
        print(f"train: {run_dir}: config.yaml updated ({', '.join(overrides)})", flush=True)
    return cfg


class Run:
    def __init__(self, cfg: TrainConfig, run_dir: Path, embodiment: Embodiment | None = None) -> None:
        self.cfg, self.dir = cfg, run_dir
        self.embodiment = embodiment
        self.logger = M.MetricsLogger(run_dir, cfg.tracking, to_dict(cfg))
        self.start_clock()

    def start_clock(self) -> None:
        """Evaluations report ``wall_s`` from here: the start of the RL phase (after any SFT)."""
        self._t0 = time.time()

    @classmethod
    def create(cls, cfg: TrainConfig) -> Run:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.run_dir) / f"{cfg.env.name}-{cfg.algo.name}-{stamp}"
        run_dir.mkdir(parents=True, exist_ok=False)
        write_config(run_dir / "config.yaml", cfg)
        return cls(cfg, run_dir)

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Run:
        """The run in ``run_dir`` with its saved config; ``overrides`` may change only
        ``RESUME_SETTABLE`` (run longer, evaluate or checkpoint at another rate)."""
        run_dir = Path(run_dir)
        cfg = resume_config(run_dir, overrides)
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
            M.SIM_RESTARTS: float(sum(e["restarts"] for e in st["env"])),
            M.SIM_RECYCLED: float(sum(e["recycled"] for e in st["env"])),
            M.TRANSPORT_FALLBACKS: float(sum(e["transport_fallbacks"] for e in st["env"])),
            M.STATS_UNAVAILABLE: float(system.stats_unavailable),
            M.INFER_BATCH_SIZE: float(np.mean([i["batch_size"] for i in infer])),
            M.INFER_LATENCY_S: float(np.mean([i["latency_s"] for i in infer])),
            M.INFER_QUEUE_DEPTH: float(max(i["queue_peak"] for i in infer)),
            M.INFER_LATENCY_HIST: [x for i in infer for x in i["latencies"]],
            M.INFER_GPU_MEMORY_GB: float(max(i["gpu_memory_gb"] for i in infer)),
        }

    # ---------------------------------------------------------------- eval + checkpoints
    def evaluate(self, system: Any, iteration: int) -> float:
        out = self.dir / "eval" / f"iter_{iteration:06d}"
        res, videos = system.evaluate(self.cfg.env, self.embodiment, episodes_per_task=self.cfg.eval_episodes,
                                      seed=self.cfg.seed, num_envs=self.cfg.eval_num_envs,
                                      init_state_offset=self.cfg.eval_init_state_offset,
                                      init_states=self.cfg.eval_init_states)
        for task, frames in videos.items():
            save_video(out / "videos" / f"{task}.gif", frames)
        res.update({"iteration": iteration, "wall_s": time.time() - self._t0})
        write_result(out, res, f"iteration {iteration}")
        return float(res["mean_success"])

    def base_checkpoint(self) -> Path | None:
        """The complete checkpoint this run started from (the init checkpoint, else its own SFT): a
        trained-only RL checkpoint names it for the frozen weights. None where there is none."""
        base = Path(self.cfg.init_checkpoint) if self.cfg.init_checkpoint else self.dir / "sft"
        ok = (base / "model.safetensors").is_file() and not (base / BASE).exists()
        return base if ok else None

    def checkpoint(self, system: Any, iteration: int) -> Path:
        """An RL checkpoint from the learner's state, written without building the policy here: with
        frozen parts (policy.freeze, LoRA), only what trains, the rest named in base.json."""
        base = self.base_checkpoint()
        st = system.training_state(trained_only=base is not None)
        trainer = {"iteration": iteration, "version": st["version"], "learner_iteration": st["iteration"],
                   "optimizer": st["optimizer_scalars"], "rng": st["rng"], "imitation": st["imitation_scalars"]}
        meta = {"stage": "rl", "iteration": iteration, "version": st["version"]}
        memory = {} if st["imitation"] is None else {IMITATION: save_numpy(st["imitation"])}  # rft, ppo_rft
        extra = training_files(trainer, st["optimizer"], memory)
        return save_rotating(self.dir, iteration, self.cfg.checkpoint_keep, lambda folder: save_state(
            folder, st["policy"], self.cfg.policy, self.cfg.env, self.embodiment, meta, extra,
            base=None if st["complete"] else base))

    def restore_learner_state(self) -> tuple[dict[str, Any], int]:
        """For a restarted learner: (the newest complete checkpoint's training state, its iteration), or
        ({"policy": the run's initial weights}, 0) before the first checkpoint."""
        if not checkpoint_candidates(self.dir):
            return {"policy": initial_policy_state(self)}, 0
        _, state, iteration = self.load_checkpoint()
        return state, iteration

    def load_checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
        """The newest complete checkpoint; a damaged one (truncated, changed, unreadable) is named and
        the next older one used."""
        for folder in checkpoint_candidates(self.dir):
            try:
                policy, self.embodiment, trainer, optimizer = load_training_checkpoint(folder, expect=self.cfg.policy)
                imitation = read_imitation(folder)
                break
            except CheckpointError as e:
                print(f"train: checkpoint {folder} is damaged ({e}); trying the one before it", flush=True)
        else:
            raise CheckpointError(f"{self.dir}: no complete checkpoint to resume from")
        weights = state_to_numpy(policy)
        state = {"policy": weights, "optimizer": optimizer, "optimizer_scalars": trainer["optimizer"],
                 "version": trainer["version"], "iteration": trainer["learner_iteration"], "rng": trainer["rng"],
                 "imitation": imitation, "imitation_scalars": trainer.get("imitation")}
        return weights, state, int(trainer["iteration"])


def initial_policy_state(run: Run) -> dict[str, np.ndarray]:
    """From ``init_checkpoint``, else the few-shot SFT in ``RUN_DIR/sft`` (run now, continued from its
    last SFT checkpoint where an earlier attempt was interrupted, or kept where it finished)."""
    cfg = run.cfg
    ckpt = cfg.init_checkpoint
    if not ckpt:
        ckpt = str(run.dir / "sft")
        if not (run.dir / "sft" / "model.safetensors").exists():
            print(f"train: no init_checkpoint; few-shot SFT ({cfg.sft.demos_per_task} demos/task) first -> {ckpt}",
                  flush=True)
            run_sft(cfg, ckpt, resume=True)
    policy, _, run.embodiment, _ = load_policy(ckpt, expect=cfg.policy, critic=cfg.policy.critic,
                                               noise_head=cfg.policy.noise_head)
    return state_to_numpy(policy)


def imitation_demo_dir(cfg: TrainConfig, run_dir: Path) -> Path:
    """The demos of ``imitation.demos``: ``sft.demos``, else the folder the init checkpoint's meta
    names, else the run's own few-shot SFT's."""
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
    d = imitation_demo_dir(cfg, run.dir)
    ds = load_sft_demos(cfg, d, run.embodiment)
    data = SFTData(ds, ObservationBuilder(cfg.policy, run.embodiment), cfg.policy.action_horizon)
    print(f"train: imitation memory starts with {len(data)} demo frames from {d}", flush=True)
    return data.obs, data.actions, data.valid


# seconds per RL iteration on 2 idle CPU cores for the tabletop presets (README: Numbers), for the plan
RL_ITERATION_S_2CORES = 28.0


def print_plan(run: Run, start: int, resumed: bool) -> None:
    """The run directory and its stages, with the time each is expected to take on 2 idle CPU cores."""
    cfg = run.cfg
    lines = [f"train: run directory {run.dir}" + (" (resumed)" if resumed else "")]
    if not cfg.init_checkpoint and not (run.dir / "sft" / "model.safetensors").exists():
        lines += [f"  stage SFT: {line}" for line in sft_plan(cfg)]
    rl = f"{cfg.iterations - start} iterations"
    if cfg.max_minutes:
        rl += f" or {cfg.max_minutes:g} min, whichever comes first"
    elif cfg.env.name == "tabletop":
        rl += f" (~{(cfg.iterations - start) * RL_ITERATION_S_2CORES / 60:.0f} min on 2 CPU cores)"
    lines.append(f"  stage RL: {cfg.algo.name} on {cfg.env.name}, {rl}; evaluation every {cfg.eval_every} "
                 f"iterations ({cfg.eval_episodes} episodes/task), checkpoint every {cfg.checkpoint_every}")
    print("\n".join(lines), flush=True)


def summarise(run: Run, wall_s: float) -> dict[str, Any]:
    """Success before (the SFT start's evaluation, where this run measured one) and after, the wall
    time and where the outputs went; writes summary.json, report.png and report.html."""
    before = _read_eval(run.dir / "sft" / "eval" / "eval.json")
    evals = sorted((run.dir / "eval").glob("iter_*/eval.json"))
    after = _read_eval(evals[-1]) if evals else None
    png, html = make_report(run.dir)
    out = {"run_dir": str(run.dir), "wall_s": wall_s, "before": before, "after": after,
           "checkpoint": str(run.dir / "checkpoint"), "report": [str(png), str(html)]}
    (run.dir / "summary.json").write_text(json.dumps(out, indent=2))

    def fmt(e: dict[str, Any] | None) -> str:
        return "not measured" if e is None else f"{100 * e['success']:.1f}% of {e['episodes']} episodes (ODE)"

    print(f"train: done in {wall_s / 60:.1f} min\n  success before RL: {fmt(before)}\n  success after RL:  {fmt(after)}"
          f"\n  checkpoint: {out['checkpoint']}\n  report: {png} and {html}\n  metrics: {run.dir / 'metrics.jsonl'}",
          flush=True)
    return out


def _read_eval(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    episodes = sum(t["episodes"] for t in res["tasks"].values())
    return {"success": res["mean_success"], "episodes": episodes, "file": str(path)}


def train(cfg: TrainConfig | None, resume: str | None = None, resume_overrides: tuple[str, ...] | list[str] = ()
          ) -> dict[str, Any]:
    """``rlsys train``: the plan, the SFT start (unless given), the RL loop, the summary. The config was
    checked when it was built; a placement the machine cannot hold fails in start_ray, before a run
    directory, the SFT or any actor. ``resume``: a run directory to continue (``cfg`` is then unused;
    ``resume_overrides``: see ``RESUME_SETTABLE``)."""
    t0 = time.time()
    if resume:
        run = Run.resume(resume, resume_overrides)
        start_ray(run.cfg)
        resumed_rl = bool(checkpoint_candidates(run.dir))
    else:
        assert cfg is not None
        if uses_demo_frames(cfg) and (cfg.sft.demos or cfg.init_checkpoint):
            imitation_demo_dir(cfg, Path(cfg.run_dir))  # a missing demo folder fails before any run directory
        if cfg.sft.demos and (uses_demo_frames(cfg) or not cfg.init_checkpoint):
            check_demos(cfg, cfg.sft.demos)  # so does a dataset the feature map does not fit
        start_ray(cfg)
        run = Run.create(cfg)
        resumed_rl = False
    cfg = run.cfg
    if resumed_rl:
        init_state, training_state, start = run.load_checkpoint()
    else:  # a new run, or one stopped before its first RL checkpoint (during its SFT stage, say)
        training_state, start = None, 0
    print_plan(run, start, bool(resume))
    if not resumed_rl:
        init_state = initial_policy_state(run)
    system = RaySystem(cfg, init_state, episodic=ALGORITHMS.get(cfg.algo.name).episodic,
                       demo_frames=imitation_demo_frames(cfg, run))
    try:
        if training_state is not None:
            ray.get(system.learner.load_training_state.remote(training_state))
        run.start_clock()
        last = train_loop(run, system, start)
    finally:
        system.shutdown()
        run.logger.close()
    summary = summarise(run, time.time() - t0)
    return {"run_dir": str(run.dir), "last": last, "summary": summary}
