"""Config schema: one frozen dataclass per component, defaults here, checks at construction.

Presets live in ``rlsys/presets/*.yaml`` (partial trees merged over these defaults); the CLI
applies dotted overrides (``--set algo.actor_lr=3e-4``) on top. See ``load_config``.
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

__all__ = [
    "ConfigError", "RenderConfig", "EnvConfig", "PolicyConfig", "SamplerConfig", "SFTConfig",
    "AlgoConfig", "RolloutConfig", "PlacementConfig", "TrainConfig", "load_config", "list_presets",
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
    render: RenderConfig = field(default_factory=RenderConfig)
    python: str = ""  # subprocess envs: interpreter of the simulator's own venv (RoboTwin); "" = this one
    # Fixed-init-state suites (LIBERO, SimplerEnv): the init-state ids training resets (demos, RL
    # rollouts) draw from; () = all. Evaluation picks its own (eval_init_states / eval_init_state_offset).
    init_states: tuple[int, ...] = ()
    # "sparse": 1 on success (every benchmark's reward). "shaped" (tabletop lift): plus the change of a
    # progress potential (reach, hold, raise) each step; success and evaluation are unchanged.
    # "probe" (tabletop, any task): 10 x the hand height gained this step and nothing for success: a
    # reward any policy earns at once, the RL pipeline's positive control (benchmarks/probe_reward.py).
    reward: Literal["sparse", "shaped", "probe"] = "sparse"
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
        check(not self.python or self.subprocess, "subprocess", "true when env.python is set (the simulator "
              "runs in that interpreter, one process per env)", self.subprocess)
        check(all(j >= 0 for j in self.init_states), "init_states", "init-state ids >= 0", self.init_states)
        host = _HOST_CHECKS.get()  # False for a config read back from a checkpoint
        if host and self.python:
            check(os.access(self.python, os.X_OK), "python",
                  "an executable interpreter (RoboTwin: scripts/setup_robotwin.sh VENV -> VENV/bin/python)",
                  self.python)
        from rlsys.registry import preflight_env

        preflight_env(self, host=host)  # simulator checks (assets, runtime), before any actor starts


@dataclass(frozen=True)
class PolicyConfig:
    backbone: str = "tiny"
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
    # learned initial-noise distribution N(mean(obs), std(obs)^2) in place of N(0, I): a prior head on
    # the pooled prefix, zero-initialised so a fresh one is exactly N(0, I) (sampler.name: latent)
    noise_prior: bool = False

    def __post_init__(self) -> None:
        from rlsys.registry import BACKBONES

        BACKBONES.check_name(self.backbone, "backbone")
        check(self.width % self.heads == 0, "width", f"a multiple of heads={self.heads}", self.width)
        check(self.action_horizon >= 1, "action_horizon", ">= 1", self.action_horizon)
        check(self.action_channels >= 1, "action_channels", ">= 1", self.action_channels)
        check(1 <= self.denoise_steps <= 1000, "denoise_steps", "1..1000", self.denoise_steps)
        check(self.num_cameras >= 1, "num_cameras", ">= 1", self.num_cameras)
        check(self.image_size % 16 == 0, "image_size", "a multiple of 16", self.image_size)
        check(self.max_tokens >= 8, "max_tokens", ">= 8", self.max_tokens)
        check(self.vocab_size >= 16, "vocab_size", ">= 16", self.vocab_size)
        check(self.critic in ("pooled", "attention"), "critic", "pooled | attention", self.critic)


@dataclass(frozen=True)
class SamplerConfig:
    """Rollout sampler (strategy object built from the registry by ``name``)."""

    name: str = "flow_sde"  # ode | flow_sde | flow_noise | latent
    noise_level: float = 0.5  # Flow-SDE a
    exclude_last_step: bool = False  # Flow-SDE: never pick the last transition as stochastic
    # Flow-SDE's stochastic transition: "uniform" (one index per sample, FLOW_PPO.md section 2) or
    # "last" (always the final one). On a near-deterministic SFT policy the later Euler steps pull
    # noise injected at an earlier step back toward the mean action. Measured on the 90-demo lift SFT
    # (benchmarks/noise_survival.py, a=0.5, S=4): 0.2%, 0.5% and 1.6% of the variance injected at steps
    # 0-2 reaches the executed chunk, all of it at step 3; so three of four "uniform" transitions credit
    # PPO's advantage to noise that never reached the env.
    stochastic_step: Literal["uniform", "last"] = "uniform"
    sigma_min: float = 0.08  # Flow-Noise std range
    sigma_max: float = 0.16
    logprob: Literal["chunk_level", "token_level"] = "chunk_level"

    def __post_init__(self) -> None:
        from rlsys.registry import SAMPLERS

        SAMPLERS.check_name(self.name, "name")
        check(self.noise_level >= 0, "noise_level", ">= 0", self.noise_level)
        if self.stochastic_step == "last":  # a choice among Flow-SDE's transitions, nothing else's
            check(self.name == "flow_sde", "stochastic_step",
                  f"uniform with sampler {self.name!r} (last: flow_sde only)", self.stochastic_step)
            check(not self.exclude_last_step, "stochastic_step",
                  "uniform where exclude_last_step is set (last picks only the step it excludes)", self.stochastic_step)
        check(0 < self.sigma_min <= self.sigma_max, "sigma_min", "0 < sigma_min <= sigma_max", self.sigma_min)


@dataclass(frozen=True)
class SFTConfig:
    demos: str = ""  # demo folder; empty: generate with the scripted expert
    demos_per_task: int = 20
    demo_workers: int = 1  # generated demos: expert processes collecting at once (seeds interleaved)
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    timestep_sampling: Literal["uniform", "beta", "logit_normal"] = "beta"
    eval_episodes: int = 10  # per task, ODE sampling, at the end
    log_every: int = 100
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA where torch sees a GPU, else the CPU

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", ">= 1", self.steps)
        check(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        check(self.lr > 0, "lr", "> 0", self.lr)
        check(self.demos_per_task >= 1, "demos_per_task", ">= 1", self.demos_per_task)
        check(self.demo_workers >= 1, "demo_workers", ">= 1", self.demo_workers)
        check(self.eval_episodes >= 0, "eval_episodes", ">= 0", self.eval_episodes)


@dataclass(frozen=True)
class AlgoConfig:
    # ppo | grpo | fpo (PPO with the flow-matching ratio of the sampled chunk instead of the stored
    # transition's Gaussian log-prob) | rft (rejection-sampling fine-tuning: flow matching on the
    # policy's own successes, algo.sil_steps steps per iteration; no likelihood ratio, no critic)
    name: str = "ppo"
    gamma: float = 0.99
    lam: float = 0.95
    # Bootstrap V(final obs) where the time limit cut an episode (the textbook choice). False treats
    # the limit as part of the task (success must come within it, as every benchmark scores it):
    # a time-out then returns 0, so a critic that cannot see the clock does not credit failures.
    bootstrap_truncated: bool = True
    clip_low: float = 0.2
    clip_high: float = 0.2
    value_clip: float = 0.2
    value_loss: Literal["huber", "mse"] = "huber"
    huber_delta: float = 10.0
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    adv_norm: bool = True
    epochs: int = 4
    minibatches: int = 4
    # 1e-4 gave approx-KL ~1.8 and clip fraction ~0.5 per update with chunk-level log-probs on the
    # tiny policy (measured); 1e-5 gives ~0.015 / ~0.1.
    actor_lr: float = 1e-5
    critic_lr: float = 1e-3
    # iterations whose PPO steps update only the critic (fresh value head); the imitation-only steps of
    # sil_steps use no advantage and run from the first iteration
    critic_warmup_iters: int = 3
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # > 0: end the policy's steps at the first minibatch whose approx-KL to the rollout policy exceeds
    # 1.5 x target_kl (that step is not taken); the critic still runs all its epochs. Measured: at
    # actor_lr 1e-4 without it, the first actor update reached approx-KL 1.1 (ratio max ~1000) and later
    # ones 2.6.
    target_kl: float = 0.0
    # Samples from older weights than the learner's (rollout.max_staleness >= 1, rollout.overlap):
    # decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy optimization"). The ratio,
    # its clip and target_kl are taken to the weights at the start of the update (one no-grad
    # recompute of the stale samples), and each sample's advantage is weighted by
    # min(pi_start / pi_rollout, behaviour_weight_cap). False: the ratio to the policy that acted.
    # No effect on fresh samples (no recompute: their first ratio is 1 either way).
    decoupled: bool = True
    behaviour_weight_cap: float = 1.0
    # > 0: add ref_kl_coef x KL(current || initial policy) to the actor loss. The KL is exact per stored
    # denoising transition (two Gaussians), averaged per action element; the learner keeps a frozen
    # copy of the starting (SFT) weights, saved in checkpoints so a resumed run anchors to the same.
    ref_kl_coef: float = 0.0
    update_backbone: bool = False  # False: RL updates the action expert (+ heads) only (but see sil_backbone)
    backbone_lr: float = 0.0  # with update_backbone: the backbone's own lr (0: actor_lr)
    group_size: int = 8  # GRPO: rollouts per initial state
    filter_groups: bool = True  # GRPO: drop groups whose success rate is 0 or 1
    # GRPO's advantage scale. "group": (R - mean_g) / (std_g + eps), FLOW_PPO.md's rule. "batch":
    # (R - mean_g) / std over all episodes of the update (Dr. GRPO, Liu et al. 2025, drops the per-group
    # std). With a shaped reward the two differ: a group whose returns barely differ (all eight succeed
    # and the shaping differs by millimetres) gets advantages of +-1 under "group", near 0 under "batch".
    grpo_scale: Literal["group", "batch"] = "group"
    # > 0: self-imitation. Every chunk of the policy's own successful episodes goes to a FIFO of
    # sil_capacity chunks (rlsys.learner.self_imitation); each actor step adds sil_coef x the
    # flow-matching loss on sil_batch chunks drawn from it, with the executed actions as targets.
    # Measured first as a diagnostic (benchmarks/self_imitation.py): fine-tuning on the policy's own
    # successes raised the few-shot lift policy where PPO's likelihood-ratio signal did not.
    sil_coef: float = 0.0
    sil_capacity: int = 8192
    sil_batch: int = 64
    # > 0: after each update's PPO epochs, this many more steps of the self-imitation loss alone
    # (sil_coef x flow matching on sil_batch chunks), not stopped by target_kl: the diagnostic took
    # 500 fine-tuning steps per 500 rollouts, where the in-step loss gets one step per PPO minibatch.
    sil_steps: int = 0
    # True: the SFT demos (every frame with its next H actions) join the self-imitation batches as a
    # fixed part of the memory, as the diagnostic fine-tunes on demos plus successes. The demos are
    # sft.demos, else the folder the init checkpoint's meta names, else the run's own few-shot SFT's.
    sil_demos: bool = False
    # > 0: the self-imitation batches get SFT's image augmentation (pad by this many pixels, crop back
    # at a random offset per sample and camera); SFT itself always shifts by 4
    sil_shift: int = 0
    # > 0: the self-imitation steps of sil_steps (and rft's update) move the policy's parameter groups
    # (action expert, and the backbone with update_backbone) at this lr; 0: at actor_lr / backbone_lr.
    # PPO's own steps keep theirs: at actor_lr 1e-4 they already overshoot (target_kl), where the
    # imitation steps needed 3e-4 (tabletop_fewshot_rft at 1e-4: 78% in 30 min; at 3e-4: 93%).
    sil_lr: float = 0.0
    # True (with update_backbone false): the self-imitation-only steps (sil_steps, rft's update) train
    # the backbone too, while PPO's steps (and the self-imitation loss inside them) keep it frozen and
    # encode each sample once per update. On 2 cores a PPO step of 256 chunks of the tiny policy took
    # 1.4 s through the whole network and 0.28 s through the action expert on a cached prefix.
    sil_backbone: bool = False
    # fpo: (t, eps) draws per chunk for the flow-matching ratio; each draw has its own clipped ratio.
    # Each draw is one more action-expert pass per sample (measured on 2 cores, whole network:
    # 8 draws x 4 epochs ~50 s per update, 4 draws x 2 epochs ~13 s)
    fpo_draws: int = 4
    # > 0: the evaluations and the checkpoint's model.safetensors use an exponential moving average of
    # the weights, one step per learner update (the mean of all updates until there are 1 / (1 - d));
    # rollouts keep the trained weights. 0.8 averages about the last 5 updates (rlsys.learner.ema).
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        from rlsys.registry import ALGORITHMS

        ALGORITHMS.check_name(self.name, "name")
        check(0 < self.gamma <= 1, "gamma", "(0, 1]", self.gamma)
        check(0 <= self.lam <= 1, "lam", "[0, 1]", self.lam)
        check(0 < self.clip_low < 1, "clip_low", "(0, 1)", self.clip_low)
        check(self.clip_high > 0, "clip_high", "> 0", self.clip_high)
        check(self.epochs >= 1 and self.minibatches >= 1, "epochs", "epochs, minibatches >= 1", self.epochs)
        check(self.actor_lr > 0 and self.critic_lr > 0, "actor_lr", "actor_lr, critic_lr > 0", self.actor_lr)
        check(len(self.betas) == 2, "betas", "two numbers", self.betas)
        check(0 <= self.ema_decay < 1, "ema_decay", "[0, 1) (0: off)", self.ema_decay)
        check(self.group_size >= 2, "group_size", ">= 2", self.group_size)
        check(self.target_kl >= 0, "target_kl", ">= 0 (0: off)", self.target_kl)
        check(self.ref_kl_coef >= 0, "ref_kl_coef", ">= 0 (0: off)", self.ref_kl_coef)
        check(self.backbone_lr >= 0, "backbone_lr", ">= 0 (0: actor_lr)", self.backbone_lr)
        check(self.sil_coef >= 0, "sil_coef", ">= 0 (0: off)", self.sil_coef)
        check(self.sil_steps >= 0, "sil_steps", ">= 0 (0: off)", self.sil_steps)
        check(self.sil_coef > 0 or not (self.sil_steps or self.sil_demos), "sil_coef",
              "> 0 where sil_steps or sil_demos is set (they extend self-imitation)", self.sil_coef)
        if self.name == "rft":  # its update is the self-imitation steps, nothing else
            check(self.sil_coef > 0, "sil_coef", "> 0 with name=rft (the flow-matching loss's weight)", self.sil_coef)
            check(self.sil_steps >= 1, "sil_steps", ">= 1 with name=rft (flow-matching steps per iteration)",
                  self.sil_steps)
        if self.name == "fpo":  # no Gaussian transition in its ratio: no exact KL or entropy to add
            check(self.ref_kl_coef == 0, "ref_kl_coef", "0 with name=fpo (the KL anchor needs the Gaussian "
                  "transitions of ppo/grpo)", self.ref_kl_coef)
            check(self.entropy_coef == 0, "entropy_coef", "0 with name=fpo (a flow policy's entropy has no "
                  "closed form)", self.entropy_coef)
        check(self.behaviour_weight_cap > 0, "behaviour_weight_cap", "> 0", self.behaviour_weight_cap)
        check(self.fpo_draws >= 1, "fpo_draws", ">= 1", self.fpo_draws)
        check(self.sil_capacity >= 1, "sil_capacity", ">= 1 (chunks)", self.sil_capacity)
        check(self.sil_batch >= 1, "sil_batch", ">= 1", self.sil_batch)
        check(self.sil_shift >= 0, "sil_shift", ">= 0 pixels (0: off)", self.sil_shift)
        check(self.sil_lr >= 0, "sil_lr", ">= 0 (0: actor_lr / backbone_lr)", self.sil_lr)
        check(self.sil_coef > 0 or not self.sil_lr, "sil_coef", "> 0 where sil_lr is set (it extends "
              "self-imitation)", self.sil_coef)
        check(self.sil_coef > 0 or not self.sil_backbone, "sil_coef", "> 0 where sil_backbone is set (it "
              "extends self-imitation)", self.sil_coef)
        check(not (self.sil_backbone and self.update_backbone), "sil_backbone", "false where update_backbone is "
              "true (update_backbone already trains the backbone in every step)", self.sil_backbone)


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

    def __post_init__(self) -> None:
        check(self.learner_threads >= 1, "learner_threads", ">= 1", self.learner_threads)
        for name in ("learner_gpus", "inference_gpus"):
            g = getattr(self, name)
            check(0 < g and (g <= 1 or float(g).is_integer()), name,
                  "a fraction in (0, 1] or a whole number of GPUs (Ray's rule)", g)


@dataclass(frozen=True)
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
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
    init_checkpoint: str = ""  # SFT checkpoint to start from; empty: run few-shot SFT first
    run_dir: str = "runs"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.iterations >= 0, "iterations", ">= 0", self.iterations)
        check(self.eval_every >= 1, "eval_every", ">= 1", self.eval_every)
        check(self.eval_init_state_offset >= 0, "eval_init_state_offset", ">= 0", self.eval_init_state_offset)
        check(self.eval_num_envs >= 1, "eval_num_envs", ">= 1", self.eval_num_envs)
        check(self.checkpoint_every >= 1, "checkpoint_every", ">= 1", self.checkpoint_every)
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
        from rlsys.registry import SAMPLERS

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


def _preset_data(name: str) -> dict[str, Any]:
    presets = list_presets()
    if name not in presets:
        raise ConfigError(f"preset {name!r}: unknown. {suggest(name, presets)}")
    text = (importlib.resources.files("rlsys") / "presets" / f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    base = data.pop("base", None)
    return merge(_preset_data(base), data) if base else data


def load_config(
    preset: str | None = None, overrides: tuple[str, ...] | list[str] = (), cls: type = TrainConfig
) -> Any:
    """Defaults <- preset YAML <- dotted overrides; validated as a whole before returning."""
    data: dict[str, Any] = _preset_data(preset) if preset else {}
    for text in overrides:
        data = merge(data, parse_override(text))
    return from_dict(cls, data)
