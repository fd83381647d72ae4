"""``sampler.name: latent`` with ``policy.noise_prior``: the initial noise, drawn from a learned
N(mean(obs), std(obs)^2), is the policy's stochastic action and every denoising step is deterministic
(noise-space RL, as DSRL steers a diffusion policy). A fresh prior is exactly the SFT policy; rollout
and recompute agree; gradients reach the prior head only; PPO on it solves a bandit; the config and
checkpoint paths; ``rlsys train`` on a real local Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_distributed import init_ckpt, ray_local, read_metrics, small_cfg  # noqa: F401
from test_flow_math import make_obs, make_policy
from test_learner_math import bandit, ppo_on_bandit

from rlsys import metrics as M
from rlsys.config import ConfigError, PolicyConfig, load_config
from rlsys.flow import ODE, FlowSDE, LatentNoise, gaussian_log_prob, reduce_log_prob
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.types import ContractError


def _with_prior(pol: FlowPolicy) -> FlowPolicy:
    """The same weights plus a fresh (zero last layer) prior head."""
    out = FlowPolicy(PolicyConfig(**{**pol.cfg.__dict__, "noise_prior": True}))
    missing, unexpected = out.load_state_dict(pol.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("prior_head.") for k in missing)
    return out


def test_a_fresh_prior_is_the_standard_normal_the_sft_policy_samples():
    """Zero-initialised, the prior head leaves every sampler's chain exactly as without it, and the
    latent sampler's log-prob is log N(x0; 0, I) over the real channels."""
    pol = make_policy()
    latent = _with_prior(pol)
    obs = make_obs(4, action_dim=5)
    for smp in (ODE(), FlowSDE(0.5)):
        a = pol.sample(obs, smp, torch.Generator().manual_seed(3))
        b = latent.sample(obs, smp, torch.Generator().manual_seed(3))
        np.testing.assert_array_equal(a.chain, b.chain)
        np.testing.assert_array_equal(a.logp_steps, b.logp_steps)
    ode = pol.sample(obs, ODE(), torch.Generator().manual_seed(3))
    lat = latent.sample(obs, LatentNoise(), torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(lat.chain, ode.chain)  # the same draws, every step deterministic
    assert not lat.step_mask.any()
    x0 = torch.from_numpy(lat.chain[:, 0])
    want = (gaussian_log_prob(x0, torch.zeros_like(x0), torch.ones_like(x0))[..., :5]).sum(-1)
    torch.testing.assert_close(torch.from_numpy(lat.logp_steps), want)
    with pytest.raises(ContractError, match="policy.noise_prior: true"):
        pol.sample(obs, LatentNoise(), torch.Generator().manual_seed(3))


@pytest.mark.parametrize("mode", ["chunk_level", "token_level"])
def test_latent_recompute_matches_rollout_and_trains_the_prior_only(mode):
    """With a trained (perturbed) prior: the recomputed log-prob equals the rollout's (ratio 1),
    the initial noise follows the prior, and the gradient reaches the prior head (and the backbone
    through it), never the action expert or a padded channel."""
    pol = make_policy(noise_prior=True)
    obs = make_obs(6, action_dim=5)
    smp = LatentNoise()
    chunk = pol.sample(obs, smp, torch.Generator().manual_seed(0))
    exec_mask = np.arange(pol.cfg.action_horizon)[None].repeat(6, 0) < np.array([[1], [2], [3], [4], [5], [5]])
    old = reduce_log_prob(torch.from_numpy(chunk.logp_steps), torch.from_numpy(exec_mask),
                          torch.from_numpy(obs.action_dim), torch.from_numpy(smp.num_stochastic(chunk.step_mask)), mode)
    rc = pol.log_prob_and_value(obs, chunk.chain, chunk.step_mask, exec_mask, smp, mode)
    torch.testing.assert_close(rc.logp, old, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        mean, std = pol.noise_prior(pol.encode(pol._tensors(obs)))
    assert float((mean[..., :5].abs()).mean()) > 1e-3 and float((std - 1).abs().max()) > 1e-3  # a real prior
    assert not chunk.chain[:, 0, :, 5:].any()  # padded channels stay zero
    pol.zero_grad()
    (rc.logp.sum() + rc.entropy.sum()).backward()
    assert pol.prior_head[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in pol.expert.parameters())
    # a padded channel's prior outputs get no gradient: mean rows h*K + k and std rows H*K + h*K + k, k >= 5
    h, k = pol.cfg.action_horizon, pol.cfg.action_channels
    g = pol.prior_head[-1].weight.grad.view(2, h, k, -1)
    assert not g[:, :, 5:].any() and g[:, :, :5].abs().sum() > 0


def test_ppo_on_the_latent_noise_moves_a_frozen_flow_policy_toward_the_optimum():
    """PPO's clipped objective on the initial noise alone (the flow itself never updated) moves the
    ODE policy's action (x0 from the prior) toward the reward."""
    pol, obs = bandit(64)
    pol = _with_prior(pol)
    expert = {k: v.clone() for k, v in pol.expert.state_dict().items()}
    target = 1.5
    start, end = ppo_on_bandit(pol, obs, LatentNoise(), torch.optim.Adam(pol.prior_head.parameters(), lr=3e-3),
                               target)
    assert abs(end - target) < 0.5 * abs(start - target), (start, end)
    assert all(torch.equal(v, pol.expert.state_dict()[k]) for k, v in expert.items())


def test_samplers_that_need_a_head_are_checked_when_the_config_is_read():
    for sampler, flag in (("latent", "noise_prior"), ("flow_noise", "noise_head")):
        with pytest.raises(ConfigError, match=f"policy.{flag}: got False; allowed: true with sampler.name={sampler}"):
            load_config("tabletop_ppo", [f"sampler.name={sampler}"])
        load_config("tabletop_ppo", [f"sampler.name={sampler}", f"policy.{flag}=true"])
    load_config("tabletop_fewshot_ppo_latent", [])


def test_train_latent_from_an_sft_checkpoint_on_a_local_ray(ray_local, init_ckpt, tmp_path):  # noqa: F811
    """``rlsys train`` with the latent sampler from an SFT checkpoint (no prior head): the run adds a
    fresh one; ratio 1 on the first minibatch through the real actor path; the prior moves; the saved
    checkpoint carries it and evaluates with the ODE sampler drawing x0 from it."""
    from rlsys.checkpoint import load_policy
    from rlsys.train import train

    cfg = small_cfg(tmp_path, "placement.mode=collocated", f"init_checkpoint={init_ckpt}", "sampler.name=latent",
                    "policy.noise_prior=true", "algo.critic_warmup_iters=0", "algo.actor_lr=1e-3")
    run_dir = Path(train(cfg)["run_dir"])
    rows = read_metrics(run_dir)
    assert [r["learner/weight_version"] for r in rows] == [0, 1]
    assert rows[0][M.FIRST_RATIO_DEV] <= 1e-4 and rows[-1]["learner/approx_kl"] > 0
    policy, *_ = load_policy(run_dir / "checkpoint")
    assert policy.cfg.noise_prior and policy.prior_head[-1].weight.abs().sum() > 0
    sft, *_ = load_policy(init_ckpt)
    state = policy.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in sft.state_dict().items() if k.startswith("expert."))
