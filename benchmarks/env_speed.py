"""Simulator speed on this machine. Tabletop (default): physics, control steps with/without
rendering, 1 vs 2 simulator processes -> benchmarks/results/env_speed.json and .png.
LIBERO (``--env libero_spatial``, needs the libero extra): creation and reset time, control steps/s
per render-quality option (shadows, reflections, multisampling) at two image sizes, 1 vs 2
simulator processes -> benchmarks/results/env_speed_libero.json and .png.
SimplerEnv (``--env simpler_bridge``, needs the simpler extra and ``MS_ASSET_DIR``): per task, creation,
grid and random-placement reset, control steps/s (the 640x480 camera resized to ``--image-size``),
1 vs 2 simulator processes -> benchmarks/results/env_speed_simpler.json and .png (with the assets'
status: a figure on stand-ins is not an official-asset figure, though only the table stage differs).

    python benchmarks/env_speed.py [--seconds 5] [--image-size 64]
    python benchmarks/env_speed.py --env libero_spatial [--seconds 10]
    MS_ASSET_DIR=DIR python benchmarks/env_speed.py --env simpler_bridge [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from rlsys.config import EnvConfig, RenderConfig
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


def pool_rate(cfg: EnvConfig, seconds: float, scale: float = 1.0) -> float:
    """Env steps/s of a subprocess pool of ``cfg.num_envs`` simulators (random actions in [-scale, scale])."""
    n = cfg.num_envs
    with EnvPool(cfg) as p:
        p.reset()
        rng = np.random.default_rng(0)
        r = rate(lambda: p.step(rng.uniform(-scale, scale, (n, 7)).astype(np.float32)), seconds)
    return r * n


def pool(n: int, size: int, seconds: float) -> float:
    return pool_rate(EnvConfig(cameras=("agentview", "wrist"), image_size=size, num_envs=n, subprocess=True), seconds)


def save_bars(labels: list[str], values: list[float], xlabel: str, title: str, path: Path,
              height: float = 3.5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, height))
    ax.barh(labels, values)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def libero(suite: str, seconds: float) -> dict:
    """LIBERO: the render options' cost at 64 and 128 px, reset cost, process scaling."""
    from rlsys.envs.pool import make_single_env

    res: dict = {"suite": suite, "task": 0, "cameras": ["agentview", "wrist"]}
    variants = {"cheap": RenderConfig(), "shadows": RenderConfig(shadows=True),
                "reflections": RenderConfig(reflections=True), "multisample": RenderConfig(multisample=True),
                "all_on": RenderConfig(shadows=True, reflections=True, multisample=True)}
    for size in (64, 128):
        for name, rc in variants.items():
            if size == 64 and name not in ("cheap", "all_on"):
                continue
            cfg = EnvConfig(name=suite, tasks=("0",), image_size=size, render=rc)
            t0 = time.perf_counter()
            env = make_single_env(cfg)
            env.reset(seed=0)  # creates the simulator
            res.setdefault("create_and_first_reset_s", time.perf_counter() - t0)
            t0 = time.perf_counter()
            env.reset(seed=1)
            res.setdefault("reset_s", time.perf_counter() - t0)  # restore init state + 10 wait steps
            rng = np.random.default_rng(0)
            r = rate(lambda env=env, rng=rng: env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32)), seconds)
            res[f"steps_per_s_{size}px_{name}"] = r
            env.close()
            print(f"{size}px {name}: {r:.2f} steps/s", flush=True)
    for n in (1, 2):
        cfg = EnvConfig(name=suite, tasks=("0",), image_size=128, num_envs=n, subprocess=True)
        res[f"pool_128px_{n}proc_steps_per_s"] = pool_rate(cfg, seconds, scale=0.3)
    res["pool_scaling_2proc_over_1proc"] = res["pool_128px_2proc_steps_per_s"] / res["pool_128px_1proc_steps_per_s"]
    return res


def simpler(seconds: float, size: int) -> dict:
    """SimplerEnv: per-task creation, reset (grid episode / random placement) and step cost; process scaling."""
    from rlsys.envs.pool import make_single_env
    from rlsys.envs.simpler import TASKS

    res: dict = {"image_size": size, "cameras": ["3rd_view"], "tasks": {}}
    for task in TASKS:
        cfg = EnvConfig(name="simpler_bridge", tasks=(task,), cameras=("3rd_view",), image_size=size,
                        placement="random")
        t0 = time.perf_counter()
        env = make_single_env(cfg)
        _, info = env.reset(seed=0, options={"init_state": 0})  # creates the simulator
        row = {"create_and_first_reset_s": time.perf_counter() - t0}
        res["asset_status"] = info["asset_status"]
        t0 = time.perf_counter()
        env.reset(seed=1, options={"init_state": 1})
        row["reset_grid_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        env.reset(seed=2)
        row["reset_random_s"] = time.perf_counter() - t0

        rng = np.random.default_rng(0)

        def step(env=env, rng=rng) -> None:
            _, _, term, trunc, _ = env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32))
            if term or trunc:
                env.reset(seed=int(rng.integers(1 << 30)))

        row["steps_per_s"] = rate(step, seconds)  # episode resets included, as in a rollout
        env.close()
        res["tasks"][task] = row
        print(f"{task}: {row['steps_per_s']:.2f} steps/s, create {row['create_and_first_reset_s']:.1f} s, "
              f"reset {row['reset_grid_s']:.2f} s", flush=True)
    for n in (1, 2):
        cfg = EnvConfig(name="simpler_bridge", tasks=("carrot_on_plate",), cameras=("3rd_view",),
                        image_size=size, num_envs=n, subprocess=True, placement="random")
        res[f"pool_{n}proc_steps_per_s"] = pool_rate(cfg, seconds, scale=0.3)
        print(f"{n} processes: {res[f'pool_{n}proc_steps_per_s']:.2f} steps/s", flush=True)
    res["pool_scaling_2proc_over_1proc"] = res["pool_2proc_steps_per_s"] / res["pool_1proc_steps_per_s"]
    return res


def main_simpler(seconds: float, size: int) -> None:
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, **simpler(seconds, size)}
    OUT.mkdir(exist_ok=True)
    (OUT / "env_speed_simpler.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    labels = [*res["tasks"], "carrot, 1 process (pool)", "carrot, 2 processes (pool)"]
    values = [r["steps_per_s"] for r in res["tasks"].values()] + [res["pool_1proc_steps_per_s"],
                                                                  res["pool_2proc_steps_per_s"]]
    save_bars(labels, values, f"control steps / s (5 Hz; 640x480 camera -> {size} px)",
              f"SimplerEnv Bridge env speed, CPU ({res['asset_status']} assets)", OUT / "env_speed_simpler.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--env", default="tabletop", help="tabletop (default), simpler_bridge or a LIBERO suite")
    args = ap.parse_args()
    s, sz = args.seconds, args.image_size
    if args.env == "simpler_bridge":
        return main_simpler(s, sz)
    if args.env != "tabletop":
        return main_libero(args.env, s)
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
    keys = [k for k in res if k.endswith("_per_s") and not k.startswith("physics")]
    save_bars([k.replace("_per_s", "").replace("control_steps_", "") for k in keys], [res[k] for k in keys],
              f"control steps / s ({sz}px, {SUBSTEPS} physics steps each)",
              f"tabletop env speed (physics alone: {res['physics_steps_per_s']:.0f} mj_step/s)", OUT / "env_speed.png")


def main_libero(suite: str, seconds: float) -> None:
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "mujoco_gl": os.environ.get("MUJOCO_GL")}, **libero(suite, seconds)}
    OUT.mkdir(exist_ok=True)
    (OUT / "env_speed_libero.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    keys = [k for k in res if k.startswith(("steps_per_s", "pool_")) and k.endswith("_per_s")]
    save_bars([k.replace("_steps_per_s", "").replace("steps_per_s_", "") for k in keys], [res[k] for k in keys],
              "control steps / s (2 cameras; 20 Hz OSC)",
              f"{suite} env speed (reset {res['reset_s']:.2f} s, create {res['create_and_first_reset_s']:.1f} s)",
              OUT / "env_speed_libero.png", height=3.8)


if __name__ == "__main__":
    main()
