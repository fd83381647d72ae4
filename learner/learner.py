"""``Learner``: the generic update driver. The algorithm (``rlsys.learner.algorithms``, chosen by
``algo.name``) gives the advantages and the loss; the driver owns the mechanics every algorithm
shares: the staleness filter, epochs x minibatches, the approx-KL stop, grad clipping, the critic
warm-up and the prefix cache of a frozen backbone.

Plain class (tests construct it in-process); the Ray layer wraps it in ``LearnerActor``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from rlsys.checkpoint import load_optimizer_state, optimizer_state
from rlsys.config import TrainConfig
from rlsys.flow import build_sampler, reduce_log_prob
from rlsys.learner.algorithms import Algorithm, Loss, Minibatch
from rlsys.learner.imitation import Imitation
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.policy.model import Context
from rlsys.registry import ALGORITHMS
from rlsys.types import ActionChunk, Batch, Observation, Segment


class Learner:
    def __init__(self, cfg: TrainConfig, policy: FlowPolicy, seed: int = 0,
                 demo_frames: tuple[Observation, np.ndarray, np.ndarray] | None = None) -> None:
        """``demo_frames``: (obs, actions, valid) of the SFT demos for an imitating algorithm's memory."""
        self.cfg, self.policy = cfg, policy
        self.sampler = build_sampler(cfg.sampler)
        algo_cls: type[Algorithm] = ALGORITHMS.get(cfg.algo.name)
        backbone_trains = cfg.optim.train_backbone or (algo_cls.imitates and cfg.imitation.train_backbone)
        self.optimizer, policy_groups = build_optimizer(cfg, policy, backbone_trains)
        self.actor_params = [p for g in policy_groups for p in g["params"]]
        self.critic_params = list(self.optimizer.param_groups[1]["params"])
        imitation = (Imitation(cfg, policy, self.optimizer, policy_groups, demo_frames, seed)
                     if algo_cls.imitates else None)
        self.algo = algo_cls(cfg, policy, self.sampler, imitation)
        self.version = 0  # weights version; bumped by every update that stepped the optimiser
        self.iteration = 0
        self.rng = np.random.default_rng(seed)
        # critic-only steps read one no-grad encoding of the batch where nothing else moves the backbone
        # (the critic's input is detached); False: a backbone pass per step (the same numbers; tests)
        self.cache_critic_input = policy.cfg.detach_critic_input

    def trained_ids(self) -> set[int]:
        """ids of the parameters an optimizer step can change."""
        return {id(p) for g in self.optimizer.param_groups for p in g["params"]}

    def trained_names(self) -> set[str]:
        """The policy's state entries an optimizer step can change: what a weight broadcast carries
        (frozen parts and normalisation buffers travel once)."""
        ids = self.trained_ids()
        return {n for n, p in self.policy.named_parameters(remove_duplicate=False) if id(p) in ids}

    # ------------------------------------------------------------------ the update
    def update(self, segments: list[Segment]) -> dict[str, float]:
        t0 = time.perf_counter()
        dev = self.policy.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        self.algo.observe(segments, self.iteration)  # imitation memories see every episode
        batch, metrics = self.make_batch(segments)  # staleness filter + the algorithm's advantages
        if batch is not None:
            metrics.update(self.train_epochs(batch))  # epochs x minibatches of the algorithm's loss
        metrics.update(self.algo.after_epochs())  # the algorithm's own steps (imitation)
        if metrics.get("optimizer_steps", 0) + metrics.get("sil_steps_run", 0) > 0:
            self.version += 1
            self.iteration += 1
        else:
            metrics["skipped"] = 1.0
        if batch is None:
            metrics["samples"] = metrics.get("sil_steps_run", 0) * self.cfg.imitation.batch
        if dev.type == "cuda":
            metrics["gpu_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
        metrics["update_seconds"] = time.perf_counter() - t0
        trained = metrics.pop("samples_trained", metrics["samples"])
        metrics["samples_per_s"] = trained / metrics["update_seconds"]
        metrics.pop("optimizer_steps", None)
        return metrics

    def make_batch(self, segments: list[Segment]) -> tuple[Batch | None, dict[str, float]]:
        """Chunk-steps older than ``rollout.max_staleness`` versions are dropped; the algorithm gives the
        rest their advantages. None for an algorithm without policy-gradient epochs (or no segments)."""
        valid, staleness_max, rejected = [], 0, 0
        for seg in segments:
            staleness = self.version - seg.versions
            ok = seg.valid.copy()
            staleness_max = max(staleness_max, int(staleness[ok].max(initial=0)))
            stale = staleness > self.cfg.rollout.max_staleness
            rejected += int((stale & ok).sum())
            valid.append(ok & ~stale)
        stats = {"staleness_max": float(staleness_max), "stale_rejected": float(rejected)}
        if not self.algo.policy_gradient or not segments:
            return None, stats
        advantages, algo_stats = self.algo.advantages(segments, valid)
        parts = []
        for seg, adv in zip(segments, advantages):
            t, n = seg.shape
            parts.append(Batch(obs=seg.obs, chunk=seg.chunk, exec_mask=seg.exec_mask.reshape(t * n, -1),
                               old_logp=self._old_logp(seg), old_value=seg.chunk.value,
                               advantages=adv.advantages.reshape(-1).astype(np.float32),
                               returns=adv.returns.reshape(-1).astype(np.float32),
                               loss_mask=adv.valid.reshape(-1), versions=seg.versions.reshape(-1)))
        return concat_batches(parts), {**stats, **algo_stats}

    def train_epochs(self, batch: Batch) -> dict[str, float]:
        """``algo.epochs`` x ``algo.minibatches`` steps on the batch's valid samples. The policy's steps
        end at the first minibatch over 1.5 x ``target_kl``, and wait ``critic_warmup_iters``
        iterations, while the critic keeps stepping (critic-only steps on a cached prefix)."""
        a = self.cfg.algo
        idx = np.flatnonzero(batch.loss_mask)
        metrics: dict[str, float] = {"samples": float(len(idx))}
        if len(idx) == 0:
            return metrics
        critic = self.algo.uses_critic
        actor_on = self.iteration >= a.critic_warmup_iters or not critic
        targets = self._targets(batch)
        # a frozen backbone gives the same prefix in every epoch: encode each valid sample once
        cache = _PrefixCache(self.policy, batch.obs, idx, encode=not self.cfg.optim.train_backbone)
        logs: dict[str, list[float]] = defaultdict(list)
        steps = critic_steps = 0
        stopped = False
        for _ in range(a.epochs):
            if stopped and not critic:
                break
            for rows in np.array_split(self.rng.permutation(idx), a.minibatches):
                if len(rows) == 0:
                    continue
                critic_alone = stopped or (not actor_on and "first_ratio_dev" in logs)
                if critic_alone and self.cache_critic_input:
                    cache.encode()  # nothing moves the backbone for the rest of this update
                mb = self._minibatch(batch, rows, targets, cache.rows(rows))
                if critic_alone:
                    logs["value_loss"].append(self._critic_step(mb))
                    critic_steps += 1
                    continue
                out = self.algo.loss(mb)
                logs["first_ratio_dev"].append(out.metrics.pop("first_ratio_dev", 0.0))
                if actor_on and a.target_kl > 0 and out.approx_kl > 1.5 * a.target_kl:
                    logs["approx_kl"].append(out.approx_kl)  # the KL that stopped the policy's steps
                    stopped = True
                    if not critic:
                        break
                    logs["value_loss"].append(self._critic_step(mb))
                    critic_steps += 1
                    continue
                logs["grad_norm"].append(self._step(out, actor_on))
                logs["approx_kl"].append(out.approx_kl)
                for k, v in out.metrics.items():
                    logs[k].append(v)
                steps += int(actor_on)
                critic_steps += int(critic)
        return {**metrics, **summarise(logs, batch if critic else None), "epochs_run": steps / a.minibatches,
                "critic_epochs_run": critic_steps / a.minibatches, "optimizer_steps": float(steps + critic_steps),
                "samples_trained": len(idx) * max(steps, 1) / a.minibatches}

    # ------------------------------------------------------------------ pieces of a step
    def _old_logp(self, seg: Segment) -> np.ndarray:
        """The rollout's log-probs, reduced exactly as the recompute reduces them."""
        c = seg.chunk

        def t(a: np.ndarray) -> torch.Tensor:  # a copy: arrays from Ray's object store are read-only
            return torch.from_numpy(np.array(a))

        exec_mask = t(seg.exec_mask.reshape(-1, c.logp_steps.shape[1]))
        lp = reduce_log_prob(t(c.logp_steps), exec_mask, t(seg.obs.action_dim),
                             t(self.sampler.num_stochastic(c.step_mask)), self.cfg.sampler.logprob)
        return lp.numpy().astype(np.float32)

    def _targets(self, batch: Batch) -> dict[str, torch.Tensor]:
        dev = self.policy.device
        return {k: torch.from_numpy(np.asarray(getattr(batch, k), np.float32)).to(dev)
                for k in ("advantages", "returns", "old_logp", "old_value")}

    def _minibatch(self, batch: Batch, rows: np.ndarray, targets: dict[str, torch.Tensor],
                   prefix: Context | None) -> Minibatch:
        m = batch.index(rows)
        r = torch.from_numpy(rows).to(self.policy.device)
        return Minibatch(obs=m.obs, chain=m.chunk.chain, step_mask=m.chunk.step_mask, exec_mask=m.exec_mask,
                         prefix=prefix, **{k: v[r] for k, v in targets.items()})

    def _step(self, out: Loss, actor_on: bool) -> float:
        """One optimiser step on the loss (the policy's part only once the critic has warmed up); the
        policy's and the critic's gradients are clipped separately, so a large value-loss gradient
        does not shrink the policy's step. Returns the policy's gradient norm."""
        loss = out.actor if actor_on else torch.zeros((), device=self.policy.device)
        if out.critic is not None:
            loss = loss + out.critic
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.actor_params, self.cfg.optim.grad_clip)
        torch.nn.utils.clip_grad_norm_(self.critic_params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        return float(norm)

    def _critic_step(self, mb: Minibatch) -> float:
        """One value-loss step (no policy gradient: AdamW leaves the policy as it is); returns the loss."""
        value = self.policy.value(mb.obs) if mb.prefix is None else self.policy.value_of(mb.prefix)
        out = self.algo.critic_loss(value, mb)
        assert out.critic is not None
        self.optimizer.zero_grad(set_to_none=True)
        out.critic.backward()
        torch.nn.utils.clip_grad_norm_(self.critic_params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        return out.metrics["value_loss"]

    # ------------------------------------------------------------------ state
    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Optimizer state as flat numpy arrays (safetensors) + JSON-able scalars."""
        return optimizer_state(self.optimizer)

    def load_optimizer_state(self, tensors: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        load_optimizer_state(self.optimizer, tensors, scalars)

    def imitation_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The imitation memory and its RNGs (rft, ppo_rft), None for algorithms without one."""
        imitation = self.algo.imitation
        return None if imitation is None else imitation.state()

    def load_imitation_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
        imitation = self.algo.imitation
        if imitation is not None:
            imitation.load_state(arrays, scalars)


def build_optimizer(cfg: TrainConfig, policy: FlowPolicy, backbone_trains: bool
                    ) -> tuple[torch.optim.Optimizer, list[dict]]:
    """AdamW with groups [action expert + heads, critic, (backbone)] -> (optimiser, the policy's groups).
    A backbone that policy-gradient steps do not train is frozen (no backward through it)."""
    o = cfg.optim
    policy.set_backbone_trainable(o.train_backbone)
    backbone = {id(p) for p in policy.model.backbone_parameters()}
    critic = [p for n, p in policy.named_parameters() if n.startswith("value_head.")]
    actor = [p for n, p in policy.named_parameters()
             if not n.startswith("value_head.") and id(p) not in backbone and p.requires_grad]
    groups = [{"params": actor, "lr": o.actor_lr}, {"params": critic, "lr": o.critic_lr}]
    if backbone_trains:  # policy.freeze'd parts never reach an optimizer
        groups.append({"params": [p for p in policy.model.backbone_parameters() if id(p) not in policy.frozen_ids()],
                       "lr": o.backbone_lr or o.actor_lr})
    optimizer = torch.optim.AdamW(groups, betas=(o.betas[0], o.betas[1]), weight_decay=o.weight_decay)
    return optimizer, [g for i, g in enumerate(optimizer.param_groups) if i != 1]


class _PrefixCache:
    """The backbone's no-grad output for a batch's valid samples, encoded once (or not at all)."""

    def __init__(self, policy: FlowPolicy, obs: Observation, idx: np.ndarray, encode: bool) -> None:
        self.policy, self.obs, self.idx = policy, obs, idx
        self.row = np.zeros(obs.batch_size, np.int64)  # batch index -> row of the cache
        self.row[idx] = np.arange(len(idx))
        self.prefix: Context | None = None
        if encode:
            self.encode()

    def encode(self) -> None:
        if self.prefix is None:
            self.prefix = self.policy.encode_batch(self.obs.index(self.idx))

    def rows(self, rows: np.ndarray) -> Context | None:
        if self.prefix is None:
            return None
        return self.prefix.index(torch.from_numpy(self.row[rows]).to(self.policy.device))


def summarise(logs: dict[str, list[float]], critic_batch: Batch | None) -> dict[str, float]:
    """Per-update means of the step metrics (max for ``ratio_max``), and the critic's explained
    variance on the batch's valid samples."""
    out = {k: float(np.mean(v)) for k, v in logs.items() if v and k != "first_ratio_dev"}
    out["ratio_max"] = float(np.max(logs.get("ratio_max") or [1.0]))
    out["first_minibatch_ratio_dev"] = float(logs["first_ratio_dev"][0]) if logs.get("first_ratio_dev") else 0.0
    if critic_batch is not None:
        v = critic_batch.old_value[critic_batch.loss_mask]
        r = critic_batch.returns[critic_batch.loss_mask]
        out["explained_variance"] = float(1 - np.var(r - v) / np.var(r)) if np.var(r) > 0 else 0.0
    return out


def concat_batches(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(
        obs=Observation.concat([p.obs for p in parts]),
        chunk=ActionChunk.concat([p.chunk for p in parts]),
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in
           ("exec_mask", "old_logp", "old_value", "advantages", "returns", "loss_mask", "versions")},
    )
