"""``algo.ema_decay``: the weight average that evaluations and checkpoints use, while rollouts (and
PPO's ratio) keep the trained weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_distributed import ray_local  # noqa: F401
from test_self_imitation import rollout  # noqa: F401

from rlsys.actors.inference import load_numpy_state, state_to_numpy
from rlsys.config import ConfigError, load_config
from rlsys.learner.ema import WeightEMA
from rlsys.learner.learner import Learner
from rlsys.policy.flow_policy import FlowPolicy


def test_weight_ema_is_the_running_mean_then_an_ema():
    lin = torch.nn.Linear(2, 1)
    ema = WeightEMA(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(100.0)  # the start is not averaged in
    seen = []
    for w in (1.0, 2.0, 3.0, 7.0):
        with torch.no_grad():
            lin.weight.fill_(w)
        ema.update(lin)
        seen.append(float(ema.numpy_state(lin)["weight"][0, 0]))
    # mean of 1; mean of 1, 2; then decay 0.5 (capped: 2/3 > 0.5): 0.5 x 1.5 + 0.5 x 3; 0.5 x 2.25 + 0.5 x 7
    assert seen == pytest.approx([1.0, 1.5, 2.25, 4.625])
    ema9 = WeightEMA(lin, decay=0.9)
    for w in (1.0, 2.0, 3.0, 6.0):
        with torch.no_grad():
            lin.weight.fill_(w)
        ema9.update(lin)
    assert float(ema9.numpy_state(lin)["weight"][0, 0]) == pytest.approx(3.0)  # the plain mean until 10 updates
    assert float(lin.weight.detach()[0, 0]) == 6.0  # the module itself is untouched
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(lin, decay=1.0)


def test_learner_evaluates_the_average_and_rolls_out_the_trained_weights(rollout):  # noqa: F811
    """Three real PPO updates at ema_decay 0.5: the policy module keeps the trained weights; the
    evaluation weights are w1, then (w1 + w2) / 2, then the EMA step toward w3."""
    cfg, (s1, s2), state = rollout
    c = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, ema_decay=0.5))
    policy = FlowPolicy(c.policy)
    load_numpy_state(policy, state)
    learner = Learner(c, policy)
    online, evals = [], []
    for seg in (s1, s2, s1):
        seg = dataclasses.replace(seg, versions=np.full_like(seg.versions, learner.version))
        assert learner.update([seg])["epochs_run"] > 0
        online.append(state_to_numpy(policy))
        evals.append(learner.eval_state())
    keys = [k for k in state if np.issubdtype(state[k].dtype, np.floating)]
    moved = [k for k in keys if not np.array_equal(online[0][k], online[1][k])]
    assert moved and any(k.startswith("expert.") for k in moved)
    for k in keys:
        np.testing.assert_allclose(evals[0][k], online[0][k], rtol=0, atol=0)
        np.testing.assert_allclose(evals[1][k], (online[0][k] + online[1][k]) / 2, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(evals[2][k], 0.5 * evals[1][k] + 0.5 * online[2][k], rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(evals[2][k], online[2][k]) for k in moved)
    plain = Learner(cfg, FlowPolicy(cfg.policy))
    assert plain.ema is None and all(np.array_equal(v, state_to_numpy(plain.policy)[k])
                                     for k, v in plain.eval_state().items())
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config("tabletop_ppo", ["algo.ema_decay=1"])


def test_actor_publishes_trained_weights_for_rollouts_and_the_average_for_evaluation(ray_local, rollout):  # noqa: F811
    import ray

    from rlsys.actors.system import PolicyActor

    cfg, (s1, s2), state = rollout
    c = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, ema_decay=0.5))
    actor = PolicyActor.remote(c, "learner", state)
    for version, seg in enumerate((s1, s2)):
        ray.get(actor.update.remote([dataclasses.replace(seg, versions=np.full_like(seg.versions, version))]))
    (v, (ref,)), (ve, (ref_eval,)) = ray.get([actor.publish.remote(), actor.publish_eval.remote()])
    st = ray.get(actor.training_state.remote())
    rollout_w, eval_w = ray.get(ref), ray.get(ref_eval)
    assert v == ve == 2 and st["ema_updates"] == 2
    assert all(np.array_equal(rollout_w[k], st["policy"][k]) for k in rollout_w)
    assert all(np.array_equal(eval_w[k], st["ema"][k]) for k in eval_w)
    assert any(not np.array_equal(rollout_w[k], eval_w[k]) for k in rollout_w if k.startswith("expert."))
    ray.kill(actor)
