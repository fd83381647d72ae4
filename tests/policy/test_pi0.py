"""pi0 from transformers under rlsys's samplers (tiny random-weight config, CPU): rlsys's ODE loop
equals the model's own sampling with the same noise, the prefix cache is never written, a subset of
rows recomputes the same transitions (Flow-SDE ratio 1), and gradients reach both halves."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the vla extra: pip install -e '.[vla]'")

from rlsys import flow  # noqa: E402
from rlsys.flow import ODE, FlowSDE, gaussian_log_prob  # noqa: E402
from rlsys.policy.pi0 import PI0Velocity  # noqa: E402

IMAGE = 32
PATCH = 8
TOKENS_PER_IMAGE = (IMAGE // PATCH) ** 2
IMAGE_TOKEN = 299


def tiny_pi0() -> PI0Velocity:
    layers, heads, head_dim, width = 2, 2, 16, 32
    gemma = {"hidden_size": width, "num_hidden_layers": layers, "intermediate_size": 64,
             "num_attention_heads": heads, "num_key_value_heads": 1, "head_dim": head_dim}
    cfg = transformers.PI0Config(
        vlm_config={"text_config": {"model_type": "gemma", **gemma, "vocab_size": 300},
                    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": width,
                                      "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "patch_size": PATCH, "image_size": IMAGE, "vision_use_head": False},
                    "projection_dim": width, "image_token_id": IMAGE_TOKEN},
        dit_config=gemma, chunk_size=5, max_state_dim=8, max_action_dim=7, num_inference_steps=4)
    torch.manual_seed(0)
    model = transformers.PI0ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random weights at a scale where every input moves the output
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return PI0Velocity(model)


def inputs(batch: int = 3, cameras: int = 2, prompt: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 250, (batch, prompt), generator=g)
    ids = torch.cat([torch.full((batch, cameras * TOKENS_PER_IMAGE), IMAGE_TOKEN), text], 1)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # a shorter prompt, padded
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.randn(batch, cameras, 3, IMAGE, IMAGE, generator=g),
            "pixel_attention_mask": torch.ones(batch, cameras, dtype=torch.bool),
            "state": torch.randn(batch, 8, generator=g)}


def ode_chain(model: PI0Velocity, prefix, noise: torch.Tensor, steps: int, sampler=None) -> list[torch.Tensor]:
    """rlsys's loop: flow.transition on the grid, the velocity from the wrapper."""
    sampler = sampler or ODE()
    b = noise.shape[0]
    grid = flow.time_grid(steps)
    cmask = torch.ones(b, model.channels, dtype=torch.bool)
    chain = [noise]
    g = torch.Generator().manual_seed(5)
    for k in range(steps):
        kk = torch.full((b,), k)
        v = model.velocity(prefix, chain[-1], grid[kk])
        mean, std = flow.transition(sampler, chain[-1], v, kk, steps, torch.ones(b, dtype=torch.bool), cmask)
        chain.append(mean + std * torch.randn(mean.shape, generator=g))
    return chain


def test_rlsys_ode_loop_equals_the_models_own_sampling():
    model, x = tiny_pi0(), inputs()
    noise = torch.randn(3, model.horizon, model.channels, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = ode_chain(model, model.encode(**x), noise, 4)[-1]
        theirs = model.model.sample_actions(state=x["state"], input_ids=x["input_ids"],
                                            pixel_values=x["pixel_values"], noise=noise.clone(),
                                            attention_mask=x["attention_mask"],
                                            pixel_attention_mask=x["pixel_attention_mask"], num_steps=4)
    assert float((ours - noise).abs().max()) > 1e-2  # the chain moved
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_the_prefix_cache_is_read_never_written():
    model, x = tiny_pi0(), inputs()
    with torch.no_grad():
        prefix = model.encode(**x)
        length = prefix.cache.get_seq_length()
        keys = [layer.keys.clone() for layer in prefix.cache.layers]
        xt = torch.randn(3, model.horizon, model.channels)
        t = torch.full((3,), 0.5)
        first, second = model.velocity(prefix, xt, t), model.velocity(prefix, xt, t)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert prefix.cache.get_seq_length() == length
    assert all(torch.equal(layer.keys, k) for layer, k in zip(prefix.cache.layers, keys))


def test_inputs_move_the_velocity():
    """A random-weight model that ignored its inputs would pass the tests above: it does not."""
    model, x = tiny_pi0(), inputs()
    xt, t = torch.randn(3, model.horizon, model.channels), torch.full((3,), 0.5)
    with torch.no_grad():
        base = model.velocity(model.encode(**x), xt, t)
        for key in ("pixel_values", "state"):
            moved = model.velocity(model.encode(**{**x, key: x[key] + 1.0}), xt, t)
            assert float((moved - base).abs().max()) > 1e-4, key
        assert float((model.velocity(model.encode(**x), xt, t * 0.5) - base).abs().max()) > 1e-4


def test_flow_sde_recompute_on_a_subset_of_rows_gives_ratio_one():
    """The learner recomputes stored transitions row by row (a minibatch of samples, each at its own
    stochastic step): on the prefix indexed by those rows the Gaussian log-prob is the rollout's."""
    model, x = tiny_pi0(), inputs()
    sde = FlowSDE(0.5)
    with torch.no_grad():
        prefix = model.encode(**x)
        chain = ode_chain(model, prefix, torch.randn(3, model.horizon, model.channels), 4, sde)
        k = 2
        grid = flow.time_grid(4)
        cmask = torch.ones(3, model.channels, dtype=torch.bool)
        on = torch.ones(3, dtype=torch.bool)
        kk = torch.full((3,), k)
        mean, std = flow.transition(sde, chain[k], model.velocity(prefix, chain[k], grid[kk]), kk, 4, on, cmask)
        rollout = gaussian_log_prob(chain[k + 1], mean, std).sum((1, 2))
        rows = torch.tensor([2, 0])
        sub = prefix.index(rows)
        mean_r, std_r = flow.transition(sde, chain[k][rows], model.velocity(sub, chain[k][rows], grid[kk[rows]]),
                                        kk[rows], 4, on[rows], cmask[rows])
        recomputed = gaussian_log_prob(chain[k + 1][rows], mean_r, std_r).sum((1, 2))
    torch.testing.assert_close(recomputed, rollout[rows], atol=1e-4, rtol=0)


def test_gradients_reach_the_vision_language_model_and_the_action_expert():
    model, x = tiny_pi0(), inputs()
    model.train()
    prefix = model.encode(**x)
    xt = torch.randn(3, model.horizon, model.channels)
    loss = (model.velocity(prefix, xt, torch.full((3,), 0.3)) ** 2).mean() + prefix.pooled.pow(2).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.model.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("model.vlm."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("model.dit."))
