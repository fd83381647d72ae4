"""Positive control for the RL pipeline: does PPO raise a reward that is easy to earn?

The lift runs stay flat. To tell a broken pipeline from a hard signal, this trains the SFT checkpoint
on the real tabletop lift env with ``env.reward: probe``: the height the hand gained this step
(``10 * dz``), a reward any policy can earn at once. Its ceiling is the hand going straight up from
its home height to the workspace top and staying there: ``10 * (0.30 - 0.22) / 100`` per step. A
working pipeline makes the reward per step rise toward it within tens of iterations; the control arm
(actor lr 1e-12: same rollouts and critic updates, a frozen actor) says how much of that is drift.

Two paths, each with both arms:

- ``--path inprocess``: the code the Ray actors run (``EnvWorkerCore`` rollout segments with
  autoreset, ``InferenceEngine`` Flow-SDE sampling with stored chains, ``Learner``: chunk GAE,
  critic, clipped PPO on recomputed log-probs) in one process -> probe_reward.json / .png
- ``--path system``: ``rlsys train`` itself on a local Ray (env-worker actors, the inference actor's
  cross-worker batching, the learner actor, object-store weight broadcast, pipelined env groups)
  -> probe_reward_system.json / .png

    python benchmarks/probe_reward.py --ckpt runs/few_shot/sft_90 [--iters 30]   # ~13 min on 2 cores
    python benchmarks/probe_reward.py --ckpt runs/few_shot/sft_90 --path system --iters 40
    python benchmarks/probe_reward.py --replot [--path system]                   # PNG from the JSON
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlsys.actors.env_worker import EnvWorkerCore
from rlsys.actors.inference import InferenceEngine
from rlsys.checkpoint import load_policy
from rlsys.config import load_config
from rlsys.envs.tabletop.env import PROBE_SCALE, WORKSPACE_HI
from rlsys.envs.tabletop.scene import HAND_HOME
from rlsys.learner.learner import Learner

OUT = Path(__file__).parent / "results"
PRESET = "tabletop_fewshot_ppo"


def run_arm(ckpt: str, actor_lr: float, iters: int, overrides: list[str], seed: int) -> list[dict]:
    cfg = load_config(PRESET, ["env.reward=probe", f"algo.actor_lr={actor_lr}", "rollout.env_groups=1",
                               f"seed={seed}", *overrides])
    torch.manual_seed(seed)
    policy, *_ = load_policy(ckpt, expect=cfg.policy, critic=cfg.policy.critic)
    engine = InferenceEngine(cfg, policy, seed=seed)
    learner = Learner(cfg, policy, seed)
    engine.version = learner.version
    core = EnvWorkerCore(cfg, 0)
    rows = []
    try:
        for it in range(iters):
            t0 = time.perf_counter()
            seg = core.rollout(engine.infer, lambda c: c, engine.values)
            m = learner.update([seg])
            engine.version = learner.version
            ran = seg.exec_mask & seg.valid[..., None]
            rows.append({"iteration": it + 1, "reward_per_step": float(seg.rewards[ran].mean()),
                         "approx_kl": m.get("approx_kl", 0.0), "explained_variance": m.get("explained_variance", 0.0),
                         "s": time.perf_counter() - t0})
            print(f"probe lr={actor_lr:g} {it + 1}/{iters}: reward/step {rows[-1]['reward_per_step']:+.4f} "
                  f"kl {rows[-1]['approx_kl']:.3f} ev {rows[-1]['explained_variance']:.2f}", flush=True)
    finally:
        core.close()
    return rows


def run_system_arm(ckpt: str, actor_lr: float, iters: int, overrides: list[str], seed: int) -> list[dict]:
    """``rlsys train`` on a local Ray with the probe reward; rows from the run's metrics.jsonl."""
    from rlsys.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(PRESET, ["env.reward=probe", f"algo.actor_lr={actor_lr}", f"iterations={iters}",
                                   f"eval_every={10 * iters}", "eval_episodes=4", f"init_checkpoint={ckpt}",
                                   f"run_dir={tmp}", f"seed={seed}", *overrides])
        run_dir = Path(train(cfg)["run_dir"])
        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"iteration": m["iteration"], "reward_per_step": m["rollout/reward_per_step"],
             "approx_kl": m.get("learner/approx_kl", 0.0),
             "explained_variance": m.get("learner/explained_variance", 0.0), "s": m["time/iteration_s"]}
            for m in metrics]


def ceiling(max_episode_steps: int = 100) -> float:
    """Best reward per step: straight up from the home height to the workspace top."""
    return PROBE_SCALE * (float(WORKSPACE_HI[2]) - HAND_HOME[2]) / max_episode_steps


def plot(res: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (arm, rows), color in zip(res["arms"].items(), ("C0", "C1")):
        it = [r["iteration"] for r in rows]
        y = np.array([r["reward_per_step"] for r in rows])
        ax.plot(it, y, c=color, lw=0.7, alpha=0.5)
        run = [y[max(0, i - 4): i + 1].mean() for i in range(len(y))]  # one segment is a noisy slice of episodes
        ax.plot(it, run, c=color, lw=2, label=f"{arm} (5-iteration mean)")
    ax.axhline(res["ceiling"], ls="--", c="k", lw=1, label="ceiling over whole episodes")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward per env step (hand height gained)")
    where = "rlsys train on a local Ray" if res.get("path") == "system" else "actor code in one process"
    ax.set_title(f"pipeline positive control: PPO vs frozen actor\n({where})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="runs/few_shot/sft_90")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=["env.num_envs=16"])
    ap.add_argument("--path", choices=("inprocess", "system"), default="inprocess")
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    args = ap.parse_args()
    name = "probe_reward" if args.path == "inprocess" else "probe_reward_system"
    if args.replot:
        res = json.loads((OUT / f"{name}.json").read_text())
        res.setdefault("ceiling", ceiling())
        plot(res, name)
        return
    torch.set_num_threads(2)
    arm = run_arm if args.path == "inprocess" else run_system_arm
    t0 = time.time()
    arms = {"ppo": arm(args.ckpt, args.lr, args.iters, args.overrides, args.seed),
            "frozen_actor": arm(args.ckpt, 1e-12, args.iters, args.overrides, args.seed)}

    def block(rows: list[dict], a: int, b: int) -> float:
        return float(np.mean([r["reward_per_step"] for r in rows[a:b]]))

    k = max(1, args.iters // 5)
    res = {"path": args.path, "ckpt": args.ckpt, "actor_lr": args.lr, "iters": args.iters,
           "overrides": args.overrides, "reward": f"env.reward=probe: {PROBE_SCALE:g} x hand height gained per step",
           "arms": arms, "first_vs_last_fifth": {n: [block(r, 0, k), block(r, -k, None)] for n, r in arms.items()},
           "ceiling": ceiling(), "wall_s": time.time() - t0}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=1))
    plot(res, name)
    print(json.dumps(res["first_vs_last_fifth"]), flush=True)


if __name__ == "__main__":
    main()
