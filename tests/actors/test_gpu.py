"""The GPU paths: inference and learning on CUDA, and GPU placement on a real local Ray.

Tests marked ``gpu`` run where torch sees a CUDA device (``pytest -m gpu``) and are skipped
elsewhere; the placement checks at the top run on every machine.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from kit import SMALL, read_metrics, small_cfg

from rlsys.actors.env_worker import EnvWorkerCore
from rlsys.actors.inference import InferenceEngine
from rlsys.actors.system import gpu_requests, gpus_fit
from rlsys.checkpoint import load_policy, save_policy
from rlsys.config import ConfigError, load_config
from rlsys.envs.tabletop.env import EMBODIMENT
from rlsys.flow import build_sampler
from rlsys.learner.learner import Learner
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.weights import load_numpy_state, state_to_numpy

CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------- placement (every machine)
def test_gpu_requests_follow_the_placement():
    cfg = load_config("tabletop_ppo", ["placement.mode=disaggregated", "placement.use_gpu=true",
                                       "rollout.num_inference_workers=2", "placement.learner_gpus=0.5",
                                       "placement.inference_gpus=0.25"])
    assert gpu_requests(cfg) == [0.5, 0.25, 0.25]
    assert gpus_fit(gpu_requests(cfg), 1) and not gpus_fit(gpu_requests(cfg), 0)
    assert gpu_requests(dataclasses.replace(cfg, placement=dataclasses.replace(cfg.placement, use_gpu=False))) == []
    collocated = load_config("tabletop_ppo", ["placement.mode=collocated", "placement.use_gpu=true"])
    assert gpu_requests(collocated) == [1.0]
    # whole cards are not shared; fractions pack onto a card while they fit
    assert not gpus_fit([1.0, 1.0], 1) and gpus_fit([1.0, 1.0], 2)
    assert not gpus_fit([1.0, 0.5], 1) and gpus_fit([0.6, 0.4, 0.5, 0.5], 2) and not gpus_fit([0.6, 0.6], 1)
    assert gpus_fit([2.0, 0.5], 3) and not gpus_fit([2.0, 0.5], 2)


@pytest.mark.parametrize("value", ["0", "-1", "1.5"])
def test_gpu_fraction_must_be_a_ray_request(value):
    with pytest.raises(ConfigError, match="learner_gpus"):
        load_config("tabletop_ppo", [f"placement.learner_gpus={value}"])


def test_more_gpus_than_the_machine_has_fails_before_any_actor_or_run_dir(tmp_path):
    """On a Ray it starts itself, ``train`` refuses GPU requests the machine cannot place (Ray would
    leave the actors pending forever): before a run directory, an SFT or any actor exists."""
    from rlsys.train import train

    if ray.is_initialized():
        ray.shutdown()
    have = torch.cuda.device_count()
    cfg = small_cfg(tmp_path / "runs", "placement.use_gpu=true", f"placement.learner_gpus={have + 1}")
    try:
        with pytest.raises(ValueError, match=rf"use_gpu=true asks for GPUs \[{have + 1}.*sees {have} GPU"):
            train(cfg)
    finally:
        ray.shutdown()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.skipif(CUDA, reason="checks a machine without a GPU")
def test_a_gpu_preset_on_a_machine_without_one_is_refused_before_anything_starts(tmp_path):
    """``rlsys train --preset libero_pi0`` (a pretrained folder that exists) where Ray sees no GPU:
    exit 2 with a config error naming placement.use_gpu, no run directory, no SFT, no actor."""
    import subprocess
    import sys

    pytest.importorskip("libero", reason="the libero extra (the preset's env is checked first)")
    folder = tmp_path / "pi0"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "pi0"}')
    (folder / "model.safetensors").write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "rlsys", "train", "--preset", "libero_pi0",
                          "--set", f"policy.pretrained={folder}", "--set", f"run_dir={tmp_path / 'runs'}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "config error: placement.use_gpu=true asks for GPUs" in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(CUDA, reason="checks a GPU node whose torch has no CUDA")
def test_a_gpu_actor_without_cuda_fails_instead_of_running_on_the_cpu(tmp_path):
    """Ray hands the actor a GPU (here a simulated one); torch in it sees none: the run stops with the
    reason instead of training on the CPU unnoticed."""
    from rlsys.train import train

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, num_gpus=1, resources={"sim": 2}, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        cfg0 = small_cfg(tmp_path / "init")
        save_policy(tmp_path / "sft", FlowPolicy(cfg0.policy), cfg0.env, EMBODIMENT, meta={"stage": "test"})
        cfg = small_cfg(tmp_path / "runs", "placement.use_gpu=true", f"init_checkpoint={tmp_path / 'sft'}")
        with pytest.raises(Exception, match="sees no CUDA device.*allow_cpu_fallback"):
            train(cfg)
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- CUDA
def _rollout(cfg, engine):
    core = EnvWorkerCore(cfg, 0)
    try:
        return core.rollout(engine.infer, lambda c: c, engine.values)
    finally:
        core.close()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_inference_matches_the_cpu(tmp_path):
    """The same weights, observations and sampler seed give the same denoising chain on both devices
    (the noise is drawn from one CPU generator, so only the arithmetic differs)."""
    cfg = small_cfg(tmp_path)
    torch.manual_seed(0)
    policy = FlowPolicy(cfg.policy)
    seg = _rollout(cfg, InferenceEngine(cfg, policy))  # real observations
    obs = seg.obs.index(np.arange(min(8, seg.obs.batch_size)))
    cpu = InferenceEngine(cfg, policy, seed=3)
    cuda = InferenceEngine(cfg, copy.deepcopy(policy).cuda(), seed=3, device="cuda")
    a, b = cpu.infer(obs), cuda.infer(obs)
    assert b.chain.dtype == np.float32 and b.chain.shape == a.chain.shape
    np.testing.assert_allclose(b.chain, a.chain, atol=2e-3)
    np.testing.assert_allclose(b.logp_steps, a.logp_steps, rtol=1e-3, atol=2e-2)
    np.testing.assert_allclose(cuda.values(obs), cpu.values(obs), atol=1e-3)
    # weights broadcast as numpy land on the GPU copy
    other = FlowPolicy(cfg.policy)
    cuda.set_weights(state_to_numpy(other), 7)
    assert cuda.version == 7 and next(cuda.policy.parameters()).is_cuda
    assert torch.equal(next(cuda.policy.parameters()).cpu(), next(other.parameters()))


def _randomized(policy: FlowPolicy, seed: int) -> FlowPolicy:
    """Every weight random (a fresh policy's zero-initialised output layers ignore the input)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return policy


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("sampler", ["flow_sde", "flow_noise", "ode"])
def test_cuda_graph_replay_matches_eager_and_follows_weight_updates(tmp_path, sampler):
    from rlsys.policy.cuda_graph import CudaGraphDenoiser

    cfg = small_cfg(tmp_path, f"sampler.name={sampler}", f"policy.noise_head={sampler == 'flow_noise'}")
    seg = _rollout(cfg, InferenceEngine(cfg, FlowPolicy(cfg.policy)))
    policy = _randomized(FlowPolicy(cfg.policy), 0).cuda().eval()
    smp = build_sampler(cfg.sampler)
    graphs = CudaGraphDenoiser(policy, smp, max_batch=8)

    def both(b: int):
        obs = seg.obs.index(np.arange(b) % seg.obs.batch_size)
        return (policy.sample(obs, smp, torch.Generator().manual_seed(b), denoiser=graphs),
                policy.sample(obs, smp, torch.Generator().manual_seed(b)))

    def close(g, e) -> None:
        np.testing.assert_array_equal(g.step_mask, e.step_mask)
        for f in ("chain", "actions", "logp_steps", "value"):
            np.testing.assert_allclose(getattr(g, f), getattr(e, f), rtol=1e-4, atol=1e-4, err_msg=f)

    first = {}
    for b in (1, 3, 8, 12):  # buckets 1, 4 (3 rows + 1 pad), 8; 12 > the largest bucket runs eagerly
        first[b] = both(b)
        close(*first[b])
    assert (graphs.captures, graphs.replays, graphs.eager_calls) == (3, 3, 1)
    assert np.abs(first[3][0].value).max() > 0 and np.ptp(first[3][0].value) > 0  # depends on the input
    # a weight broadcast is an in-place copy: the captured graphs read the new weights
    load_numpy_state(policy, state_to_numpy(_randomized(FlowPolicy(cfg.policy), 1)))
    g, e = both(3)
    close(g, e)
    assert not np.allclose(g.value, first[3][0].value) and graphs.captures == 3
    # re-allocated weights (not in place) are detected and captured again
    policy.value_head[0].weight = torch.nn.Parameter(policy.value_head[0].weight.detach().clone())
    close(*both(3))
    assert graphs.captures == 4


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_policy_that_cannot_be_captured_runs_eagerly_with_a_warning(tmp_path):
    from rlsys.policy.cuda_graph import CudaGraphDenoiser

    cfg = small_cfg(tmp_path)
    seg = _rollout(cfg, InferenceEngine(cfg, FlowPolicy(cfg.policy)))
    policy = _randomized(FlowPolicy(cfg.policy), 0).cuda().eval()
    plain = policy.denoise

    def syncing(inputs, sampler):  # a host sync, as a plug-in backbone might do: not capturable
        if float(inputs["x0"].abs().sum()) < 0:
            raise AssertionError
        return plain(inputs, sampler)

    policy.denoise = syncing
    smp = build_sampler(cfg.sampler)
    graphs = CudaGraphDenoiser(policy, smp, max_batch=8)
    obs = seg.obs.index(np.arange(4) % seg.obs.batch_size)
    with pytest.warns(RuntimeWarning, match="capture of the denoising chain failed"):
        g = policy.sample(obs, smp, torch.Generator().manual_seed(0), denoiser=graphs)
    e = policy.sample(obs, smp, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(g.chain, e.chain, rtol=1e-5, atol=1e-5)
    assert graphs.failed and graphs.captures == 0
    policy.sample(obs, smp, torch.Generator().manual_seed(1), denoiser=graphs)  # stays eager, no new warning
    assert graphs.eager_calls == 2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_inference_engine_uses_cuda_graphs_on_the_gpu_unless_disabled(tmp_path):
    cfg = small_cfg(tmp_path)
    engine = InferenceEngine(cfg, FlowPolicy(cfg.policy).cuda(), device="cuda")
    engine.version = 0
    _rollout(cfg, engine)
    assert engine.denoiser is not None and engine.denoiser.replays > 0
    off = small_cfg(tmp_path, "rollout.cuda_graphs=false")
    assert InferenceEngine(off, FlowPolicy(off.policy).cuda(), device="cuda").denoiser is None
    assert InferenceEngine(cfg, FlowPolicy(cfg.policy)).denoiser is None  # CPU: eager


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("algo", [
    [],  # frozen backbone (prefix cache on the GPU)
    ["optim.train_backbone=true", "optim.backbone_lr=1e-5", "algo.target_kl=0.05"],
    ["algo.name=ppo_rft", "imitation.demos=false", "imitation.steps=2", "imitation.batch=8"],
], ids=["frozen_backbone", "whole_network", "ppo_rft"])
def test_learner_update_on_cuda(tmp_path, algo):
    """Rollout and PPO update on one CUDA policy: the first minibatch's ratio is 1, the weights move
    and stay on the GPU, the optimizer state and checkpoint leave it as CPU tensors."""
    cfg = small_cfg(tmp_path, "algo.critic_warmup_iters=0", "algo.epochs=2", "env.num_envs=4", *algo)
    torch.manual_seed(0)
    policy = FlowPolicy(cfg.policy).cuda()
    engine = InferenceEngine(cfg, policy, device="cuda")
    engine.version = 0
    seg = _rollout(cfg, engine)
    learner = Learner(cfg, policy)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    m = learner.update([seg])
    assert m["first_minibatch_ratio_dev"] <= 1e-4, m["first_minibatch_ratio_dev"]
    assert np.isfinite([m["policy_loss"], m["value_loss"], m["approx_kl"]]).all()
    assert m["gpu_memory_gb"] > 0
    moved = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("value_head.") for k in moved) and any(k.startswith("expert") for k in moved)
    assert all(p.is_cuda for p in policy.parameters())
    tensors, _ = learner.optimizer_state()
    assert tensors and all(isinstance(t, np.ndarray) for t in tensors.values())  # host copies
    save_policy(tmp_path / "ck", policy, cfg.env, EMBODIMENT, meta={"stage": "test"})
    back, *_ = load_policy(tmp_path / "ck", device="cuda")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in policy.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_sft_runs_on_the_gpu(tmp_path):
    from rlsys.sft import run_sft

    cfg = small_cfg(tmp_path, "sft.demos_per_task=2", "sft.steps=20", "sft.batch_size=16", "sft.eval_episodes=1",
                    "sft.device=cuda")
    out = run_sft(cfg, tmp_path / "sft")
    assert np.isfinite(out["final_loss"]) and "eval" in out
    policy, *_ = load_policy(tmp_path / "sft")  # saved as CPU tensors, loads on a CPU machine
    assert not next(policy.parameters()).is_cuda


@pytest.fixture
def ray_gpu():
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(num_cpus=6, num_gpus=1, resources={"sim": 4}, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("mode,extra", [
    ("disaggregated", ["placement.learner_gpus=0.5", "placement.inference_gpus=0.5"]),
    ("collocated", []),
])
def test_train_with_gpu_placement_on_a_local_ray(ray_gpu, tmp_path, mode, extra):
    """``rlsys train`` end to end with the learner and inference on one GPU (a laptop with a card)."""
    from rlsys.train import train

    cfg0 = small_cfg(tmp_path / "init")
    torch.manual_seed(0)
    save_policy(tmp_path / "sft", FlowPolicy(cfg0.policy), cfg0.env, EMBODIMENT, meta={"stage": "test"})
    cfg = load_config("tabletop_ppo", [*SMALL, f"run_dir={tmp_path / 'runs'}", f"placement.mode={mode}",
                                       "placement.use_gpu=true", f"init_checkpoint={tmp_path / 'sft'}", *extra])
    rows = read_metrics(Path(train(cfg)["run_dir"]))
    assert [r["iteration"] for r in rows] == [1, 2]
    assert rows[0]["learner/first_minibatch_ratio_dev"] <= 1e-4
    assert rows[1]["learner/weight_version"] == 1
    assert all(r["learner/gpu_memory_gb"] > 0 and r["infer/gpu_memory_gb"] > 0 for r in rows)
    assert "eval/success_rate" in rows[1]
