"""pi0 and pi0.5 (transformers' models, tiny random-weight configs, CPU) as rlsys policy models:
rlsys's ODE loop equals the model's own sampling with the same noise, the prefix cache is never
written, recompute at rollout weights gives ratio 1 (Flow-SDE and Flow-Noise), gradients reach the
vision-language model and the action expert and not frozen parts, LeRobot / openpi key names load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the vla extra: pip install -e '.[vla]'")

from model_checks import check_inputs_move_the_velocity, check_recompute_gives_ratio_one  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from rlsys import flow  # noqa: E402
from rlsys.config import ConfigError, PolicyConfig  # noqa: E402
from rlsys.flow import ODE, FlowNoise, FlowSDE  # noqa: E402
from rlsys.policy.flow_policy import FlowPolicy  # noqa: E402
from rlsys.policy.spec import CONFIG_DIR  # noqa: E402
from rlsys.types import Observation  # noqa: E402

MODELS = ("pi0", "pi05")


def tiny_policy(model: str, **kw) -> FlowPolicy:
    torch.manual_seed(0)
    pol = FlowPolicy(PolicyConfig(model=model, model_config=f"{model}_tiny", vocab_size=256, **kw))
    with torch.no_grad():  # random weights at a scale where every input moves the output (pi0.5's
        for p in pol.model.parameters():  # adaptive norms start at zero: it would ignore its inputs)
            p.add_(torch.randn_like(p) * 0.05)
    return pol.eval()


def observation(batch: int = 3, seed: int = 1) -> Observation:
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, 48), bool)
    mask[:, :8] = True
    mask[0, 6:] = False  # a shorter prompt, padded
    return Observation(images=rng.integers(0, 256, (batch, 2, 64, 64, 3), dtype=np.uint8),
                       proprio=rng.uniform(-1, 1, (batch, 8)).astype(np.float32),
                       tokens=np.where(mask, rng.integers(1, 250, (batch, 48)), 0).astype(np.int64),
                       token_mask=mask, action_dim=np.full(batch, 7, np.int64))


@pytest.mark.parametrize("model", MODELS)
def test_rlsys_ode_loop_equals_the_models_own_sampling(model):
    pol, obs = tiny_policy(model), observation()
    inputs = pol.denoise_inputs(obs, ODE(), torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = pol.denoise(inputs, ODE())["chain"][:, -1]
        m = pol.model
        ids, mask = m.prompt(inputs["tokens"], inputs["token_mask"], inputs["proprio"])
        b = ids.shape[0]
        ids = torch.cat([torch.full((b, 2 * m.tokens_per_image), m.image_token), ids], 1)
        mask = torch.cat([torch.ones(b, 2 * m.tokens_per_image, dtype=torch.long), mask.long()], 1)
        extra = {"state": m.state_input(inputs["proprio"])} if model == "pi0" else {}
        theirs = m.net.sample_actions(input_ids=ids, pixel_values=m.pixels(inputs["images"]),
                                      noise=inputs["x0"].clone(), attention_mask=mask,
                                      pixel_attention_mask=torch.ones(b, 2, dtype=torch.bool),
                                      num_steps=pol.cfg.denoise_steps, **extra)
    assert float((ours - inputs["x0"]).abs().max()) > 1e-2  # the chain moved
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model", MODELS)
def test_the_prefix_cache_is_read_never_written(model):
    pol, obs = tiny_policy(model), observation()
    with torch.no_grad():
        ctx = pol.encode(pol._tensors(obs))
        length = ctx.cache.get_seq_length()
        keys = [layer.keys.clone() for layer in ctx.cache.layers]
        xt, t = torch.randn(3, 5, 7), torch.full((3,), 0.5)
        first, second = pol.model.velocity(ctx, xt, t)[0], pol.model.velocity(ctx, xt, t)[0]
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert ctx.cache.get_seq_length() == length
    assert all(torch.equal(layer.keys, k) for layer, k in zip(ctx.cache.layers, keys))


@pytest.mark.parametrize("model", MODELS)
def test_images_state_prompt_and_time_move_the_velocity(model):
    check_inputs_move_the_velocity(tiny_policy(model), observation())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("sampler", [FlowSDE(0.5), FlowNoise()], ids=["flow_sde", "flow_noise"])
def test_recompute_at_rollout_weights_gives_ratio_one(model, sampler):
    check_recompute_gives_ratio_one(tiny_policy(model, noise_head=True), observation(batch=5), sampler)


@pytest.mark.parametrize("model", MODELS)
def test_gradients_reach_the_vlm_and_the_expert_and_not_frozen_parts(model):
    for freeze in ((), ("vision",)):
        pol, obs = tiny_policy(model, freeze=freeze), observation()
        pol.train()
        loss = pol.sft_loss(obs, np.random.default_rng(0).normal(size=(3, 5, 7)), np.ones((3, 5), bool))
        loss.backward()
        parts = pol.model.parts()
        for name in ("vision", "language", "expert"):
            grads = [p.grad for p in parts[name] if p.grad is not None and p.grad.abs().sum() > 0]
            assert bool(grads) == (name not in freeze), (freeze, name)


@pytest.mark.parametrize("model", MODELS)
def test_flow_policy_frames_reach_the_vision_tower_at_its_size(model):
    pol = tiny_policy(model)
    px = pol.model.pixels(torch.rand(3, 2, 64, 64, 3))
    assert px.shape == (3, 2, 3, 32, 32) and -1.0 <= float(px.min()) and float(px.max()) <= 1.0


def lerobot_name(key: str) -> str:
    """transformers' pi0 key -> the LeRobot / openpi-PyTorch checkpoint's name for it."""
    for ours, theirs in (("model.vlm.", "model.paligemma_with_expert.paligemma.model."),
                         ("model.dit.", "model.paligemma_with_expert.gemma_expert.model."),
                         ("embed_action_time.", "model."), ("action_out_proj", "model.action_out_proj")):
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise AssertionError(key)


def test_a_lerobot_named_pi0_checkpoint_loads(tmp_path):
    """A folder as LeRobot / openpi-PyTorch write pi0 (``paligemma_with_expert.*`` names, config.json,
    model.safetensors) loads into rlsys's pi0 with every weight in place."""
    src = tiny_policy("pi0").model.net
    state = {lerobot_name(k): v.clone().contiguous() for k, v in src.state_dict().items()
             if "embed_tokens" not in k or "vlm" in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((CONFIG_DIR / "pi0_tiny.json").read_text())
    pol = FlowPolicy(PolicyConfig(model="pi0", pretrained=str(tmp_path), vocab_size=256))
    report = pol.model.load_pretrained(tmp_path)
    assert report["unexpected"] == []
    assert all(k.endswith("dit.embed_tokens.weight") for k in report["missing"])  # unused by the expert
    for k, v in src.state_dict().items():
        if "dit.embed_tokens" not in k:
            torch.testing.assert_close(pol.model.net.state_dict()[k], v, atol=0, rtol=0)


def test_bad_model_settings_fail_when_the_config_is_built(tmp_path):
    cases = [({"model": "pi1"}, "model: got 'pi1'; allowed: one of pi0, pi05, tiny"),
             ({"model": "pi0"}, "needs its weights"),
             ({"model": "pi0", "model_config": "pi0_huge"}, "policy.model_config: got 'pi0_huge'"),
             ({"model": "pi0", "model_config": "pi05_tiny", "vocab_size": 256}, "is a 'pi05' model"),
             ({"model": "pi0", "pretrained": str(tmp_path / "nope")}, "is not a folder"),
             ({"model": "pi0", "pretrained": str(tmp_path)}, "has no config.json and no *.safetensors"),
             ({"model": "pi0", "model_config": "pi0_tiny", "vocab_size": 256, "action_horizon": 4},
              "policy.action_horizon: got 4; the pi0 model predicts chunks of 5"),
             ({"model": "pi0", "model_config": "pi0_tiny", "vocab_size": 256, "action_channels": 6},
              "policy.action_channels: got 6"),
             ({"model": "pi0", "model_config": "pi0_tiny"}, "policy.vocab_size: got 1024"),
             ({"freeze": ("vision", "eyes")}, "freeze: got"),
             ({"execute_steps": 9}, "execute_steps: got 9")]
    for kw, msg in cases:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace("*", r"\*")):
            PolicyConfig(**kw)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_type": "pi0", "chunk_size": 5, "max_action_dim": 3}))
    with pytest.raises(ConfigError, match="policy.action_channels: got 7; the pi0 model has 3"):
        PolicyConfig(model="pi0", model_config=str(bad), vocab_size=256)


def test_flow_time_grid_matches_the_models_euler_steps():
    """pi0's own loop steps t = 1, 1 - 1/S, ...: rlsys's grid is the same."""
    torch.testing.assert_close(flow.time_grid(4)[:4], torch.tensor([1.0, 0.75, 0.5, 0.25]))


def pretrained_folder(path, model: str = "pi0"):
    """A local pretrained folder as users bring one: transformers' config.json, model.safetensors, a
    tokenizer.json (a word-level tokenizer built here, offline) and openpi's norm_stats.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path.mkdir()
    net = tiny_policy(model).model.net
    save_file({k: v.clone().contiguous() for k, v in net.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text((CONFIG_DIR / f"{model}_tiny.json").read_text())
    words = ["[UNK]", "Task", ":", "lift", "the", "cube", ",", "State", ";", "Action", *map(str, range(256))]
    tok = Tokenizer(models.WordLevel({w: i + 1 for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    stats = {"mean": [0.1] * 8, "std": [2.0] * 8, "q01": [-3.0] * 8, "q99": [1.0] * 8}
    (path / "norm_stats.json").write_text(json.dumps({"norm_stats": {"state": stats, "actions": {
        **stats, "mean": [0.1] * 7, "std": [2.0] * 7, "q01": [-3.0] * 7, "q99": [1.0] * 7}}}))
    return net


@pytest.mark.parametrize("model", MODELS)
def test_rlsys_import_writes_a_checkpoint_that_loads_without_the_folder(tmp_path, model, capsys):
    """``rlsys import``: the folder's weights, tokenizer and statistics (pi0.5: its quantiles) into a
    self-contained rlsys checkpoint that loads, tokenizes and samples after the folder is gone."""
    import shutil

    from rlsys.checkpoint import load_policy
    from rlsys.cli import main

    src = pretrained_folder(tmp_path / "pretrained", model)
    main(["import", "--preset", "tabletop_pi0_tiny", "--set", f"policy.model={model}", "--set", "policy.model_config=",
          "--set", f"policy.pretrained={tmp_path / 'pretrained'}", "--out", str(tmp_path / "ck")])
    out = capsys.readouterr().out
    assert "0 unexpected" in out and "norm_stats.json" in out
    shutil.rmtree(tmp_path / "pretrained")
    pol, env_cfg, emb, meta = load_policy(tmp_path / "ck")
    assert meta["stage"] == "import" and pol.cfg.tokenizer.endswith("ck/tokenizer.json")
    for k, v in src.state_dict().items():
        if "dit.embed_tokens" not in k:
            torch.testing.assert_close(pol.model.net.state_dict()[k], v, atol=0, rtol=0)
    want_std = 2.0  # pi0: std; pi0.5: (q99 - q01) / 2, 2 as well
    want_mean = 0.1 if model == "pi0" else -1.0  # pi0.5: the quantiles' midpoint
    torch.testing.assert_close(pol.action_mean, torch.full((7,), want_mean))
    torch.testing.assert_close(pol.proprio_std, torch.full((8,), want_std))
    from rlsys.prompt import ObservationBuilder

    builder = ObservationBuilder(pol.cfg, emb)
    o = builder(np.zeros((2, 2, 64, 64, 3), np.uint8), np.zeros((2, 8), np.float32), ["lift the cube"] * 2)
    prompt = [4, 5, 6] if model == "pi0" else [2, 3, 4, 5, 6]  # "lift the cube" / "Task: lift the cube"
    assert o.tokens[0, : len(prompt) + 1].tolist() == [*prompt, 0] and o.token_mask[0].sum() == len(prompt)
    assert pol.sample(o, FlowSDE(0.5)).actions.shape == (2, 5, 7)


@pytest.mark.parametrize("model", MODELS)
def test_lora_adapters_train_alone_in_their_layers_and_start_from_the_base(tmp_path, model):
    """policy.lora_rank: in the adapted part (the language model) only the adapters get gradients,
    the other parts do as before; a checkpoint written without adapters loads into the adapted policy and samples
    exactly what it sampled."""
    from rlsys.checkpoint import load_policy
    from rlsys.envs.tabletop.env import EMBODIMENT

    base = tiny_policy(model)
    from rlsys.checkpoint import save_policy
    from rlsys.config import EnvConfig

    save_policy(tmp_path / "ck", base, EnvConfig(), EMBODIMENT)
    want = PolicyConfig(model=model, model_config=f"{model}_tiny", vocab_size=256, lora_rank=4,
                        lora_targets=("q_proj", "v_proj"))
    pol = load_policy(tmp_path / "ck", expect=want)[0].eval()
    names = dict(pol.named_parameters())
    lora = [n for n in names if ".lora_" in n]
    assert lora and all(n.startswith("model.net.model.vlm.language_model.") for n in lora)
    obs = observation()
    a = base.sample(obs, ODE(), torch.Generator().manual_seed(0)).actions
    b = pol.sample(obs, ODE(), torch.Generator().manual_seed(0)).actions
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    pol.train()
    pol.sft_loss(obs, np.random.default_rng(0).normal(size=(3, 5, 7)), np.ones((3, 5), bool)).backward()
    grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in names.items()}
    assert any(grads[n] for n in lora if ".lora_B." in n)  # (A's gradient is zero while B is)
    assert not any(grads[n] for n in names if ".base_layer." in n or ("language_model" in n and ".lora_" not in n))
    assert any(grads[n] for n in names if n.startswith("model.net.model.dit."))
    assert pol.lora_frozen and all(not p.requires_grad for p in pol.parameters() if id(p) in pol.lora_frozen)
    with pytest.raises(ConfigError, match="policy.lora_targets: got \\['qkv'\\]"):
        PolicyConfig(model=model, model_config=f"{model}_tiny", vocab_size=256, lora_rank=4, lora_targets=("qkv",))
    with pytest.raises(ConfigError, match="lora_rank: LoRA adapts pi0, pi05"):
        PolicyConfig(lora_rank=4)


@pytest.mark.slow
def test_a_real_size_pi0_samples_a_chunk_on_the_cpu():
    """pi0's real architecture (PaliGemma 3B + the 300M Gemma expert, random weights: ~14 GB in fp32)
    samples one 50-action chunk through rlsys's loop from two 224 px cameras."""
    import time

    torch.manual_seed(0)
    cfg = PolicyConfig(model="pi0", model_config="pi0_base", action_horizon=50, action_channels=32,
                       image_size=224, denoise_steps=10)
    pol = FlowPolicy(cfg).eval()
    assert sum(p.numel() for p in pol.model.parameters()) > 3.4e9
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 48), bool)
    mask[:, :10] = True
    obs = Observation(images=rng.integers(0, 256, (1, 2, 224, 224, 3), dtype=np.uint8),
                      proprio=np.zeros((1, 8), np.float32), tokens=np.where(mask, 5, 0).astype(np.int64),
                      token_mask=mask, action_dim=np.full(1, 7, np.int64))
    t0 = time.perf_counter()
    ch = pol.sample(obs, FlowSDE(0.5), torch.Generator().manual_seed(0))
    print(f"real-size pi0: one chunk in {time.perf_counter() - t0:.1f} s on {torch.get_num_threads()} threads")
    assert ch.actions.shape == (1, 50, 32) and np.isfinite(ch.chain).all() and not ch.actions[:, :, 7:].any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", MODELS)
def test_bf16_rollout_and_update_on_cuda(model):
    """policy.bf16 on CUDA: the network runs in bf16, the chain and log-probs are fp32; recompute at
    rollout weights agrees to bf16 precision, an update step moves LoRA adapters and the expert, and
    the peak memory is reported."""
    pol = tiny_policy(model, bf16=True, lora_rank=4, noise_head=True).cuda()
    obs = observation(batch=8)
    torch.cuda.reset_peak_memory_stats()
    for sampler in (FlowSDE(0.5), FlowNoise()):
        ch = pol.sample(obs, sampler, torch.Generator().manual_seed(0))
        assert ch.chain.dtype == np.float32 and ch.logp_steps.dtype == np.float32
        r = pol.log_prob_and_value(obs, ch.chain, ch.step_mask, np.ones((8, 5), bool), sampler, "token_level")
        assert r.logp.dtype == torch.float32
        steps = torch.from_numpy(ch.step_mask)
        rollout = flow.reduce_log_prob(torch.from_numpy(ch.logp_steps), torch.ones(8, 5, dtype=torch.bool),
                                       torch.from_numpy(obs.action_dim), sampler.num_stochastic(steps), "token_level")
        torch.testing.assert_close(r.logp.cpu(), rollout, atol=2e-2, rtol=0)
    pol.train()
    opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in pol.named_parameters() if ".lora_B." in n or "action_out" in n}
    pol.sft_loss(obs, np.random.default_rng(0).normal(size=(8, 5, 7)), np.ones((8, 5), bool)).backward()
    opt.step()
    assert all(not torch.equal(p, before[n]) for n, p in pol.named_parameters() if n in before)
    print(f"{model} tiny, bf16, batch 8: peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
