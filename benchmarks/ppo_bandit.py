"""Does the flow-PPO update move the policy where the reward is? A one-observation bandit.

The real ``FlowPolicy`` (small images, frozen backbone) samples action chunks with Flow-SDE; the
reward is ``-||a - target||^2`` (dense, noise-free); advantages are batch-normalised; the update is
the learner's: recomputed chunk-level log-probs, clipped PPO loss, epochs x minibatches, grad
clipping, AdamW on the action expert. Per actor lr it records the mean squared distance of the
stochastic (SDE) and deterministic (ODE) chunks to the target and the approx-KL per update. This
isolates the update rule from credit assignment: if these curves fall, the math moves the policy
toward reward, and a flat RL run is about signal (advantage noise, samples) rather than sign.

    python benchmarks/ppo_bandit.py [--iters 30] [--lrs 1e-5,3e-5,1e-4]   # ~1 min per lr on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlsys.config import PolicyConfig
from rlsys.flow import ODE, FlowSDE, reduce_log_prob
from rlsys.learner.losses import normalize, ppo_policy_loss
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.types import Observation

OUT = Path(__file__).parent / "results"


def observation(cfg: PolicyConfig, rng: np.random.Generator) -> Observation:
    n = cfg.max_tokens
    return Observation(
        images=rng.integers(0, 255, (1, cfg.num_cameras, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
        proprio=rng.normal(size=(1, cfg.proprio_dim)).astype(np.float32),
        tokens=rng.integers(1, cfg.vocab_size, (1, n)).astype(np.int64),
        token_mask=np.arange(n)[None] < 12,
        action_dim=np.full(1, cfg.action_channels, np.int64),
    )


def run(lr: float, iters: int, batch: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = PolicyConfig(image_size=16, num_cameras=1)
    policy = FlowPolicy(cfg)
    with torch.no_grad():  # every weight away from its init (zero-init output layers would hide the signal)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    for p in policy.backbone.parameters():
        p.requires_grad_(False)
    actor = [p for n, p in policy.named_parameters() if p.requires_grad and not n.startswith("value_head.")]
    opt = torch.optim.AdamW(actor, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    one = observation(cfg, np.random.default_rng(seed))
    obs = Observation.concat([one] * batch)
    target = torch.full((cfg.action_horizon, cfg.action_channels), 0.8)
    sampler, gen = FlowSDE(0.5), torch.Generator().manual_seed(seed + 1)
    exec_mask = np.ones((batch, cfg.action_horizon), bool)
    rows = []
    for it in range(iters + 1):
        with torch.no_grad():
            chunk = policy.sample(obs, sampler, gen)
            ode = policy.sample(one, ODE(), gen)
        dist = ((torch.from_numpy(chunk.actions) - target) ** 2).sum((1, 2))
        row = {"iteration": it, "sde_dist": float(dist.mean()),
               "ode_dist": float(((torch.from_numpy(ode.actions) - target) ** 2).sum())}
        if it == iters:
            rows.append(row)
            break
        adv = normalize(-dist, torch.ones(batch, dtype=torch.bool))
        old = reduce_log_prob(torch.from_numpy(chunk.logp_steps), torch.from_numpy(exec_mask),
                              torch.from_numpy(obs.action_dim),
                              torch.from_numpy(sampler.num_stochastic(chunk.step_mask)), "chunk_level")
        kls, clips = [], []
        for _ in range(4):
            for mb in np.array_split(np.random.default_rng(it).permutation(batch), 4):
                rc = policy.log_prob_and_value(obs.index(mb), chunk.chain[mb], chunk.step_mask[mb], exec_mask[mb],
                                               sampler, "chunk_level")
                pl = ppo_policy_loss(rc.logp, old[mb], adv[mb], torch.ones(len(mb), dtype=torch.bool), 0.2, 0.2)
                opt.zero_grad()
                pl.loss.backward()
                torch.nn.utils.clip_grad_norm_(actor, 1.0)
                opt.step()
                kls.append(pl.approx_kl)
                clips.append(pl.clip_fraction)
        rows.append({**row, "approx_kl": float(np.mean(kls)), "clip_fraction": float(np.mean(clips))})
    return {"lr": lr, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4")
    args = ap.parse_args()
    t0 = time.time()
    runs = []
    for lr in (float(x) for x in args.lrs.split(",")):
        runs.append(run(lr, args.iters, args.batch))
        first, last = runs[-1]["rows"][0], runs[-1]["rows"][-1]
        kl = np.mean([r["approx_kl"] for r in runs[-1]["rows"][:-1]])
        print(f"lr {lr:g}: SDE dist {first['sde_dist']:.1f} -> {last['sde_dist']:.1f}, "
              f"ODE dist {first['ode_dist']:.1f} -> {last['ode_dist']:.1f}, approx-KL/update {kl:.3f}", flush=True)
    res = {"command": "python benchmarks/ppo_bandit.py " + f"--iters {args.iters} --lrs {args.lrs}",
           "batch": args.batch, "seconds": time.time() - t0, "runs": runs}
    OUT.mkdir(exist_ok=True)
    (OUT / "ppo_bandit.json").write_text(json.dumps(res, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in runs:
        it = [x["iteration"] for x in r["rows"]]
        ax[0].plot(it, [x["sde_dist"] for x in r["rows"]], label=f"lr {r['lr']:g}")
        ax[1].plot(it, [x["ode_dist"] for x in r["rows"]], label=f"lr {r['lr']:g}")
    ax[0].set(xlabel="PPO iteration", ylabel="||a - target||^2 (SDE chunks)", title="flow-PPO on a bandit")
    ax[1].set(xlabel="PPO iteration", ylabel="||a - target||^2 (ODE chunk)")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(OUT / "ppo_bandit.png", dpi=100)


if __name__ == "__main__":
    main()
