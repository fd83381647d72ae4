"""Tabletop simulator speed on this machine: physics, control steps with/without rendering,
1 vs 2 simulator processes. Writes benchmarks/results/env_speed.json and .png.

    python benchmarks/env_speed.py [--seconds 5] [--image-size 64]
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
from rlsys.envs.pool import EnvPool
from rlsys.envs.tabletop.env import SUBSTEPS, TabletopEnv

OUT = Path(__file__).parent / "results"


def rate(fn, seconds: float) -> float:
    fn()  # warm-up (GL context, caches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def single_env(cameras: tuple[str, ...], size: int, seconds: float) -> float:
    env = TabletopEnv(cameras=cameras, image_size=size)
    env.reset(seed=0)
    rng = np.random.default_rng(0)

    def step() -> None:
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
        if term or trunc:
            env.reset()

    r = rate(step, seconds)
    env.close()
    return r


def physics_only(seconds: float) -> float:
    import mujoco

    env = TabletopEnv(cameras=(), image_size=64)
    env.reset(seed=0)
    r = rate(lambda: mujoco.mj_step(env.model, env.data), seconds)
    env.close()
    return r


def pool(n: int, size: int, seconds: float) -> float:
    cfg = EnvConfig(cameras=("agentview", "wrist"), image_size=size, num_envs=n, subprocess=True)
    with EnvPool(cfg) as p:
        p.reset()
        rng = np.random.default_rng(0)
        r = rate(lambda: p.step(rng.uniform(-1, 1, (n, 7)).astype(np.float32)), seconds)
    return r * n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    s, sz = args.seconds, args.image_size
    res = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "mujoco_gl": os.environ.get("MUJOCO_GL")},
        "image_size": sz,
        "substeps_per_control_step": SUBSTEPS,
        "physics_steps_per_s": physics_only(s),
        "control_steps_per_s_no_render": single_env((), sz, s),
        "control_steps_per_s_1cam": single_env(("agentview",), sz, s),
        "control_steps_per_s_2cam": single_env(("agentview", "wrist"), sz, s),
        "pool_2cam_1proc_steps_per_s": pool(1, sz, s),
        "pool_2cam_2proc_steps_per_s": pool(2, sz, s),
    }
    res["pool_scaling_2proc_over_1proc"] = res["pool_2cam_2proc_steps_per_s"] / res["pool_2cam_1proc_steps_per_s"]
    OUT.mkdir(exist_ok=True)
    (OUT / "env_speed.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in res if k.endswith("_per_s") and not k.startswith("physics")]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh([k.replace("_per_s", "").replace("control_steps_", "") for k in keys], [res[k] for k in keys])
    ax.set_xlabel(f"control steps / s ({sz}px, {SUBSTEPS} physics steps each)")
    ax.set_title(f"tabletop env speed (physics alone: {res['physics_steps_per_s']:.0f} mj_step/s)")
    fig.tight_layout()
    fig.savefig(OUT / "env_speed.png", dpi=100)


if __name__ == "__main__":
    main()
