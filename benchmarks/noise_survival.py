"""Which Flow-SDE transition's noise reaches the executed action? For each checkpoint, real rollout
observations are sampled many times with the stochastic transition fixed at each denoising step k
in turn, and with none (ODE: the initial noise alone). The spread of the executed chunk across draws
(normalised action units, real channels and executed steps) is compared with the std of the noise
injected at k. Flow-SDE's default picks k uniformly per chunk (FLOW_PPO.md section 2) and PPO credits
the chunk's advantage to that one transition; noise the later Euler steps pull back toward the policy's
mean action reaches neither the env nor the outcome, so its log-prob gradient is noise.
``sampler.stochastic_step=last`` puts every chunk's noise on the final transition.

    python benchmarks/noise_survival.py --ckpt sft=DIR [--ckpt ppo=DIR ...] [--obs 24] [--draws 48] \\
        [--noise-level 0.5] [--name noise_survival_lift]

Writes benchmarks/results/<name>.json and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from rlsys.actors.env_worker import EnvWorkerCore
from rlsys.actors.inference import InferenceEngine
from rlsys.checkpoint import load_policy
from rlsys.config import load_config
from rlsys.flow import ODE, FlowSDE, flow_sde_step, time_grid
from rlsys.progress import Progress

OUT = Path(__file__).parent / "results"


def injected_std(k: int, steps: int, noise_level: float) -> float:
    """The std Flow-SDE adds at transition k (it does not depend on x or v)."""
    t = time_grid(steps)[k : k + 1]
    return float(flow_sde_step(torch.zeros(1), torch.zeros(1), t, 1.0 / steps, noise_level, steps)[1])


def measure(path: str, args: argparse.Namespace) -> dict:
    policy, *_ = load_policy(path)
    policy.eval()
    cfg = load_config(args.preset, [f"env.num_envs={args.envs}", f"seed={args.seed}", *args.overrides])
    cfg = dataclasses.replace(cfg, policy=policy.cfg)
    engine = InferenceEngine(cfg, policy, seed=args.seed)
    engine.version = 0
    core = EnvWorkerCore(cfg, 0)
    try:  # one real segment of the policy's own rollout: the states PPO trains on
        seg = core.rollout(engine.infer, lambda c: c, engine.values)
    finally:
        core.close()
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(np.flatnonzero(seg.valid.reshape(-1)), args.obs, replace=False)
    obs = seg.obs.index(np.repeat(rows, args.draws))  # each observation args.draws times
    dims = int(obs.action_dim[0])  # one embodiment: the same real channels for every row
    steps = policy.cfg.denoise_steps
    gen = torch.Generator().manual_seed(args.seed)

    def spread(sampler) -> float:
        chunk = policy.sample(obs, sampler, gen)
        x = chunk.chain[:, -1]  # the normalised executed chunk
        x = x.reshape(args.obs, args.draws, *x.shape[1:])
        return float(x[..., :dims].std(1).mean())

    base = spread(ODE())
    per_k = []
    for k in range(steps):
        s = spread(FlowSDE(noise_level=args.noise_level, step=k))
        inj = injected_std(k, steps, args.noise_level)
        # share of the injected variance left in the executed chunk
        reach = max(s**2 - base**2, 0.0) / inj**2
        per_k.append({"k": k, "t": float(time_grid(steps)[k]), "injected_std": inj, "action_spread": s,
                      "variance_reaching_action": reach})
    return {"checkpoint": path, "ode_spread": base, "steps": per_k}


def plot(res: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ck = res["checkpoints"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / max(len(ck), 1)
    for i, (label, r) in enumerate(ck.items()):
        ks = np.array([s["k"] for s in r["steps"]])
        ax[0].bar(ks + i * width, [s["action_spread"] for s in r["steps"]], width, label=f"{label}: noise at k")
        ax[0].axhline(r["ode_spread"], ls="--", lw=1, color=f"C{i}", label=f"{label}: ODE (initial noise only)")
        share = [s["variance_reaching_action"] for s in r["steps"]]
        bars = ax[1].bar(ks + i * width, share, width, label=label)
        ax[1].bar_label(bars, [f"{v:.3f}" for v in share], fontsize=7)
    first = next(iter(ck.values()))
    ax[0].plot([s["k"] for s in first["steps"]], [s["injected_std"] for s in first["steps"]], "kx",
               label="std injected at k")
    ax[0].set(xlabel="stochastic transition k", ylabel="executed-chunk std across draws",
              title="spread of the executed chunk")
    top = max(s["variance_reaching_action"] for r in ck.values() for s in r["steps"])
    ax[1].set(xlabel="stochastic transition k", ylabel="share", ylim=(0, max(1.1, 1.15 * top)),
              title="injected variance that reaches the action")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.suptitle(f"Flow-SDE a={res['noise_level']}, {res['obs']} observations x {res['draws']} draws", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--obs", type=int, default=24, help="rollout observations")
    ap.add_argument("--draws", type=int, default=48, help="samples per observation and step")
    ap.add_argument("--noise-level", type=float, default=0.5)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="tabletop_fewshot_ppo_full")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="noise_survival")
    args = ap.parse_args()
    torch.set_num_threads(2)
    res = {"noise_level": args.noise_level, "obs": args.obs, "draws": args.draws, "preset": args.preset,
           "overrides": args.overrides, "checkpoints": {}}
    with Progress("noise_survival", len(args.ckpt)) as bar:
        for spec in args.ckpt:
            label, path = spec.split("=", 1)
            res["checkpoints"][label] = r = measure(path, args)
            bar.advance(status=f"{label}: ODE {r['ode_spread']:.3f}, "
                               + " ".join(f"k{s['k']} {s['action_spread']:.3f}" for s in r["steps"]))
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    plot(res, args.name)
    summary = {k: {"ode": v["ode_spread"], "reach": [round(s["variance_reaching_action"], 3) for s in v["steps"]]}
               for k, v in res["checkpoints"].items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
