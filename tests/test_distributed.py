"""Distributed PPO/GRPO on a real local Ray: placement presets end to end, ratio == 1 through the
actor path, version propagation and staleness, faults, resume after a kill."""

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
import torch

from rlsys.actors.env_worker import EnvWorkerCore
from rlsys.actors.inference import InferenceEngine, load_numpy_state, state_to_numpy
from rlsys.checkpoint import CheckpointError, load_policy, save_policy
from rlsys.config import load_config
from rlsys.envs.tabletop.env import EMBODIMENT
from rlsys.learner.learner import Learner
from rlsys.policy.flow_policy import FlowPolicy

SMALL = [
    "env.tasks=[lift]", "env.cameras=[agentview]", "env.image_size=32", "env.num_envs=2",
    "policy.num_cameras=1", "policy.image_size=32", "policy.width=32", "policy.heads=2",
    "policy.backbone_layers=1", "policy.expert_layers=1",
    "rollout.chunks_per_segment=3", "rollout.num_env_workers=2", "rollout.env_groups=1",
    "algo.epochs=1", "algo.minibatches=2", "iterations=2", "eval_every=2", "eval_episodes=1",
    "checkpoint_every=1",
]


def small_cfg(tmp: Path, *extra: str, preset: str = "tabletop_ppo"):
    return load_config(preset, [*SMALL, f"run_dir={tmp}", *extra])


@pytest.fixture(scope="module")
def ray_local():
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(num_cpus=6, resources={"sim": 4}, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory):
    cfg = small_cfg(tmp_path_factory.mktemp("cfg"))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "sft"
    save_policy(path, FlowPolicy(cfg.policy), cfg.env, EMBODIMENT, meta={"stage": "test"})
    return str(path)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
    assert (run_dir / "eval" / "iter_000002" / "eval.json").exists()


def test_grpo_run(ray_local, init_ckpt, tmp_path):
    from rlsys.train import train

    cfg = small_cfg(tmp_path, "algo.group_size=2", "algo.filter_groups=false", f"init_checkpoint={init_ckpt}",
                    "iterations=1", "eval_every=1", preset="tabletop_grpo")
    rows = read_metrics(Path(train(cfg)["run_dir"]))
    assert rows[0]["rollout/episodes"] == 4  # one full episode per env
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
    # collected by version 0, trained on by version 1: decoupled PPO (the default) takes the ratio to
    # the update's start and weights the stale samples; the fresh first segments need neither
    assert M.BEHAVIOUR_WEIGHT not in rows[0] and all(0 < r[M.BEHAVIOUR_WEIGHT] <= 1 for r in rows[1:])
    assert all(r[M.FIRST_RATIO_DEV] <= 1e-4 for r in rows)
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


def _core_and_engine(cfg):
    torch.manual_seed(0)
    engine = InferenceEngine(cfg, FlowPolicy(cfg.policy))
    engine.version = 0
    core = EnvWorkerCore(cfg, 0)
    return core, engine


def test_version_propagation_and_staleness(tmp_path):
    cfg = small_cfg(tmp_path)
    core, engine = _core_and_engine(cfg)
    seg = core.rollout(engine.infer, lambda c: c, engine.values)
    assert (seg.versions == 0).all() and seg.chunk.version == 0
    learner = Learner(cfg, engine.policy)
    learner.version = 2  # the learner moved on twice
    _, stats = learner.make_batch([seg])
    assert stats["stale_rejected"] == seg.valid.sum() and stats["staleness_max"] == 2
    import dataclasses

    tolerant = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, max_staleness=2))
    learner2 = Learner(tolerant, engine.policy)
    learner2.version = 2
    batch, stats = learner2.make_batch([seg])
    assert stats["stale_rejected"] == 0 and batch.loss_mask.sum() == seg.valid.sum()
    engine.set_weights(state_to_numpy(engine.policy), 5)
    assert (core.rollout(engine.infer, lambda c: c, engine.values).versions == 5).all()


def _grpo_segment(tmp_path):
    """A GRPO config with groups of 2 over 4 envs, its inference engine and one real episodic segment."""
    cfg = small_cfg(tmp_path, "algo.group_size=2", "env.num_envs=4", "rollout.num_env_workers=1",
                    preset="tabletop_grpo")
    torch.manual_seed(0)
    engine = InferenceEngine(cfg, FlowPolicy(cfg.policy))
    engine.version = 0
    core = EnvWorkerCore(cfg, 0, episodic=True)
    seg = core.rollout(engine.infer, lambda c: c, engine.values)
    core.close()
    return cfg, engine, seg


def test_grpo_counts_the_groups_that_carry_a_signal(tmp_path):
    """learner/groups_informative: the fraction of GRPO groups whose returns differ (the others have
    zero advantage or are filtered); a real episodic segment with its outcomes set by hand."""
    import dataclasses

    cfg, engine, seg = _grpo_segment(tmp_path)
    assert list(seg.env_ids // 2) == [0, 0, 1, 1]
    for outcomes, expect in (((1, 0, 0, 0), 0.5), ((1, 0, 0, 1), 1.0), ((0, 0, 1, 1), 0.0)):
        rewards = np.zeros_like(seg.rewards)
        rewards[0, :, 0] = outcomes  # a success reward in each chosen episode's first chunk
        m = Learner(cfg, engine.policy).make_batch([dataclasses.replace(seg, rewards=rewards)])[1]
        assert m["groups_informative"] == expect, outcomes
    ppo = small_cfg(tmp_path)  # PPO has no groups: no such metric
    core, engine = _core_and_engine(ppo)
    assert "groups_informative" not in Learner(ppo, engine.policy).make_batch(
        [core.rollout(engine.infer, lambda c: c, engine.values)])[1]
    core.close()


def test_grpo_batch_scale_keeps_narrow_groups_small(tmp_path):
    """algo.grpo_scale=batch: one scale for the whole update, so a group whose returns barely differ
    (all succeed, the shaping differs a little) keeps small advantages, in any segment; "group" (the
    default) stretches every group to unit spread."""
    import dataclasses

    cfg, engine, seg = _grpo_segment(tmp_path)

    def with_returns(r):
        rewards = np.zeros_like(seg.rewards)
        rewards[0, :, 0] = r
        return dataclasses.replace(seg, rewards=rewards)

    narrow, mixed = with_returns((1.0, 1.01, 1.0, 1.01)), with_returns((1.0, 0.0, 1.0, 0.0))
    n = seg.shape[1]
    first = lambda batch, part: batch.advantages[part * seg.shape[0] * n:][:n]  # noqa: E731  chunk 0
    group = Learner(cfg, engine.policy).make_batch([narrow, mixed])[0]
    np.testing.assert_allclose(first(group, 0), [-1, 1, -1, 1], atol=1e-3)
    np.testing.assert_allclose(first(group, 1), [1, -1, 1, -1], atol=1e-3)
    batch_cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, grpo_scale="batch"))
    b = Learner(batch_cfg, engine.policy).make_batch([narrow, mixed])[0]
    rms = np.sqrt((4 * 0.005**2 + 4 * 0.5**2) / 8)  # of the centred returns of all 8 episodes
    np.testing.assert_allclose(first(b, 0), np.array([-0.005, 0.005, -0.005, 0.005]) / rms, rtol=1e-3)
    np.testing.assert_allclose(first(b, 1), np.array([0.5, -0.5, 0.5, -0.5]) / rms, rtol=1e-3)
    np.testing.assert_array_equal(b.loss_mask, group.loss_mask)


def _overshooting_segment(tmp_path, epochs: int):
    """A config whose actor lr overshoots, one rollout segment of it and the rollout policy's weights."""
    cfg = small_cfg(tmp_path, f"algo.epochs={epochs}", "algo.minibatches=2", "algo.actor_lr=3e-3",
                    "algo.critic_warmup_iters=0", "env.num_envs=4", "rollout.chunks_per_segment=6")
    core, engine = _core_and_engine(cfg)
    seg = core.rollout(engine.infer, lambda c: c, engine.values)
    core.close()
    return cfg, seg, state_to_numpy(engine.policy)


def _learner(cfg, state, **algo) -> Learner:
    """A learner on a copy of ``state`` with ``algo`` fields replaced."""
    import dataclasses

    c = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, **algo))
    policy = FlowPolicy(c.policy)
    load_numpy_state(policy, state)
    return Learner(c, policy)


def test_target_kl_stops_the_update_early(tmp_path):
    """A big step overshoots the rollout policy; target_kl ends the policy's epochs there (0 runs them
    all), while the critic runs all of its epochs either way."""
    cfg, seg, state = _overshooting_segment(tmp_path, epochs=6)
    runs = {target: _learner(cfg, state, target_kl=target).update([seg]) for target in (0.0, 1e-3)}
    assert runs[0.0]["epochs_run"] == 6 and runs[0.0]["approx_kl"] > 1.5e-3  # unchecked, it overshoots
    assert 0 < runs[1e-3]["epochs_run"] < 6
    assert runs[1e-3]["critic_epochs_run"] == runs[0.0]["critic_epochs_run"] == 6  # the critic is not stopped


def test_decoupled_ppo_takes_the_ratio_to_the_update_start_and_weights_stale_samples(tmp_path):
    """Samples one version stale (rollout.overlap): with algo.decoupled the ratio, its clip and target_kl
    are to the weights at the start of the update, and each advantage is weighted by
    min(pi_start / pi_rollout, cap); without it the ratio is to the rollout policy, which the learner
    has already moved away from."""
    import dataclasses

    cfg, seg, state = _overshooting_segment(tmp_path, epochs=2)
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, max_staleness=1))

    def stale_update(moved: bool, **algo):
        learner = _learner(cfg, state, **algo)
        if moved:  # one update on these samples first: version 1, other weights
            learner.update([seg])
        else:  # version 1 by tag only: the weights the rollout had
            learner.version = 1
        return learner.update([seg]), state_to_numpy(learner.policy)

    fresh = _learner(cfg, state).update([seg])  # version 0: no recompute, no weights
    assert "behaviour_weight_mean" not in fresh and fresh["first_minibatch_ratio_dev"] <= 1e-4
    # stale by tag only: the recompute gives the stored log-probs back, every weight is 1, same update
    (same, w_same), (_, w_plain) = stale_update(False), stale_update(False, decoupled=False)
    assert same["behaviour_weight_mean"] == pytest.approx(1.0, abs=1e-4) and same["behaviour_weight_capped"] == 0
    assert all(np.allclose(w_same[k], w_plain[k], atol=1e-6) for k in w_plain)
    # moved weights: decoupled starts at ratio 1 and down-weights the samples the new policy finds less
    # likely (cap 1: the rest are at the cap); the coupled ratio starts far from 1
    dec, _ = stale_update(True)
    coupled, _ = stale_update(True, decoupled=False)
    assert dec["first_minibatch_ratio_dev"] <= 1e-4 < 1e-2 < coupled["first_minibatch_ratio_dev"]
    assert 0 < dec["behaviour_weight_mean"] < 1 and 0 < dec["behaviour_weight_capped"] < 1
    # the weights multiply the advantages: one step at ratio 1 has loss -mean(w A), where -mean(A) = 0
    # (normalised); weights near 0 leave nothing of it
    one = {"epochs": 1, "minibatches": 1}
    assert abs(stale_update(True, **one)[0]["policy_loss"]) > 1e-4
    assert abs(stale_update(True, behaviour_weight_cap=1e-6, **one)[0]["policy_loss"]) < 1e-5
    assert abs(stale_update(True, decoupled=False, **one)[0]["policy_loss"]) > 1e-4  # ratio != 1 there
    # target_kl to the rollout policy stops the coupled update before its first step; to the update's
    # start, the decoupled one takes steps
    kl = 0.5 * coupled["approx_kl"] / 1.5
    assert stale_update(True, decoupled=False, target_kl=kl)[0]["epochs_run"] == 0
    assert stale_update(True, target_kl=kl)[0]["epochs_run"] > 0


def test_critic_alone_reads_one_encoding_of_the_batch_with_the_same_result(tmp_path):
    """Once target_kl ends the policy's steps of a whole-network update (or while the critic warms up),
    nothing moves the backbone for the rest of the update (the critic's input is detached): the critic's
    steps read one no-grad encoding of the batch instead of one backbone pass each, and end at the same
    weights as the per-step path."""
    cfg, seg, state = _overshooting_segment(tmp_path, epochs=4)
    for algo in ({"target_kl": 1e-3}, {"critic_warmup_iters": 1}):
        runs = {}
        for cached in (True, False):
            learner = _learner(cfg, state, update_backbone=True, **algo)
            learner._critic_cache = cached
            calls: list[int] = []
            learner.policy.backbone.register_forward_hook(lambda mod, args, out, c=calls: c.append(len(args[0])))
            m = learner.update([seg])
            runs[cached] = (m, calls, state_to_numpy(learner.policy))
        (m, calls, after), (m0, calls0, after0) = runs[True], runs[False]
        n, total = int(seg.valid.sum()), 4 * cfg.algo.minibatches
        actor_steps = int(m["epochs_run"] * cfg.algo.minibatches)
        assert m["critic_epochs_run"] == m0["critic_epochs_run"] == 4 and m["epochs_run"] == m0["epochs_run"] < 4
        # one backbone pass per step of the policy; the minibatch target_kl stops takes two (its recompute,
        # then its critic step), the warm-up's first one (the ratio check and the critic step together)
        # one; every later critic step reads the one encoding of the whole batch...
        before = actor_steps + 2 if "target_kl" in algo else 1
        assert len(calls) == before + 1 and calls[-1] == n, calls
        assert len(calls0) == before + total - (actor_steps + 1), calls0  # ...or makes its own pass
        assert m["value_loss"] == pytest.approx(m0["value_loss"], rel=1e-4)
        for k in state:
            np.testing.assert_allclose(after[k], after0[k], rtol=1e-4, atol=1e-6, err_msg=k)
        if "critic_warmup_iters" in algo:  # the warm-up moved the critic and nothing else
            assert m["epochs_run"] == 0 and m["first_minibatch_ratio_dev"] <= 1e-4
            moved = [k for k in state if not np.array_equal(after[k], state[k])]
            assert moved and all(k.startswith("value_head.") for k in moved), moved


def test_backbone_frozen_by_default_and_its_own_lr_when_updated(tmp_path):
    """RL leaves the backbone as it is unless update_backbone; then backbone_lr sets its step size
    apart from the action expert's."""
    cfg, seg, state = _overshooting_segment(tmp_path, epochs=2)

    def moved(learner: Learner, prefix: str) -> float:
        return max(float(np.abs(p.detach().numpy() - state[n]).max())
                   for n, p in learner.policy.named_parameters() if n.startswith(prefix))

    runs = {}
    for name, algo in (("frozen", {}), ("same", {"update_backbone": True}),
                       ("slow", {"update_backbone": True, "backbone_lr": 1e-7})):
        learner = _learner(cfg, state, **algo)
        learner.update([seg])
        runs[name] = (moved(learner, "backbone."), moved(learner, "expert."))
    assert runs["frozen"][0] == 0.0 and runs["frozen"][1] > 0
    assert runs["same"][0] > 1e-4
    assert 0 < runs["slow"][0] < 0.01 * runs["same"][0] and runs["slow"][1] > 1e-4, runs


def _kl_to_start(learner: Learner, m) -> float:
    """Mean per-element KL(learner's policy || its reference) on the transitions of batch ``m``."""
    with torch.no_grad():
        ref = learner.reference.transitions(m.obs, m.chunk.chain, m.chunk.step_mask, learner.sampler)
        rc = learner.policy.log_prob_and_value(m.obs, m.chunk.chain, m.chunk.step_mask, m.exec_mask,
                                               learner.sampler, learner.cfg.sampler.logprob, reference=ref)
    return float(rc.kl_ref.mean())


def test_ref_kl_anchor_is_zero_at_the_start_and_holds_the_policy_near_it(tmp_path):
    """KL(current || start) is exactly 0 before any step; after big steps it is > 0, and a large
    ref_kl_coef keeps the updated policy closer to the start than no anchor does."""
    cfg, seg, state = _overshooting_segment(tmp_path, epochs=4)
    kl_after = {}
    for coef in (1e-9, 30.0):  # 1e-9: the same code path, no pull
        learner = _learner(cfg, state, ref_kl_coef=coef)
        batch, _ = learner.make_batch([seg])
        rows = np.flatnonzero(batch.loss_mask)
        m = batch.index(rows)
        assert _kl_to_start(learner, m) == 0.0
        metrics = learner.update([seg])
        assert metrics["kl_ref"] >= 0
        kl_after[coef] = _kl_to_start(learner, m)
    assert kl_after[1e-9] > 0
    assert kl_after[30.0] < 0.5 * kl_after[1e-9], kl_after


def test_nan_observations_drop_the_episode(tmp_path, monkeypatch):
    from rlsys.envs.tabletop.env import TabletopEnv

    real_obs = TabletopEnv._obs
    calls = {"n": 0}

    def poisoned(self):
        o = real_obs(self)
        calls["n"] += 1
        if calls["n"] == 6:
            o["proprio"][0] = np.nan
        return o

    monkeypatch.setattr(TabletopEnv, "_obs", poisoned)
    cfg = small_cfg(tmp_path)
    core, engine = _core_and_engine(cfg)
    seg = core.rollout(engine.infer, lambda c: c, engine.values)
    assert core.stats()["bad_episodes"] == 1
    assert (~seg.valid).sum() >= 1
    batch, _ = Learner(cfg, engine.policy).make_batch([seg])
    assert np.isfinite(batch.obs.proprio[batch.loss_mask]).all()


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
    args = [sys.executable, "-m", "rlsys.train", "--preset", "tabletop_ppo"]
    for s in (*SMALL, f"run_dir={tmp_path}", f"init_checkpoint={init_ckpt}", "iterations=4", "eval_every=100",
              "algo.ref_kl_coef=0.1", "algo.ema_decay=0.5"):
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
    out = subprocess.run([sys.executable, "-m", "rlsys.train", "--resume", str(run_dir)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_metrics(run_dir)
    iters = [r["iteration"] for r in rows]
    assert iters[-1] == 4 and iters.count(done + 1) >= 1
    resumed = [r for r in rows if r["iteration"] > done]
    assert resumed[0]["iteration"] == done + 1 and resumed[0]["learner/weight_version"] == done
    assert (run_dir / "config.yaml").read_text() == config_before
    # the KL anchor is still the initial policy, not the weights the run resumed from
    from safetensors.numpy import load_file

    start = load_file(str(Path(init_ckpt) / "model.safetensors"))
    ref = load_file(str(run_dir / "checkpoint" / "reference.safetensors"))
    now = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    expert = [k for k in start if k.startswith("expert.")]
    assert expert and all(np.array_equal(ref[k], start[k]) for k in expert)
    assert any(not np.array_equal(now[k], start[k]) for k in expert)
    assert all("learner/kl_ref" in r for r in rows)
    # algo.ema_decay: model.safetensors is the weight average, the trained weights sit beside it, and
    # the average carried over the kill (one step per learner update, 4 in all)
    ck = run_dir / "checkpoint"
    online = load_file(str(ck / "online.safetensors"))
    assert any(not np.array_equal(now[k], online[k]) for k in expert)
    assert json.loads((ck / "trainer.json").read_text())["ema_updates"] == 4
    assert json.loads((ck / "config.json").read_text())["meta"]["weights"] == "ema 0.5"
    trained = state_to_numpy(load_policy(ck, weights="online")[0])
    assert all(np.array_equal(trained[k], online[k]) for k in online)
    with pytest.raises(CheckpointError, match="online.safetensors.*ema_decay"):
        load_policy(init_ckpt, weights="online")
