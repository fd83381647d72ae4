"""How much of the return can each critic explain? Value heads fitted offline on SFT rollouts.

PPO's chunk advantages are only as good as V. This collects autoreset rollout streams of an SFT
checkpoint with the rollout sampler (Flow-SDE) exactly as the env workers step them, computes the
chunk-level discounted return of every chunk-step (gamma per chunk, to the episode's end), encodes
every observation once with the frozen backbone, and fits each value head (``policy.critic``:
``pooled`` = MLP on the mean prefix token, ``attention`` = learned-query attention over the prefix
tokens) on the streams of 3/4 of the envs. It reports the explained variance of the return on the
other envs' episodes after every epoch (JSON + PNG).

    python benchmarks/critic_fit.py --ckpt runs/few_shot/sft_90 [--reward shaped] [--chunks 400]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from rlsys.checkpoint import load_policy
from rlsys.envs.pool import EnvPool
from rlsys.flow import FlowSDE
from rlsys.prompt import ObservationBuilder
from rlsys.types import Observation

OUT = Path(__file__).parent / "results"


def collect(ckpt: str, reward: str, num_envs: int, chunks: int, noise: float, seed: int):
    """-> (policy, per-chunk observations, rewards [T, N], ended [T, N], success rate, episodes)."""
    policy, ecfg, emb, _ = load_policy(ckpt)
    policy.eval()
    cfg = dataclasses.replace(ecfg, num_envs=num_envs, reward=reward)
    build = ObservationBuilder(policy.cfg, emb)
    sampler, gen = FlowSDE(noise), torch.Generator().manual_seed(seed)
    h = policy.cfg.action_horizon
    obs_t, rew_t, done_t = [], [], []
    ended = succ = 0
    with EnvPool(cfg, seed=seed) as pool:
        raw, _ = pool.reset()
        for c in range(chunks):
            o = build(raw["images"], raw["proprio"], pool.instructions)
            chunk = policy.sample(o, sampler, gen)
            res = pool.execute_chunk(chunk.actions[:, :, : emb.action_dim], lengths=np.full(num_envs, h))
            done = res.terminated | res.truncated
            ended += int(done.sum())
            succ += int((done & res.success).sum())
            obs_t.append(o)
            rew_t.append(res.rewards.sum(1))
            done_t.append(done)
            raw = res.obs
            if (c + 1) % 50 == 0:
                print(f"collect: {c + 1}/{chunks} chunk-steps, {ended} episodes, success {succ / max(ended, 1):.2f}",
                      flush=True)
    return policy, obs_t, np.stack(rew_t), np.stack(done_t), succ / max(ended, 1), ended


def chunk_returns(rewards: np.ndarray, done: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """[T, N] -> returns [T, N] and a mask of chunk-steps whose episode ended inside the stream."""
    t_len, n = rewards.shape
    ret = np.zeros((t_len, n), np.float32)
    complete = np.zeros((t_len, n), bool)
    acc, seen_end = np.zeros(n, np.float32), np.zeros(n, bool)
    for t in range(t_len - 1, -1, -1):
        acc = np.where(done[t], 0.0, acc * gamma)  # an episode ending here: nothing after it counts
        acc = rewards[t] + acc
        seen_end |= done[t]
        ret[t], complete[t] = acc, seen_end
    return ret, complete


def fit(kind: str, ckpt: str, prefix, ret: torch.Tensor, train: np.ndarray, test: np.ndarray,
        epochs: int, lr: float, seed: int) -> list[float]:
    torch.manual_seed(seed)
    policy, *_ = load_policy(ckpt, critic=kind)
    head = policy.value_head
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    y_test = ret[test]
    evs = []
    for _ in range(epochs):
        perm = np.random.default_rng(seed + len(evs)).permutation(train)
        for i in range(0, len(perm), 256):
            idx = torch.from_numpy(perm[i: i + 256])
            loss = torch.nn.functional.mse_loss(policy.value_of(prefix.index(idx)), ret[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = policy.value_of(prefix.index(torch.from_numpy(test)))
        evs.append(float(1 - torch.var(y_test - pred) / torch.var(y_test)))
    return evs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="runs/few_shot/sft_90")
    ap.add_argument("--reward", default="shaped", choices=["sparse", "shaped"])
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--chunks", type=int, default=400, help="chunk-steps per env stream")
    ap.add_argument("--noise", type=float, default=0.5, help="Flow-SDE noise level of the rollouts")
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT / "critic_fit"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    policy, obs_t, rewards, done, success, episodes = collect(args.ckpt, args.reward, args.envs, args.chunks,
                                                      args.noise, args.seed)
    ret, complete = chunk_returns(rewards, done, args.gamma)
    obs = Observation.concat(obs_t)  # row = t * N + env
    env_of = np.tile(np.arange(args.envs), len(obs_t))
    ok = complete.reshape(-1)
    held = env_of >= (3 * args.envs) // 4
    train, test = np.flatnonzero(ok & ~held), np.flatnonzero(ok & held)
    prefix = policy.encode_batch(obs)  # the frozen backbone, once for every head
    ret_t = torch.from_numpy(ret.reshape(-1))
    print(f"fit: {len(train)} train / {len(test)} held-out chunk-steps, return mean {ret_t[ok].mean():.3f} "
          f"std {ret_t[ok].std():.3f}", flush=True)
    curves = {}
    for kind in ("pooled", "attention"):
        curves[kind] = fit(kind, args.ckpt, prefix, ret_t, train, test, args.epochs, args.lr, args.seed)
        print(f"fit: {kind}: held-out EV best {max(curves[kind]):.3f}, last {curves[kind][-1]:.3f}", flush=True)
    result = {
        "ckpt": args.ckpt, "reward": args.reward, "envs": args.envs, "chunks": args.chunks,
        "noise": args.noise, "gamma": args.gamma, "episodes": episodes, "rollout_success": success,
        "train_rows": int(len(train)), "test_rows": int(len(test)),
        "held_out_ev": curves, "best": {k: max(v) for k, v in curves.items()},
        "last": {k: v[-1] for k, v in curves.items()}, "wall_s": time.time() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, ev in curves.items():
        ax.plot(range(1, len(ev) + 1), ev, label=f"{kind} (best {max(ev):.2f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("explained variance, held-out envs")
    ax.set_title(f"critic fit on SFT rollouts ({args.reward} reward, {episodes} episodes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(f"critic_fit: wrote {out.with_suffix('.json')} and .png ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
