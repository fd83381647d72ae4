"""Learning efficacy: few-shot SFT -> PPO (or GRPO, RFT) on the tabletop suite within a wall-clock
budget; success (ODE evaluation) vs wall time and env steps. Writes
benchmarks/results/learning_<algo>.json and .png.

    python benchmarks/learning.py --algo ppo --minutes 30 [--init-checkpoint DIR] [--set key=value ...]
    python benchmarks/learning.py --preset libero_spatial_ppo --minutes 15   # -> learning_libero_spatial_ppo.*
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlsys.config import load_config
from rlsys.train import train

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--algo", choices=("ppo", "grpo", "rft", "ppo_rft"),
                    help="default: the preset's algorithm (ppo without a preset)")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--init-checkpoint", default="")
    ap.add_argument("--run-dir", default="runs/bench")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--preset", help="default: tabletop_ppo with --algo; results then go to learning_<preset>.*")
    ap.add_argument("--from-run", help="no training: rebuild the result from an existing run directory "
                                       "(e.g. one that died after its last evaluation)")
    args = ap.parse_args()
    if not args.preset:
        args.algo = args.algo or "ppo"
    name = f"learning_{args.preset}" if args.preset else f"learning_{args.algo}"
    cfg = load_config(args.preset or "tabletop_ppo", [
        *([f"algo.name={args.algo}"] if args.algo else []), f"max_minutes={args.minutes}", "iterations=100000",
        f"run_dir={args.run_dir}", f"init_checkpoint={args.init_checkpoint}", *args.overrides])
    args.algo = cfg.algo.name
    t0 = time.time()
    run_dir = Path(args.from_run) if args.from_run else Path(train(cfg)["run_dir"])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft_eval = Path(args.init_checkpoint or run_dir / "sft") / "eval" / "eval.json"
    init = json.loads(sft_eval.read_text()) if sft_eval.exists() else None  # the RL starting point
    steps_at, steps = {}, 0.0
    for r in rows:
        steps += r["rollout/env_steps"]
        steps_at[r["iteration"]] = steps
    evals = []
    for d in sorted((run_dir / "eval").glob("iter_*")):  # every evaluation, also one not yet in metrics
        e = json.loads((d / "eval.json").read_text())
        it = int(e["iteration"])
        evals.append({"iteration": it, "env_steps": steps_at.get(it, steps), "wall_s": e["wall_s"],
                      "success": e["mean_success"], "tasks": {k: v["success"] for k, v in e["tasks"].items()}})
    last = json.loads((sorted((run_dir / "eval").glob("iter_*"))[-1] / "eval.json").read_text()) if evals else {}
    res = {"algo": args.algo, "preset": args.preset or "tabletop_ppo", "env": cfg.env.name,
           "asset_status": last.get("asset_status", (init or {}).get("asset_status", "n/a")),
           "budget_minutes": args.minutes, "run_dir": str(run_dir), "total_s": time.time() - t0,
           "sft_eval": init and {"success": init["mean_success"],
                                 "tasks": {k: v["success"] for k, v in init["tasks"].items()}},
           "evals": evals, "overrides": args.overrides,
           "rollout_success": [(r["iteration"], r["rollout/success_rate"]) for r in rows]}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("sft_eval", "evals")}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    x0 = [0.0] if init else []
    y0 = [init["mean_success"]] if init else []
    ax[0].plot(x0 + [e["wall_s"] / 60 for e in evals], y0 + [e["success"] for e in evals], "o-")
    ax[0].set(xlabel="wall time (min, RL phase)", ylabel="eval success (ODE)", ylim=(0, 1),
              title=f"{args.algo.upper()} on {cfg.env.name}")
    ax[1].plot(x0 + [e["env_steps"] for e in evals], y0 + [e["success"] for e in evals], "o-")
    ax[1].set(xlabel="env steps", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=100)


if __name__ == "__main__":
    main()
