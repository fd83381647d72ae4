"""Success per initial state: is an outcome decided by the state the episode starts from, or by the
policy's noise? For each checkpoint, G rollouts start from each of S seeded initial states (the env
pool's GRPO seed groups, so every checkpoint sees the same states) and the fraction that succeed is
recorded per state. If the noise decided, the per-state rates would be binomial around the mean (a
state with 0 of G would be rare: ``(1 - mean) ** G``); a pile at 0 says many states give an
on-policy learner no success to learn from. Pairing the states across checkpoints shows where a
trained policy's gain comes from: states that already succeeded sometimes, or states that never did.
Writes benchmarks/results/<name>.json and .png.

    python benchmarks/per_state.py --ckpt sft=DIR --ckpt rft=DIR [--states 80] [--group 8] \\
        [--sampler ode] [--set env.tasks=[lift]] [--name per_state_lift]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlsys.actors.env_worker import EnvWorkerCore
from rlsys.actors.inference import InferenceEngine
from rlsys.checkpoint import load_policy
from rlsys.config import load_config
from rlsys.progress import Progress

OUT = Path(__file__).parent / "results"


def per_state(path: str, args: argparse.Namespace) -> list[float]:
    """Success fraction of each of ``args.states`` initial states, ``args.group`` rollouts each."""
    policy, env_cfg, *_ = load_policy(path)
    cfg = load_config(args.preset, ["algo.name=grpo", f"algo.group_size={args.group}", "env.reward=sparse",
                                    "rollout.env_groups=1", f"sampler.name={args.sampler}", f"seed={args.seed}",
                                    f"env.num_envs={args.envs}", *args.overrides])
    cfg = dataclasses.replace(cfg, policy=policy.cfg)  # the checkpoint's own heads (a latent prior too)
    engine = InferenceEngine(cfg, policy, seed=args.seed)
    engine.version = 0
    core = EnvWorkerCore(cfg, 0, episodic=True)
    rates: list[float] = []
    per_round = args.envs // args.group
    try:
        with Progress(f"{path}: initial states", args.states) as bar:
            while len(rates) < args.states:
                seg = core.rollout(engine.infer, lambda c: c, engine.values)
                succ = (seg.success & seg.valid).any(0)
                groups = seg.env_ids // args.group
                rates += [float(succ[groups == g].mean()) for g in np.unique(groups)]
                bar.advance(per_round, status=f"success {np.mean(rates):.0%}")
    finally:
        core.close()
    return rates[: args.states]


def plot(res: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = res["checkpoints"]
    g = res["group"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(arms)
    for i, (n, a) in enumerate(arms.items()):
        hist = np.bincount(np.round(np.array(a["rates"]) * g).astype(int), minlength=g + 1)
        axes[0].bar(np.arange(g + 1) + (i - (len(arms) - 1) / 2) * width, hist, width, color=f"C{i}",
                    label=f"{n} (mean {a['mean']:.0%}, {a['frac_zero']:.0%} of states at 0)")
    axes[0].set(xlabel=f"successes of {g} rollouts from one initial state", ylabel="initial states",
                title=f"{res['states']} initial states, sampler {res['sampler']}")
    axes[0].legend(fontsize=8)
    names = list(arms)
    base = np.array(arms[names[0]]["rates"])
    for i, n in enumerate(names[1:], start=1):
        y = np.array(arms[n]["rates"])
        jitter = np.random.default_rng(i).uniform(-0.02, 0.02, (2, len(y)))
        axes[1].scatter(base + jitter[0], y + jitter[1], s=14, alpha=0.6, color=f"C{i}", label=n)
    axes[1].plot([0, 1], [0, 1], "k--", lw=1)
    axes[1].set(xlabel=f"{names[0]}: success per state", ylabel="success per state", title="paired by state")
    if len(names) > 1:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", required=True, metavar="NAME=DIR",
                    help="the first is the reference of the paired plot (the start)")
    ap.add_argument("--states", type=int, default=80)
    ap.add_argument("--group", type=int, default=8, help="rollouts per initial state")
    ap.add_argument("--envs", type=int, default=32, help="simulators (a multiple of --group)")
    ap.add_argument("--sampler", default="ode", help="ode, or the RL sampler the checkpoint was trained with")
    ap.add_argument("--preset", default="tabletop_fewshot_ppo")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="per_state")
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((OUT / f"{args.name}.json").read_text()), args.name)
        return
    if args.envs % args.group:
        ap.error(f"--envs {args.envs} must be a multiple of --group {args.group}")
    torch.set_num_threads(2)
    arms = {}
    for spec in args.ckpt:
        name, _, path = spec.partition("=")
        t0 = time.time()
        rates = np.array(per_state(path, args))
        mean = float(rates.mean())
        arms[name] = {"path": path, "rates": rates.tolist(), "mean": mean, "frac_zero": float((rates == 0).mean()),
                      "frac_one": float((rates == 1).mean()), "zero_if_noise_decided": (1 - mean) ** args.group,
                      "seconds": time.time() - t0}
        print(json.dumps({k: v for k, v in arms[name].items() if k != "rates"} | {"name": name}), flush=True)
    names = list(arms)
    base = np.array(arms[names[0]]["rates"])
    for n in names[1:]:  # where each checkpoint's gain over the first comes from
        y = np.array(arms[n]["rates"])
        arms[n]["paired"] = {
            "on_states_at_zero": float(y[base == 0].mean()) if (base == 0).any() else None,
            "on_states_above_zero": float(y[base > 0].mean()) if (base > 0).any() else None,
            "reference_on_states_above_zero": float(base[base > 0].mean()) if (base > 0).any() else None,
            "states_at_zero_now_above_zero": float((y[base == 0] > 0).mean()) if (base == 0).any() else None,
        }
        print(json.dumps({"name": n, **arms[n]["paired"]}), flush=True)
    res = {"states": args.states, "group": args.group, "sampler": args.sampler, "preset": args.preset,
           "overrides": args.overrides, "seed": args.seed, "checkpoints": arms}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    plot(res, args.name)


if __name__ == "__main__":
    main()
