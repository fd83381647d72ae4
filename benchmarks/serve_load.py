"""Serve load test on loopback: N concurrent clients for a bounded time and request count ->
throughput and p50/p99 latency. Writes benchmarks/results/serve_load.json.

    python benchmarks/serve_load.py --ckpt CKPT [--clients 1,4,16] [--seconds 10] [--max-requests 2000]

``--soak SECONDS``: instead, a soak with fuzzing. For that long, at once:
- good clients: HTTP ``/act``, websocket ``/ws`` (JSON) and openpi websocket ``/`` (msgpack), each
  sending the same observation over and over;
- fuzzers: malformed, truncated, mistyped and oversized bodies and frames on all three routes.

Recorded:
- p50 / p99 latency of the good clients, per route;
- the fuzzers' answers by status, and anything that was not a 4xx with a message (must be 0);
- good answers that changed (sampling is deterministic, so must be 0);
- the server replicas' resident memory before and after, and whether the server still answers at
  the end.

Writes ``benchmarks/results/serve_soak.json`` + ``.png``:

    python benchmarks/serve_load.py --ckpt CKPT --soak 120 [--http 4 --ws 2 --openpi 2 --fuzzers 2]
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


def replica_rss_mb() -> float:
    """Resident memory of the Serve replica processes this benchmark's Ray started (its descendants)."""
    import psutil

    total = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if "ServeReplica" in " ".join(p.cmdline()):
                total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def _good_obs(spec: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(0)
    c, s = len(spec["cameras"]), spec["image_size"]
    images = rng.integers(0, 255, (c, s, s, 3), dtype=np.uint8)
    proprio = rng.normal(size=spec["proprio_dim"]).astype(np.float32)
    openpi = {"observation/image": images[0], "observation/state": proprio, "prompt": "pick up the red cube"}
    if c > 1:
        openpi["observation/wrist_image"] = images[1]
    return images, proprio, openpi


def _fuzz_cases(spec: dict, max_body: int) -> list[tuple[str, str, object]]:
    """(route, name, body): bodies every one of which must get a 4xx with a message."""
    images, proprio, openpi = _good_obs(spec)
    good = json.dumps(PolicyClient.payload(images, proprio, "pick up the red cube"))
    from rlsys.deploy.openpi import packb

    return [
        ("http", "not JSON", b"{images: ]"),
        ("http", "truncated JSON", good[: len(good) // 2].encode()),
        ("http", "a JSON list", b"[1, 2, 3]"),
        ("http", "missing proprio", json.dumps({"images": [], "instruction": "x"}).encode()),
        ("http", "wrong image shape", json.dumps({**json.loads(good), "images": [[[0, 0, 0]]]}).encode()),
        ("http", "proprio too long", json.dumps({**json.loads(good), "proprio": [0.0] * 999}).encode()),
        ("http", "NaN proprio", good.replace(str(json.loads(good)["proprio"][0]), "NaN", 1).encode()),
        ("http", "instruction too long", json.dumps({**json.loads(good), "instruction": "x" * 10_000}).encode()),
        ("http", "oversized body", b"{" + b" " * (2 * max_body) + b"}"),
        ("http", "binary garbage", bytes(range(256)) * 4),
        ("ws", "not JSON", "{images"),
        ("ws", "wrong types", json.dumps({"images": "x", "proprio": "y", "instruction": 3})),
        ("ws", "oversized message", "x" * (max_body + 10)),
        ("openpi", "garbage bytes", b"\x00\xffnot msgpack"),
        ("openpi", "a text frame", "hello"),
        ("openpi", "float image", packb({**openpi, "observation/image": images[0].astype(np.float32)})),
        ("openpi", "missing prompt", packb({k: v for k, v in openpi.items() if k != "prompt"})),
        ("openpi", "oversized frame", b"\x00" * (max_body + 10)),
    ]


def soak(url: str, seconds: float, http: int, ws: int, openpi: int, fuzzers: int, spec: dict,
         max_body: int) -> dict:
    import urllib.error
    import urllib.request

    from websockets.sync.client import connect

    from rlsys.deploy.openpi import packb, unpackb

    images, proprio, openpi_obs = _good_obs(spec)
    payload = json.dumps(PolicyClient.payload(images, proprio, "pick up the red cube"))
    wsurl = url.replace("http://", "ws://")
    deadline = time.time() + seconds
    lock = threading.Lock()
    lat: dict[str, list[float]] = {"http": [], "ws": [], "openpi": []}
    changed = {"http": 0, "ws": 0, "openpi": 0}
    failures: list[str] = []  # anything that is not a good answer or a 4xx with a message
    statuses: dict[str, int] = {}
    reference: dict[str, np.ndarray] = {}

    def check(route: str, actions: np.ndarray, dt: float) -> None:
        with lock:
            lat[route].append(dt)
            ref = reference.setdefault(route, actions)
            if actions.shape != ref.shape or not np.allclose(actions, ref, atol=1e-5):
                changed[route] += 1

    def fail(what: str) -> None:
        with lock:
            failures.append(what)

    def good_http() -> None:
        client = PolicyClient(url)
        while time.time() < deadline:
            t0 = time.perf_counter()
            try:
                a = client.act(images, proprio, "pick up the red cube")
            except Exception as e:
                fail(f"http good client: {type(e).__name__}: {e}")
                continue
            check("http", a, time.perf_counter() - t0)

    def good_ws() -> None:
        try:
            with connect(wsurl + "/ws", max_size=None) as conn:
                while time.time() < deadline:
                    t0 = time.perf_counter()
                    conn.send(payload)
                    out = json.loads(conn.recv())
                    if "actions" not in out:
                        fail(f"ws good client: {out}")
                        continue
                    check("ws", np.asarray(out["actions"], np.float32), time.perf_counter() - t0)
        except Exception as e:
            fail(f"ws good client: connection lost ({type(e).__name__}: {e})")

    def good_openpi() -> None:
        try:
            with connect(wsurl + "/", max_size=None, compression=None) as conn:
                unpackb(conn.recv())  # the metadata message
                frame = packb(openpi_obs)
                while time.time() < deadline:
                    t0 = time.perf_counter()
                    conn.send(frame)
                    reply = conn.recv()
                    if not isinstance(reply, bytes):
                        fail(f"openpi good client: {reply}")
                        continue
                    check("openpi", np.asarray(unpackb(reply)["actions"], np.float32), time.perf_counter() - t0)
        except Exception as e:
            fail(f"openpi good client: connection lost ({type(e).__name__}: {e})")

    def fuzzer(k: int) -> None:
        cases = _fuzz_cases(spec, max_body)
        rng = np.random.default_rng(k)
        conns: dict[str, object] = {}
        while time.time() < deadline:
            route, name, body = cases[int(rng.integers(len(cases)))]
            key = f"{route}: {name}"
            try:
                if route == "http":
                    req = urllib.request.Request(url + "/act", data=body, method="POST",  # type: ignore[arg-type]
                                                 headers={"Content-Type": "application/json"})
                    try:
                        urllib.request.urlopen(req, timeout=60).read()
                        fail(f"{key}: answered 200")
                        continue
                    except urllib.error.HTTPError as e:
                        code, text = e.code, e.read().decode(errors="replace")
                    ok = 400 <= code < 500 and "error" in text
                    status = str(code)
                else:
                    if route not in conns:
                        conns[route] = connect(wsurl + ("/ws" if route == "ws" else "/"), max_size=None,
                                               compression=None)
                        if route == "openpi":
                            conns[route].recv()  # type: ignore[attr-defined]
                    conn = conns[route]
                    conn.send(body)  # type: ignore[attr-defined]
                    reply = conn.recv()  # type: ignore[attr-defined]
                    if route == "ws":
                        out = json.loads(reply)
                        status = str(out.get("status"))
                        ok = "error" in out and 400 <= int(out.get("status", 0)) < 500
                    else:
                        status = reply.split(":", 1)[0] if isinstance(reply, str) else "binary"
                        ok = isinstance(reply, str) and status.isdigit() and 400 <= int(status) < 500
            except Exception as e:
                fail(f"{key}: {type(e).__name__}: {e}")
                conns.pop(route, None)
                continue
            with lock:
                statuses[f"{route} {status}"] = statuses.get(f"{route} {status}", 0) + 1
            if not ok:
                fail(f"{key}: answered {status}")

    rss0 = replica_rss_mb()
    rss_trace: list[tuple[float, float]] = []

    def sample_rss() -> None:  # the replicas' memory every 5 s: warm-up, then flat (or a leak)
        while time.time() < deadline:
            rss_trace.append((round(time.time() - t0, 1), round(replica_rss_mb(), 1)))
            time.sleep(5.0)

    threads = ([threading.Thread(target=good_http) for _ in range(http)]
               + [threading.Thread(target=good_ws) for _ in range(ws)]
               + [threading.Thread(target=good_openpi) for _ in range(openpi)]
               + [threading.Thread(target=fuzzer, args=(k,)) for k in range(fuzzers)]
               + [threading.Thread(target=sample_rss)])
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    alive = bool(PolicyClient(url).spec())
    pct = {r: {"requests": len(v), "p50_ms": float(np.percentile(np.array(v) * 1000, 50)) if v else None,
               "p99_ms": float(np.percentile(np.array(v) * 1000, 99)) if v else None} for r, v in lat.items()}
    return {"seconds": wall, "clients": {"http": http, "ws": ws, "openpi": openpi, "fuzzers": fuzzers},
            "good": pct, "answers_changed": changed, "fuzz_statuses": statuses,
            "fuzz_requests": sum(statuses.values()), "failures": len(failures), "failure_examples": failures[:10],
            "replica_rss_mb": {"before": rss0, "after": replica_rss_mb(),
                               "after_warmup": next((m for t, m in rss_trace if t >= min(20.0, seconds / 3)), None),
                               "trace": rss_trace},
            "server_alive_at_end": alive,
            "latencies_ms": {r: (np.array(v) * 1000).round(2).tolist() for r, v in lat.items()}}


def plot_soak(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for route, ms in result["latencies_ms"].items():
        if ms:
            a.hist(ms, bins=40, alpha=0.6, label=f"{route} (p99 {result['good'][route]['p99_ms']:.0f} ms)")
    a.set_xlabel("latency of a good request (ms)")
    a.set_ylabel("requests")
    a.legend()
    a.set_title(f"{result['seconds']:.0f} s soak: answers changed {sum(result['answers_changed'].values())}")
    names = sorted(result["fuzz_statuses"])
    b.barh(names, [result["fuzz_statuses"][n] for n in names], color="tab:red")
    b.set_xlabel("fuzz requests")
    rss = result["replica_rss_mb"]
    b.set_title(f"fuzz answers by status; failures {result['failures']}; replica RSS {rss['before']:.0f} MB idle, "
                f"{rss['after_warmup'] or 0:.0f} after warm-up, {rss['after']:.0f} at the end", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=2000)
    ap.add_argument("--port", type=int, default=18432)
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of soak + fuzz (instead of the load rows)")
    ap.add_argument("--http", type=int, default=4)
    ap.add_argument("--ws", type=int, default=2)
    ap.add_argument("--openpi", type=int, default=2)
    ap.add_argument("--fuzzers", type=int, default=2)
    args = ap.parse_args()
    prepare_env()
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    start(args.ckpt, port=args.port)
    url = f"http://127.0.0.1:{args.port}"
    spec = PolicyClient(url).spec()
    if args.soak:
        from rlsys.deploy.serve import MAX_BODY_BYTES

        result = {"checkpoint": args.ckpt, **soak(url, args.soak, args.http, args.ws, args.openpi, args.fuzzers,
                                                   spec, MAX_BODY_BYTES)}
        OUT.mkdir(exist_ok=True)
        (OUT / "serve_soak.json").write_text(json.dumps(result, indent=1))
        plot_soak(result, OUT / "serve_soak.png")
        print(json.dumps({k: v for k, v in result.items() if k != "latencies_ms"}, indent=1))
        print(f"serve_load: {OUT / 'serve_soak.json'} and {OUT / 'serve_soak.png'}")
        return
    rows = [load(url, int(n), args.seconds, args.max_requests, spec) for n in args.clients.split(",")]
    OUT.mkdir(exist_ok=True)
    (OUT / "serve_load.json").write_text(json.dumps({"checkpoint": args.ckpt, "rows": rows}, indent=2))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
