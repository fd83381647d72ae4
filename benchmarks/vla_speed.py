"""Policy-model speed, side by side in one run: rlsys's tiny model, pi0 and pi0.5 (transformers), each
in its own process (its own peak memory). Per model:

- rollout: chunks/s of ``FlowPolicy.sample`` (Flow-SDE, every denoising state kept) at batch 1/16/64;
- learner: samples/s of the recompute (log-prob + value of one stored transition per sample) plus
  backward, against the bare network (``model.encode`` + one ``model.velocity``) plus backward on the
  same batch: what rlsys's bookkeeping costs;
- broadcast: bytes and seconds of one weight broadcast (``ray.put`` + a fetch in another process),
  what trains under ``optim.train_backbone=false`` (the action expert and heads) against the whole state;
- peak resident memory (CPU) or peak allocated (CUDA).

    python benchmarks/vla_speed.py                       # tiny configs, CPU -> vla_speed_cpu_tiny.json/.png
    python benchmarks/vla_speed.py --size base --device cuda --models pi0 pi05   # real sizes on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"


def rate(fn, items: int, seconds: float) -> float:
    """items/s of ``fn`` over at least ``seconds`` (one warm-up call first)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 2:
            return items * n / dt


def measure(model: str, size: str, device: str, batches: list[int], seconds: float) -> dict:
    import numpy as np
    import ray
    import torch

    from rlsys.config import PolicyConfig
    from rlsys.flow import FlowSDE
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.types import Observation
    from rlsys.weights import split_state

    torch.manual_seed(0)
    kw = {} if model == "tiny" else {"model": model, "model_config": f"{model}_{size}"}
    if model != "tiny" and size == "base":
        kw.update(action_horizon=50, action_channels=32, max_tokens=48 if model == "pi0" else 200, image_size=224)
    elif model != "tiny":
        kw.update(vocab_size=256)
    cfg = PolicyConfig(**kw, bf16=device == "cuda")
    t0 = time.perf_counter()
    policy = FlowPolicy(cfg).to(device)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    sampler = FlowSDE(0.5)

    def obs(b: int) -> Observation:
        mask = np.zeros((b, cfg.max_tokens), bool)
        mask[:, :12] = True
        return Observation(images=rng.integers(0, 256, (b, cfg.num_cameras, cfg.image_size, cfg.image_size, 3),
                                               dtype=np.uint8),
                           proprio=rng.uniform(-1, 1, (b, cfg.proprio_dim)).astype(np.float32),
                           tokens=np.where(mask, 5, 0).astype(np.int64), token_mask=mask,
                           action_dim=np.full(b, 7, np.int64))

    policy.eval()
    gen = torch.Generator().manual_seed(0)
    chunks = {}
    for b in batches:
        o = obs(b)
        chunks[b] = rate(lambda: policy.sample(o, sampler, gen), b, seconds)

    # learner: recompute + backward vs the bare network + backward, the same batch
    b = 16
    o = obs(b)
    ch = policy.sample(o, sampler, gen)
    exec_mask = np.ones((b, cfg.action_horizon), bool)
    policy.train()

    def recompute() -> None:
        policy.zero_grad(set_to_none=True)
        r = policy.log_prob_and_value(o, ch.chain, ch.step_mask, exec_mask, sampler, "chunk_level")
        (r.logp.mean() + r.value.mean()).backward()

    inputs = policy._tensors(o)
    x = torch.as_tensor(ch.chain[:, 1], device=policy.device)
    t = torch.full((b,), 0.5, device=policy.device)

    def bare() -> None:
        policy.zero_grad(set_to_none=True)
        with policy.autocast():
            v, _ = policy.model.velocity(policy.model.encode(inputs), x, t)
        v.float().sum().backward()

    learner = {"recompute_backward_samples_per_s": rate(recompute, b, seconds),
               "bare_forward_backward_samples_per_s": rate(bare, b, seconds)}
    learner["rlsys_over_bare"] = learner["bare_forward_backward_samples_per_s"] / learner[
        "recompute_backward_samples_per_s"]

    # broadcast: what trains with a frozen backbone vs everything
    backbone = {id(p) for p in policy.model.backbone_parameters()}
    trained = {n for n, p in policy.named_parameters(remove_duplicate=False) if id(p) not in backbone}
    part, rest = split_state(policy, trained)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)

    @ray.remote
    def fetch(state: dict) -> int:
        return sum(v.nbytes for v in state.values())

    broadcast = {}
    for name, state in (("trained_only", part), ("full_state", {**rest, **part})):
        ray.get(fetch.remote(ray.put(state)))  # warm the worker
        t0 = time.perf_counter()
        nbytes = ray.get(fetch.remote(ray.put(state)))
        broadcast[name] = {"bytes": nbytes, "seconds": time.perf_counter() - t0}
    ray.shutdown()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": model, "size": size, "device": device, "torch_threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in policy.parameters()), "build_s": build_s,
            "chunks_per_s": chunks, "learner": learner, "broadcast": broadcast, "peak_memory_bytes": peak,
            "horizon": cfg.action_horizon, "channels": cfg.action_channels, "denoise_steps": cfg.denoise_steps}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in results]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    batches = list(results[0]["chunks_per_s"])
    w = 0.8 / len(batches)
    for i, b in enumerate(batches):
        ax[0].bar([j + i * w for j in range(len(names))], [r["chunks_per_s"][b] for r in results], w,
                  label=f"batch {b}")
    ax[0].set(xticks=[j + 0.4 - w / 2 for j in range(len(names))], xticklabels=names, ylabel="chunks/s",
              title="rollout sampling (Flow-SDE)", yscale="log")
    ax[0].legend(fontsize=8)
    for i, (key, label) in enumerate((("recompute_backward_samples_per_s", "rlsys recompute + backward"),
                                      ("bare_forward_backward_samples_per_s", "bare network + backward"))):
        ax[1].bar([j + i * 0.4 for j in range(len(names))], [r["learner"][key] for r in results], 0.4, label=label)
    ax[1].set(xticks=[j + 0.2 for j in range(len(names))], xticklabels=names, ylabel="samples/s",
              title="learner (batch 16)", yscale="log")
    ax[1].legend(fontsize=8)
    for i, key in enumerate(("trained_only", "full_state")):
        ax[2].bar([j + i * 0.4 for j in range(len(names))], [r["broadcast"][key]["bytes"] / 2**20 for r in results],
                  0.4, label=key.replace("_", " "))
    ax[2].set(xticks=[j + 0.2 for j in range(len(names))], xticklabels=names, ylabel="MiB per broadcast",
              title="weight broadcast (frozen backbone)", yscale="log")
    ax[2].legend(fontsize=8)
    fig.suptitle(f"policy models, {results[0]['size']} configs on {results[0]['device']} "
                 f"({results[0]['torch_threads']} torch threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "pi0", "pi05"])
    ap.add_argument("--size", choices=("tiny", "base"), default="tiny", help="pi0 / pi0.5 config size")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.device, args.batches, args.seconds)))
        return
    results = []
    for m in args.models:  # one process each: its own peak memory, no allocator state carried over
        cmd = [sys.executable, __file__, "--one", m, "--size", args.size, "--device", args.device,
               "--seconds", str(args.seconds), "--batches", *map(str, args.batches)]
        print(f"vla_speed: {m} ({args.size}, {args.device}) ...", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        r = results[-1]
        print(f"  {r['parameters'] / 1e6:.2f}M params; chunks/s " +
              ", ".join(f"b{b} {v:.1f}" for b, v in r["chunks_per_s"].items()) +
              f"; recompute+backward {r['learner']['recompute_backward_samples_per_s']:.1f} samples/s "
              f"(bare {r['learner']['bare_forward_backward_samples_per_s']:.1f}); broadcast "
              f"{r['broadcast']['trained_only']['bytes'] / 2**20:.2f} vs "
              f"{r['broadcast']['full_state']['bytes'] / 2**20:.2f} MiB",
              flush=True)
    OUT.mkdir(exist_ok=True)
    name = f"vla_speed_{args.device}_{args.size}"
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2))
    plot(results, OUT / f"{name}.png")
    print(f"vla_speed: {OUT / name}.json and .png")


if __name__ == "__main__":
    main()
