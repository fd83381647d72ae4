"""vlm_dit: transformers image-text models (PaliGemma, Qwen2.5-VL, Qwen3-VL, Qwen3.5, SmolVLM; tiny) as
the backbone of rlsys's DiT expert: the images reach the model as its own processor lays them out,
recompute at rollout weights gives ratio 1, every input moves the velocity, gradients reach the
backbone and the expert and not frozen parts, a pretrained backbone folder loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the vla extra: pip install -e '.[vla]'")

from model_checks import check_inputs_move_the_velocity, check_recompute_gives_ratio_one  # noqa: E402

from rlsys.config import ConfigError, PolicyConfig  # noqa: E402
from rlsys.flow import FlowNoise, FlowSDE  # noqa: E402
from rlsys.policy.flow_policy import FlowPolicy  # noqa: E402
from rlsys.types import Observation  # noqa: E402

FAMILIES = {"paligemma": ("paligemma_tiny", 0), "qwen2_5_vl": ("qwen2_5_vl_tiny", 56),
            "qwen3_vl": ("qwen3_vl_tiny", 64), "qwen3_5": ("qwen3_5_tiny", 64), "smolvlm": ("smolvlm_tiny", 0)}


def policy(family: str, **kw) -> FlowPolicy:
    name, size = FAMILIES[family]
    torch.manual_seed(0)
    pol = FlowPolicy(PolicyConfig(model="vlm_dit", model_config=name, vlm_image_size=size, vocab_size=256, width=64,
                                  heads=2, expert_layers=2, **kw))
    with torch.no_grad():  # weights at a scale where every input moves the output (adaLN-Zero starts at 0)
        for p in pol.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return pol.eval()


def observation(batch: int = 3, size: int = 64) -> Observation:
    rng = np.random.default_rng(1)
    mask = np.zeros((batch, 48), bool)
    mask[:, :10] = True
    return Observation(images=rng.integers(0, 256, (batch, 2, size, size, 3), dtype=np.uint8),
                       proprio=rng.uniform(-1, 1, (batch, 8)).astype(np.float32),
                       tokens=np.where(mask, rng.integers(1, 250, (batch, 48)), 0).astype(np.int64),
                       token_mask=mask, action_dim=np.full(batch, 7, np.int64))


@pytest.mark.parametrize("family,size,patch,scale", [("qwen2_5_vl", 56, 14, None), ("qwen3_vl", 64, 16, 0.5)])
def test_qwen_images_are_laid_out_as_its_own_processor_does(family, size, patch, scale):
    """Patches, their order (2 x 2 merged groups) and normalisation (Qwen2.5-VL: CLIP's; Qwen3-VL:
    [-1, 1]) equal transformers' PIL image processor's for the family, and the grid is the same."""
    pol = policy(family)
    img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    norm = {"image_mean": [scale] * 3, "image_std": [scale] * 3} if scale else {}
    proc = transformers.Qwen2VLImageProcessorPil(min_pixels=size * size, max_pixels=size * size, patch_size=patch,
                                                 **norm)
    want = proc(images=[img], return_tensors="np")
    ours = pol.model.images.inputs(torch.from_numpy(img)[None, None].float() / 255.0,
                                   torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    np.testing.assert_allclose(ours["pixel_values"].numpy(), want["pixel_values"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ours["image_grid_thw"].numpy(), want["image_grid_thw"])
    assert int((ours["input_ids"] == pol.model.images.ids["image"]).sum()) == (size // patch) ** 2 // 4


def test_paligemma_images_are_scaled_as_its_own_processor_does():
    pol = policy("paligemma")
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    want = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})(images=[img], return_tensors="np")
    ours = pol.model.images.inputs(torch.from_numpy(img)[None, None].float() / 255.0,
                                   torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    np.testing.assert_allclose(ours["pixel_values"].numpy(), want["pixel_values"], atol=1e-5, rtol=0)


def test_smolvlm_images_are_scaled_as_its_own_processor_does():
    pol = policy("smolvlm")
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    proc = transformers.SmolVLMImageProcessorPil(do_image_splitting=False, do_resize=False, size={"longest_edge": 32},
                                                 max_image_size={"longest_edge": 32})
    want = proc(images=[[img]], return_tensors="np")
    ours = pol.model.images.inputs(torch.from_numpy(img)[None, None].float() / 255.0,
                                   torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    np.testing.assert_allclose(ours["pixel_values"].numpy(), want["pixel_values"], atol=1e-5, rtol=0)
    assert int((ours["input_ids"] == 299).sum()) == (32 // 8) ** 2 // 2**2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sampler", [FlowSDE(0.5), FlowNoise()], ids=["flow_sde", "flow_noise"])
def test_recompute_at_rollout_weights_gives_ratio_one(family, sampler):
    check_recompute_gives_ratio_one(policy(family, noise_head=True), observation(batch=5), sampler)


@pytest.mark.parametrize("family", FAMILIES)
def test_images_prompt_state_and_time_move_the_velocity(family):
    check_inputs_move_the_velocity(policy(family), observation())


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_the_backbone_and_the_expert_and_not_frozen_parts(family):
    for freeze in ((), ("vision", "language")):
        pol, obs = policy(family, freeze=freeze), observation()
        pol.train()
        pol.sft_loss(obs, np.random.default_rng(0).normal(size=(3, 5, 7)), np.ones((3, 5), bool)).backward()
        for name, params in pol.model.parts().items():
            moved = any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
            assert moved == (name not in freeze), (family, freeze, name)


def test_a_pretrained_backbone_folder_loads(tmp_path):
    """policy.pretrained for vlm_dit: the VLM's own folder (config.json + safetensors); the expert
    starts fresh."""
    src = policy("qwen2_5_vl").model.vlm
    src.save_pretrained(tmp_path)
    pol = FlowPolicy(PolicyConfig(model="vlm_dit", pretrained=str(tmp_path), vlm_image_size=56, vocab_size=256,
                                  width=64, heads=2))
    report = pol.model.load_pretrained(tmp_path)
    assert report["missing"] == [] and report["unexpected"] == []
    for k, v in src.state_dict().items():
        torch.testing.assert_close(pol.model.vlm.state_dict()[k], v, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="is a 'qwen2_5_vl' model; policy.model 'pi0' takes pi0"):
        PolicyConfig(model="pi0", pretrained=str(tmp_path))
    with pytest.raises(ConfigError, match="policy.vocab_size: got 1024.*below its image token id 296"):
        PolicyConfig(model="vlm_dit", pretrained=str(tmp_path))
