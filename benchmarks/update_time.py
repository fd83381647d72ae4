"""Learner update time, side by side in one run (JSON + PNG in benchmarks/results/update_time.*).

Where the whole network trains (optim.train_backbone), the critic's steps alone (the critic warm-up,
and the rest of an update once target_kl has ended the policy's steps) cannot move the backbone: the
critic's input is detached. They read one no-grad encoding of the batch instead of making one
backbone pass each. This times both paths on the same real rollout segments, with the same seeds:

- a critic warm-up update (algo.critic_warmup_iters=1)
- a PPO update that target_kl ends after the first policy step (algo.target_kl tiny)

The two paths end at the same weights (tests/test_distributed.py); only the time differs.

    python benchmarks/update_time.py [--preset tabletop_fewshot_ppo_rft] [--repeats 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from rlsys.actors.env_worker import EnvWorkerCore
from rlsys.actors.inference import InferenceEngine
from rlsys.config import load_config
from rlsys.learner.learner import Learner
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.progress import Progress
from rlsys.weights import load_numpy_state, state_to_numpy

OUT = Path(__file__).parent / "results"


def segments(cfg, state, workers: int) -> list:
    """One real rollout segment per env worker of the preset (in-process: the same data the Ray
    system would hand the learner)."""
    policy = FlowPolicy(cfg.policy)
    load_numpy_state(policy, state)
    engine = InferenceEngine(cfg, policy)
    engine.version = 0
    segs = []
    for w in range(workers):
        core = EnvWorkerCore(cfg, w)
        segs.append(core.rollout(engine.infer, lambda c: c, engine.values))
        core.close()
    return segs


def timed_update(cfg, state, segs, cached: bool, **algo) -> tuple[float, dict]:
    c = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, **algo))
    policy = FlowPolicy(c.policy)
    load_numpy_state(policy, state)
    learner = Learner(c, policy, seed=c.seed)
    learner.cache_critic_input = cached
    t0 = time.perf_counter()
    m = learner.update(segs)
    return time.perf_counter() - t0, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tabletop_fewshot_ppo_rft")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    # plain PPO: the imitation steps cost the same on either path
    cfg = load_config(args.preset, ["algo.name=ppo", "optim.train_backbone=true", *args.overrides])
    torch.manual_seed(cfg.seed)
    state = state_to_numpy(FlowPolicy(cfg.policy))
    print(f"update_time: collecting {cfg.rollout.num_env_workers} segments of {cfg.env.num_envs} envs x "
          f"{cfg.rollout.chunks_per_segment} chunks", flush=True)
    segs = segments(cfg, state, cfg.rollout.num_env_workers)
    cases = {"critic warm-up update": {"critic_warmup_iters": 1},
             "update stopped by target_kl after one policy step": {"critic_warmup_iters": 0, "target_kl": 1e-12}}
    res: dict = {"preset": args.preset, "overrides": args.overrides, "cpus": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(), "samples": int(sum(s.valid.sum() for s in segs)),
                 "epochs": cfg.algo.epochs, "minibatches": cfg.algo.minibatches, "cases": {}}
    with Progress("update_time", total=len(cases) * 2 * args.repeats) as bar:
        for name, algo in cases.items():
            row: dict = {}
            for cached in (False, True):  # the median of each path over its repeats
                times = []
                for _ in range(args.repeats):
                    dt, m = timed_update(cfg, state, segs, cached, **algo)
                    times.append(dt)
                    bar.advance(status=f"{name[:24]} {'cached' if cached else 'per-step'} {dt:.1f}s")
                row["cached" if cached else "per_step"] = {"seconds": float(np.median(times)), "all": times,
                                                            "epochs_run": m["epochs_run"],
                                                            "critic_epochs_run": m["critic_epochs_run"]}
            row["speedup"] = row["per_step"]["seconds"] / row["cached"]["seconds"]
            res["cases"][name] = row
    OUT.mkdir(exist_ok=True)
    (OUT / "update_time.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    plot(res, OUT / "update_time.png")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["cases"])
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for off, key, label in ((0.2, "per_step", "a backbone pass per critic step"),
                            (-0.2, "cached", "one encoding of the batch")):
        ax.barh(y + off, [res["cases"][n][key]["seconds"] for n in names], height=0.4, label=label)
    ax.set_yticks(y, [f"{n}\n({res['cases'][n]['speedup']:.2f}x)" for n in names])
    ax.set_xlabel(f"seconds per update: {res['samples']} samples, {res['epochs']} epochs x "
                  f"{res['minibatches']} minibatches, {res['cpus']} CPUs")
    ax.set_title(f"learner update through the whole network ({res['preset']})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
