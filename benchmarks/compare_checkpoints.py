"""Re-evaluate checkpoints side by side with many episodes (ODE and/or the rollout sampler), so a
training run's in-run evaluation (a few dozen episodes) can be checked against its start.
Writes benchmarks/results/<name>.json and .png.

    python benchmarks/compare_checkpoints.py --ckpt sft=DIR --ckpt ppo=DIR --tasks lift --episodes 300 \\
        --samplers ode,rollout --workers 2 --name compare_lift
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from rlsys.config import load_config
from rlsys.evaluation import run_eval_command

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ckpt", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--tasks", nargs="*")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--samplers", default="ode,rollout", help="comma list of: ode, rollout")
    ap.add_argument("--workers", type=int, default=0, help="Ray tasks for the episodes (0: in-process)")
    ap.add_argument("--preset", default="tabletop_sft", help="run settings (env.num_envs, sampler.*)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="compare_checkpoints")
    args = ap.parse_args()
    bad = [c for c in args.ckpt if "=" not in c]
    if bad:
        ap.error(f"--ckpt {bad[0]!r}: expected NAME=DIR")
    ckpts = dict(c.split("=", 1) for c in args.ckpt)  # name -> dir
    samplers = args.samplers.split(",")
    cfg = load_config(args.preset, args.overrides)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in samplers:  # one sampler at a time: every checkpoint on the same episodes
            for name, path in ckpts.items():
                t0 = time.time()
                r = run_eval_command(cfg, path, str(Path(tmp) / f"{name}_{sampler}"), args.episodes, args.tasks,
                                     workers=args.workers, sampler=sampler)
                p, n = r["mean_success"], sum(t["episodes"] for t in r["tasks"].values())
                rows.append({"checkpoint": name, "path": path, "sampler": r["sampler"],
                             "success": p, "episodes": n, "stderr": math.sqrt(p * (1 - p) / n),
                             "tasks": {k: v["success"] for k, v in r["tasks"].items()}, "seconds": time.time() - t0})
                print(json.dumps(rows[-1]), flush=True)
    res = {"episodes_per_task": args.episodes, "samplers": samplers, "preset": args.preset,
           "overrides": args.overrides, "rows": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(res, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(rows), 3.6))
    labels = [f"{r['checkpoint']}\n{r['sampler'].split('(')[0]}" for r in rows]
    ax.bar(labels, [r["success"] for r in rows], yerr=[r["stderr"] for r in rows], capsize=4)
    ax.set(ylabel="success", ylim=(0, 1), title=f"{args.episodes} episodes per task, +-1 standard error")
    fig.tight_layout()
    fig.savefig(OUT / f"{args.name}.png", dpi=100)


if __name__ == "__main__":
    main()
