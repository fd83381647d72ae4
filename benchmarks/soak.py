"""Long-run health: resident memory and open file descriptors of every process of a training run,
from its start to its end, over hundreds of iterations.

One `rlsys train` (a small tabletop PPO; disaggregated, so the learner, the inference worker and the
env workers are separate processes; simulators in subprocesses, replaced every
``--recycle-every`` episodes) of ``--iterations`` iterations. Every ``--sample-every`` logged
iterations, each process of the run is measured (RSS, open fds), grouped by role:
driver, learner, inference, env worker, simulator.

The budget (docs/reliability.md) is a growth of at most ``--budget-mb`` (default 50 MB) per actor
between the first sample after warm-up (iteration ``--warmup``) and the end. The fd count of every
role must not grow.

Writes ``benchmarks/results/soak.json`` and ``soak.png``:

    python benchmarks/soak.py [--iterations 200] [--recycle-every 20] [--budget-mb 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from chaos import SETTINGS, descendants, init_checkpoint, read_rows, start_driver, title

OUT = Path(__file__).parent / "results"
ROLES = (("learner", "ray::LearnerActor"), ("inference", "ray::InferenceActor"), ("env worker", "ray::EnvWorker"))


def measure(driver_pid: int) -> dict[str, list[tuple[float, int]]]:
    """role -> [(RSS MB, open fds)] of each of its processes."""
    import psutil

    out: dict[str, list[tuple[float, int]]] = {}
    procs = [psutil.Process(driver_pid), *descendants(driver_pid)]
    workers = {p.pid for p in procs if title(p).startswith("ray::EnvWorker")}
    for p in procs:
        t = title(p)
        role = next((r for r, prefix in ROLES if t.startswith(prefix)), None)
        if p.pid == driver_pid:
            role = "driver"
        elif role is None and "spawn_main" in t:
            try:
                role = "simulator" if p.parent() and p.parent().pid in workers else None
            except psutil.Error:
                role = None
        if role is None:
            continue
        try:
            out.setdefault(role, []).append((p.memory_info().rss / 2**20, p.num_fds()))
        except psutil.Error:
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--sample-every", type=int, default=5)
    ap.add_argument("--recycle-every", type=int, default=20)
    ap.add_argument("--budget-mb", type=float, default=50.0)
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--name", default="soak")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlsys-soak-"))
    log = work / "train.log"
    sets = [*SETTINGS, f"iterations={a.iterations}", f"run_dir={work / 'runs'}", f"env.recycle_every={a.recycle_every}",
            "rollout.chunks_per_segment=6", f"init_checkpoint={init_checkpoint(work)}"]
    print(f"soak: {a.iterations} iterations; training log {log}", flush=True)
    driver = start_driver(["--preset", "tabletop_ppo", *[x for s in sets for x in ("--set", s)]], log)
    samples: list[dict] = []
    deadline = time.time() + 60 * a.minutes
    last = -1
    t0 = time.time()
    while time.time() < deadline and driver.poll() is None:
        _, rows = read_rows(work / "runs")
        done = rows[-1]["iteration"] if rows else 0
        if done != last and (done % a.sample_every == 0 or done == a.warmup):
            samples.append({"iteration": done, "t": time.time() - t0, "roles": measure(driver.pid)})
            last = done
            print(f"soak: iteration {done}: " + ", ".join(
                f"{r} {sum(x[0] for x in v):.0f} MB / {sum(x[1] for x in v)} fds"
                for r, v in samples[-1]["roles"].items()), flush=True)
        time.sleep(0.5)
    code = driver.wait()
    _, rows = read_rows(work / "runs")
    # the last iteration evaluates in the driver and shuts the actors down: compare up to the one before
    steady = [s for s in samples if s["iteration"] < a.iterations] or samples
    start = next((s for s in steady if s["iteration"] >= a.warmup), steady[0] if steady else None)
    end = steady[-1] if steady else None
    growth = {}
    if start and end:
        for role in start["roles"]:
            if role not in end["roles"]:
                continue
            n = max(len(start["roles"][role]), 1)
            mb0 = sum(x[0] for x in start["roles"][role]) / n
            mb1 = sum(x[0] for x in end["roles"][role]) / max(len(end["roles"][role]), 1)
            fd0 = max(x[1] for x in start["roles"][role])
            fd1 = max(x[1] for x in end["roles"][role])
            growth[role] = {"rss_mb_per_process": [round(mb0, 1), round(mb1, 1)], "growth_mb": round(mb1 - mb0, 1),
                            "max_fds": [fd0, fd1], "within_budget": mb1 - mb0 <= a.budget_mb and fd1 <= fd0 + 2}
    last_row = rows[-1] if rows else {}
    result = {"iterations": a.iterations, "iterations_logged": len(rows), "exit_code": code,
              "wall_s": time.time() - t0, "recycle_every": a.recycle_every, "budget_mb": a.budget_mb,
              "warmup_iteration": start["iteration"] if start else None,
              "end_iteration": end["iteration"] if end else None, "growth": growth,
              "simulators_recycled": last_row.get("rollout/sim_recycled"), "samples": samples}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{a.name}.json").write_text(json.dumps(result, indent=1))
    plot(result, OUT / f"{a.name}.png")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    print(f"soak: {OUT / (a.name + '.json')} and {OUT / (a.name + '.png')}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    roles = sorted({r for s in result["samples"] for r in s["roles"]})
    for role in roles:
        pts = [(s["iteration"], sum(x[0] for x in s["roles"][role]) / len(s["roles"][role]))
               for s in result["samples"] if s["roles"].get(role)]
        fds = [(s["iteration"], max(x[1] for x in s["roles"][role])) for s in result["samples"] if s["roles"].get(role)]
        a.plot(*zip(*pts), "o-", ms=2, label=role)
        b.plot(*zip(*fds), "o-", ms=2, label=role)
    a.set_xlabel("iteration")
    a.set_ylabel("RSS per process (MB)")
    a.set_title(f"{result['iterations_logged']} iterations; simulators recycled every {result['recycle_every']} "
                "episodes", fontsize=9)
    a.legend(fontsize=8)
    b.set_xlabel("iteration")
    b.set_ylabel("open fds (max over the role's processes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
