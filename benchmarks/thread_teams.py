"""Learner step time when one thread, or two, run torch in the process (JSON + PNG in
benchmarks/results/thread_teams.*).

A Ray actor that runs its torch work on a worker thread (PolicyActor's executor, so the event loop
stays free for inference requests) used to build the policy on the actor's main thread first. Both
threads then ran OpenMP regions, and every later learner step ran slower than the same step in a
plain script. This times the self-imitation step of ``--preset`` (``algo.sil_batch`` chunks, the
whole network or the action expert as the preset says) on real rollout observations, in fresh
processes started as Ray starts a 1-CPU actor (``OMP_NUM_THREADS=1``), with 2 torch threads:

- ``one_thread``: the policy built and trained on one worker thread (PolicyActor now)
- ``second_thread``: built on the main thread, trained on a worker thread (PolicyActor before)
- ``main_only``: built and trained on the main thread (a plain script)

Variants alternate, ``--repeats`` processes each, so the machine's drift hits all of them alike.

    python benchmarks/thread_teams.py [--preset tabletop_fewshot_ppo_rft] [--repeats 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results"
VARIANTS = ("one_thread", "second_thread", "main_only")
THREADS = 2


def child(variant: str, preset: str, steps: int, overrides: list[str]) -> dict:
    import torch

    from rlsys.actors.env_worker import EnvWorkerCore
    from rlsys.actors.inference import InferenceEngine
    from rlsys.config import load_config
    from rlsys.learner.learner import Learner
    from rlsys.policy.flow_policy import FlowPolicy

    cfg = load_config(preset, ["algo.sil_demos=false", "env.num_envs=8", *overrides])  # a small rollout is enough

    def build() -> Learner:
        torch.manual_seed(cfg.seed)
        policy = FlowPolicy(cfg.policy)
        engine = InferenceEngine(cfg, policy)
        engine.version = 0
        core = EnvWorkerCore(cfg, 0)
        seg = core.rollout(engine.infer, lambda c: c, engine.values)
        core.close()
        t, n = seg.shape
        return Learner(cfg, policy, cfg.seed, sil_base=(seg.obs, seg.chunk.actions, seg.exec_mask.reshape(t * n, -1)))

    def run(learner: Learner) -> dict:
        for _ in range(3):
            learner._sil_step()
        c0, t0 = os.times(), time.perf_counter()
        for _ in range(steps):
            learner._sil_step()
        wall, c1 = time.perf_counter() - t0, os.times()
        return {"step_s": wall / steps, "busy_cores": (c1.user + c1.system - c0.user - c0.system) / wall}

    if variant == "main_only":
        torch.set_num_threads(THREADS)
        return run(build())
    pool = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(THREADS,))
    if variant == "second_thread":
        torch.set_num_threads(THREADS)
        learner = build()
    else:
        learner = pool.submit(build).result()
    return pool.submit(run, learner).result()


def plot(res: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, v in enumerate(VARIANTS):
        runs = res["variants"][v]["runs"]
        ax[0].bar(i, res["variants"][v]["step_s"], color=f"C{i}", alpha=0.7)
        ax[0].plot([i] * len(runs), [r["step_s"] for r in runs], "k.")
        ax[1].bar(i, res["variants"][v]["busy_cores"], color=f"C{i}", alpha=0.7)
        ax[1].plot([i] * len(runs), [r["busy_cores"] for r in runs], "k.")
    for a, label in zip(ax, ("seconds per imitation step", "busy cores during the steps")):
        a.set_xticks(range(len(VARIANTS)), VARIANTS, fontsize=8)
        a.set_ylabel(label)
    ax[1].axhline(THREADS, color="gray", ls=":")
    fig.suptitle(f"{res['preset']}: {res['sil_batch']}-chunk steps, {THREADS} torch threads, "
                 f"{res['cpus']} cores, OMP_NUM_THREADS=1 (as Ray sets it)", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tabletop_fewshot_ppo_rft")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="thread_teams")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.steps, args.overrides)))
        return
    from rlsys.config import load_config
    from rlsys.progress import Progress

    cfg = load_config(args.preset, args.overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    cmd = [sys.executable, __file__, "--preset", args.preset, "--steps", str(args.steps)]
    cmd += [x for o in args.overrides for x in ("--set", o)]
    with Progress("thread_teams", args.repeats * len(VARIANTS)) as bar:
        for _ in range(args.repeats):
            for v in VARIANTS:
                out = subprocess.run([*cmd, "--child", v], env=env, capture_output=True, text=True, check=True)
                runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
                bar.advance(status=f"{v}: {runs[v][-1]['step_s']:.3f} s a step, "
                                   f"{runs[v][-1]['busy_cores']:.2f} cores busy")
    res = {"preset": args.preset, "overrides": args.overrides, "cpus": os.cpu_count(), "torch_threads": THREADS,
           "sil_batch": cfg.algo.sil_batch, "steps": args.steps, "repeats": args.repeats, "variants": {
               v: {"step_s": float(np.mean([r["step_s"] for r in rs])),
                   "busy_cores": float(np.mean([r["busy_cores"] for r in rs])), "runs": rs}
               for v, rs in runs.items()}}
    base = res["variants"]["one_thread"]["step_s"]
    res["second_thread_over_one_thread"] = res["variants"]["second_thread"]["step_s"] / base
    res["main_only_over_one_thread"] = res["variants"]["main_only"]["step_s"] / base
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    plot(res, args.name)
    print(json.dumps({v: round(r["step_s"], 3) for v, r in res["variants"].items()}
                     | {"second_thread/one_thread": round(res["second_thread_over_one_thread"], 2)}))


if __name__ == "__main__":
    main()
