"""RoboTwin 2.0 on this machine: simulator speed and RoboTwin's own scripted expert.

Run with RoboTwin's interpreter (its venv from scripts/setup_robotwin.sh; rlsys is installed there):

    ROBOTWIN_ASSETS_ROOT=DIR .venv-robotwin/bin/python benchmarks/robotwin_bench.py speed [--seconds 20]
    ROBOTWIN_ASSETS_ROOT=DIR .venv-robotwin/bin/python benchmarks/robotwin_bench.py expert --seeds 10

``speed``: first observation per process (shader compile), scene set-up (reset) time, joint-target
actions per second per task with 1 and 3 cameras at 64 px, 1 vs 2 simulator processes ->
``benchmarks/results/robotwin_speed.json``. ``expert``: RoboTwin's ``play_once`` on demo seeds
0..N-1 per task (planning time, whether the plan reached success, and whether replaying its joint
targets through the env reaches success) -> ``benchmarks/results/robotwin_expert.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from rlsys.config import EnvConfig
from rlsys.envs.pool import EnvPool, make_single_env
from rlsys.envs.robotwin import STEP_LIMITS

OUT = Path(__file__).parent / "results"
ALL = ("head", "left_wrist", "right_wrist")


def _rate(step, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def speed(tasks: tuple[str, ...], seconds: float) -> dict:
    res: dict = {"image_size": 64, "tasks": {}}
    t0 = time.perf_counter()
    env = make_single_env(EnvConfig(name="robotwin", tasks=tasks, cameras=ALL, image_size=64))
    res["import_and_create_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    env.reset(seed=0, options={"task": tasks[0]})
    res["first_reset_s"] = time.perf_counter() - t0  # includes the renderer's first frame (shader compile)
    rng = np.random.default_rng(0)
    for task in tasks:
        row = {}
        t0 = time.perf_counter()
        for s in range(3):
            obs, _ = env.reset(seed=10 + s, options={"task": task})
        row["reset_s"] = (time.perf_counter() - t0) / 3
        home = obs["proprio"].copy()

        def act(env=env, home=home):  # small joint-target moves around home, grippers as they are
            a = home + np.concatenate([rng.uniform(-0.15, 0.15, 6), [0], rng.uniform(-0.15, 0.15, 6), [0]])
            env.step(a.astype(np.float32))

        row["steps_per_s_3cam"] = _rate(act, seconds)
        print(task, json.dumps(row), flush=True)
        res["tasks"][task] = row
    env.close()
    one = make_single_env(EnvConfig(name="robotwin", tasks=tasks[:1], cameras=("head",), image_size=64))
    obs, _ = one.reset(seed=0)
    home = obs["proprio"].copy()
    res["steps_per_s_1cam"] = _rate(lambda: one.step(home + rng.uniform(-0.1, 0.1, 14).astype(np.float32)
                                                     * np.r_[np.ones(6), 0, np.ones(6), 0]), seconds)
    one.close()
    for n in (1, 2):
        cfg = EnvConfig(name="robotwin", tasks=tasks[:1], cameras=("head",), image_size=64, num_envs=n,
                        subprocess=True, step_timeout_s=300)
        with EnvPool(cfg) as pool:
            obs, _ = pool.reset()
            home = obs["proprio"].copy()
            mask = np.r_[np.ones(6), 0, np.ones(6), 0]
            res[f"pool_1cam_{n}proc_steps_per_s"] = n * _rate(
                lambda pool=pool, home=home, n=n: pool.step(
                    (home + rng.uniform(-0.1, 0.1, (n, 14)) * mask).astype(np.float32)), seconds)
        print(n, "processes", res[f"pool_1cam_{n}proc_steps_per_s"], flush=True)
    res["pool_scaling_2proc_over_1proc"] = res["pool_1cam_2proc_steps_per_s"] / res["pool_1cam_1proc_steps_per_s"]
    return res


def expert(tasks: tuple[str, ...], seeds: int, meta: dict) -> dict:
    res: dict = {**meta, "seeds": list(range(seeds)), "tasks": {}}
    env = make_single_env(EnvConfig(name="robotwin", tasks=tasks, cameras=("head",), image_size=64))
    for task in tasks:
        rows = []
        for s in range(seeds):
            _, info = env.reset(seed=s, options={"task": task})
            t0 = time.perf_counter()
            ex = env.expert()
            plan_s = time.perf_counter() - t0
            replay = False
            t0 = time.perf_counter()
            for _ in range(len(ex.targets) + 20 if ex.targets else 0):  # nothing to replay: planning failed
                _, reward, terminated, truncated, step_info = env.step(ex.act(None))
                if terminated or truncated:
                    replay = bool(terminated and step_info["success"])
                    break
            rows.append({"seed": info["scene_seed"], "planned_success": ex.planned, "frames": len(ex.targets),
                         "replay_success": replay, "plan_s": plan_s, "replay_s": time.perf_counter() - t0,
                         "failure": ex.failure})
            print(task, json.dumps(rows[-1]), flush=True)
            res["tasks"][task] = {"episodes": rows,
                                  "planned_success": float(np.mean([r["planned_success"] for r in rows])),
                                  "replay_success": float(np.mean([r["replay_success"] for r in rows]))}
            save("expert", res)  # after every episode: a long run that is stopped keeps what it measured
    env.close()
    return res


def save(what: str, res: dict) -> None:
    OUT.mkdir(exist_ok=True)
    (OUT / f"robotwin_{what}.json").write_text(json.dumps(res, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["speed", "expert"])
    ap.add_argument("--tasks", default=",".join(STEP_LIMITS))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    tasks = tuple(args.tasks.split(","))
    meta = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "command": f"benchmarks/robotwin_bench.py {args.what} --tasks {args.tasks}"
                       + (f" --seconds {args.seconds}" if args.what == "speed" else f" --seeds {args.seeds}")}
    res = speed(tasks, args.seconds) if args.what == "speed" else expert(tasks, args.seeds, meta)
    res.update(meta)
    save(args.what, res)
    print(json.dumps({k: v for k, v in res.items() if k != "tasks"}, indent=2))


if __name__ == "__main__":
    main()
