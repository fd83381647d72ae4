"""Typed contracts for what crosses a stage boundary (env -> inference -> learner).

Every array field documents its shape and dtype; constructors check both and raise
:class:`ContractError` naming the field. Letters used in shapes:

- ``B`` batch, ``T`` chunk-steps in a segment, ``N`` envs in a segment
- ``C`` cameras, ``Hi, Wi`` image height/width, ``P`` proprio dim, ``L`` prompt tokens
- ``H`` action horizon (chunk length), ``K`` padded action channels, ``S`` denoising steps
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import numpy as np


class LearnerLost(RuntimeError):
    """The learner actor died: its weights, optimiser state and published objects are gone. Raised by
    the Ray layer on a learner call, handled by the training loop (restore from the last checkpoint)."""


class ContractError(ValueError):
    """An array handed across a stage boundary has the wrong shape or dtype."""


def _check(owner: str, name: str, value: Any, dtype: Any, ndim: int) -> None:
    if not isinstance(value, np.ndarray):
        raise ContractError(f"{owner}.{name}: expected a numpy array, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ContractError(f"{owner}.{name}: expected {ndim} dims, got shape {value.shape}")
    if dtype is not None and value.dtype != np.dtype(dtype):
        raise ContractError(f"{owner}.{name}: expected dtype {np.dtype(dtype)}, got {value.dtype}")


def _check_fields(owner: str, obj: Any, specs: tuple[tuple[str, Any, int], ...], lead: tuple[int, ...]) -> None:
    """Check (field, dtype, ndim) for each spec and that the leading dims equal ``lead``."""
    for name, dtype, nd in specs:
        v = getattr(obj, name)
        _check(owner, name, v, dtype, nd)
        if v.shape[: len(lead)] != lead:
            raise ContractError(f"{owner}.{name}: leading dims {v.shape[: len(lead)]}, expected {lead}")


def _check_lead(owner: str, arrays: dict[str, np.ndarray], lead: int) -> None:
    shapes = {k: v.shape[:lead] for k, v in arrays.items()}
    ref_name, ref = next(iter(shapes.items()))
    for k, s in shapes.items():
        if s != ref:
            raise ContractError(
                f"{owner}.{k}: leading dims {s} do not match {owner}.{ref_name} leading dims {ref}"
            )


@dataclass(frozen=True)
class Observation:
    """A batch of policy inputs.

    images:      [B, C, Hi, Wi, 3] uint8, RGB, cameras in the env's declared order
    proprio:     [B, P] float32, zero-padded to the policy's proprio dim
    tokens:      [B, L] int64, embodiment prompt + instruction (see rlsys.prompt)
    token_mask:  [B, L] bool, True for real tokens
    action_dim:  [B] int64, number of real action channels of each sample's embodiment
    noise_key:   [B] int64 or None, the seed of each row's sampler noise (rollout sets it from the run
                 seed, the episode and the chunk's place in it, so a row's noise does not depend on
                 which batch it lands in); None: the inference worker's own generator draws it
    """

    images: np.ndarray
    proprio: np.ndarray
    tokens: np.ndarray
    token_mask: np.ndarray
    action_dim: np.ndarray
    noise_key: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check("Observation", "images", self.images, np.uint8, 5)
        if self.images.shape[-1] != 3:
            raise ContractError(f"Observation.images: last dim must be 3 (RGB), got {self.images.shape}")
        _check("Observation", "proprio", self.proprio, np.float32, 2)
        _check("Observation", "tokens", self.tokens, np.int64, 2)
        _check("Observation", "token_mask", self.token_mask, np.bool_, 2)
        _check("Observation", "action_dim", self.action_dim, np.int64, 1)
        if self.noise_key is not None:
            _check("Observation", "noise_key", self.noise_key, np.int64, 1)
        _check_lead("Observation", self.arrays(), 1)
        if self.tokens.shape != self.token_mask.shape:
            raise ContractError(
                f"Observation.token_mask: shape {self.token_mask.shape} != tokens {self.tokens.shape}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields (``noise_key`` only where set)."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    def index(self, idx: Any) -> Observation:
        """Sub-batch by an index array / slice along B."""
        return Observation(**{k: v[idx] for k, v in self.arrays().items()})

    def without_keys(self) -> Observation:
        return dataclasses.replace(self, noise_key=None) if self.noise_key is not None else self

    @staticmethod
    def concat(obs: list[Observation]) -> Observation:
        """Rows of ``obs`` in order; ``noise_key`` is kept only where every part has one."""
        if any(o.noise_key is None for o in obs):
            obs = [o.without_keys() for o in obs]
        return Observation(**{k: np.concatenate([o.arrays()[k] for o in obs]) for k in obs[0].arrays()})


@dataclass(frozen=True)
class ActionChunk:
    """What the policy returns for a batch of observations.

    actions:      [B, H, K] float32, env-space actions (denormalised); padded channels are 0
    action_mask:  [B, K] bool, real channels
    chain:        [B, S+1, H, K] float32, normalised denoising states; chain[:, 0] is the initial
                  noise and chain[:, S] the final (normalised) action
    step_mask:    [B, S] bool, which denoising transitions k -> k+1 were stochastic
    logp_steps:   [B, H] float32, log-prob of the stochastic transitions summed over real channels
                  and stochastic steps, per horizon step (reduce with rlsys.flow.reduce_log_prob
                  once the executed length is known)
    value:        [B] float32, critic estimate for the observation
    noise_level:  [B] float32, sampler noise actually used (Flow-SDE ``a``; 0 for ODE)
    version:      policy (weights) version that produced the chunk
    """

    actions: np.ndarray
    action_mask: np.ndarray
    chain: np.ndarray
    step_mask: np.ndarray
    logp_steps: np.ndarray
    value: np.ndarray
    noise_level: np.ndarray
    version: int

    def __post_init__(self) -> None:
        _check("ActionChunk", "actions", self.actions, np.float32, 3)
        _check("ActionChunk", "action_mask", self.action_mask, np.bool_, 2)
        _check("ActionChunk", "chain", self.chain, np.float32, 4)
        _check("ActionChunk", "step_mask", self.step_mask, np.bool_, 2)
        _check("ActionChunk", "logp_steps", self.logp_steps, np.float32, 2)
        _check("ActionChunk", "value", self.value, np.float32, 1)
        _check("ActionChunk", "noise_level", self.noise_level, np.float32, 1)
        _check_lead("ActionChunk", self.arrays(), 1)
        b, h, k = self.actions.shape
        if self.chain.shape[2:] != (h, k):
            raise ContractError(f"ActionChunk.chain: trailing dims {self.chain.shape[2:]} != actions {(h, k)}")
        if self.chain.shape[1] != self.step_mask.shape[1] + 1:
            raise ContractError(
                f"ActionChunk.chain: has {self.chain.shape[1]} states but step_mask has "
                f"{self.step_mask.shape[1]} transitions (expected S+1 states)"
            )
        if self.logp_steps.shape[1] != h or self.action_mask.shape[1] != k:
            raise ContractError("ActionChunk.logp_steps/action_mask: horizon or channel count mismatch")
        if not isinstance(self.version, int):
            raise ContractError(f"ActionChunk.version: expected int, got {type(self.version).__name__}")

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "version"}

    @property
    def batch_size(self) -> int:
        return int(self.actions.shape[0])

    def index(self, idx: Any) -> ActionChunk:
        return ActionChunk(**{k: v[idx] for k, v in self.arrays().items()}, version=self.version)

    @staticmethod
    def concat(chunks: list[ActionChunk]) -> ActionChunk:
        """Stack along B; ``version`` is the oldest (per-row versions live in Segment.versions)."""
        arrays = {k: np.concatenate([c.arrays()[k] for c in chunks]) for k in chunks[0].arrays()}
        return ActionChunk(**arrays, version=min(c.version for c in chunks))


@dataclass(frozen=True)
class Segment:
    """T chunk-steps from N envs, as collected by one env worker (time-major).

    obs:            Observation with every array shaped [T, N, ...] flattened to [T*N, ...]
    chunk:          ActionChunk flattened the same way ([T*N, ...]); ``version`` is the oldest
    versions:       [T, N] int64 policy version per chunk-step
    rewards:        [T, N, H] float32 per sub-step rewards (0 where the sub-step did not run)
    exec_mask:      [T, N, H] bool, sub-steps that ran
    terminated:     [T, N] bool, episode ended by success/failure during the chunk
    truncated:      [T, N] bool, episode ended by the time limit during the chunk
    success:        [T, N] bool, success reached during the chunk
    bootstrap_value:[T, N] float32, V(final obs) where truncated, else 0
    last_value:     [N] float32, V(obs after the last chunk-step)
    episode_ids:    [T, N] int64, globally unique episode id of each chunk-step
    env_ids:        [N] int64
    valid:          [T, N] bool, False for idle envs and for episodes dropped (NaN/inf)
    """

    obs: Observation
    chunk: ActionChunk
    versions: np.ndarray
    rewards: np.ndarray
    exec_mask: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    bootstrap_value: np.ndarray
    last_value: np.ndarray
    episode_ids: np.ndarray
    env_ids: np.ndarray
    valid: np.ndarray

    def __post_init__(self) -> None:
        _check("Segment", "versions", self.versions, np.int64, 2)
        t, n = self.versions.shape
        _check_fields("Segment", self, (
            ("rewards", np.float32, 3), ("exec_mask", np.bool_, 3), ("terminated", np.bool_, 2),
            ("truncated", np.bool_, 2), ("success", np.bool_, 2), ("bootstrap_value", np.float32, 2),
            ("episode_ids", np.int64, 2), ("valid", np.bool_, 2),
        ), (t, n))
        _check_fields("Segment", self, (("last_value", np.float32, 1), ("env_ids", np.int64, 1)), (n,))
        if self.obs.batch_size != t * n or self.chunk.batch_size != t * n:
            raise ContractError(
                f"Segment.obs/chunk: expected T*N={t * n} rows, got {self.obs.batch_size}/{self.chunk.batch_size}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.versions.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class Batch:
    """What one learner update consumes: flattened chunk-steps with advantages.

    obs, chunk:   as in Segment, [B, ...]
    exec_mask:    [B, H] bool, executed sub-steps (the log-prob horizon mask)
    old_logp:     [B] float32, rollout log-prob reduced exactly as the learner reduces it
    old_value:    [B] float32
    advantages:   [B] float32
    returns:      [B] float32
    loss_mask:    [B] bool, valid entries (False after an episode ended / dropped episodes)
    versions:     [B] int64
    """

    obs: Observation
    chunk: ActionChunk
    exec_mask: np.ndarray
    old_logp: np.ndarray
    old_value: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    loss_mask: np.ndarray
    versions: np.ndarray

    def __post_init__(self) -> None:
        b = self.obs.batch_size
        _check_fields("Batch", self, (
            ("exec_mask", np.bool_, 2), ("old_logp", np.float32, 1), ("old_value", np.float32, 1),
            ("advantages", np.float32, 1), ("returns", np.float32, 1), ("loss_mask", np.bool_, 1),
            ("versions", np.int64, 1),
        ), (b,))
        if self.chunk.batch_size != b:
            raise ContractError(f"Batch.chunk: {self.chunk.batch_size} rows, expected {b}")

    @property
    def size(self) -> int:
        return self.obs.batch_size

    def index(self, idx: Any) -> Batch:
        kw = {
            f.name: getattr(self, f.name)[idx]
            for f in fields(self)
            if f.name not in ("obs", "chunk")
        }
        return dataclasses.replace(self, obs=self.obs.index(idx), chunk=self.chunk.index(idx), **kw)
