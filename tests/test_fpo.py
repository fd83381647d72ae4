"""``algo.name: fpo``: PPO's clipped objective with the flow-matching ratio of the sampled chunk
(McAllister et al. 2025; one ratio per draw as FPO++): the error math, ratio 1 at the rollout weights,
a bandit it must solve, the config checks, and ``rlsys train`` on a real local Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_distributed import _core_and_engine, init_ckpt, ray_local, read_metrics, small_cfg  # noqa: F401
from test_flow_math import make_obs, make_policy
from test_learner_math import bandit

from rlsys import metrics as M
from rlsys.actors.inference import load_numpy_state, state_to_numpy
from rlsys.config import ConfigError, load_config
from rlsys.flow import ODE, FlowSDE
from rlsys.learner.learner import Learner
from rlsys.learner.losses import normalize, ppo_policy_loss
from rlsys.policy.flow_policy import FlowPolicy


def test_cfm_errors_match_a_direct_computation_and_ignore_masked_elements():
    """Each draw's error is ||v(t eps + (1 - t) a, t) - (eps - a)||^2 summed over the executed steps
    and real channels (the velocity still sees the whole chunk); padded channels change nothing."""
    pol = make_policy()
    c = pol.cfg
    b, n, h, k = 6, 3, c.action_horizon, c.action_channels
    obs = make_obs(b, action_dim=5)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(b, h, k, generator=gen)
    a[:, :, 5:] = 0  # padded channels are zero in stored chains
    valid = np.arange(h)[None].repeat(b, 0) < np.array([[1], [2], [3], [4], [5], [5]])
    t = torch.rand(b, n, generator=gen) * 0.9 + 0.05
    eps = torch.randn(b, n, h, k, generator=gen)
    with torch.no_grad():
        err, value = pol.cfm_errors(obs, a.numpy(), valid, t, eps)
        prefix = pol.encode(pol._tensors(obs))
        for i in range(n):
            e = eps[:, i] * (torch.arange(k) < 5)
            x = t[:, i, None, None] * e + (1 - t[:, i, None, None]) * a
            v, _ = pol.expert(x, t[:, i], prefix)
            m = torch.from_numpy(valid)[:, :, None] & (torch.arange(k) < 5)
            torch.testing.assert_close(err[:, i], (((v - (e - a)) ** 2) * m).sum((1, 2)))
        torch.testing.assert_close(value, pol.value(obs))
        a2, eps2 = a.clone(), eps.clone()
        a2[..., 5:] += 3.0  # padded channels
        eps2[..., 5:] += 3.0
        torch.testing.assert_close(pol.cfm_errors(obs, a2.numpy(), valid, t, eps2)[0], err)
        a2[0, 0, 0] += 1.0  # a real channel
        assert not torch.allclose(pol.cfm_errors(obs, a2.numpy(), valid, t, eps)[0][0], err[0])


def test_fpo_on_a_1d_bandit_moves_the_flow_policy_toward_the_optimum():
    """The FPO surrogate alone (no Gaussian transition in it) moves a flow policy to the reward."""
    b, d = 64, 8
    pol, obs = bandit(b)
    target = 1.5
    opt = torch.optim.Adam(pol.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    valid = np.ones((b, 1), bool)

    def mean_action():
        return float(pol.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions.mean())

    start = mean_action()
    for _ in range(40):
        chunk = pol.sample(obs, FlowSDE(0.7), gen)
        adv = normalize(torch.from_numpy(-((chunk.actions[:, 0, 0] - target) ** 2)), torch.ones(b, dtype=torch.bool))
        t, eps = torch.rand(b, d, generator=gen), torch.randn(b, d, 1, 1, generator=gen)
        with torch.no_grad():
            old = pol.cfm_errors(obs, chunk.chain[:, -1], valid, t, eps)[0]
        for _ in range(4):
            err = pol.cfm_errors(obs, chunk.chain[:, -1], valid, t, eps)[0]
            loss = ppo_policy_loss(-err.reshape(-1), -old.reshape(-1), adv.repeat_interleave(d),
                                   torch.ones(b * d, dtype=torch.bool), 0.2, 0.2).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    end = mean_action()
    assert abs(end - target) < 0.5 * abs(start - target), (start, end)


@pytest.fixture(scope="module")
def rollout(tmp_path_factory):
    """One real rollout segment (2 envs x 3 chunk-steps, shaped reward) and the rollout weights."""
    cfg = small_cfg(tmp_path_factory.mktemp("fpo"), "algo.name=fpo", "algo.critic_warmup_iters=0",
                    "algo.actor_lr=1e-3", "algo.epochs=4", "env.reward=shaped")
    core, engine = _core_and_engine(cfg)
    seg = core.rollout(engine.infer, lambda c: c, engine.values)
    core.close()
    return cfg, seg, state_to_numpy(engine.policy)


@pytest.mark.parametrize("update_backbone", [False, True])
def test_fpo_update_starts_at_ratio_one_and_moves_the_policy(rollout, update_backbone):
    """At the rollout weights every draw's ratio is exactly 1 (fixed draws, old errors from the same
    weights; with a frozen backbone through the cached prefix); then the update changes the actor,
    reports the flow-matching error, and has no entropy (a flow policy has none in closed form)."""
    cfg, seg, state = rollout
    c = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, update_backbone=update_backbone))
    policy = FlowPolicy(c.policy)
    load_numpy_state(policy, state)
    learner = Learner(c, policy)
    m = learner.update([seg])
    assert m["first_minibatch_ratio_dev"] <= 1e-5, m["first_minibatch_ratio_dev"]
    assert m["cfm_error"] > 0 and "entropy" not in m and m["epochs_run"] == c.algo.epochs
    assert m["clip_fraction"] > 0 and m["ratio_max"] > 1  # the policy moved within the trust region
    assert learner.version == 1 and set(m) - {"skipped"} <= set(M.LEARNER_KEYS) | {"update_seconds"}
    after = state_to_numpy(policy)
    moved = {k for k in state if not np.array_equal(after[k], state[k])}
    assert any(k.startswith("expert.") for k in moved) and any(k.startswith("value_head.") for k in moved)
    assert update_backbone == any(k.startswith("backbone.") for k in moved)


def test_fpo_settings_are_checked():
    for bad, key in (("algo.ref_kl_coef=0.1", "ref_kl_coef"), ("algo.entropy_coef=0.01", "entropy_coef"),
                     ("algo.fpo_draws=0", "fpo_draws")):
        with pytest.raises(ConfigError, match=key):
            load_config("tabletop_ppo", ["algo.name=fpo", bad])
    load_config("tabletop_fewshot_fpo", [])


def test_train_fpo_on_a_local_ray(ray_local, init_ckpt, tmp_path):  # noqa: F811
    """``rlsys train`` with algo.name=fpo end to end: ratio 1 on the first minibatch through the real
    actor path, the flow-matching error reaches metrics.jsonl, the new weights reach the workers."""
    from rlsys.train import train

    cfg = small_cfg(tmp_path, "placement.mode=collocated", f"init_checkpoint={init_ckpt}", "algo.name=fpo",
                    "algo.critic_warmup_iters=0")
    run_dir = Path(train(cfg)["run_dir"])
    rows = read_metrics(run_dir)
    assert [r["learner/weight_version"] for r in rows] == [0, 1]
    assert rows[0][M.FIRST_RATIO_DEV] <= 1e-4 and all(r[M.CFM_ERROR] > 0 for r in rows)
    assert "fpo" in run_dir.name
