"""Serve load test on loopback: N concurrent clients for a bounded time and request count ->
throughput and p50/p99 latency. Writes benchmarks/results/serve_load.json.

    python benchmarks/serve_load.py --ckpt CKPT [--clients 1,4,16] [--seconds 10] [--max-requests 2000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import ray

from rlsys.deploy.client import PolicyClient
from rlsys.deploy.serve import prepare_env, start

OUT = Path(__file__).parent / "results"


def load(url: str, clients: int, seconds: float, max_requests: int, spec: dict) -> dict:
    rng = np.random.default_rng(0)
    c = len(spec["cameras"])
    s = spec["image_size"]
    images = rng.integers(0, 255, (c, s, s, 3), dtype=np.uint8)
    proprio = rng.normal(size=spec["proprio_dim"])
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.time() + seconds

    def worker() -> None:
        client = PolicyClient(url)
        while time.time() < deadline:
            with lock:
                if len(lat) + errors[0] >= max_requests:
                    return
            t0 = time.perf_counter()
            try:
                client.act(images, proprio, "pick up the red cube")
                with lock:
                    lat.append(time.perf_counter() - t0)
            except Exception:
                with lock:
                    errors[0] += 1

    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    ms = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "wall_s": wall,
            "throughput_rps": len(lat) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=2000)
    ap.add_argument("--port", type=int, default=18432)
    args = ap.parse_args()
    prepare_env()
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    start(args.ckpt, port=args.port)
    url = f"http://127.0.0.1:{args.port}"
    spec = PolicyClient(url).spec()
    rows = [load(url, int(n), args.seconds, args.max_requests, spec) for n in args.clients.split(",")]
    OUT.mkdir(exist_ok=True)
    (OUT / "serve_load.json").write_text(json.dumps({"checkpoint": args.ckpt, "rows": rows}, indent=2))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
