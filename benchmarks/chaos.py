"""Chaos run: `rlsys train` under a seeded schedule of faults injected from outside its processes.

One training run (a small tabletop PPO; disaggregated placement, so the learner, the inference
worker and the env workers are separate processes; simulators in subprocesses) of ``--iterations``
iterations. While it trains, faults arrive in a seeded order, one after every ``--every`` logged
iterations, at a seeded moment inside the next iteration:

- ``env_worker``: ``kill -9`` of an env worker (``ray::EnvWorker``);
- ``simulator``: ``kill -9`` of a simulator subprocess;
- ``simulator_segfault``: a simulator subprocess dies of SIGSEGV, as a crashing simulator does;
- ``simulator_hang``: a simulator subprocess is stopped (SIGSTOP) and never answers
  (``env.step_timeout_s`` is 10 s here);
- ``nan_inf``: a simulator's next step returns a NaN observation and an inf reward (SIGUSR1 to a
  simulator subprocess; the run is started with ``RLSYS_FAULT_INJECTION=1``, which arms that hook);
- ``inference``: ``kill -9`` of the inference worker (``ray::InferenceActor``);
- ``learner``: ``kill -9`` of the learner (``ray::LearnerActor``);
- ``driver``: SIGKILL of the driver's whole process group (Ray included), then
  ``rlsys train --resume RUN_DIR``.

Per fault kind: injected, survived (the run logged another iteration after it), seconds until that
iteration, and what it cost from the run's own counters (segments discarded, episodes dropped,
simulators restarted, learner updates lost). Samples from wrong weights reaching the learner are
checked on every iteration: the first minibatch's PPO ratio must be 1 (``learner/first_minibatch_ratio_dev``
<= 1e-3), no sample may be rejected as stale, and the learner's losses must be finite (a NaN that
got through would show there); ``corrupt_iterations`` counts iterations that break any (must be
0). The run must finish all its iterations.

Writes ``benchmarks/results/chaos.json`` and ``chaos.png`` (iteration timeline with the faults):

    python benchmarks/chaos.py [--iterations 30] [--every 2] [--seed 0] [--minutes 40]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rlsys.envs.pool import FAULT_INJECTION_ENV

OUT = Path(__file__).parent / "results"
KINDS = ("env_worker", "simulator", "simulator_segfault", "simulator_hang", "nan_inf", "inference", "learner",
         "driver")
SETTINGS = [
    "env.tasks=[lift]", "env.cameras=[agentview]", "env.image_size=32", "env.num_envs=2",
    "env.subprocess=true", "env.step_timeout_s=10", "policy.num_cameras=1", "policy.image_size=32",
    "policy.width=32", "policy.heads=2", "policy.backbone_layers=1", "policy.expert_layers=1",
    "placement.mode=disaggregated", "rollout.chunks_per_segment=12", "rollout.num_env_workers=2",
    "rollout.env_groups=1", "algo.epochs=1", "algo.minibatches=2", "eval_every=1000", "eval_episodes=1",
    "checkpoint_every=1",
]
COUNTERS = {"segments_discarded": "rollout/discarded_segments", "episodes_dropped": "rollout/bad_episodes",
            "simulator_restarts": "rollout/sim_restarts", "learner_updates_lost": "learner/updates_lost"}


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def title(p) -> str:
    try:
        return " ".join(p.cmdline())
    except Exception:
        return ""


def targets(driver_pid: int, kind: str) -> list:
    """The processes of the running training that a fault of ``kind`` hits."""
    procs = descendants(driver_pid)
    by = {"env_worker": "ray::EnvWorker", "inference": "ray::InferenceActor", "learner": "ray::LearnerActor"}
    if kind in by:
        return [p for p in procs if title(p).startswith(by[kind])]
    if kind.startswith("simulator") or kind == "nan_inf":
        # the env workers' simulator processes (not their resource trackers)
        workers = [p for p in procs if title(p).startswith("ray::EnvWorker")]
        return [c for w in workers for c in descendants(w.pid) if "spawn_main" in title(c)]
    return []


def read_rows(run_root: Path) -> tuple[Path | None, list[dict]]:
    runs = sorted(run_root.glob("tabletop-ppo-*"))
    if not runs or not (runs[0] / "metrics.jsonl").exists():
        return None, []
    return runs[0], [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines() if x.strip()]


def start_driver(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", FAULT_INJECTION_ENV: "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "rlsys", "train", *args], env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def init_checkpoint(work: Path) -> str:
    import torch

    from rlsys.checkpoint import save_policy
    from rlsys.config import load_config
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.policy.flow_policy import FlowPolicy

    cfg = load_config("tabletop_ppo", SETTINGS)
    torch.manual_seed(0)
    return str(save_policy(work / "init", FlowPolicy(cfg.policy), cfg.env, EMBODIMENT, meta={"stage": "chaos"}))


def inject(kind: str, driver: subprocess.Popen, rng: np.random.Generator) -> str:
    if kind == "driver":
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        return f"SIGKILL of the driver's process group (pid {driver.pid})"
    procs = targets(driver.pid, kind)
    if not procs:
        return ""
    p = procs[int(rng.integers(len(procs)))]
    name = "a simulator process" if kind.startswith("simulator") or kind == "nan_inf" else title(p).split(" ")[0]
    sig = {"simulator_segfault": signal.SIGSEGV, "simulator_hang": signal.SIGSTOP,
           "nan_inf": signal.SIGUSR1}.get(kind, signal.SIGKILL)
    os.kill(p.pid, sig)
    return f"{signal.Signals(sig).name} to {name} (pid {p.pid})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--every", type=int, default=2, help="logged iterations between faults")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=40.0, help="give up after this long")
    ap.add_argument("--name", default="chaos")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n_faults = max(0, (a.iterations - 2) // a.every)
    schedule = [KINDS[i % len(KINDS)] for i in rng.permutation(max(n_faults, len(KINDS)))][:n_faults]
    work = Path(tempfile.mkdtemp(prefix="rlsys-chaos-"))
    log = work / "train.log"
    sets = [*SETTINGS, f"iterations={a.iterations}", f"run_dir={work / 'runs'}", f"seed={a.seed}",
            f"init_checkpoint={init_checkpoint(work)}"]
    print(f"chaos: {a.iterations} iterations, faults {schedule}; training log {log}", flush=True)
    t_start = time.time()
    driver = start_driver(["--preset", "tabletop_ppo", *[x for s in sets for x in ("--set", s)]], log)
    events: list[dict] = []
    pending = list(schedule)
    deadline = t_start + 60 * a.minutes
    run_dir = None
    try:
        while time.time() < deadline:
            run_dir, rows = read_rows(work / "runs")
            done = rows[-1]["iteration"] if rows else 0
            for ev in events:  # recovery: the first iteration logged after the fault
                if ev.get("recovered_iteration") is None and done > ev["at_iteration"]:
                    ev.update(recovered_iteration=done, recover_s=time.time() - ev["t"])
            if done >= a.iterations:
                break
            killed = events and events[-1]["kind"] == "driver" and not events[-1].get("resumed")
            if driver.poll() is not None and not killed:
                raise RuntimeError(f"the driver exited ({driver.returncode}) at iteration {done}; see {log}")
            if killed and driver.poll() is not None:
                time.sleep(2)
                driver = start_driver(["--resume", str(run_dir)], log)  # the user's next command
                events[-1]["resumed"] = True
            due = pending and done >= a.every * (len(schedule) - len(pending) + 1)
            if due and not any(ev.get("recovered_iteration") is None for ev in events):
                time.sleep(float(rng.uniform(0.2, 1.5)))  # somewhere inside the next iteration
                _, rows = read_rows(work / "runs")
                at = rows[-1]["iteration"] if rows else 0  # the iterations logged when it lands
                kind = pending[0]
                what = inject(kind, driver, rng)
                if what:
                    pending.pop(0)
                    events.append({"kind": kind, "what": what, "at_iteration": at, "t": time.time(),
                                   "recovered_iteration": None})
                    print(f"chaos: after iteration {at}: {kind}: {what}", flush=True)
            time.sleep(0.2)
    finally:
        if driver.poll() is None:
            driver.wait(timeout=max(1.0, deadline - time.time()))
    run_dir, rows = read_rows(work / "runs")
    result = summarise(a, schedule, events, rows, time.time() - t_start, run_dir, log)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{a.name}.json").write_text(json.dumps(result, indent=1))
    plot(result, rows, OUT / f"{a.name}.png")
    print(json.dumps({k: v for k, v in result.items() if k != "iterations"}, indent=1))
    print(f"chaos: {OUT / (a.name + '.json')} and {OUT / (a.name + '.png')}")
    if not result["finished"] or result["corrupt_iterations"]:
        raise SystemExit(1)


def summarise(a, schedule, events, rows, wall_s, run_dir, log) -> dict:
    by_iter = {r["iteration"]: r for r in rows}  # a resumed driver re-logs iterations: the last row wins
    kinds: dict[str, dict] = {}
    for ev in events:
        before = by_iter.get(ev["at_iteration"], {})
        after = by_iter.get(ev["recovered_iteration"] or -1, {})
        cost = {k: max(0.0, after.get(m, 0.0) - (before.get(m, 0.0) if ev["kind"] != "driver" else 0.0))
                for k, m in COUNTERS.items()}
        ev["cost"] = cost
        k = kinds.setdefault(ev["kind"], {"injected": 0, "survived": 0, "recover_s": [], **{c: 0.0 for c in COUNTERS}})
        k["injected"] += 1
        k["survived"] += ev["recovered_iteration"] is not None
        if ev.get("recover_s") is not None:
            k["recover_s"].append(round(ev["recover_s"], 1))
        for c in COUNTERS:
            k[c] += cost[c]
    losses = ("learner/policy_loss", "learner/value_loss", "learner/approx_kl")
    corrupt = [r["iteration"] for r in by_iter.values()
               if r.get("learner/first_minibatch_ratio_dev", 0.0) > 1e-3 or r.get("learner/stale_rejected", 0) > 0
               or not all(np.isfinite(r.get(k, 0.0)) for k in losses)]
    return {"iterations_planned": a.iterations, "iterations_logged": sorted(by_iter),
            "finished": sorted(by_iter) == list(range(1, a.iterations + 1)), "wall_s": wall_s,
            "schedule": schedule, "faults": kinds, "events": [{k: v for k, v in e.items() if k != "t"} for e in events],
            "corrupt_iterations": len(corrupt), "corrupt_at": corrupt, "run_dir": str(run_dir), "log": str(log),
            "iterations": [{"iteration": r["iteration"], "ratio_dev": r.get("learner/first_minibatch_ratio_dev"),
                            "version": r.get("learner/weight_version"), "iteration_s": r.get("time/iteration_s")}
                           for r in sorted(by_iter.values(), key=lambda r: r["iteration"])]}


def plot(result: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    it = [r["iteration"] for r in result["iterations"]]
    a.plot(it, [r["version"] for r in result["iterations"]], "o-", ms=3, label="weight version")
    for ev in result["events"]:
        a.axvline(ev["at_iteration"] + 0.5, color="tab:red", alpha=0.4)
        a.text(ev["at_iteration"] + 0.6, 0, ev["kind"], rotation=90, fontsize=7, va="bottom")
    a.set_xlabel("iteration")
    a.set_ylabel("learner weight version")
    a.set_title(f"{len(result['events'])} faults; finished {result['finished']}; corrupt iterations "
                f"{result['corrupt_iterations']}", fontsize=9)
    kinds = list(result["faults"])
    b.bar(kinds, [float(np.mean(result["faults"][k]["recover_s"])) if result["faults"][k]["recover_s"] else 0
                  for k in kinds], color="tab:orange")
    b.set_ylabel("seconds until the next logged iteration")
    b.tick_params(axis="x", rotation=30)
    b.set_title("time to recover, by fault", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
