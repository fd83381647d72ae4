"""Collection overlapped with the update (rollout.overlap), side by side in one run (JSON + PNG in
benchmarks/results/overlap.*).

Each case is a short real `rlsys train` run of the same preset from the same checkpoint, with every
iteration a full PPO update (algo.critic_warmup_iters=0):

- ``collocated``: the learner also serves inference; collect, then update (the presets' default)
- ``disaggregated``: one inference worker apart from the learner; collect, then update
- ``overlap``: disaggregated, and the next segments are collected while the learner updates
  (rollout.overlap=true, rollout.max_staleness=1: they come from the weights one update behind)
- ``overlap_1thread``: overlap with placement.learner_threads=1, where the update shares the cores
  with the simulators and the inference worker

It reports the median iteration time (the first iteration, which starts the actors, left out),
env steps per second of wall time, how long the learner and the collection each took, and the PPO
epochs the updates ran (target_kl ends them early; compare the work done, not the time alone).

    python benchmarks/overlap.py --init-checkpoint DIR [--preset tabletop_fewshot_ppo_rft] [--iterations 7]
        [--cases collocated,disaggregated,overlap,overlap_1thread] [--set key=value ...]

DIR: an SFT checkpoint of the preset's task (benchmarks/few_shot.py writes one), so the rollouts
succeed as often as in a real run and the imitation steps have successes to fit.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import ray

from rlsys import metrics as M
from rlsys.config import load_config
from rlsys.train import train

OUT = Path(__file__).parent / "results"

CASES = {
    "collocated": ["placement.mode=collocated"],
    "disaggregated": ["placement.mode=disaggregated"],
    "overlap": ["placement.mode=disaggregated", "rollout.overlap=true", "rollout.max_staleness=1"],
    "overlap_1thread": ["placement.mode=disaggregated", "rollout.overlap=true", "rollout.max_staleness=1",
                        "placement.learner_threads=1"],
}


def run_case(preset: str, overrides: list[str], work: Path) -> dict:
    cfg = load_config(preset, [*overrides, f"run_dir={work}"])
    out = train(cfg)
    ray.shutdown()  # each case starts its own local Ray: no actor outlives its case
    rows = [json.loads(x) for x in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:]  # the first iteration starts the actors (and collects its own segments)

    def med(key: str) -> float:
        return float(np.median([r[key] for r in steady if key in r])) if any(key in r for r in steady) else 0.0

    wall = sum(r[M.ITERATION_S] for r in steady)
    return {"iterations": len(rows), "iteration_s": med(M.ITERATION_S), "collect_s": med(M.COLLECT_S),
            "learner_s": med(M.LEARNER_S), "update_wait_s": med(M.UPDATE_S), "overlap_s": med(M.OVERLAP_S),
            "env_steps_per_wall_s": sum(r[M.ENV_STEPS] for r in steady) / wall,
            "epochs_run": med(M.EPOCHS_RUN), "sil_s": med(M.SIL_S),
            "staleness_max": max(r[M.STALENESS_MAX] for r in rows),
            "stale_rejected": sum(r[M.STALE_REJECTED] for r in rows),
            "rollout_success": [r[M.SUCCESS_RATE] for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init-checkpoint", required=True, help="SFT checkpoint of the preset's task")
    ap.add_argument("--preset", default="tabletop_fewshot_ppo_rft")
    ap.add_argument("--iterations", type=int, default=7)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"--cases: unknown {unknown}; allowed: {', '.join(CASES)}")
    if args.iterations < 2:
        ap.error("--iterations: at least 2 (the first starts the actors and is left out)")
    common = [f"init_checkpoint={args.init_checkpoint}", f"iterations={args.iterations}",
              "algo.critic_warmup_iters=0", f"eval_every={args.iterations}", "eval_episodes=1",
              f"checkpoint_every={args.iterations}", *args.overrides]
    for c in cases:  # every case's config is checked before the first one starts
        load_config(args.preset, [*common, *CASES[c]])
    res: dict = {"preset": args.preset, "overrides": args.overrides, "cpus": os.cpu_count(),
                 "init_checkpoint": args.init_checkpoint, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="rlsys_overlap_") as work:
        for i, c in enumerate(cases):
            print(f"overlap: case {i + 1}/{len(cases)}: {c} ({args.iterations} iterations)", flush=True)
            res["cases"][c] = run_case(args.preset, [*common, *CASES[c]], Path(work))
            print(json.dumps({c: res["cases"][c]}), flush=True)
    base = res["cases"].get("collocated") or next(iter(res["cases"].values()))
    for row in res["cases"].values():
        row["speedup_vs_first"] = base["iteration_s"] / row["iteration_s"]
    OUT.mkdir(exist_ok=True)
    (OUT / "overlap.json").write_text(json.dumps(res, indent=1))
    plot(res, OUT / "overlap.png")
    print(json.dumps(res, indent=1))


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["cases"])
    rows = [res["cases"][n] for n in names]
    y = np.arange(len(names))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.8 * len(names) + 1.8))
    a.barh(y + 0.27, [r["iteration_s"] for r in rows], height=0.27, label="iteration (wall)")
    a.barh(y, [r["learner_s"] for r in rows], height=0.27, label="update (learner)")
    a.barh(y - 0.27, [r["collect_s"] for r in rows], height=0.27, label="collection")
    a.set_yticks(y, [f"{n}\n({r['speedup_vs_first']:.2f}x, {r['epochs_run']:.2f} PPO epochs)"
                     for n, r in zip(names, rows)])
    a.set_xlabel("seconds (median over the iterations after the first)")
    a.legend(fontsize=8, loc="lower right")
    b.barh(y, [r["env_steps_per_wall_s"] for r in rows])
    b.set_yticks(y, names)
    b.set_xlabel("env steps per second of wall time")
    fig.suptitle(f"collection overlapped with the update: {res['preset']}, {res['cpus']} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
