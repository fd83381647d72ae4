"""Scripted LIBERO expert: success per task over fixed init states (privileged state, OSC).

Runs each suite in its own process. Writes benchmarks/results/libero_expert.json and .md.

    python benchmarks/libero_expert.py [--suites libero_spatial libero_object] [--inits 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"


def run_suite(suite: str, inits: int, image_size: int) -> dict:
    from rlsys.config import EnvConfig
    from rlsys.envs.api import run_expert_episode
    from rlsys.envs.pool import make_single_env

    env = make_single_env(EnvConfig(name=suite, image_size=image_size, cameras=("agentview",)))
    rows = {}
    for task in env.task_names:
        wins, steps, t0 = [], [], time.time()
        for j in range(inits):
            ok, k = run_expert_episode(env, options={"task": task, "init_state": j})
            wins.append(ok)
            steps.append(k)
        rows[task] = {"success": sum(wins) / len(wins), "episodes": len(wins), "mean_steps": sum(steps) / len(steps),
                      "failed_init_states": [j for j, w in enumerate(wins) if not w], "seconds": time.time() - t0}
        print(f"{suite} {task}: {sum(wins)}/{len(wins)}", flush=True)
    env.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--suites", nargs="*", default=["libero_spatial", "libero_object"])
    ap.add_argument("--inits", type=int, default=10, help="init states 0..N-1 per task")
    ap.add_argument("--image-size", type=int, default=32, help="rendering is not used by the expert")
    args = ap.parse_args()
    t0 = time.time()
    with mp.get_context("spawn").Pool(len(args.suites)) as pool:
        results = pool.starmap(run_suite, [(s, args.inits, args.image_size) for s in args.suites])
    res = {"inits_per_task": args.inits, "seconds": time.time() - t0,
           "suites": {s: {"mean_success": sum(r["success"] for r in rows.values()) / len(rows), "tasks": rows}
                      for s, rows in zip(args.suites, results)}}
    OUT.mkdir(exist_ok=True)
    (OUT / "libero_expert.json").write_text(json.dumps(res, indent=2))
    lines = ["| suite | task | expert success | failed init states |", "|---|---|---|---|"]
    for s, r in res["suites"].items():
        for task, row in r["tasks"].items():
            lines.append(f"| {s} | {task} | {100 * row['success']:.0f}% ({row['episodes']}) | "
                         f"{row['failed_init_states'] or '-'} |")
        lines.append(f"| {s} | **mean** | **{100 * r['mean_success']:.1f}%** | |")
    (OUT / "libero_expert.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
