"""Few-shot SFT starting points: SFT success (ODE, N episodes per task) at several demo counts.
Writes benchmarks/results/few_shot.json and .png (the table in the README comes from here).

    python benchmarks/few_shot.py [--demos 5,20,100] [--episodes 50] [--set sft.steps=3000 ...]
    python benchmarks/few_shot.py --demos 20,60,100 --set env.tasks=[lift] --set sft.steps=1500 --name few_shot_lift
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlsys.config import load_config
from rlsys.sft import run_sft

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demos", default="5,20,100")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--work", default="runs/few_shot")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="few_shot", help="output file stem under benchmarks/results/")
    args = ap.parse_args()
    out = OUT / f"{args.name}.json"
    rows: list[dict] = []
    if out.exists():  # extend an earlier run with the same settings; a re-measured count replaces its row
        old = json.loads(out.read_text())
        if old.get("overrides") == args.overrides and old.get("episodes_per_task") == args.episodes:
            rows = old["rows"]
    for n in [int(x) for x in args.demos.split(",")]:
        cfg = load_config("tabletop_sft", [f"sft.demos_per_task={n}", f"sft.eval_episodes={args.episodes}",
                                           *args.overrides])
        t0 = time.time()
        res = run_sft(cfg, Path(args.work) / f"sft_{n}")
        ev = res["eval"]
        rows = [r for r in rows if r["demos_per_task"] != n]
        rows.append({"demos_per_task": n, "success": ev["mean_success"], "train_s": res["train_seconds"],
                     "total_s": time.time() - t0, "tasks": {k: v["success"] for k, v in ev["tasks"].items()}})
        print(json.dumps(rows[-1]), flush=True)
        rows.sort(key=lambda r: r["demos_per_task"])
        OUT.mkdir(exist_ok=True)
        out.write_text(json.dumps({"episodes_per_task": args.episodes,
                                                       "overrides": args.overrides, "rows": rows}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    tasks = list(rows[0]["tasks"])
    for t in tasks:
        ax.plot([r["demos_per_task"] for r in rows], [r["tasks"][t] for r in rows], "o-", alpha=0.6, label=t)
    ax.plot([r["demos_per_task"] for r in rows], [r["success"] for r in rows], "k-o", lw=2, label="mean")
    ax.set(xscale="log", xlabel="demos per task", ylabel="success (ODE)", ylim=(0, 1), title="few-shot SFT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / f"{args.name}.png", dpi=100)


if __name__ == "__main__":
    main()
