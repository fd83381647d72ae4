"""The policy and sampler math contract (docs/algorithms.md sections 1-4): recompute at the rollout weights,
one grid for sampling and recompute, the SDE limits, densities, masks, gradients, deterministic evaluation."""

import math

import numpy as np
import pytest
import torch

from rlsys import flow
from rlsys.config import PolicyConfig
from rlsys.flow import (
    ODE,
    FlowNoise,
    FlowSDE,
    flow_sde_step,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    transition,
)
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.types import Observation

B, H, K = 12, 5, 7


def make_obs(b=B, action_dim=7, seed=0, cfg=None):
    cfg = cfg or PolicyConfig()
    rng = np.random.default_rng(seed)
    L = cfg.max_tokens
    return Observation(
        images=rng.integers(0, 255, (b, cfg.num_cameras, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
        proprio=rng.normal(size=(b, cfg.proprio_dim)).astype(np.float32),
        tokens=rng.integers(1, cfg.vocab_size, (b, L)).astype(np.int64),
        token_mask=np.arange(L)[None].repeat(b, 0) < rng.integers(10, L, (b, 1)),
        action_dim=np.full(b, action_dim, np.int64),
    )


def make_policy(seed=0, **kw):
    """A policy with every weight perturbed (zero-init layers would hide bugs)."""
    torch.manual_seed(seed)
    pol = FlowPolicy(PolicyConfig(**kw))
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return pol


def recompute(pol, obs, chunk, exec_mask, sampler, mode="chunk_level"):
    return pol.log_prob_and_value(obs, chunk.chain, chunk.step_mask, exec_mask, sampler, mode)


# 1 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,noise_head", [(FlowSDE(0.5), False), (FlowSDE(0.7, True), False),
                                                (FlowNoise(), True)])
def test_recompute_at_rollout_weights_gives_ratio_one(sampler, noise_head):
    pol = make_policy(noise_head=noise_head)
    obs = make_obs()
    chunk = pol.sample(obs, sampler, torch.Generator().manual_seed(3))
    exec_mask = np.ones((B, H), bool)
    exec_mask[:4, 2:] = False  # episodes that ended mid-chunk
    mb = np.array([5, 0, 7, 3, 11, 2])  # a minibatch in another order and size than the rollout
    for mode in ("chunk_level", "token_level"):
        old = flow.reduce_log_prob(torch.from_numpy(chunk.logp_steps[mb]), torch.from_numpy(exec_mask[mb]),
                                   torch.from_numpy(obs.action_dim[mb]),
                                   torch.from_numpy(chunk.step_mask[mb].sum(1)), mode).numpy()
        new = recompute(pol, obs.index(mb), chunk.index(mb), exec_mask[mb], sampler, mode).logp.detach().numpy()
        tol = 1e-4 if mode == "chunk_level" else 1e-5
        assert np.abs(new - old).max() <= tol, (mode, np.abs(new - old).max())
        np.testing.assert_allclose(np.exp(new - old), 1.0, atol=1e-4)
    # per horizon step (summed over the 7 channels): 1e-5 per element
    full = pol.log_prob_and_value(obs, chunk.chain, chunk.step_mask, np.ones((B, H), bool), sampler, "chunk_level")
    assert np.abs(full.logp.detach().numpy() - chunk.logp_steps.sum(1)).max() <= 1e-5 * H * K * 4
    # the learner's path for a frozen backbone: prefixes encoded once (in blocks), indexed per minibatch
    cached = pol.encode_batch(obs, block=5).index(torch.from_numpy(mb))
    again = pol.log_prob_and_value(obs.index(mb), chunk.chain[mb], chunk.step_mask[mb], exec_mask[mb], sampler,
                                   "chunk_level", prefix=cached)
    direct = recompute(pol, obs.index(mb), chunk.index(mb), exec_mask[mb], sampler, "chunk_level")
    torch.testing.assert_close(again.logp, direct.logp, atol=1e-4, rtol=1e-6)  # float32 sums of ~100
    torch.testing.assert_close(again.value, direct.value, atol=1e-6, rtol=0)
    assert again.logp.requires_grad  # the action expert still gets gradients


# 2 -------------------------------------------------------------------------------------------
def test_sampling_and_recompute_share_one_grid_and_transition(monkeypatch):
    pol = make_policy()
    obs = make_obs()
    sampler = FlowSDE(0.5)
    calls = []
    real = flow.transition

    def spy(*a, **kw):
        calls.append(a[3].clone())
        return real(*a, **kw)

    monkeypatch.setattr(flow, "transition", spy)
    chunk = pol.sample(obs, sampler, torch.Generator().manual_seed(0))
    n_sample = len(calls)
    recompute(pol, obs, chunk, np.ones((B, H), bool), sampler)
    assert n_sample == pol.cfg.denoise_steps and len(calls) == n_sample + 1

    # A warped grid changes both paths together: still ratio 1 ...
    orig_grid = flow.time_grid
    monkeypatch.setattr(flow, "time_grid", lambda s: orig_grid(s) ** 1.5)
    warped = pol.sample(obs, sampler, torch.Generator().manual_seed(0))
    same = recompute(pol, obs, warped, np.ones((B, H), bool), sampler).logp.detach().numpy()
    np.testing.assert_allclose(same, warped.logp_steps.sum(1), atol=1e-4)
    # ... while recomputing that chain on another grid would not be.
    monkeypatch.setattr(flow, "time_grid", orig_grid)
    other = recompute(pol, obs, warped, np.ones((B, H), bool), sampler).logp.detach().numpy()
    assert np.abs(other - warped.logp_steps.sum(1)).max() > 1e-2


# 3 -------------------------------------------------------------------------------------------
def test_flow_sde_with_zero_noise_is_the_euler_step():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(64, 5, 7, generator=g), torch.randn(64, 5, 7, generator=g)
    for s in (1, 4, 10):
        for k in range(s):
            t = flow.time_grid(s)[k].expand(64, 1, 1)
            mean, std = flow_sde_step(x, v, t, 1.0 / s, 0.0, s)
            torch.testing.assert_close(mean, x - (1.0 / s) * v, rtol=0, atol=0)  # bit-exact Euler
            assert float(std.abs().max()) == 0.0


# 4 -------------------------------------------------------------------------------------------
MU, SD = 1.5, 0.3


def toy_velocity(x, t):
    """Exact v(x, t) = E[eps - a | x_t = x] for a ~ N(MU, SD^2), x_t = t eps + (1 - t) a."""
    var = t**2 + (1 - t) ** 2 * SD**2
    return -MU + (t - (1 - t) * SD**2) / var * (x - (1 - t) * MU)


def integrate(sampler, steps, n=40000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, generator=g)
    grid = flow.time_grid(steps)
    on = torch.ones(n, dtype=torch.bool)
    cm = torch.ones(n, 1, dtype=torch.bool)
    for k in range(steps):
        v = toy_velocity(x, grid[k])
        stochastic = on if not isinstance(sampler, ODE) else ~on
        mean, std = transition(sampler, x, v, torch.full((n,), k), steps, stochastic, cm)
        x = mean + std * torch.randn(x.shape, generator=g)
    return float(x.mean()), float(x.std())


@pytest.mark.parametrize("sampler", [ODE(), FlowSDE(0.5), FlowSDE(0.7)], ids=["ode", "sde0.5", "sde0.7"])
def test_toy_marginals_match_the_target_at_many_steps(sampler):
    mean, std = integrate(sampler, 200)
    assert abs(mean - MU) / MU < 0.02 and abs(std - SD) / SD < 0.02, (mean, std)
    mean5, std5 = integrate(sampler, 5)
    assert abs(std5 - SD) / SD > 0.02 or abs(mean5 - MU) / MU > 0.02  # visibly biased at K = 5


# 5 -------------------------------------------------------------------------------------------
def test_gaussian_kl_matches_torch_normal():
    g = torch.Generator().manual_seed(1)
    mp, mq = torch.randn(2, 1000, generator=g, dtype=torch.float64)
    sp, sq = torch.rand(2, 1000, generator=g, dtype=torch.float64) + 0.05
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mp, sp), torch.distributions.Normal(mq, sq))
    torch.testing.assert_close(gaussian_kl(mp, sp, mq, sq), ref, atol=1e-9, rtol=0)
    assert float(gaussian_kl(mp, sp, mp, sp).abs().max()) == 0.0


def test_gaussian_log_prob_and_entropy_match_torch_normal():
    g = torch.Generator().manual_seed(0)
    x, mu = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    std = torch.rand(1000, generator=g, dtype=torch.float64) + 0.01
    ref = torch.distributions.Normal(mu, std)
    torch.testing.assert_close(gaussian_log_prob(x, mu, std), ref.log_prob(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(gaussian_entropy(std), ref.entropy(), atol=1e-6, rtol=0)
    # fp32 at the stds rollouts use (0.05..1): same to 1e-6 up to fp32 rounding of the value
    x32, mu32, std32 = x.float(), mu.float(), (std.float() * 0.95 + 0.05)
    ref32 = torch.distributions.Normal(mu32, std32)
    torch.testing.assert_close(gaussian_log_prob(x32, mu32, std32), ref32.log_prob(x32), atol=1e-6, rtol=1e-6)


# 6 -------------------------------------------------------------------------------------------
def test_perturbations_change_log_prob_exactly_where_they_should():
    a, s = 0.5, 4
    pol = make_policy(denoise_steps=s)
    obs = make_obs(action_dim=5)  # channels 5 and 6 are padding
    sampler = FlowSDE(a)
    chunk = pol.sample(obs, sampler, torch.Generator().manual_seed(1))
    exec_mask = np.ones((B, H), bool)
    exec_mask[:, 4] = False  # last horizon step not executed
    base = recompute(pol, obs, chunk, exec_mask, sampler).logp.detach().numpy()
    kstar = chunk.step_mask.argmax(1)

    def with_chain(edit):
        c = chunk.chain.copy()
        edit(c)
        return recompute(pol, obs, type(chunk)(**{**chunk.arrays(), "chain": c}, version=0),
                         exec_mask, sampler).logp.detach().numpy()

    # x_{k*+1} on an executed real element: f(d) + f(-d) = -d^2 / std^2 with the analytic std
    d = 0.05
    rows = np.arange(B)
    plus = with_chain(lambda c: c.__setitem__((rows, kstar + 1, 1, 2), c[rows, kstar + 1, 1, 2] + d))
    minus = with_chain(lambda c: c.__setitem__((rows, kstar + 1, 1, 2), c[rows, kstar + 1, 1, 2] - d))
    t = 1 - kstar / s
    sigma = a * np.sqrt(t / np.where(t >= 1, 1 / s, 1 - t))
    std = sigma * np.sqrt(1 / s)
    np.testing.assert_allclose((plus - base) + (minus - base), -(d**2) / std**2, rtol=2e-3)
    assert np.all(np.abs(plus - base) > 1e-4)

    # a deterministic (ODE) step's state, a padded channel, an unexecuted horizon step: no change
    ode_k = np.where(kstar >= 2, 0, s)  # a state neither x_{k*} nor x_{k*+1}
    for edit in (
        lambda c: c.__setitem__((rows, ode_k), c[rows, ode_k] + 0.3),
        lambda c: c.__setitem__((slice(None), slice(None), slice(None), 5), 0.7),
        lambda c: c.__setitem__((rows, kstar + 1, 4), c[rows, kstar + 1, 4] + 0.3),
    ):
        np.testing.assert_array_equal(with_chain(edit), base)


# 7 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,noise_head", [(FlowSDE(0.5), False), (FlowNoise(), True)])
def test_gradients_reach_the_velocity_net_not_the_chain(sampler, noise_head):
    pol = make_policy(noise_head=noise_head)
    obs = make_obs()
    chunk = pol.sample(obs, sampler, torch.Generator().manual_seed(2))
    chain = torch.tensor(chunk.chain, requires_grad=True)
    out = pol.log_prob_and_value(obs, chain, chunk.step_mask, np.ones((B, H), bool), sampler, "chunk_level")
    out.logp.sum().backward()
    assert chain.grad is None
    assert pol.model.expert.out.weight.grad.abs().sum() > 0
    assert pol.model.backbone.blocks[0].conv.weight.grad.abs().sum() > 0
    if noise_head:
        assert pol.noise_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("critic", ["pooled", "attention"])
def test_detached_critic_input_keeps_critic_gradients_out_of_the_backbone(critic):
    for detach in (True, False):
        pol = make_policy(detach_critic_input=detach, critic=critic)
        v = pol.value(make_obs())
        assert v.shape == (B,)
        v.sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pol.value_head.parameters())
        g = pol.model.backbone.blocks[0].conv.weight.grad
        assert (g is None or float(g.abs().sum()) == 0.0) == detach


def test_attention_critic_ignores_padded_prefix_tokens():
    pol = make_policy(critic="attention")
    obs = make_obs()
    prefix = pol.encode(pol._tensors(obs))
    tokens = prefix.tokens.clone()
    tokens[~prefix.mask] = 1e3  # padding (masked text tokens) must not reach the value
    changed = type(prefix)(tokens, prefix.mask, prefix.pooled)
    assert (~prefix.mask).any()
    torch.testing.assert_close(pol.value_of(changed), pol.value_of(prefix))
    tokens[prefix.mask] += 1.0  # real tokens do
    assert not torch.allclose(pol.value_of(type(prefix)(tokens, prefix.mask, prefix.pooled)), pol.value_of(prefix))


# 10 ------------------------------------------------------------------------------------------
def test_evaluation_sampling_is_deterministic_given_the_seed():
    pol = make_policy()
    obs = make_obs()
    a = pol.sample(obs, ODE(), torch.Generator().manual_seed(5))
    b = pol.sample(obs, ODE(), torch.Generator().manual_seed(5))
    c = pol.sample(obs, ODE(), torch.Generator().manual_seed(6))
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.actions, c.actions)
    assert not a.step_mask.any() and np.all(a.logp_steps == 0)


def test_flow_sde_draws_one_stochastic_step_per_sample():
    m = FlowSDE(0.5).step_mask(1000, 4, torch.Generator().manual_seed(0))
    assert (m.sum(1) == 1).all()
    counts = m.sum(0).numpy()
    assert counts.min() > 200  # every index drawn, per sample (not per batch)
    m = FlowSDE(0.5, exclude_last_step=True).step_mask(1000, 4, torch.Generator().manual_seed(0))
    assert not m[:, -1].any()


def test_flow_noise_log_var_spans_its_sigma_range():
    lo = float(FlowNoise().log_var(torch.tensor(-1e9)))
    hi = float(FlowNoise().log_var(torch.tensor(1e9)))
    assert math.isclose(lo, 2 * math.log(0.08), rel_tol=1e-6) and math.isclose(hi, 2 * math.log(0.16), rel_tol=1e-6)
