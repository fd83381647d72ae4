"""pi0, pi0.5 and a Qwen2.5-VL + DiT policy (tiny random-weight configs) through the real Ray
pipeline: rollout actors, an inference worker apart from the learner, stored denoising chains,
recompute, update and the weight broadcast, which carries only what trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray

pytest.importorskip("transformers", reason="the vla extra: pip install -e '.[vla]'")

from kit import read_metrics, small_cfg

from rlsys.checkpoint import load_policy, save_policy
from rlsys.weights import state_to_numpy

VLA = {"pi0": ["policy.model=pi0", "policy.model_config=pi0_tiny", "policy.vocab_size=256"],
       "pi05": ["policy.model=pi05", "policy.model_config=pi05_tiny", "policy.vocab_size=256"],
       "vlm_dit": ["policy.model=vlm_dit", "policy.model_config=qwen2_5_vl_tiny", "policy.vlm_image_size=56",
                   "policy.vocab_size=256"]}
# LoRA on the language model, the vision tower frozen: the adapters and the expert train
LORA = ["policy.lora_rank=4", "policy.freeze=[vision]", "optim.train_backbone=true"]


def vla_ckpt(tmp_path: Path, model: str) -> str:
    import torch

    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.policy.flow_policy import FlowPolicy

    cfg = small_cfg(tmp_path, *VLA[model])
    torch.manual_seed(0)
    path = tmp_path / f"{model}_init"
    save_policy(path, FlowPolicy(cfg.policy), cfg.env, EMBODIMENT, meta={"stage": "test"})
    return str(path)


@pytest.mark.parametrize("model,lora", [("pi0", False), ("pi05", False), ("pi0", True), ("vlm_dit", False)])
def test_short_ppo_run_of_a_transformers_policy_on_ray(ray_local, tmp_path, model, lora):
    """Two PPO iterations, disaggregated: the first minibatch's ratio is 1 in both, so the inference
    worker sampled with exactly the learner's weights -- the full state at the start, then the
    trained-only broadcast (with LoRA: the adapters, from a checkpoint written without them). Each
    chunk runs 2 of its 5 actions (policy.execute_steps)."""
    from rlsys.train import train

    cfg = small_cfg(tmp_path, *VLA[model], "placement.mode=disaggregated", "policy.execute_steps=2",
                    f"init_checkpoint={vla_ckpt(tmp_path, model)}", *(LORA if lora else []))
    out = train(cfg)
    run_dir = Path(out["run_dir"])
    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert [r["learner/weight_version"] for r in rows] == [0, 1]
    assert all(r["learner/first_minibatch_ratio_dev"] <= 1e-4 for r in rows), rows
    assert rows[0]["rollout/env_steps"] == 2 * 2 * 3 * 2  # workers x envs x chunks x executed actions
    pol, *_ = load_policy(run_dir / "checkpoint")
    assert pol.cfg.model == model and (run_dir / "checkpoint" / "model_config.json").is_file()
    if lora:  # the checkpoint holds what trains; the frozen weights stay in the init checkpoint it names
        from safetensors.numpy import load_file

        from rlsys.checkpoint import BASE

        stored = set(load_file(str(run_dir / "checkpoint" / "model.safetensors")))
        link = json.loads((run_dir / "checkpoint" / BASE).read_text())
        assert link["path"] == str(Path(cfg.init_checkpoint).resolve())
        assert any(".lora_" in k for k in stored) and not any("base_layer" in k or ".vision" in k for k in stored)
        init, *_ = load_policy(cfg.init_checkpoint, expect=cfg.policy)
        frozen = {k: v for k, v in state_to_numpy(init).items() if "base_layer" in k}
        got = state_to_numpy(pol)
        assert frozen and all(np.array_equal(got[k], v) for k, v in frozen.items())
    assert (run_dir / "eval" / "iter_000002" / "eval.json").exists() and (run_dir / "report.png").exists()


def test_the_broadcast_carries_what_trains(ray_local, tmp_path):
    """optim.train_backbone=false: the vision-language model is in the object store once (the rest),
    never in a version's broadcast; with it trained, it travels every version; with LoRA, only its
    adapters do."""
    from rlsys.actors.system import RaySystem

    sizes = {}
    for case, extra in (("frozen", ["optim.train_backbone=false"]), ("trained", ["optim.train_backbone=true"]),
                        ("lora", LORA)):
        cfg = small_cfg(tmp_path, *VLA["pi0"], "placement.mode=disaggregated", "algo.name=ppo", *extra)
        policy, *_ = load_policy(vla_ckpt(tmp_path, "pi0"), expect=cfg.policy)
        system = RaySystem(cfg, state_to_numpy(policy), episodic=False)
        try:
            version, (trained_ref, rest_ref) = ray.get(system.learner.publish.remote())
            trained, rest = ray.get(trained_ref), ray.get(rest_ref)
            assert set(trained) | set(rest) == set(policy.state_dict()) and not set(trained) & set(rest)
            vlm = [k for k in trained if k.startswith("model.net.model.vlm.")]
            assert bool(vlm) == (case != "frozen")
            if case == "lora":  # the adapters only: no adapted layer's own weight, nothing of the vision tower
                assert vlm and all(".lora_" in k for k in vlm) and not any("vision_tower" in k for k in trained)
            assert any(k.startswith("model.net.model.dit.") for k in trained) and "action_mean" in rest
            sizes[case] = sum(v.nbytes for v in trained.values())
            system.update(system.collect())
            assert ray.get(system.learner.publish.remote())[1][1] == rest_ref  # the rest is put once
        finally:
            system.shutdown()
    assert sizes["frozen"] < sizes["lora"] < 0.6 * sizes["trained"]


def test_an_inference_engine_takes_a_trained_only_state(tmp_path):
    """The partial load an inference worker does after the first broadcast: trained entries replace
    its own, the rest stays; an entry the policy lacks is refused."""
    import torch

    from rlsys.actors.inference import InferenceEngine
    from rlsys.policy.flow_policy import FlowPolicy

    cfg = small_cfg(tmp_path, *VLA["pi0"])
    torch.manual_seed(0)
    engine, other = InferenceEngine(cfg, FlowPolicy(cfg.policy)), FlowPolicy(cfg.policy)
    trained = {k: v for k, v in state_to_numpy(other).items() if k.startswith("model.net.action_out_proj")}
    before = state_to_numpy(engine.policy)
    engine.set_weights(trained, 3, partial=True)
    after = state_to_numpy(engine.policy)
    assert engine.version == 3 and all(np.array_equal(after[k], trained[k]) for k in trained)
    assert all(np.array_equal(after[k], before[k]) for k in before if k not in trained)
    with pytest.raises(KeyError, match="entries the policy does not have"):
        engine.set_weights({"nope.weight": np.zeros(1, np.float32)}, 4, partial=True)
