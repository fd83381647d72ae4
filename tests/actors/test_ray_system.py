"""The Ray layer end to end on a local Ray: each placement mode through ``rlsys train``, GRPO, the
overlapped collection, publishing during an update, and the faults it survives (env and inference
workers killed mid-collection, the driver killed and resumed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from kit import SMALL, read_metrics, small_cfg

from rlsys.checkpoint import load_policy
from rlsys.weights import state_to_numpy


@pytest.mark.parametrize("mode,extra", [
    ("collocated", []),
    ("disaggregated", []),
    ("pipelined", ["rollout.env_groups=2"]),
    ("collocated", ["policy.critic=attention"]),  # the SFT checkpoint's pooled head is swapped for a fresh one
])
def test_short_run_per_placement_preset(ray_local, init_ckpt, tmp_path, mode, extra):
    from rlsys.train import train

    cfg = small_cfg(tmp_path, f"placement.mode={mode}", f"init_checkpoint={init_ckpt}", *extra)
    out = train(cfg)
    run_dir = Path(out["run_dir"])
    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert rows[0]["learner/weight_version"] == 0 and rows[1]["learner/weight_version"] == 1
    # ratio == 1 on the first minibatch of the first epoch, through the real actor path
    assert rows[0]["learner/first_minibatch_ratio_dev"] <= 1e-4
    assert rows[0]["rollout/env_steps"] == 2 * 2 * 3 * 5  # workers x envs x chunks x horizon
    assert rows[0]["learner/stale_rejected"] == 0
    # the update runs on learner_threads; in collocated placement the same thread infers on 1 in between
    assert [r["learner/torch_threads"] for r in rows] == [cfg.placement.learner_threads] * 2 == [2, 2]
    assert "eval/success_rate" in rows[1]
    assert (run_dir / "checkpoint" / "model.safetensors").exists()
    # the evaluation ran on the inference worker (the collocated actor) with the updated weights, and
    # the driver wrote its table and video
    ev = json.loads((run_dir / "eval" / "iter_000002" / "eval.json").read_text())
    assert ev["version"] == 2 and ev["iteration"] == 2 and ev["tasks"]["lift"]["episodes"] == 1
    assert (run_dir / "eval" / "iter_000002" / "videos" / "lift.gif").stat().st_size > 1000
    # the run ends with its summary and report, written automatically
    summary = out["summary"]
    assert summary["before"] is None and summary["after"]["episodes"] == 1  # an init checkpoint: no SFT eval here
    assert json.loads((run_dir / "summary.json").read_text())["checkpoint"] == str(run_dir / "checkpoint")
    assert (run_dir / "report.png").stat().st_size > 10_000 and (run_dir / "report.html").exists()


def test_grpo_run(ray_local, init_ckpt, tmp_path):
    """(with the MLflow tracker on: it gets the rows metrics.jsonl gets, under the same names)"""
    from rlsys.train import train

    cfg = small_cfg(tmp_path, "algo.name=grpo", "grpo.group_size=2", "grpo.filter_groups=false",
                    f"init_checkpoint={init_ckpt}", "iterations=1", "eval_every=1", "tracking.trackers=[mlflow]")
    run_dir = Path(train(cfg)["run_dir"])
    rows = read_metrics(run_dir)
    assert rows[0]["rollout/episodes"] == 4  # one full episode per env
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.parent / 'mlflow.db'}")
    run = client.get_run(json.loads((run_dir / "tracking.json").read_text())["mlflow"])
    assert run.info.status == "FINISHED" and run.data.params["algo.name"] == "grpo"
    assert {k: v for k, v in run.data.metrics.items() if k in rows[0]} == {
        k: float(v) for k, v in rows[0].items() if k in run.data.metrics}
    assert rows[0]["learner/first_minibatch_ratio_dev"] <= 1e-4
    # the sparse reward is 1 on the success step: reward per step x steps = successes
    r = rows[0]
    assert r["rollout/reward_per_step"] * r["rollout/env_steps"] == pytest.approx(
        r["rollout/success_rate"] * r["rollout/episodes"])


def test_overlap_collects_the_next_segments_while_the_learner_updates(ray_local, init_ckpt, tmp_path):
    """rollout.overlap: iteration i's update runs while the driver collects iteration i+1's segments
    under the weights the update started from; those arrive one version stale and are all kept."""
    from rlsys import metrics as M
    from rlsys.train import train

    cfg = small_cfg(tmp_path, "placement.mode=disaggregated", f"init_checkpoint={init_ckpt}", "iterations=3",
                    "eval_every=3", "rollout.overlap=true", "rollout.max_staleness=1", "algo.epochs=6",
                    "algo.critic_warmup_iters=0")
    rows = read_metrics(Path(train(cfg)["run_dir"]))
    assert [r[M.WEIGHT_VERSION] for r in rows] == [0, 1, 2]
    assert [r[M.STALENESS_MAX] for r in rows] == [0, 1, 1]  # the first segments are collected fresh
    assert all(r[M.STALE_REJECTED] == 0 and r[M.ENV_STEPS] == 2 * 2 * 3 * 5 for r in rows)
    # the fresh first segments start at ratio 1; later ones were collected by the weights one update
    # behind, whose ratio to the moved learner is no longer 1 (PPO's ratio is to the policy that acted)
    assert rows[0][M.FIRST_RATIO_DEV] <= 1e-4 and all(r[M.FIRST_RATIO_DEV] > 1e-4 for r in rows[1:])
    # the last iteration collects nothing ahead; in the others both ran at once. The staleness above
    # says iteration i+1's segments were collected within iteration i (after its broadcast, before
    # the next), so one after the other would take at least the update plus that collection.
    assert M.OVERLAP_S not in rows[2]
    for i, (now, nxt) in enumerate(zip(rows[:2], rows[1:])):
        assert now[M.OVERLAP_S] > 0
        own = now[M.COLLECT_S] if i == 0 else 0.0  # the first iteration also collects its own segments
        assert now[M.ITERATION_S] - now[M.BROADCAST_S] - own < now[M.LEARNER_S] + nxt[M.COLLECT_S]


def test_publish_while_an_update_runs_hands_out_the_last_broadcast_weights(ray_local, init_ckpt, tmp_path):
    """An inference worker restarted during an overlapped update pulls the weights the others hold,
    never a copy torn mid-step: the version moves only once the update's steps are done."""
    from rlsys.actors.system import RaySystem

    cfg = small_cfg(tmp_path, "placement.mode=disaggregated", f"init_checkpoint={init_ckpt}",
                    "rollout.max_staleness=1", "algo.epochs=40", "algo.critic_warmup_iters=0")
    policy, *_ = load_policy(init_ckpt, expect=cfg.policy)
    system = RaySystem(cfg, state_to_numpy(policy), episodic=False)
    try:
        version, _ = system.sync_weights()
        before = ray.get(system.learner.publish.remote())
        pending = system.start_update(system.collect())
        time.sleep(0.2)
        during = ray.get(system.learner.publish.remote())
        ready, _ = ray.wait([pending], timeout=0)
        assert not ready, "the update ended before publish was asked: make it longer"
        assert during[0] == version == 0 and during[1][0] == before[1][0]  # the same ObjectRef
        system.finish_update(pending)
        after = ray.get(system.learner.publish.remote())
        assert after[0] == 1
        moved = [k for k, v in ray.get(after[1][0]).items() if not np.array_equal(v, ray.get(before[1][0])[k])]
        assert moved
    finally:
        system.shutdown()


def _wait_pid(actor, timeout: float = 180.0) -> int:
    deadline = time.time() + timeout
    while True:
        try:
            return ray.get(actor.pid.remote(), timeout=30)
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            if time.time() > deadline:
                raise
            time.sleep(1.0)


def _kill_later(actor, delay: float) -> threading.Thread:
    """Kill ``actor`` after ``delay`` s; join the thread before the test ends (a late ray.kill after
    ray.shutdown would take the test process down)."""
    def run():
        time.sleep(delay)
        ray.kill(actor, no_restart=False)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _kill_when_busy(actor, infer, batches: int) -> threading.Thread:
    """Kill ``actor`` once the inference worker has served ``batches`` batches of the running
    collection: mid-segment on a fast or a slow machine alike (a fixed delay raced a fast CI)."""
    def run():
        served, deadline = 0, time.time() + 120
        while served < batches and time.time() < deadline:
            served += int(ray.get(infer.infer_stats.remote())["batches"])
            time.sleep(0.05)
        ray.kill(actor, no_restart=False)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_env_worker_killed_mid_segment_is_discarded_and_restarted(ray_local, init_ckpt, tmp_path):
    from rlsys.actors.system import RaySystem
    from rlsys.train import Run, initial_policy_state

    cfg = small_cfg(tmp_path, "placement.mode=disaggregated", "rollout.chunks_per_segment=40",
                    f"init_checkpoint={init_ckpt}")
    state = initial_policy_state(Run.create(cfg))
    system = RaySystem(cfg, state, episodic=False)
    killer = None
    try:
        system.sync_weights()
        pid = ray.get(system.env_workers[0].pid.remote())
        ray.get(system.infer[0].infer_stats.remote())  # reset its counters
        killer = _kill_when_busy(system.env_workers[0], system.infer[0], batches=4)
        segments = system.collect()
        assert not killer.is_alive(), "the env worker must die during the collection"
        assert len(segments) == 1 and system.discarded_segments == 1
        assert _wait_pid(system.env_workers[0]) != pid  # restarted
        assert len(system.collect()) == 2  # and the run continues with both workers
    finally:
        if killer is not None:
            killer.join()
        system.shutdown()


def test_inference_worker_killed_requests_are_retried(ray_local, init_ckpt, tmp_path):
    from rlsys.actors.system import RaySystem
    from rlsys.train import Run, initial_policy_state

    cfg = small_cfg(tmp_path, "placement.mode=disaggregated", "rollout.chunks_per_segment=60",
                    "rollout.num_inference_workers=2", "rollout.zmq_timeout_s=5", f"init_checkpoint={init_ckpt}")
    system = RaySystem(cfg, initial_policy_state(Run.create(cfg)), episodic=False)
    killer = None
    try:
        system.sync_weights()
        killer = _kill_later(system.infer[0], 1.0)
        segments = system.collect()
        assert not killer.is_alive(), "the inference worker must die during the collection"
        assert len(segments) == 2 and system.discarded_segments == 0
        assert all(s.valid.all() for s in segments)
    finally:
        if killer is not None:
            killer.join()
        system.shutdown()


def test_resume_after_kill_continues_at_the_same_iteration(init_ckpt, tmp_path):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "rlsys", "train", "--preset", "tabletop_ppo"]
    for s in (*SMALL, f"run_dir={tmp_path}", f"init_checkpoint={init_ckpt}", "iterations=4", "eval_every=100"):
        args += ["--set", s]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        run_dir = None
        while time.time() < deadline:
            runs = list(tmp_path.glob("tabletop-ppo-*"))
            if runs and (runs[0] / "metrics.jsonl").exists() and len(read_metrics(runs[0])) >= 2:
                run_dir = runs[0]
                break
            time.sleep(0.5)
        assert run_dir is not None, "training did not reach iteration 2"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = json.loads((run_dir / "checkpoint" / "trainer.json").read_text())["iteration"]
    config_before = (run_dir / "config.yaml").read_text()
    out = subprocess.run([sys.executable, "-m", "rlsys", "train", "--resume", str(run_dir)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_metrics(run_dir)
    iters = [r["iteration"] for r in rows]
    assert iters[-1] == 4 and iters.count(done + 1) >= 1
    resumed = [r for r in rows if r["iteration"] > done]
    assert resumed[0]["iteration"] == done + 1 and resumed[0]["learner/weight_version"] == done
    assert (run_dir / "config.yaml").read_text() == config_before
    # the resumed run's weights are the ones the checkpoint holds: they load as a policy
    trained = state_to_numpy(load_policy(run_dir / "checkpoint")[0])
    assert trained and all(np.isfinite(v).all() for v in trained.values())


def reproduced(row: dict) -> dict:
    """A metrics row less what measures the machine (time/*, */per_s, infer/*, threads, memory) and the
    evaluation (a run that stops evaluates then)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float))
            and not k.startswith(("time/", "infer/", "eval/"))
            and not k.endswith(("per_s", "_seconds", "torch_threads", "gpu_memory_gb"))}


def test_a_stopped_and_resumed_seeded_run_matches_the_uninterrupted_one(ray_local, init_ckpt, tmp_path, capsys):
    """GRPO (episodic) run for 4 iterations, and the same run stopped after 2 then resumed with
    ``--set iterations=4``: the same iterations, weight versions, rollout and learner metrics, and
    final weights."""
    from rlsys.config import ConfigError
    from rlsys.train import train

    args = ("algo.name=grpo", "grpo.group_size=2", "grpo.filter_groups=false", f"init_checkpoint={init_ckpt}",
            "eval_every=100", "seed=3")
    whole = Path(train(small_cfg(tmp_path / "whole", *args, "iterations=4"))["run_dir"])
    part = Path(train(small_cfg(tmp_path / "part", *args, "iterations=2"))["run_dir"])
    with pytest.raises(ConfigError, match="--set algo.clip: a resumed run keeps its saved config; on --resume "
                                          "only iterations, max_minutes"):
        train(None, resume=str(part), resume_overrides=["algo.clip=0.1"])
    train(None, resume=str(part), resume_overrides=["iterations=4"])
    assert "config.yaml updated (iterations=4)" in capsys.readouterr().out
    a, b = read_metrics(whole), read_metrics(part)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert reproduced(ra).keys() == reproduced(rb).keys()
        assert reproduced(ra) == pytest.approx(reproduced(rb), rel=1e-5, abs=1e-6), ra["iteration"]
    assert {"rollout/success_rate", "learner/policy_loss", "learner/weight_version"} <= reproduced(a[-1]).keys()
    assert a[-1]["eval/success_rate"] == b[-1]["eval/success_rate"]
    wa, wb = (state_to_numpy(load_policy(d / "checkpoint")[0]) for d in (whole, part))
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) < 1e-5


def test_resume_falls_back_past_a_damaged_checkpoint(ray_local, init_ckpt, tmp_path, capsys):
    """The newest checkpoint truncated (a crash mid-copy, a full disk): --resume names the damaged
    file, continues from the one before it and writes a complete one again."""
    from rlsys.checkpoint import checkpoint_candidates
    from rlsys.train import train

    cfg = small_cfg(tmp_path, f"init_checkpoint={init_ckpt}", "iterations=3", "eval_every=100")
    run_dir = Path(train(cfg)["run_dir"])
    assert [p.name for p in checkpoint_candidates(run_dir)] == ["iter_000003", "iter_000002", "iter_000001"]
    damaged = run_dir / "checkpoints" / "iter_000003" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    capsys.readouterr()
    train(cfg, resume=str(run_dir))
    out = capsys.readouterr().out
    assert f"checkpoint {damaged.parent} is damaged" in out and "truncated or damaged" in out
    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows][-1] == 3 and rows[-1]["learner/weight_version"] == 2
    assert load_policy(run_dir / "checkpoint")[3]["iteration"] == 3  # written whole again


def _kill_learner_after(run_root: Path, rows: int) -> threading.Thread:
    """SIGKILL the learner actor's process from outside once the run has logged ``rows`` iterations
    (found among this test's own Ray processes by the title Ray gives it: ``ray::LearnerActor`` /
    ``ray::CollocatedActor``)."""
    import psutil

    def run():
        deadline = time.time() + 300
        while time.time() < deadline:
            metrics = list(run_root.glob("*/metrics.jsonl"))
            if metrics and len(metrics[0].read_text().splitlines()) >= rows:
                break
            time.sleep(0.1)
        for p in psutil.Process().children(recursive=True):  # the local Ray this test started
            try:
                title = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if title.startswith(("ray::LearnerActor", "ray::CollocatedActor")):
                os.kill(p.pid, signal.SIGKILL)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("mode", ["collocated", "disaggregated"])
def test_a_killed_learner_is_restored_from_the_last_checkpoint_and_rebroadcast(ray_local, init_ckpt, tmp_path,
                                                                               mode, capsys):
    """kill -9 of the learner's process during iteration 3 (checkpoints every iteration): Ray restarts
    it, the driver loads the iteration-2 checkpoint into it (optimiser state included), numbers its
    weights above every version handed out and re-broadcasts them; iteration 3 starts over and the
    run finishes all 4 iterations. The first minibatch's ratio stays 1 after the restart: every sample
    trained came from the restored weights, none from the lost ones."""
    from rlsys.train import train

    cfg = small_cfg(tmp_path, f"placement.mode={mode}", f"init_checkpoint={init_ckpt}", "iterations=4",
                    "eval_every=4", "checkpoint_every=1", "rollout.chunks_per_segment=6")
    killer = _kill_learner_after(Path(cfg.run_dir), rows=2)
    try:
        out = train(cfg)
    finally:
        killer.join()
    rows = read_metrics(Path(out["run_dir"]))
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert [r["learner/restarts"] for r in rows] == [0, 0, 1, 1]
    assert rows[-1]["learner/updates_lost"] == 0  # checkpoints every iteration: the restart lost none
    versions = [r["learner/weight_version"] for r in rows]
    assert versions[:2] == [0, 1] and versions[2] >= versions[1] + 1 + cfg.rollout.max_staleness
    assert versions[3] == versions[2] + 1
    assert all(r["learner/first_minibatch_ratio_dev"] <= 1e-4 for r in rows), rows
    assert all(r["learner/stale_rejected"] == 0 for r in rows)
    said = capsys.readouterr().out
    assert "restarted from the checkpoint of iteration 2 with its optimiser state" in said
    assert "iteration 3 starts over" in said
