"""The learner math contract (docs/algorithms.md sections 5-6): the PPO clip, chunk-level GAE on hand-worked
examples, GRPO advantages, the value loss, and a 1-D bandit the flow-PPO update must solve."""

import numpy as np
import pytest
import torch

from rlsys.config import PolicyConfig
from rlsys.flow import ODE, FlowSDE, reduce_log_prob
from rlsys.learner.losses import (
    chunk_gae,
    grpo_advantages,
    normalize,
    ppo_policy_loss,
    value_loss,
)
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.types import Observation


# 8 -------------------------------------------------------------------------------------------
def test_ppo_clip_zeroes_the_gradient_outside_the_trust_region():
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 2.0, -1.0, -2.0])
    mask = torch.ones(4, dtype=torch.bool)
    # A > 0 and r > 1 + eps: no gradient; A < 0 and r < 1 - eps: no gradient
    logp = torch.log(torch.tensor([1.5, 1.3, 0.5, 0.7])).requires_grad_()
    ppo_policy_loss(logp, old, adv, mask, 0.2, 0.2).loss.backward()
    assert torch.all(logp.grad == 0)
    # inside the region the gradient is -A/n * r
    logp = torch.log(torch.tensor([1.1, 0.9, 1.1, 0.9])).requires_grad_()
    ppo_policy_loss(logp, old, adv, mask, 0.2, 0.2).loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 4 * torch.tensor([1.1, 0.9, 1.1, 0.9]))


def test_ppo_loss_at_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([0.5, -1.0, 2.0, 3.0])
    mask = torch.tensor([True, True, True, False])
    s = ppo_policy_loss(torch.zeros(4), torch.zeros(4), adv, mask, 0.2, 0.3)
    assert s.loss.item() == pytest.approx(-adv[:3].mean().item())
    assert s.clip_fraction == 0 and s.approx_kl == 0 and s.ratio_mean == 1


def test_asymmetric_clip_bounds():
    logp = torch.log(torch.tensor([1.25])).requires_grad_()
    ppo_policy_loss(logp, torch.zeros(1), torch.ones(1), torch.ones(1, dtype=torch.bool), 0.2, 0.28).loss.backward()
    assert logp.grad.item() != 0  # 1.25 < 1 + 0.28: still inside on the high side


# 9 -------------------------------------------------------------------------------------------
def gae1(rewards, term=None, trunc=None, boot=None, values=None, last=0.0, gamma=0.99, lam=0.95):
    t = len(rewards)
    z = np.zeros((t, 1), bool)
    return chunk_gae(np.array(rewards, np.float32)[:, None],
                     np.zeros((t, 1), np.float32) if values is None else np.array(values, np.float32)[:, None],
                     z if term is None else np.array(term)[:, None], z if trunc is None else np.array(trunc)[:, None],
                     np.zeros((t, 1), np.float32) if boot is None else np.array(boot, np.float32)[:, None],
                     np.array([last], np.float32), gamma, lam)


def test_gae_single_success_gives_discounted_credit():
    T = 6
    adv, ret = gae1([0] * T + [1], term=[False] * T + [True], last=123.0)
    gl = 0.99 * 0.95
    np.testing.assert_allclose(adv[:, 0], [gl ** (T - c) for c in range(T + 1)], rtol=1e-6)
    np.testing.assert_allclose(ret, adv)  # V = 0


def test_gae_nothing_flows_past_done():
    adv, _ = gae1([0, 0, 1, 0, 5], term=[False, False, True, False, False], last=7.0)
    adv2, _ = gae1([0, 0, 1, 0, -5], term=[False, False, True, False, False], last=-7.0)
    np.testing.assert_array_equal(adv[:3], adv2[:3])
    assert adv[3, 0] != adv2[3, 0]


def test_gae_bootstraps_on_truncation_only():
    a_trunc, _ = gae1([0, 0], trunc=[False, True], boot=[0, 0.5], last=9.0)
    a_term, _ = gae1([0, 0], term=[False, True], boot=[0, 0.5], last=9.0)
    assert a_trunc[1, 0] == pytest.approx(0.99 * 0.5)
    assert a_term[1, 0] == 0.0
    # and the segment end (not done) bootstraps from last_value
    a_open, _ = gae1([0, 0], last=2.0, lam=1.0)
    assert a_open[1, 0] == pytest.approx(0.99 * 2.0) and a_open[0, 0] == pytest.approx(0.99**2 * 2.0)


def test_grpo_group_advantages_and_filter():
    returns = np.array([1, 0, 0, 1, 1, 1, 0, 0], np.float32)
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    adv, keep = grpo_advantages(returns, groups)
    np.testing.assert_allclose(adv[:4], [1, -1, -1, 1], atol=1e-5)
    assert keep.tolist() == [True] * 4 + [False] * 4  # all-success and all-fail groups dropped
    _, keep = grpo_advantages(returns, groups, filter_degenerate=False)
    assert keep.all()


def test_value_loss_clipping_and_normalize():
    v, old, ret = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0])
    m = torch.ones(1, dtype=torch.bool)
    # clipped value 0.2 has error 0.8 > unclipped error 1.0? no: max(1.0, 0.8)^2/2 -> 0.5
    assert value_loss(v, old, ret, m, 0.2, "mse", 10.0).item() == pytest.approx(0.5 * 1.0)
    assert value_loss(torch.tensor([0.5]), old, ret, m, 0.2, "mse", 10.0).item() == pytest.approx(0.5 * 0.8**2)
    x = normalize(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([True, True, True, False]))
    assert x[:3].mean().abs() < 1e-6 and x[:3].std(unbiased=False) == pytest.approx(1.0, rel=1e-4)


# 11 ------------------------------------------------------------------------------------------
def bandit(b: int = 64) -> tuple[FlowPolicy, Observation]:
    """A tiny 1-D flow policy and b copies of one observation (seeded)."""
    torch.manual_seed(0)
    cfg = PolicyConfig(width=32, heads=2, backbone_layers=1, expert_layers=1, action_horizon=1,
                       action_channels=1, proprio_dim=1, num_cameras=1, image_size=16, max_tokens=8,
                       vocab_size=16, denoise_steps=4)
    obs = Observation(images=np.zeros((b, 1, 16, 16, 3), np.uint8), proprio=np.zeros((b, 1), np.float32),
                      tokens=np.ones((b, 8), np.int64), token_mask=np.ones((b, 8), bool),
                      action_dim=np.ones(b, np.int64))
    return FlowPolicy(cfg), obs


def ppo_on_bandit(pol: FlowPolicy, obs: Observation, sampler, opt: torch.optim.Optimizer, target: float = 1.5,
                  iters: int = 40) -> tuple[float, float]:
    """PPO's clipped objective alone (4 epochs per batch, reward ``-(a - target)^2``) on ``bandit``'s
    policy; -> the ODE policy's mean action before and after."""
    b = obs.batch_size
    gen = torch.Generator().manual_seed(0)

    def mean_action():
        return float(pol.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions.mean())

    start = mean_action()
    exec_mask = np.ones((b, 1), bool)
    for _ in range(iters):
        chunk = pol.sample(obs, sampler, gen)
        reward = -((chunk.actions[:, 0, 0] - target) ** 2)
        adv = normalize(torch.from_numpy(reward), torch.ones(b, dtype=torch.bool))
        stochastic = torch.from_numpy(sampler.num_stochastic(chunk.step_mask))
        old = reduce_log_prob(torch.from_numpy(chunk.logp_steps), torch.from_numpy(exec_mask),
                              torch.ones(b, dtype=torch.long), stochastic, "chunk_level")
        for _ in range(4):
            rc = pol.log_prob_and_value(obs, chunk.chain, chunk.step_mask, exec_mask, sampler, "chunk_level")
            loss = ppo_policy_loss(rc.logp, old, adv, torch.ones(b, dtype=torch.bool), 0.2, 0.2).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return start, mean_action()


def test_ppo_on_a_1d_bandit_moves_the_flow_policy_toward_the_optimum():
    pol, obs = bandit(64)
    target = 1.5
    start, end = ppo_on_bandit(pol, obs, FlowSDE(0.7), torch.optim.Adam(pol.parameters(), lr=3e-3), target)
    assert abs(end - target) < 0.5 * abs(start - target), (start, end)
