"""Policy speed on this machine: inference chunks/s and latency vs batch size and vs denoising
steps (ODE and Flow-SDE), SFT samples/s. Writes benchmarks/results/policy_speed.json and .png.

    python benchmarks/policy_speed.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rlsys.config import PolicyConfig
from rlsys.flow import ODE, FlowSDE
from rlsys.policy.cuda_graph import CudaGraphDenoiser
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.types import Observation

OUT = Path(__file__).parent / "results"


def fake_obs(cfg: PolicyConfig, b: int) -> Observation:
    rng = np.random.default_rng(0)
    return Observation(
        images=rng.integers(0, 255, (b, cfg.num_cameras, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
        proprio=rng.normal(size=(b, cfg.proprio_dim)).astype(np.float32),
        tokens=rng.integers(1, cfg.vocab_size, (b, cfg.max_tokens)).astype(np.int64),
        token_mask=np.ones((b, cfg.max_tokens), bool), action_dim=np.full(b, 7, np.int64))


def timed(fn, repeats: int, device: str) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,4,16,64,256")
    args = ap.parse_args()
    dev = args.device
    res: dict = {"machine": {"device": dev, "cpus": os.cpu_count(), "platform": platform.platform(),
                             "torch_threads": torch.get_num_threads(),
                             "gpu": torch.cuda.get_device_name() if dev == "cuda" else None}}
    base = PolicyConfig()
    res["policy"] = {"params_m": sum(p.numel() for p in FlowPolicy(base).parameters()) / 1e6,
                     "config": base.__dict__}
    rows = []
    batches = [int(x) for x in args.batches.split(",")]
    variants = [("ode", ODE(), False), ("flow_sde", FlowSDE(0.5), False)]
    if dev == "cuda":  # the same sampling replayed from captured CUDA graphs (what GPU inference workers run)
        variants += [("ode+cuda_graph", ODE(), True), ("flow_sde+cuda_graph", FlowSDE(0.5), True)]
    for steps in (4,):
        for name, sampler, graphed in variants:
            pol = FlowPolicy(PolicyConfig(denoise_steps=steps)).to(dev).eval()
            den = CudaGraphDenoiser(pol, sampler, max(batches)) if graphed else None
            for b in batches:
                obs = fake_obs(pol.cfg, b)
                t = timed(lambda: pol.sample(obs, sampler, denoiser=den), args.repeats, dev)
                rows.append({"sampler": name, "denoise_steps": steps, "batch": b, "latency_s": t,
                             "chunks_per_s": b / t})
                print(rows[-1], flush=True)
    res["vs_batch"] = rows
    rows = []
    for steps in (1, 2, 4, 8, 16):
        pol = FlowPolicy(PolicyConfig(denoise_steps=steps)).to(dev).eval()
        obs = fake_obs(pol.cfg, 16)
        t = timed(lambda: pol.sample(obs, FlowSDE(0.5)), args.repeats, dev)
        rows.append({"denoise_steps": steps, "batch": 16, "latency_s": t, "chunks_per_s": 16 / t})
        print(rows[-1], flush=True)
    res["vs_steps"] = rows
    rows = []
    for b in (32, 64):
        pol = FlowPolicy(base).to(dev).train()
        opt = torch.optim.AdamW(pol.parameters(), lr=1e-4)
        obs = fake_obs(base, b)
        acts = np.random.default_rng(0).uniform(-1, 1, (b, base.action_horizon, 7)).astype(np.float32)
        valid = np.ones((b, base.action_horizon), bool)

        def step() -> None:
            loss = pol.sft_loss(obs, acts, valid)
            opt.zero_grad()
            loss.backward()
            opt.step()

        t = timed(step, args.repeats, dev)
        rows.append({"batch": b, "step_s": t, "samples_per_s": b / t})
        print(rows[-1], flush=True)
    res["sft"] = rows
    OUT.mkdir(exist_ok=True)
    tag = "" if dev == "cpu" else f"_{dev}"
    (OUT / f"policy_speed{tag}.json").write_text(json.dumps(res, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, *_ in variants:
        r = [x for x in res["vs_batch"] if x["sampler"] == name]
        ax[0].plot([x["batch"] for x in r], [x["chunks_per_s"] for x in r], "o-", label=name)
    ax[0].set(xscale="log", xlabel="batch size", ylabel="chunks / s", title=f"inference ({dev}, 4 steps)")
    ax[0].legend()
    r = res["vs_steps"]
    ax[1].plot([x["denoise_steps"] for x in r], [1000 * x["latency_s"] for x in r], "o-")
    ax[1].set(xlabel="denoising steps", ylabel="latency (ms), batch 16", title="latency vs steps")
    fig.tight_layout()
    fig.savefig(OUT / f"policy_speed{tag}.png", dpi=100)


if __name__ == "__main__":
    main()
