"""Config schema: one frozen dataclass per component, defaults here, checks at construction.

Presets live in ``rlsys/presets/*.yaml`` (partial trees merged over these defaults); the CLI
applies dotted overrides (``--set optim.actor_lr=3e-4``) on top. See ``load_config``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from rlsys.configtools import ConfigError, check, from_dict, merge, parse_override, suggest, to_dict
from rlsys.policy.spec import PARTS, check_model
from rlsys.registry import ALGORITHMS, MODELS, SAMPLERS, preflight_env

__all__ = [
    "ConfigError", "RenderConfig", "EnvConfig", "PolicyConfig", "SamplerConfig", "SFTConfig",
    "AlgoConfig", "OptimConfig", "PPOConfig", "GRPOConfig", "ImitationConfig", "RolloutConfig",
    "PlacementConfig", "TrainConfig", "load_config", "list_presets", "preset_description",
    "to_dict",
]


@dataclass(frozen=True)
class RenderConfig:
    """Offscreen render quality. The cheap defaults matter on CPU (shadows cost ~20x)."""

    shadows: bool = False
    multisample: bool = False
    reflections: bool = False


# False while a config read back from a checkpoint is built (see ``stored_config``).
_HOST_CHECKS: ContextVar[bool] = ContextVar("rlsys_host_checks", default=True)


@contextlib.contextmanager
def stored_config() -> Iterator[None]:
    """Build configs stored with a checkpoint without the checks about *this* machine: the env's
    interpreter path, the simulator's install, assets and Vulkan device. A policy trained elsewhere
    then loads where its simulator is absent (``rlsys serve``, an RL start on another cluster);
    running that env re-checks it, since ``dataclasses.replace`` re-runs ``__post_init__``."""
    token = _HOST_CHECKS.set(False)
    try:
        yield
    finally:
        _HOST_CHECKS.reset(token)


@dataclass(frozen=True)
class EnvConfig:
    name: str = "tabletop"
    tasks: tuple[str, ...] = ()  # empty: every task of the suite
    cameras: tuple[str, ...] = ("agentview", "wrist")
    image_size: int = 64
    num_envs: int = 8  # per env worker
    max_episode_steps: int = 0  # 0: the env's own limit
    subprocess: bool = False  # one simulator per subprocess
    step_timeout_s: float = 60.0  # subprocess envs: a step slower than this is a hang -> restart
    # subprocess envs: replace a simulator process after this many episodes (0: never), at an episode
    # boundary, reset to the same seed: bounds what a simulator that leaks memory can grow to
    recycle_every: int = 0
    render: RenderConfig = field(default_factory=RenderConfig)
    python: str = ""  # subprocess envs: interpreter of the simulator's own venv (RoboTwin); "" = this one
    # Fixed-init-state suites (LIBERO, SimplerEnv): the init-state ids training resets (demos, RL
    # rollouts) draw from; () = all. Evaluation picks its own (eval_init_states / eval_init_state_offset).
    init_states: tuple[int, ...] = ()
    # "sparse": 1 on success (every benchmark's reward). "shaped" (tabletop lift): plus the change of a
    # progress potential (reach, hold, raise) each step; success and evaluation are unchanged.
    reward: Literal["sparse", "shaped"] = "sparse"
    # "grid": training resets use the suite's fixed init states. "random" (SimplerEnv): a training reset
    # (no explicit init state) places the objects anywhere on the grid's area, seeded by the reset seed,
    # so demos and RL rollouts never repeat an evaluation episode; evaluation keeps the official grid.
    placement: Literal["grid", "random"] = "grid"

    def __post_init__(self) -> None:
        check(16 <= self.image_size <= 512, "image_size", "16..512 pixels", self.image_size)
        check(self.num_envs >= 1, "num_envs", ">= 1", self.num_envs)
        check(self.max_episode_steps >= 0, "max_episode_steps", ">= 0 (0 = env default)", self.max_episode_steps)
        check(len(self.cameras) >= 1, "cameras", "at least one camera name", self.cameras)
        check(self.step_timeout_s > 0, "step_timeout_s", "> 0", self.step_timeout_s)
        check(self.recycle_every >= 0, "recycle_every", ">= 0 (episodes; 0: never)", self.recycle_every)
        check(not self.recycle_every or self.subprocess, "recycle_every",
              "0 unless env.subprocess=true (only a simulator in its own process can be replaced)", self.recycle_every)
        check(not self.python or self.subprocess, "subprocess", "true when env.python is set (the simulator "
              "runs in that interpreter, one process per env)", self.subprocess)
        check(all(j >= 0 for j in self.init_states), "init_states", "init-state ids >= 0", self.init_states)
        host = _HOST_CHECKS.get()  # False for a config read back from a checkpoint
        if host and self.python:
            check(os.access(self.python, os.X_OK), "python",
                  "an executable interpreter (RoboTwin: scripts/setup_robotwin.sh VENV -> VENV/bin/python)",
                  self.python)

        preflight_env(self, host=host)  # simulator checks (assets, runtime), before any actor starts


@dataclass(frozen=True)
class PolicyConfig:
    # The network (rlsys.registry.MODELS): "tiny" (rlsys's own, sized by width ... max_tokens below),
    # "pi0" / "pi05" (transformers' PI0 / PI05, sized by their own config: see rlsys.policy.spec),
    # "vlm_dit" (a transformers image-text model + rlsys's DiT expert sized by width / heads / expert_layers)
    model: str = "tiny"
    pretrained: str = ""  # pi0 / pi05: a local folder (config.json, *.safetensors, tokenizer.json)
    model_config: str = ""  # pi0 / pi05 with random weights: a built-in name or a config .json
    tokenizer: str = ""  # pi0 / pi05: a tokenizer.json ("": the pretrained folder's, else hashed words)
    vlm_layer: int = -1  # vlm_dit: the hidden-state layer the expert reads (-1: the last)
    vlm_image_size: int = 0  # vlm_dit: pixels per camera side for the VLM (0: the family's default)
    freeze: tuple[str, ...] = ()  # parts that never train: vision, language, expert
    # actions of each chunk the env executes before the next chunk is sampled (0: all action_horizon);
    # the rest are masked out of the log-probs, never cut from the model
    execute_steps: int = 0
    # on CUDA, run the network under bf16 autocast; chains, means, stds, log-probs and values stay fp32
    bf16: bool = False
    # LoRA adapters (peft; pi0 / pi05): rank (0: off) on the linear layers named lora_targets inside
    # lora_parts; in those parts only the adapters train (and travel), every other weight freezes
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_parts: tuple[str, ...] = ("language",)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    width: int = 128
    heads: int = 4
    backbone_layers: int = 2
    expert_layers: int = 3
    action_horizon: int = 5  # H, sub-steps per chunk
    action_channels: int = 7  # K, padded action channels
    proprio_dim: int = 8  # P, padded proprio dim
    num_cameras: int = 2
    image_size: int = 64
    max_tokens: int = 48  # L, prompt + instruction tokens (left-truncated: the instruction is kept)
    vocab_size: int = 1024  # hashed word vocabulary of the offline tokenizer
    denoise_steps: int = 4  # S, flow integration steps
    detach_critic_input: bool = True  # keep critic gradients out of the backbone
    # Value head input: "pooled" = MLP on the mean of all prefix tokens; "attention" = a learned
    # query attends over the prefix tokens (image patches, keypoints, proprio), then the MLP.
    critic: Literal["pooled", "attention"] = "pooled"
    noise_head: bool = False  # learned exploration std (Flow-Noise)

    def __post_init__(self) -> None:

        MODELS.check_name(self.model, "model")
        check(set(self.freeze) <= set(PARTS), "freeze", f"a subset of {', '.join(PARTS)}", self.freeze)
        check(0 <= self.execute_steps <= self.action_horizon, "execute_steps",
              f"0..action_horizon ({self.action_horizon}; 0 = all)", self.execute_steps)
        check(self.lora_rank >= 0, "lora_rank", ">= 0 (0: no LoRA)", self.lora_rank)
        check_model(self, host=_HOST_CHECKS.get())
        check(self.width % self.heads == 0, "width", f"a multiple of heads={self.heads}", self.width)
        check(self.action_horizon >= 1, "action_horizon", ">= 1", self.action_horizon)
        check(self.action_channels >= 1, "action_channels", ">= 1", self.action_channels)
        check(1 <= self.denoise_steps <= 1000, "denoise_steps", "1..1000", self.denoise_steps)
        check(self.num_cameras >= 1, "num_cameras", ">= 1", self.num_cameras)
        check(self.image_size % 16 == 0, "image_size", "a multiple of 16", self.image_size)
        check(self.max_tokens >= 8, "max_tokens", ">= 8", self.max_tokens)
        check(self.vocab_size >= 16, "vocab_size", ">= 16", self.vocab_size)
        check(self.critic in ("pooled", "attention"), "critic", "pooled | attention", self.critic)

    @property
    def exec_horizon(self) -> int:
        """Actions of a chunk the env executes."""
        return self.execute_steps or self.action_horizon


@dataclass(frozen=True)
class SamplerConfig:
    """Rollout sampler (strategy object built from the registry by ``name``)."""

    name: str = "flow_sde"  # ode | flow_sde | flow_noise
    noise_level: float = 0.5  # Flow-SDE a
    exclude_last_step: bool = False  # Flow-SDE: never pick the last transition as stochastic
    sigma_min: float = 0.08  # Flow-Noise std range
    sigma_max: float = 0.16
    logprob: Literal["chunk_level", "token_level"] = "chunk_level"

    def __post_init__(self) -> None:

        SAMPLERS.check_name(self.name, "name")
        check(self.noise_level >= 0, "noise_level", ">= 0", self.noise_level)
        check(0 < self.sigma_min <= self.sigma_max, "sigma_min", "0 < sigma_min <= sigma_max", self.sigma_min)


@dataclass(frozen=True)
class SFTConfig:
    demos: str = ""  # LeRobotDataset folder (v3.0 / v2.1); empty: generate with the scripted expert
    # another tool's dataset: its image (or video) feature per env camera, in env.cameras order (empty:
    # observation.images.<camera>), its state and its action feature
    image_keys: tuple[str, ...] = ()
    state_key: str = "observation.state"
    action_key: str = "action"
    max_episodes_per_task: int = 0  # given demos: at most this many episodes per task instruction (0: all)
    demos_per_task: int = 20
    demo_workers: int = 1  # generated demos: expert processes collecting at once (seeds interleaved)
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    timestep_sampling: Literal["uniform", "beta", "logit_normal"] = "beta"
    eval_episodes: int = 10  # per task, ODE sampling, at the end
    log_every: int = 100
    checkpoint_every: int = 250  # steps between SFT checkpoints (OUT.partial; resume continues from there)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA where torch sees a GPU, else the CPU

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", ">= 1", self.steps)
        check(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        check(self.lr > 0, "lr", "> 0", self.lr)
        check(self.demos_per_task >= 1, "demos_per_task", ">= 1", self.demos_per_task)
        check(self.demo_workers >= 1, "demo_workers", ">= 1", self.demo_workers)
        check(self.max_episodes_per_task >= 0, "max_episodes_per_task", ">= 0 (0: all)", self.max_episodes_per_task)
        check(self.eval_episodes >= 0, "eval_episodes", ">= 0", self.eval_episodes)
        check(self.checkpoint_every >= 1, "checkpoint_every", ">= 1 (steps)", self.checkpoint_every)


@dataclass(frozen=True)
class AlgoConfig:
    """Which algorithm updates the policy (``learner/algorithms/``), and the learner's shared mechanics:
    epochs x minibatches over each batch, the approx-KL stop and the critic warm-up."""

    # ppo | grpo | rft (flow matching on the policy's own successes; no ratio, no critic) |
    # ppo_rft (PPO plus RFT's imitation steps: the measured best tabletop and LIBERO setting)
    name: str = "ppo"
    epochs: int = 4
    minibatches: int = 4
    # > 0: end the policy's steps at the first minibatch whose approx-KL to the rollout policy exceeds
    # 1.5 x target_kl (that step is not taken); the critic still runs all its epochs
    target_kl: float = 0.0
    # iterations whose policy-gradient steps train only the critic (a fresh value head); imitation
    # steps use no advantage and run from the first iteration
    critic_warmup_iters: int = 3

    def __post_init__(self) -> None:

        ALGORITHMS.check_name(self.name, "name")
        check(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        check(self.minibatches >= 1, "minibatches", ">= 1", self.minibatches)
        check(self.target_kl >= 0, "target_kl", ">= 0 (0: off)", self.target_kl)
        check(self.critic_warmup_iters >= 0, "critic_warmup_iters", ">= 0", self.critic_warmup_iters)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, one parameter group per part of the policy; every algorithm uses the same optimiser."""

    # 1e-4 gave approx-KL ~1.8 and clip fraction ~0.5 per PPO update with chunk-level log-probs on
    # the tiny policy; 1e-5 gives ~0.015 / ~0.1
    actor_lr: float = 1e-5  # action expert (+ noise head)
    critic_lr: float = 1e-3  # value head
    backbone_lr: float = 0.0  # the backbone where it trains (0: actor_lr)
    # False: policy-gradient steps train the action expert and heads only, on a prefix encoded once
    # per update (imitation steps may still train the backbone: imitation.train_backbone)
    train_backbone: bool = False
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # the policy's and the critic's gradients are clipped separately

    def __post_init__(self) -> None:
        check(self.actor_lr > 0, "actor_lr", "> 0", self.actor_lr)
        check(self.critic_lr > 0, "critic_lr", "> 0", self.critic_lr)
        check(self.backbone_lr >= 0, "backbone_lr", ">= 0 (0: actor_lr)", self.backbone_lr)
        check(len(self.betas) == 2, "betas", "two numbers", self.betas)
        check(self.grad_clip > 0, "grad_clip", "> 0", self.grad_clip)


@dataclass(frozen=True)
class PPOConfig:
    """PPO (and the PPO part of ppo_rft): chunk-level GAE, the clipped ratio, a clipped value loss."""

    gamma: float = 0.99
    lam: float = 0.95
    # Bootstrap V(final obs) where the time limit cut an episode (the textbook choice). False treats
    # the limit as part of the task (success must come within it, as every benchmark scores it):
    # a time-out then returns 0, so a critic that cannot see the clock does not credit failures.
    bootstrap_truncated: bool = True
    adv_norm: bool = True
    clip_low: float = 0.2
    clip_high: float = 0.2
    value_clip: float = 0.2
    value_loss: Literal["huber", "mse"] = "huber"
    huber_delta: float = 10.0
    value_coef: float = 0.5
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        check(0 < self.gamma <= 1, "gamma", "(0, 1]", self.gamma)
        check(0 <= self.lam <= 1, "lam", "[0, 1]", self.lam)
        check(0 < self.clip_low < 1, "clip_low", "(0, 1)", self.clip_low)
        check(self.clip_high > 0, "clip_high", "> 0", self.clip_high)
        check(self.value_clip >= 0, "value_clip", ">= 0 (0: off)", self.value_clip)
        check(self.value_coef > 0, "value_coef", "> 0", self.value_coef)
        check(self.entropy_coef >= 0, "entropy_coef", ">= 0", self.entropy_coef)


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO: ``group_size`` rollouts per initial state, group-normalised returns, no critic."""

    group_size: int = 8
    filter_groups: bool = True  # drop groups whose success rate is 0 or 1 (no learning signal)
    clip_low: float = 0.2
    clip_high: float = 0.2
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        check(self.group_size >= 2, "group_size", ">= 2", self.group_size)
        check(0 < self.clip_low < 1, "clip_low", "(0, 1)", self.clip_low)
        check(self.clip_high > 0, "clip_high", "> 0", self.clip_high)
        check(self.entropy_coef >= 0, "entropy_coef", ">= 0", self.entropy_coef)


@dataclass(frozen=True)
class ImitationConfig:
    """Flow matching on the policy's own successful episodes (and the SFT demos): the whole update of
    ``rft``, the imitation part of ``ppo_rft`` (``rlsys.learner.imitation``). Defaults: the measured
    best tabletop setting (docs/experiments.md)."""

    steps: int = 40  # imitation-only steps per iteration, after any policy-gradient epochs
    batch: int = 64  # chunks per step
    capacity: int = 16384  # chunks of successful episodes kept (FIFO)
    # ppo_rft: weight of the imitation loss added to every PPO step (0: the separate steps only)
    coef: float = 1.0
    demos: bool = True  # the SFT demos join the memory as a fixed part (sft.demos / the init checkpoint's)
    # random-shift image augmentation (pad, crop back at a random offset), pixels; 0: off.
    # Measured on RFT from the 90-demo lift start: 35% without, 62% with 4 px (25 min)
    image_shift: int = 4
    lr: float = 3e-4  # the policy's parameter groups during imitation steps (0: the optim lrs)
    train_backbone: bool = True  # imitation steps train the backbone too

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", ">= 1", self.steps)
        check(self.batch >= 1, "batch", ">= 1", self.batch)
        check(self.capacity >= 1, "capacity", ">= 1 (chunks)", self.capacity)
        check(self.coef >= 0, "coef", ">= 0", self.coef)
        check(self.image_shift >= 0, "image_shift", ">= 0 pixels (0: off)", self.image_shift)
        check(self.lr >= 0, "lr", ">= 0 (0: the optim lrs)", self.lr)


@dataclass(frozen=True)
class RolloutConfig:
    num_env_workers: int = 2
    num_inference_workers: int = 1
    chunks_per_segment: int = 16  # T
    max_batch: int = 64  # inference worker batching
    max_wait_ms: float = 5.0
    max_staleness: int = 0  # 0: strictly on-policy
    # collect the next iteration's segments while the learner updates on this one's (under the weights
    # one version behind: needs max_staleness >= 1 and an inference worker apart from the learner, i.e.
    # placement.mode disaggregated or pipelined); false: collect, then update, in turn. It pays where the
    # learner has its own device; on 2 CPU cores both slow down by sharing them (benchmarks/overlap.py: 1.03x)
    overlap: bool = False
    env_groups: int = 2  # pipelining: env groups per worker (1 disables)
    # obs/action hot path: "zmq" (pyzmq channel; per request 5% faster, full system within noise of "ray":
    # benchmarks/throughput.py) or "ray" (actor calls)
    transport: Literal["zmq", "ray"] = "zmq"
    zmq_timeout_s: float = 30.0  # no reply within this -> re-sent through Ray (rest of the segment too)
    # GPU inference replays a captured CUDA graph of the whole denoising chain per batch-size bucket
    # (rlsys/policy/cuda_graph.py); no effect on the CPU
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        check(self.num_env_workers >= 1, "num_env_workers", ">= 1", self.num_env_workers)
        check(self.num_inference_workers >= 1, "num_inference_workers", ">= 1", self.num_inference_workers)
        check(self.chunks_per_segment >= 1, "chunks_per_segment", ">= 1", self.chunks_per_segment)
        check(self.max_staleness >= 0, "max_staleness", ">= 0", self.max_staleness)
        check(self.env_groups >= 1, "env_groups", ">= 1", self.env_groups)
        check(self.zmq_timeout_s > 0, "zmq_timeout_s", "> 0", self.zmq_timeout_s)


@dataclass(frozen=True)
class PlacementConfig:
    mode: Literal["disaggregated", "collocated", "pipelined"] = "collocated"
    sim_resource: str = "sim"  # custom resource that marks simulator (CPU pool) nodes
    use_gpu: bool = False  # request GPUs for inference workers and the learner
    # GPUs each actor asks Ray for when use_gpu: fractions share one card (e.g. 0.5 + 0.5 puts the
    # learner and one inference worker on a single GPU); whole numbers give each its own.
    learner_gpus: float = 1.0
    inference_gpus: float = 1.0
    # a GPU actor whose torch sees no CUDA device fails (default); true runs it on the CPU instead
    # (placement tests on simulated GPU nodes, a CPU build of torch on purpose)
    allow_cpu_fallback: bool = False
    learner_threads: int = 2  # torch CPU threads in the learner (env workers idle while it updates)
    # on a cluster rlsys did not start, whose autoscaler may still add the nodes the run needs: how
    # long to wait for them (printing what is pending) before giving up
    resource_wait_s: float = 600.0

    def __post_init__(self) -> None:
        check(self.learner_threads >= 1, "learner_threads", ">= 1", self.learner_threads)
        check(self.resource_wait_s >= 0, "resource_wait_s", ">= 0 (seconds)", self.resource_wait_s)
        for name in ("learner_gpus", "inference_gpus"):
            g = getattr(self, name)
            check(0 < g and (g <= 1 or float(g).is_integer()), name,
                  "a fraction in (0, 1] or a whole number of GPUs (Ray's rule)", g)


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment trackers beside metrics.jsonl and TensorBoard (rlsys/trackers.py): same metric names."""

    trackers: tuple[str, ...] = ()  # wandb | mlflow (each optional: pip install -e ".[trackers]")
    project: str = "rlsys"  # W&B project / MLflow experiment
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: no network or account needed
    mlflow_uri: str = ""  # empty: sqlite:///<run_dir>/mlflow.db (one store for every run there)

    def __post_init__(self) -> None:
        import importlib.util

        from rlsys.registry import TRACKERS
        from rlsys.trackers import PACKAGES

        for name in self.trackers:
            TRACKERS.check_name(name, "trackers")
            module, package = PACKAGES.get(name, (None, None))
            check(module is None or importlib.util.find_spec(module) is not None, "trackers",
                  f"trackers whose package is installed ({name} needs `pip install {package}`, or "
                  "pip install -e \".[trackers]\")", name)
        check(len(set(self.trackers)) == len(self.trackers), "trackers", "each tracker once", list(self.trackers))


@dataclass(frozen=True)
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    iterations: int = 100
    max_minutes: float = 0.0  # wall-clock budget for the RL loop (0: none); ends with eval + checkpoint
    eval_every: int = 10
    eval_episodes: int = 8  # per task
    eval_init_state_offset: int = 0  # suites with fixed init states (LIBERO): evaluate on offset.. (held out)
    eval_init_states: tuple[int, ...] = ()  # or on exactly these ids, cycled (overrides the offset)
    # simulators an evaluation (SFT's, and the periodic one beside the idle training actors) runs at
    # once: each LIBERO or SAPIEN subprocess holds ~2 GB, so a heavy simulator wants fewer than 8
    eval_num_envs: int = 8
    checkpoint_every: int = 10
    checkpoint_keep: int = 3  # complete checkpoints kept (RUN_DIR/checkpoints/iter_*; RUN_DIR/checkpoint: the newest)
    init_checkpoint: str = ""  # SFT checkpoint to start from; empty: run few-shot SFT first
    run_dir: str = "runs"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.iterations >= 0, "iterations", ">= 0", self.iterations)
        check(self.eval_every >= 1, "eval_every", ">= 1", self.eval_every)
        check(self.eval_init_state_offset >= 0, "eval_init_state_offset", ">= 0", self.eval_init_state_offset)
        check(self.eval_num_envs >= 1, "eval_num_envs", ">= 1", self.eval_num_envs)
        check(self.checkpoint_every >= 1, "checkpoint_every", ">= 1", self.checkpoint_every)
        check(self.checkpoint_keep >= 1, "checkpoint_keep", ">= 1", self.checkpoint_keep)
        check(
            not self.sft.image_keys or len(self.sft.image_keys) == len(self.env.cameras),
            "sft.image_keys",
            f"one dataset feature per env camera ({len(self.env.cameras)}: {list(self.env.cameras)}), or empty",
            list(self.sft.image_keys),
        )
        check(
            self.policy.num_cameras == len(self.env.cameras),
            "policy.num_cameras",
            f"the number of env.cameras ({len(self.env.cameras)})",
            self.policy.num_cameras,
        )
        check(
            self.placement.mode != "pipelined" or self.rollout.env_groups >= 2,
            "rollout.env_groups",
            ">= 2 with placement.mode=pipelined (the groups take turns: one steps while one is inferred)",
            self.rollout.env_groups,
        )
        check(
            not self.rollout.overlap or self.rollout.max_staleness >= 1,
            "rollout.max_staleness",
            ">= 1 with rollout.overlap=true (the overlapped segments come from the weights one update behind)",
            self.rollout.max_staleness,
        )
        check(
            not self.rollout.overlap or self.placement.mode != "collocated",
            "placement.mode",
            "disaggregated or pipelined with rollout.overlap=true (collocated serves inference from the "
            "learner, which is busy updating while the next segments are collected)",
            self.placement.mode,
        )

        for flag, what in SAMPLERS.get(self.sampler.name).required_heads().items():
            check(getattr(self.policy, flag), f"policy.{flag}",
                  f"true with sampler.name={self.sampler.name} (it needs {what})", getattr(self.policy, flag))
        check(
            self.policy.image_size == self.env.image_size,
            "policy.image_size",
            f"env.image_size ({self.env.image_size})",
            self.policy.image_size,
        )


def list_presets() -> list[str]:
    root = importlib.resources.files("rlsys") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _preset_file(name: str) -> dict[str, Any]:
    presets = list_presets()
    if name not in presets:
        raise ConfigError(f"preset {name!r}: unknown. {suggest(name, presets)}")
    text = (importlib.resources.files("rlsys") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def preset_description(name: str) -> str:
    """The preset's one-line ``description``: what it trains, on what, expected time and result."""
    return str(_preset_file(name).get("description", ""))


def _preset_data(name: str) -> dict[str, Any]:
    """The preset's settings merged over its ``base`` (one level: a base has no base of its own)."""
    data = _preset_file(name)
    data.pop("description", None)
    base = data.pop("base", None)
    if not base:
        return data
    parent = _preset_file(base)
    if parent.get("base"):
        raise ConfigError(f"preset {name!r}: its base {base!r} has a base of its own ({parent['base']!r}); "
                          "presets inherit one level at most")
    parent.pop("description", None)
    return merge(parent, data)


def load_config(
    preset: str | None = None, overrides: tuple[str, ...] | list[str] = (), cls: type = TrainConfig
) -> Any:
    """Defaults <- preset YAML <- dotted overrides; validated as a whole before returning."""
    data: dict[str, Any] = _preset_data(preset) if preset else {}
    for text in overrides:
        data = merge(data, parse_override(text))
    return from_dict(cls, data)
