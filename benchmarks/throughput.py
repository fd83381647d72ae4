"""System throughput in one run on this machine (JSON + PNG in benchmarks/results/):

- raw simulator env steps/s with a null policy on the same env workers, vs full-system env steps/s
  (rollout with the flow policy through inference actors); their ratio = pipeline efficiency
- the shared-CPU bound: where inference runs on the simulators' cores (a CPU-only machine), each env
  step costs simulator core-time plus the policy's own core-time per env step (measured alone, one
  thread, at the batch sizes the worker sees), so the full system can reach at most
  cores / (sim + inference core-s per step); full / bound = the system's own overhead efficiency
- pipelining on (2 env groups per worker) vs off
- learner samples/s (PPO update; median over the settings, each the median of 3 updates after 3
  warm-up updates) vs raw forward+backward samples/s of the same model
- weight broadcast time to 1 vs 2 inference workers
- hot-path transport, Ray actor calls vs the pyzmq channel: per-request round trip to a real
  inference actor (8-env observation, the flow policy answering), and full-system env steps/s

    python benchmarks/throughput.py [--chunks 16] [--set key=value ...]
    python benchmarks/throughput.py --gpu   # learner + inference share one CUDA card -> throughput_gpu.*

With ``--gpu`` the policy actors run on the GPU (fractions of one card), so inference no longer
takes simulator cores: the bound is the raw simulator rate itself, and the raw forward+backward
runs on the GPU too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import ray
import torch

from rlsys.actors.system import RaySystem, actor_options, ensure_ray
from rlsys.config import load_config
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.weights import state_to_numpy

OUT = Path(__file__).parent / "results"
WARMUP_UPDATES, TIMED_UPDATES = 3, 3


def system_numbers(cfg, state, repeats: int) -> dict:
    system = RaySystem(cfg, state, episodic=False)
    try:
        system.sync_weights()
        system.collect()  # warm-up (actor start, first render)
        full, segs = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            segs = system.collect()
            full.append(sum(int(s.exec_mask.sum()) for s in segs) / (time.perf_counter() - t0))
        raw = ray.get([w.null_rollout.remote(cfg.rollout.chunks_per_segment) for w in system.env_workers])
        raw_rate = sum(s for s, _ in raw) / max(t for _, t in raw)
        broadcast = []
        for _ in range(3):
            system.broadcast_version = None  # send the version the workers hold again: the broadcast is timed
            broadcast.append(system.sync_weights()[1])
        # The same segments each time: rollout.max_staleness keeps them. On the CPU the first updates run
        # slower (4.2, 2.5, 1.4 s, then ~1.0-1.2 s for 256
        # samples on 2 cores): WARMUP_UPDATES of them are left out, the median of TIMED_UPDATES is kept.
        rates, seconds = [], []
        for i in range(WARMUP_UPDATES + TIMED_UPDATES):
            t0 = time.perf_counter()
            m = system.update(segs)
            if i >= WARMUP_UPDATES:
                rates.append(m["samples_per_s"])
                seconds.append(time.perf_counter() - t0)
        return {"full_env_steps_per_s": float(np.median(full)), "raw_env_steps_per_s": raw_rate,
                "pipeline_efficiency": float(np.median(full)) / raw_rate,
                "broadcast_s": float(np.median(broadcast)), "learner_samples_per_s": float(np.median(rates)),
                "learner_batch": m["samples"], "update_s": float(np.median(seconds))}
    finally:
        system.shutdown()


def random_observation(cfg, n: int, rng: np.random.Generator):
    """An ``n``-env tabletop observation batch with random pixels and proprio, as workers send it."""
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.prompt import ObservationBuilder

    p = cfg.policy
    return ObservationBuilder(p, EMBODIMENT)(
        rng.integers(0, 255, (n, p.num_cameras, p.image_size, p.image_size, 3), dtype=np.uint8),
        rng.normal(size=(n, 8)).astype(np.float32), ["pick up the red cube"] * n)


def hot_path_round_trip(cfg, state, requests: int = 60) -> dict:
    """Median seconds per obs -> ActionChunk round trip to one inference actor, Ray vs zmq."""
    from rlsys.actors.system import InferenceActor
    from rlsys.actors.transport import ZmqClient
    from rlsys.types import ActionChunk

    obs = random_observation(cfg, cfg.env.num_envs, np.random.default_rng(0))
    actor = InferenceActor.options(**actor_options(cfg, "infer")).remote(cfg, seed=0)
    ray.get(actor.set_weights.remote(state, 0, [ray.put({})]))  # the whole state as the trained part
    client = ZmqClient(ray.get(actor.zmq_endpoint.remote()), ActionChunk, timeout_s=60)
    calls = {"ray": lambda: ray.get(actor.infer.remote(obs)), "zmq": lambda: client.wait(client.submit(obs))}
    times: dict[str, list[float]] = {"ray": [], "zmq": []}
    for i in range(requests):  # interleaved: both see the same machine load
        for name in (("ray", "zmq") if i % 2 else ("zmq", "ray")):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    client.close()
    ray.kill(actor)
    out = {f"{k}_ms": 1000 * float(np.median(v[5:])) for k, v in times.items()}
    out["zmq_speedup"] = out["ray_ms"] / out["zmq_ms"]
    return out


def inference_core_steps_per_s(cfg, state, batches: tuple[int, ...] = (8, 16), repeats: int = 20) -> dict[int, float]:
    """Env steps/s one core of inference serves (the flow policy sampling a chunk, one thread)."""
    from rlsys.actors.inference import InferenceEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = InferenceEngine(cfg)
        engine.set_weights(state, 0)
        rng, out = np.random.default_rng(0), {}
        for n in batches:
            obs = random_observation(cfg, n, rng)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                engine.infer(obs)
                times.append(time.perf_counter() - t0)
            out[n] = n * cfg.policy.action_horizon / float(np.median(times[3:]))
        return out
    finally:
        torch.set_num_threads(threads)


def shared_cpu_bound(raw_rate: float, sim_cores: int, infer_rate: float, cores: int) -> float:
    """Env steps/s when every step's simulator and inference core-time share ``cores`` cores."""
    return cores / (sim_cores / raw_rate + 1.0 / infer_rate)


def raw_fwd_bwd(cfg, batch: int, repeats: int = 8, device: str = "cpu") -> float:
    from rlsys.actors.env_worker import EnvWorkerCore
    from rlsys.actors.inference import InferenceEngine

    engine = InferenceEngine(cfg, FlowPolicy(cfg.policy).to(device), device=device)
    core = EnvWorkerCore(cfg, 0)
    seg = core.rollout(engine.infer, lambda c: c, engine.values)
    core.close()
    idx = np.arange(min(batch, seg.obs.batch_size))
    obs, chunk = seg.obs.index(idx), seg.chunk.index(idx)
    exec_mask = seg.exec_mask.reshape(-1, seg.exec_mask.shape[-1])[idx]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rc = engine.policy.log_prob_and_value(obs, chunk.chain, chunk.step_mask, exec_mask, engine.sampler,
                                              "chunk_level")
        (rc.logp.sum() + rc.value.sum()).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return len(idx) / float(np.median(times[WARMUP_UPDATES:]))  # as the learner: its first steps left out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--gpu", action="store_true", help="learner and inference workers on one CUDA card")
    args = ap.parse_args()
    gpu = ["placement.use_gpu=true", "placement.learner_gpus=0.5", "placement.inference_gpus=0.25"] if args.gpu else []
    # no critic warm-up: the timed update is a real PPO update of the policy, not the critic's alone
    base = [f"rollout.chunks_per_segment={args.chunks}", "algo.epochs=1",
            f"rollout.max_staleness={WARMUP_UPDATES + TIMED_UPDATES}",
            "algo.critic_warmup_iters=0", *gpu, *args.overrides]
    cfg = load_config("tabletop_ppo", ["placement.mode=disaggregated", "rollout.env_groups=1", *base])
    ensure_ray(cfg, num_cpus=8)
    torch.manual_seed(0)
    state = state_to_numpy(FlowPolicy(cfg.policy))
    res = {"config": {"env_workers": cfg.rollout.num_env_workers, "envs_per_worker": cfg.env.num_envs,
                      "chunks_per_segment": args.chunks, "overrides": args.overrides,
                      "gpu": torch.cuda.get_device_name() if args.gpu else None, "cpus": os.cpu_count()}}
    res["pipelining_off"] = system_numbers(cfg, state, args.repeats)
    print(json.dumps(res, indent=1), flush=True)
    piped = load_config("tabletop_ppo", ["placement.mode=pipelined", "rollout.env_groups=2", *base])
    res["pipelining_on"] = system_numbers(piped, state, args.repeats)
    res["hot_path_round_trip"] = hot_path_round_trip(cfg, state)
    for transport in ("ray", "zmq"):  # full system, pipelined, each transport
        c = load_config("tabletop_ppo", ["placement.mode=pipelined", "rollout.env_groups=2",
                                         f"rollout.transport={transport}", *base])
        res[f"pipelined_{transport}_transport"] = system_numbers(c, state, args.repeats)
    if args.gpu:  # the same pipelined zmq system with eager GPU inference: what the CUDA graphs buy
        c = load_config("tabletop_ppo", ["placement.mode=pipelined", "rollout.env_groups=2", "rollout.transport=zmq",
                                         "rollout.cuda_graphs=false", *base])
        res["pipelined_zmq_eager_gpu_inference"] = system_numbers(c, state, args.repeats)
    print(json.dumps({k: res[k] for k in res if "transport" in k or "hot_path" in k or "eager" in k}, indent=1),
          flush=True)
    two = load_config("tabletop_ppo", ["placement.mode=disaggregated", "rollout.env_groups=1",
                                       "rollout.num_inference_workers=2", *base])
    res["two_inference_workers"] = system_numbers(two, state, args.repeats)
    infer = {} if args.gpu else inference_core_steps_per_s(cfg, state)
    cores = os.cpu_count() or 1
    res["shared_cpu"] = {"cores": cores, "inference_env_steps_per_s_one_core": infer, "per_setting": {}}
    for key in ("pipelining_off", "pipelining_on", "pipelined_zmq_transport", "two_inference_workers"):
        r = res[key]
        if args.gpu:  # inference is on the GPU: the simulators alone bound the rate
            bound = r["raw_env_steps_per_s"]
        else:  # the cheapest batching: the highest bound, the strictest ratio
            bound = shared_cpu_bound(r["raw_env_steps_per_s"], min(cfg.rollout.num_env_workers, cores),
                                     max(infer.values()), cores)
        res["shared_cpu"]["per_setting"][key] = {"bound_env_steps_per_s": bound,
                                                 "full_over_bound": r["full_env_steps_per_s"] / bound}
    res["raw_fwd_bwd_samples_per_s"] = raw_fwd_bwd(cfg, 64, device="cuda" if args.gpu else "cpu")
    # Every setting above runs the same learner on the same 256 samples; its rate moves by up to 3x
    # between them on 2 shared cores, so the ratio uses the median over all of them (range kept).
    rates = [r["learner_samples_per_s"] for r in res.values() if isinstance(r, dict) and "learner_samples_per_s" in r]
    res["learner_samples_per_s_over_settings"] = {"median": float(np.median(rates)), "min": min(rates),
                                                  "max": max(rates), "settings": len(rates)}
    res["learner_over_raw"] = float(np.median(rates)) / res["raw_fwd_bwd_samples_per_s"]
    res["broadcast_1_vs_2_workers_s"] = [res["pipelining_off"]["broadcast_s"],
                                         res["two_inference_workers"]["broadcast_s"]]
    OUT.mkdir(exist_ok=True)
    tag = "_gpu" if args.gpu else ""
    (OUT / f"throughput{tag}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=1))

    plot(res, OUT / f"throughput{tag}.png")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = bool(res["config"].get("gpu"))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    bars = [("raw sim (null policy)", res["pipelining_off"]["raw_env_steps_per_s"]),
            ("bound (GPU: raw sim)" if gpu else "shared-CPU bound",
             res["shared_cpu"]["per_setting"]["pipelining_off"]["bound_env_steps_per_s"])]
    for key, label in (("pipelining_off", "full system"), ("pipelining_on", "full, pipelined"),
                       ("two_inference_workers", "full, 2 infer workers"),
                       ("pipelined_ray_transport", "pipelined, Ray transport"),
                       ("pipelined_zmq_transport", "pipelined, zmq transport"),
                       ("pipelined_zmq_eager_gpu_inference", "pipelined zmq, eager GPU inference")):
        if key in res:
            bars.append((label, res[key]["full_env_steps_per_s"]))
    ax[0].barh([b[0] for b in bars], [b[1] for b in bars])
    ax[0].set(xlabel="env steps / s", title=f"rollout throughput ({res['config'].get('gpu') or 'CPU'})")
    learner = res["learner_samples_per_s_over_settings"]
    ax[1].barh(["learner (PPO update, median)", "raw fwd+bwd"], [learner["median"], res["raw_fwd_bwd_samples_per_s"]])
    ax[1].errorbar([learner["median"]], [0], xerr=[[learner["median"] - learner["min"]],  # the settings' spread
                                                   [learner["max"] - learner["median"]]], fmt="none", color="k")
    ax[1].set(xlabel="samples / s", title="learner")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
