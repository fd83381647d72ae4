"""Algorithms as plug-ins. Each one is a module with one ``Algorithm`` subclass, registered by name
in ``rlsys.registry.ALGORITHMS`` (third-party: entry-point group ``rlsys.algorithms``), with its
settings in its own config section. It provides two things:

- ``advantages(segments, valid)``: per segment, the advantages and returns [T, N] of its chunk-steps
  and which of them train (``valid`` arrives with stale and dropped chunk-steps already off);
- ``loss(mb)``: the loss on one minibatch (``Minibatch``) as a ``Loss`` (the policy's part, the
  critic's part, the approx-KL, metrics).

The ``Learner`` is the driver around them: epochs x minibatches, the approx-KL stop (``target_kl``),
grad clipping, the critic warm-up and the prefix cache are its mechanics, the same for every
algorithm. Adding one: a new module here (see ``grpo.py``: 35 lines), its config section, its
registry line and a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from rlsys.config import TrainConfig
from rlsys.flow import Sampler
from rlsys.learner.imitation import Imitation
from rlsys.learner.losses import masked_mean, ppo_policy_loss
from rlsys.policy.flow_policy import FlowPolicy, Recompute
from rlsys.policy.model import Context
from rlsys.types import Observation, Segment


@dataclass
class Advantages:
    """One segment's advantages, returns and training mask, time-major [T, N] (float32, bool)."""

    advantages: np.ndarray
    returns: np.ndarray
    valid: np.ndarray


@dataclass
class Minibatch:
    """What a loss sees: the samples (numpy, as stored by rollout) and their targets on the policy's
    device. ``prefix``: the backbone's output for ``obs`` where the learner cached it (frozen backbone)."""

    obs: Observation
    chain: np.ndarray  # [B, S+1, H, K]
    step_mask: np.ndarray  # [B, S]
    exec_mask: np.ndarray  # [B, H]
    prefix: Context | None
    advantages: torch.Tensor  # [B]
    returns: torch.Tensor  # [B]
    old_logp: torch.Tensor  # [B]
    old_value: torch.Tensor  # [B]


@dataclass
class Loss:
    """``actor``: the policy's loss (target_kl and the critic warm-up gate it); ``critic``: the
    weighted value loss (None: no critic); ``approx_kl``: to the rollout policy, for target_kl."""

    actor: torch.Tensor
    critic: torch.Tensor | None
    approx_kl: float
    metrics: dict[str, float] = field(default_factory=dict)


class Algorithm:
    uses_critic: ClassVar[bool] = True  # a value head trains (and the critic warm-up applies)
    episodic: ClassVar[bool] = False  # env workers reset together: one episode per env per segment
    policy_gradient: ClassVar[bool] = True  # False: no epochs over the batch (only ``after_epochs``)
    imitates: ClassVar[bool] = False  # the learner builds an ``Imitation`` for it

    def __init__(self, cfg: TrainConfig, policy: FlowPolicy, sampler: Sampler,
                 imitation: Imitation | None = None) -> None:
        self.cfg, self.policy, self.sampler, self.imitation = cfg, policy, sampler, imitation

    def advantages(self, segments: list[Segment], valid: list[np.ndarray]) -> tuple[list[Advantages],
                                                                                  dict[str, float]]:
        raise NotImplementedError

    def loss(self, mb: Minibatch) -> Loss:
        raise NotImplementedError

    def critic_loss(self, value: torch.Tensor, mb: Minibatch) -> Loss:
        """The critic's part alone: ``critic`` the weighted value loss on ``value`` [B], ``metrics``
        its unweighted ``value_loss`` (critic algorithms only)."""
        raise NotImplementedError(f"{type(self).__name__} has no critic")

    def observe(self, segments: list[Segment], iteration: int) -> None:
        """Every update's segments, before anything else (stale ones too): imitation memories."""

    def after_epochs(self) -> dict[str, float]:
        """Steps of the algorithm's own after the epochs (imitation); returns their metrics with
        ``sil_steps_run`` (0: no step ran)."""
        return {}


def clipped_surrogate(algo: Algorithm, mb: Minibatch, clip_low: float, clip_high: float, entropy_coef: float
                      ) -> tuple[Recompute, Loss]:
    """PPO's clipped ratio of the stored transitions' recomputed log-probs (PPO, GRPO): the recompute
    (for its value) and the policy's ``Loss`` (entropy bonus included; no critic part)."""
    rc = algo.policy.log_prob_and_value(mb.obs, mb.chain, mb.step_mask, mb.exec_mask, algo.sampler,
                                        algo.cfg.sampler.logprob, mb.prefix)
    mask = torch.ones_like(mb.advantages, dtype=torch.bool)
    pl = ppo_policy_loss(rc.logp, mb.old_logp, mb.advantages, mask, clip_low, clip_high)
    entropy = masked_mean(rc.entropy, mask)
    actor = pl.loss - entropy_coef * entropy if entropy_coef else pl.loss
    metrics = {"policy_loss": pl.loss.item(), "clip_fraction": pl.clip_fraction, "ratio_mean": pl.ratio_mean,
               "ratio_max": pl.ratio_max, "entropy": entropy.item(), "first_ratio_dev": pl.ratio_dev}
    return rc, Loss(actor=actor, critic=None, approx_kl=pl.approx_kl, metrics=metrics)
