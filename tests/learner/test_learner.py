"""The generic update driver (``rlsys.learner.learner.Learner``) on real rollout segments: the
staleness filter, target_kl, the critic warm-up and its prefix cache, what trains, and the
algorithm plug-in interface every registered algorithm goes through."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from kit import rollout, small_cfg

from rlsys.config import TrainConfig
from rlsys.learner.algorithms import Advantages, Algorithm, Loss, Minibatch
from rlsys.learner.learner import Learner
from rlsys.learner.losses import masked_mean
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.registry import ALGORITHMS
from rlsys.types import Segment
from rlsys.weights import load_numpy_state, state_to_numpy


def replace(cfg: TrainConfig, **sections: dict) -> TrainConfig:
    """``cfg`` with fields of its sections replaced: ``replace(cfg, algo={"epochs": 2})``."""
    return dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()})


@pytest.fixture(scope="module")
def overshoot(tmp_path_factory):
    """A config whose actor lr overshoots, one real rollout segment of it and the rollout weights."""
    cfg = small_cfg(tmp_path_factory.mktemp("l"), "algo.minibatches=2", "optim.actor_lr=3e-3",
                    "algo.critic_warmup_iters=0", "env.num_envs=4", "rollout.chunks_per_segment=6")
    (seg,), engine = rollout(cfg)
    return cfg, seg, state_to_numpy(engine.policy)


def learner(cfg: TrainConfig, state: dict, **sections: dict) -> Learner:
    c = replace(cfg, **sections)
    policy = FlowPolicy(c.policy)
    load_numpy_state(policy, state)
    return Learner(c, policy)


def test_version_propagation_and_staleness(tmp_path):
    cfg = small_cfg(tmp_path)
    (seg,), engine = rollout(cfg)
    assert (seg.versions == 0).all() and seg.chunk.version == 0
    moved_on = Learner(cfg, engine.policy)
    moved_on.version = 2  # the learner moved on twice
    _, stats = moved_on.make_batch([seg])
    assert stats["stale_rejected"] == seg.valid.sum() and stats["staleness_max"] == 2
    tolerant = Learner(replace(cfg, rollout={"max_staleness": 2}), engine.policy)
    tolerant.version = 2
    batch, stats = tolerant.make_batch([seg])
    assert stats["stale_rejected"] == 0 and batch.loss_mask.sum() == seg.valid.sum()


def test_fresh_samples_start_at_ratio_one_and_the_version_moves_per_update(overshoot):
    cfg, seg, state = overshoot
    lr = learner(cfg, state)
    m = lr.update([seg])
    assert m["first_minibatch_ratio_dev"] <= 1e-4 and lr.version == 1 and m["epochs_run"] == cfg.algo.epochs
    assert m["samples"] == seg.valid.sum() and np.isfinite(m["policy_loss"]) and m["grad_norm"] > 0


def test_target_kl_stops_the_update_early(overshoot):
    """A big step overshoots the rollout policy; target_kl ends the policy's epochs there (0 runs them
    all), while the critic runs all of its epochs either way."""
    cfg, seg, state = overshoot
    runs = {t: learner(cfg, state, algo={"epochs": 6, "target_kl": t}).update([seg]) for t in (0.0, 1e-3)}
    assert runs[0.0]["epochs_run"] == 6 and runs[0.0]["approx_kl"] > 1.5e-3  # unchecked, it overshoots
    assert 0 < runs[1e-3]["epochs_run"] < 6
    assert runs[1e-3]["critic_epochs_run"] == runs[0.0]["critic_epochs_run"] == 6  # the critic is not stopped


@pytest.mark.parametrize("stop", [{"target_kl": 1e-3}, {"critic_warmup_iters": 1}], ids=["target_kl", "warmup"])
def test_critic_alone_reads_one_encoding_of_the_batch_with_the_same_result(overshoot, stop):
    """Once target_kl ends the policy's steps of a whole-network update (or while the critic warms up),
    nothing moves the backbone for the rest of the update (the critic's input is detached): the critic's
    steps read one no-grad encoding of the batch instead of one backbone pass each, and end at the same
    weights as the per-step path."""
    cfg, seg, state = overshoot
    runs = {}
    for cached in (True, False):
        lr = learner(cfg, state, algo={"epochs": 4, **stop}, optim={"train_backbone": True})
        lr.cache_critic_input = cached
        calls: list[int] = []
        lr.policy.model.backbone.register_forward_hook(lambda mod, args, out, c=calls: c.append(len(args[0])))
        m = lr.update([seg])
        runs[cached] = (m, calls, state_to_numpy(lr.policy))
    (m, calls, after), (m0, calls0, after0) = runs[True], runs[False]
    n, total = int(seg.valid.sum()), 4 * cfg.algo.minibatches
    actor_steps = int(m["epochs_run"] * cfg.algo.minibatches)
    assert m["critic_epochs_run"] == m0["critic_epochs_run"] == 4 and m["epochs_run"] == m0["epochs_run"] < 4
    # one backbone pass per policy step; the minibatch target_kl stops takes two (its recompute, then
    # its critic step), the warm-up's first one (ratio check and critic step together) one; every later
    # critic step reads the one encoding of the whole batch, or makes its own pass
    before = actor_steps + 2 if "target_kl" in stop else 1
    assert len(calls) == before + 1 and calls[-1] == n, calls
    assert len(calls0) == before + total - (actor_steps + 1), calls0
    assert m["value_loss"] == pytest.approx(m0["value_loss"], rel=1e-4)
    for k in state:
        np.testing.assert_allclose(after[k], after0[k], rtol=1e-4, atol=1e-6, err_msg=k)
    if "critic_warmup_iters" in stop:  # the warm-up moved the critic and nothing else
        assert m["epochs_run"] == 0 and m["first_minibatch_ratio_dev"] <= 1e-4
        moved = [k for k in state if not np.array_equal(after[k], state[k])]
        assert moved and all(k.startswith("value_head.") for k in moved), moved


def test_backbone_frozen_by_default_and_its_own_lr_when_trained(overshoot):
    """RL leaves the backbone as it is unless optim.train_backbone; then optim.backbone_lr sets its
    step size apart from the action expert's."""
    cfg, seg, state = overshoot

    def moved(lr: Learner, prefix: str) -> float:
        return max(float(np.abs(p.detach().numpy() - state[n]).max())
                   for n, p in lr.policy.named_parameters() if n.startswith(prefix))

    runs = {}
    for name, optim in (("frozen", {}), ("same", {"train_backbone": True}),
                        ("slow", {"train_backbone": True, "backbone_lr": 1e-7})):
        lr = learner(cfg, state, algo={"epochs": 2}, optim=optim)
        lr.update([seg])
        runs[name] = (moved(lr, "model.backbone."), moved(lr, "model.expert."))
    assert runs["frozen"][0] == 0.0 and runs["frozen"][1] > 0
    assert runs["same"][0] > 1e-4
    assert 0 < runs["slow"][0] < 0.01 * runs["same"][0] and runs["slow"][1] > 1e-4, runs


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
    (seg,), engine = rollout(cfg)
    assert (~seg.valid).sum() >= 1
    batch, _ = Learner(cfg, engine.policy).make_batch([seg])
    assert np.isfinite(batch.obs.proprio[batch.loss_mask]).all()


def test_grpo_counts_the_groups_that_carry_a_signal(tmp_path):
    """learner/groups_informative: the fraction of GRPO groups whose returns differ (the others have
    zero advantage or are filtered); a real episodic segment with its outcomes set by hand."""
    cfg = small_cfg(tmp_path, "algo.name=grpo", "grpo.group_size=2", "env.num_envs=4", "rollout.num_env_workers=1")
    (seg,), engine = rollout(cfg, episodic=True)
    assert list(seg.env_ids // 2) == [0, 0, 1, 1]
    for outcomes, expect in (((1, 0, 0, 0), 0.5), ((1, 0, 0, 1), 1.0), ((0, 0, 1, 1), 0.0)):
        rewards = np.zeros_like(seg.rewards)
        rewards[0, :, 0] = outcomes  # a success reward in each chosen episode's first chunk
        batch, m = Learner(cfg, engine.policy).make_batch([dataclasses.replace(seg, rewards=rewards)])
        assert m["groups_informative"] == expect, outcomes
        keep = np.repeat(np.ptp(np.array(outcomes).reshape(2, 2), 1) > 0, 2)  # filter_groups: degenerate dropped
        np.testing.assert_array_equal(batch.loss_mask.reshape(seg.shape).any(0), keep & seg.valid.any(0))


@pytest.mark.parametrize("name", ["ppo", "grpo", "rft", "ppo_rft"])
def test_every_registered_algorithm_updates_through_the_same_driver(tmp_path, name):
    """Each built-in algorithm: one update from real segments moves the weights and bumps the version;
    the critic-free ones leave the value head alone."""
    extra = ["env.num_envs=4", "rollout.num_env_workers=1", "grpo.group_size=2"] if name == "grpo" else []
    cfg = small_cfg(tmp_path, f"algo.name={name}", "algo.critic_warmup_iters=0", "imitation.steps=2",
                    "imitation.batch=4", "imitation.demos=false", *extra)
    algo = ALGORITHMS.get(name)
    segs, engine = rollout(cfg, episodic=algo.episodic)
    seg = segs[0]
    if algo.imitates or name == "grpo":  # one success per pair of envs, so imitation and groups have signal
        succ = np.zeros(seg.shape, bool)
        succ[-1, ::2] = True
        rewards = np.zeros_like(seg.rewards)
        rewards[-1, ::2, 0] = 1.0
        seg = dataclasses.replace(seg, success=succ, terminated=succ | seg.terminated, rewards=rewards)
    before = state_to_numpy(engine.policy)
    lr = Learner(cfg, engine.policy)
    m = lr.update([seg])
    after = state_to_numpy(lr.policy)
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert lr.version == 1 and "skipped" not in m and moved, m
    assert any(k.startswith("value_head.") for k in moved) == algo.uses_critic
    assert (m.get("sil_steps_run", 0) == 2) == algo.imitates


class Reinforce(Algorithm):
    """A plug-in written the way the built-in ones are: REINFORCE on the stored transitions, with the
    chunk's discounted reward-to-go as its advantage and no critic."""

    uses_critic = False

    def advantages(self, segments: list[Segment], valid: list[np.ndarray]) -> tuple[list[Advantages], dict]:
        out = []
        for seg, ok in zip(segments, valid):
            r = seg.rewards.sum(-1)
            togo = np.flip(np.cumsum(np.flip(r, 0), 0), 0).astype(np.float32)
            out.append(Advantages(togo, togo, ok))
        return out, {"reinforce_mean_return": float(np.mean([a.returns[0].mean() for a in out]))}

    def loss(self, mb: Minibatch) -> Loss:
        rc = self.policy.log_prob_and_value(mb.obs, mb.chain, mb.step_mask, mb.exec_mask, self.sampler,
                                            self.cfg.sampler.logprob, mb.prefix)
        mask = torch.ones_like(mb.advantages, dtype=torch.bool)
        loss = -masked_mean(rc.logp * mb.advantages, mask)
        return Loss(actor=loss, critic=None, approx_kl=float((mb.old_logp - rc.logp.detach()).mean()),
                    metrics={"policy_loss": loss.item()})


def test_a_new_algorithm_plugs_in_with_one_registration(tmp_path, monkeypatch):
    """Registering a class under a name is all a new algorithm needs: the config accepts the name, and
    the learner drives its advantages and loss (stats and metrics reach the update's metrics)."""
    monkeypatch.setitem(ALGORITHMS._entries, "reinforce", Reinforce)
    cfg = small_cfg(tmp_path, "algo.name=reinforce")
    (seg,), engine = rollout(cfg)
    rewards = np.zeros_like(seg.rewards)
    rewards[-1, 0, 0] = 1.0
    before = state_to_numpy(engine.policy)
    lr = Learner(cfg, engine.policy)
    m = lr.update([dataclasses.replace(seg, rewards=rewards)])
    assert isinstance(lr.algo, Reinforce) and lr.version == 1
    assert m["reinforce_mean_return"] > 0 and "policy_loss" in m and "value_loss" not in m
    after = state_to_numpy(lr.policy)
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("model.expert."))
    assert all(np.array_equal(before[k], after[k]) for k in before if k.startswith("value_head."))
