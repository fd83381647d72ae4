"""Checks every policy model must pass through ``FlowPolicy`` (shared by the model test files)."""

from __future__ import annotations

import numpy as np
import torch

from rlsys import flow
from rlsys.types import Observation


def check_recompute_gives_ratio_one(pol, obs: Observation, sampler) -> None:
    """The learner's recompute of stored chains -- on the whole batch, and on a subset of rows of a
    prefix encoded once in blocks (a frozen backbone's cache) -- gives the rollout's log-probs."""
    b, h = obs.batch_size, pol.cfg.action_horizon
    with torch.no_grad():
        if pol.noise_head is not None:
            pol.noise_head.weight.normal_(0, 0.05)  # a trained noise head: the std depends on the state
        ch = pol.sample(obs, sampler, torch.Generator().manual_seed(3))
        exec_mask = np.ones((b, h), bool)
        full = pol.log_prob_and_value(obs, ch.chain, ch.step_mask, exec_mask, sampler, "token_level")
        rows = np.array([b - 1, 1, 2])
        cached = pol.encode_batch(obs, block=2).index(torch.from_numpy(rows))
        sub = pol.log_prob_and_value(obs.index(rows), ch.chain[rows], ch.step_mask[rows], exec_mask[rows],
                                     sampler, "token_level", prefix=cached)
    steps = torch.from_numpy(ch.step_mask)
    rollout = flow.reduce_log_prob(torch.from_numpy(ch.logp_steps), torch.from_numpy(exec_mask),
                                   torch.from_numpy(obs.action_dim), sampler.num_stochastic(steps), "token_level")
    torch.testing.assert_close(full.logp, rollout, atol=1e-5, rtol=0)
    torch.testing.assert_close(sub.logp, full.logp[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(sub.value, full.value[rows], atol=1e-5, rtol=0)


def check_inputs_move_the_velocity(pol, obs: Observation) -> None:
    """Images, state, prompt and time each move v: a model that ignored one would pass the
    recompute check (pi0.5's and the DiT's adaptive norms start at zero: weights must be perturbed)."""
    b = obs.batch_size
    xt, t = torch.randn(b, pol.cfg.action_horizon, pol.cfg.action_channels), torch.full((b,), 0.5)

    def v(o: Observation, tt: torch.Tensor = t) -> torch.Tensor:
        with torch.no_grad():
            return pol.model.velocity(pol.encode(pol._tensors(o)), xt, tt)[0]

    base = v(obs)
    for name, o in {"images": Observation(**{**obs.arrays(), "images": 255 - obs.images}),
                    "state": Observation(**{**obs.arrays(), "proprio": -obs.proprio}),
                    "prompt": Observation(**{**obs.arrays(), "tokens": np.where(obs.token_mask, 7, 0)})}.items():
        assert float((v(o) - base).abs().max()) > 1e-4, name
    assert float((v(obs, t * 0.5) - base).abs().max()) > 1e-4
