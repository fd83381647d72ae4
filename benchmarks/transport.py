"""Hot-path transport: one env worker's observation batch -> policy process -> action chunk back,
through Ray actor calls vs a pyzmq REQ/REP channel, same payloads, same machine, one run.
Writes benchmarks/results/transport.json.

    python benchmarks/transport.py [--envs 8] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pickle
import time
from pathlib import Path

import numpy as np
import ray

OUT = Path(__file__).parent / "results"


def payloads(envs: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    obs = {"images": rng.integers(0, 255, (envs, 2, 64, 64, 3), dtype=np.uint8),
           "proprio": rng.normal(size=(envs, 8)).astype(np.float32),
           "tokens": rng.integers(0, 1024, (envs, 48)).astype(np.int64)}
    chunk = {"actions": rng.normal(size=(envs, 5, 7)).astype(np.float32),
             "chain": rng.normal(size=(envs, 5, 5, 7)).astype(np.float32),
             "logp_steps": rng.normal(size=(envs, 5)).astype(np.float32)}
    return obs, chunk


@ray.remote
class Echo:
    def __init__(self, chunk: dict) -> None:
        self.chunk = chunk

    def infer(self, obs: dict) -> dict:
        return self.chunk


def zmq_server(port: int, chunk: dict) -> None:
    import zmq

    sock = zmq.Context().socket(zmq.REP)
    sock.bind(f"tcp://127.0.0.1:{port}")
    reply = pickle.dumps(chunk, protocol=5)
    while True:
        msg = sock.recv()
        if msg == b"stop":
            sock.send(b"")
            return
        pickle.loads(msg)
        sock.send(reply)


def rate(fn, seconds: float) -> float:
    for _ in range(5):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    import zmq

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    obs, chunk = payloads(args.envs)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    echo = Echo.remote(chunk)
    ray_rate = rate(lambda: ray.get(echo.infer.remote(obs)), args.seconds)
    port = 25555
    proc = mp.get_context("spawn").Process(target=zmq_server, args=(port, chunk), daemon=True)
    proc.start()
    sock = zmq.Context().socket(zmq.REQ)
    sock.connect(f"tcp://127.0.0.1:{port}")

    def zmq_call() -> None:
        sock.send(pickle.dumps(obs, protocol=5))
        pickle.loads(sock.recv())

    zmq_rate = rate(zmq_call, args.seconds)
    sock.send(b"stop")
    sock.recv()
    proc.join(5)
    ray.shutdown()
    size = sum(v.nbytes for v in obs.values())
    res = {"envs": args.envs, "obs_bytes": size, "ray_round_trips_per_s": ray_rate,
           "zmq_round_trips_per_s": zmq_rate, "ray_ms": 1000 / ray_rate, "zmq_ms": 1000 / zmq_rate,
           "zmq_over_ray": zmq_rate / ray_rate}
    OUT.mkdir(exist_ok=True)
    (OUT / "transport.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
