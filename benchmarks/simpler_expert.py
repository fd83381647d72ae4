"""Scripted SimplerEnv (Bridge) expert: success per task over SimplerEnv's episode grid.

Records the asset status (official or stand-in): on stand-ins it is not a SimplerEnv number.
Writes benchmarks/results/simpler_expert.json and .md.

    MS_ASSET_DIR=DIR python benchmarks/simpler_expert.py [--episodes 24]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"


def main() -> None:
    from rlsys.config import EnvConfig
    from rlsys.envs.api import run_expert_episode
    from rlsys.envs.pool import make_single_env

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=24, help="episode ids 0..N-1 per task")
    args = ap.parse_args()
    env = make_single_env(EnvConfig(name="simpler_bridge", cameras=("3rd_view",), image_size=32))
    rows, t0 = {}, time.time()
    for task in env.task_names:
        wins, steps = [], []
        for j in range(args.episodes):
            ok, k = run_expert_episode(env, options={"task": task, "init_state": j})
            wins.append(ok)
            steps.append(k)
        rows[task] = {"success": sum(wins) / len(wins), "episodes": len(wins), "mean_steps": sum(steps) / len(steps),
                      "failed_episode_ids": [j for j, w in enumerate(wins) if not w]}
        print(f"{task}: {sum(wins)}/{len(wins)}", flush=True)
    res = {"asset_status": env.asset_status, "seconds": time.time() - t0, "tasks": rows,
           "mean_success": sum(r["success"] for r in rows.values()) / len(rows)}
    env.close()
    OUT.mkdir(exist_ok=True)
    (OUT / "simpler_expert.json").write_text(json.dumps(res, indent=2))
    lines = [f"assets: **{res['asset_status']}**", "", "| task | expert success | failed episode ids |",
             "|---|---|---|"]
    lines += [f"| {t} | {100 * r['success']:.0f}% ({r['episodes']}) | {r['failed_episode_ids'] or '-'} |"
              for t, r in rows.items()]
    (OUT / "simpler_expert.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
