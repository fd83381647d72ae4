"""``Learner``: segments -> advantages -> PPO / GRPO / FPO epochs on recomputed flow log-probs (or
flow-matching errors), or RFT's flow-matching steps.

Plain class (tests construct it in-process); the Ray layer wraps it in ``PolicyActor``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np
import torch

from rlsys.config import TrainConfig
from rlsys.flow import build_sampler, reduce_log_prob
from rlsys.learner.ema import WeightEMA
from rlsys.learner.losses import (
    batch_scale,
    chunk_gae,
    grpo_advantages,
    masked_mean,
    normalize,
    ppo_policy_loss,
    value_loss,
)
from rlsys.learner.self_imitation import SuccessMemory
from rlsys.policy.flow_policy import FlowPolicy, Recompute, sample_timesteps
from rlsys.registry import ALGORITHMS
from rlsys.sft import random_shift
from rlsys.types import ActionChunk, Batch, Observation, Segment


class Learner:
    def __init__(self, cfg: TrainConfig, policy: FlowPolicy, seed: int = 0,
                 sil_base: tuple[Observation, np.ndarray, np.ndarray] | None = None) -> None:
        self.cfg, self.policy = cfg, policy
        self.sampler = build_sampler(cfg.sampler)
        self.algo = ALGORITHMS.get(cfg.algo.name)
        a = cfg.algo
        # the backbone trains in every step (update_backbone), in the self-imitation-only steps
        # (sil_backbone: frozen in PPO's steps) or never
        self.backbone_trains = a.update_backbone or a.sil_backbone
        if not a.update_backbone:  # frozen: no gradients, no backward through the CNN/transformer
            policy.backbone.requires_grad_(False)
        critic = [p for n, p in policy.named_parameters() if n.startswith("value_head.")]
        actor = [p for n, p in policy.named_parameters()
                 if not n.startswith(("value_head.", "backbone.")) and p.requires_grad]
        groups = [{"params": actor, "lr": a.actor_lr}, {"params": critic, "lr": a.critic_lr}]
        backbone = list(policy.backbone.parameters()) if self.backbone_trains else []
        if backbone:  # group 2: its own lr where backbone_lr is set
            groups.append({"params": backbone, "lr": a.backbone_lr or a.actor_lr})
        self.actor_params = actor + backbone  # the policy's gradients are clipped together
        self.optimizer = torch.optim.AdamW(groups, betas=(a.betas[0], a.betas[1]), weight_decay=a.weight_decay)
        # frozen copy of the starting weights for the KL anchor (ref_kl_coef > 0)
        self.reference = copy.deepcopy(policy).requires_grad_(False).eval() if a.ref_kl_coef > 0 else None
        # the averaged weights of algo.ema_decay (evaluations, checkpoints); rollouts use self.policy
        self.ema = WeightEMA(policy, a.ema_decay) if a.ema_decay > 0 else None
        self.version = 0  # weights version; bumped by every update
        self.iteration = 0
        self.rng = np.random.default_rng(seed)
        self.stale_rejected = 0
        # self-imitation (sil_coef > 0): the policy's own successful episodes, imitated by flow matching
        # (sil_base: the demo frames of algo.sil_demos, a fixed part of the memory)
        self.memory = SuccessMemory(a.sil_capacity, base=sil_base) if a.sil_coef > 0 else None
        self.sil_generator = torch.Generator().manual_seed(seed)
        self.cfm_generator = torch.Generator().manual_seed(seed + 1)  # fpo's (t, eps) draws
        # a whole-network update's critic-only steps read one no-grad encoding of the batch where they
        # cannot move the backbone (its input is detached; a frozen backbone is encoded once anyway);
        # False: a backbone pass per step (the same numbers, tests compare the two)
        self._critic_cache = policy.cfg.detach_critic_input

    # ------------------------------------------------------------------ batch assembly
    def _old_logp(self, seg: Segment) -> np.ndarray:
        c = seg.chunk

        def t(a: np.ndarray) -> torch.Tensor:  # a copy: arrays from Ray's object store are read-only
            return torch.from_numpy(np.array(a))

        exec_mask = t(seg.exec_mask.reshape(-1, c.logp_steps.shape[1]))
        lp = reduce_log_prob(t(c.logp_steps), exec_mask, t(seg.obs.action_dim),
                             t(self.sampler.num_stochastic(c.step_mask)), self.cfg.sampler.logprob)
        return lp.numpy().astype(np.float32)

    def make_batch(self, segments: list[Segment]) -> tuple[Batch, dict[str, float]]:
        a = self.cfg.algo
        parts: list[Batch] = []
        staleness_max, rejected = 0, 0
        groups, informative = 0, 0
        rows: list[tuple[Segment, np.ndarray, np.ndarray, np.ndarray]] = []  # (segment, adv, ret, valid)
        centred: list[np.ndarray] = []  # GRPO, grpo_scale "batch": the episodes' R - mean_g that train
        for seg in segments:
            t, n = seg.shape
            valid = seg.valid.copy()
            staleness = self.version - seg.versions
            staleness_max = max(staleness_max, int(staleness[valid].max(initial=0)))
            stale = staleness > self.cfg.rollout.max_staleness
            rejected += int((stale & valid).sum())
            valid &= ~stale
            values = seg.chunk.value.reshape(t, n)
            if self.algo.uses_critic:
                boot = seg.bootstrap_value if a.bootstrap_truncated else np.zeros_like(seg.bootstrap_value)
                adv, ret = chunk_gae(seg.rewards.sum(-1), values, seg.terminated, seg.truncated,
                                     boot, seg.last_value, a.gamma, a.lam)
            else:  # GRPO: one episode per env, group = env id // group size
                returns = (seg.rewards.sum(-1) * seg.valid).sum(0)
                group_ids = seg.env_ids // a.group_size
                # signal: episodes of non-degenerate groups
                ep_adv, signal = grpo_advantages(returns, group_ids, group_std=a.grpo_scale == "group")
                keep = signal if a.filter_groups else np.ones_like(signal)
                groups += len(np.unique(group_ids))
                informative += len(np.unique(group_ids[signal]))
                adv = np.broadcast_to(ep_adv, (t, n)).astype(np.float32)
                ret = adv
                valid &= keep[None, :]
                centred.append(ep_adv[valid.any(0)])
            rows.append((seg, adv, ret, valid))
        scale = batch_scale(centred) if not self.algo.uses_critic and a.grpo_scale == "batch" else 1.0
        for seg, adv, ret, valid in rows:
            t, n = seg.shape
            parts.append(Batch(obs=seg.obs, chunk=seg.chunk, exec_mask=seg.exec_mask.reshape(t * n, -1),
                               old_logp=self._old_logp(seg), old_value=seg.chunk.value,
                               advantages=(adv / scale).reshape(-1).astype(np.float32),
                               returns=(ret / scale).reshape(-1).astype(np.float32),
                               loss_mask=valid.reshape(-1), versions=seg.versions.reshape(-1)))
        self.stale_rejected += rejected
        stats = {"staleness_max": float(staleness_max), "stale_rejected": float(rejected)}
        if groups:
            stats["groups_informative"] = informative / groups
        return concat_batches(parts), stats

    # ------------------------------------------------------------------ update
    def update(self, segments: list[Segment]) -> dict[str, float]:
        a = self.cfg.algo
        t0 = time.perf_counter()
        if self.memory is not None:  # every finished episode counts, stale segments' too (SIL is off-policy)
            for seg in segments:
                self.memory.add(seg, self.iteration)
        if not getattr(self.algo, "policy_gradient", True):  # rft (a plug-in algorithm may not say)
            return self._fine_tune(segments, t0)
        batch, stats = self.make_batch(segments)
        dev = self.policy.device  # the batch arrives as numpy; the losses run where the weights are
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        mask_all = torch.from_numpy(batch.loss_mask)
        n_valid = int(mask_all.sum())
        metrics: dict[str, float] = {**stats, "samples": float(n_valid)}
        if n_valid == 0:
            metrics["skipped"] = 1.0
            return metrics
        adv_all = torch.from_numpy(batch.advantages)
        if a.adv_norm and self.algo.uses_critic:
            adv_all = normalize(adv_all, mask_all)
        adv_all = adv_all.to(dev)
        old_logp, old_v = torch.from_numpy(batch.old_logp).to(dev), torch.from_numpy(batch.old_value).to(dev)
        ret = torch.from_numpy(batch.returns).to(dev)
        actor_on = self.iteration >= a.critic_warmup_iters or not self.algo.uses_critic
        logs: dict[str, list[float]] = {}
        first_dev = None
        idx = np.flatnonzero(batch.loss_mask)
        # a frozen backbone gives the same prefix in every epoch: encode each valid sample once
        cache = None if a.update_backbone else self.policy.encode_batch(batch.obs.index(idx))
        row = np.zeros(len(batch.loss_mask), np.int64)  # batch index -> row of the cache
        row[idx] = np.arange(len(idx))
        # fpo: the (t, eps) draws of each sample and their flow-matching errors under the rollout weights
        cfm = self._cfm_draws(batch, idx, cache, row) if getattr(self.algo, "surrogate", "gaussian") == "cfm" else None
        # decoupled PPO on stale samples: the ratio to the weights as they are now, the advantage
        # weighted by how likely the rollout's action is under them relative to the rollout policy
        # (not while the critic warms up: no policy step would use them)
        weight = None
        if a.decoupled and actor_on and cfm is None and bool((batch.versions[idx] != self.version).any()):
            old_logp, weight, wstats = self._proximal(batch, idx, cache, row, old_logp)
            metrics.update(wstats)
        steps, critic_steps, actor_stopped = 0, 0, False
        for _ in range(a.epochs):
            if actor_stopped and not self.algo.uses_critic:
                break
            for mb in np.array_split(self.rng.permutation(idx), a.minibatches):
                if len(mb) == 0:
                    continue
                m = batch.index(mb)
                mask = torch.ones(len(mb), dtype=torch.bool, device=dev)
                # the critic alone: target_kl ended the policy's steps, or the critic warms up (after the
                # first minibatch, which still measures the ratio through the whole recompute)
                critic_alone = actor_stopped or (not actor_on and first_dev is not None)
                if critic_alone and cache is None and self._critic_cache:
                    # nothing moves the backbone for the rest of this update (the critic's input is
                    # detached): encode the batch once instead of once per critic step
                    cache = self.policy.encode_batch(batch.obs.index(idx))
                prefix = None if cache is None else cache.index(torch.from_numpy(row[mb]).to(dev))
                if critic_alone:
                    logs.setdefault("value_loss", []).append(self._critic_step(m.obs, prefix, old_v[mb], ret[mb]))
                    critic_steps += 1
                    continue
                ref = None
                if self.reference is not None:
                    with torch.no_grad():  # a never-trained backbone is the reference's too: same prefix
                        ref = self.reference.transitions(m.obs, m.chunk.chain, m.chunk.step_mask, self.sampler,
                                                         None if self.backbone_trains else prefix)
                if cfm is None:
                    rc = self.policy.log_prob_and_value(m.obs, m.chunk.chain, m.chunk.step_mask, m.exec_mask,
                                                        self.sampler, self.cfg.sampler.logprob, prefix, ref)
                    logp, logp_old, adv_mb, mask_mb = rc.logp, old_logp[mb], adv_all[mb], mask
                    if weight is not None:
                        adv_mb = adv_mb * weight[mb]
                else:  # fpo: one ratio exp(l_old - l_new) per (t, eps) draw
                    err, value = self.policy.cfm_errors(m.obs, m.chunk.chain[:, -1], m.exec_mask, cfm.t[mb],
                                                        cfm.eps[mb], prefix)
                    rc = Recompute(logp=-err.mean(1), value=value, entropy=None)  # no closed-form entropy
                    d = err.shape[1]
                    logp, logp_old = -err.reshape(-1), -cfm.old_err[mb].reshape(-1)
                    adv_mb, mask_mb = adv_all[mb].repeat_interleave(d), mask.repeat_interleave(d)
                pl = ppo_policy_loss(logp, logp_old, adv_mb, mask_mb, a.clip_low, a.clip_high)
                if first_dev is None:
                    first_dev = float((logp.detach() - logp_old).exp().sub(1).abs().max())
                if actor_on and a.target_kl > 0 and pl.approx_kl > 1.5 * a.target_kl:
                    logs.setdefault("approx_kl", []).append(pl.approx_kl)  # the KL that stopped it
                    actor_stopped = True
                    if not self.algo.uses_critic:
                        break
                    logs.setdefault("value_loss", []).append(self._critic_step(m.obs, prefix, old_v[mb], ret[mb]))
                    critic_steps += 1
                    continue
                loss = pl.loss if actor_on else torch.zeros((), device=dev)
                kl_ref = torch.zeros((), device=dev) if rc.kl_ref is None else masked_mean(rc.kl_ref, mask)
                if actor_on and rc.kl_ref is not None:
                    loss = loss + a.ref_kl_coef * kl_ref
                vl = torch.zeros((), device=dev)
                if self.algo.uses_critic:
                    vl = value_loss(rc.value, old_v[mb], ret[mb], mask, a.value_clip, a.value_loss, a.huber_delta)
                    loss = loss + a.value_coef * vl
                ent = None if rc.entropy is None else masked_mean(rc.entropy, mask)
                if a.entropy_coef:  # the config allows it only where there is an entropy
                    loss = loss - a.entropy_coef * ent
                if actor_on and self.memory is not None and self.memory.available:
                    sil = self._sil_loss()
                    loss = loss + a.sil_coef * sil
                    logs.setdefault("sil_loss", []).append(sil.item())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # actor and critic clipped separately: a large value-loss gradient must not shrink
                # the policy step
                gn = torch.nn.utils.clip_grad_norm_(self.actor_params, a.grad_clip)
                torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[1]["params"], a.grad_clip)
                self.optimizer.step()
                steps += int(actor_on)  # the policy's steps (a warm-up step trains the critic alone)
                critic_steps += int(self.algo.uses_critic)
                for k, v in (("policy_loss", pl.loss.item()), ("value_loss", vl.item()),
                             ("approx_kl", pl.approx_kl), ("clip_fraction", pl.clip_fraction),
                             ("ratio_mean", pl.ratio_mean), ("ratio_max", pl.ratio_max), ("grad_norm", float(gn))):
                    logs.setdefault(k, []).append(v)
                if ent is not None:
                    logs.setdefault("entropy", []).append(ent.item())
                if cfm is not None:
                    logs.setdefault("cfm_error", []).append(float(err.detach().mean()))
                if rc.kl_ref is not None:
                    logs.setdefault("kl_ref", []).append(kl_ref.item())
        sil_steps, t_sil = 0, time.perf_counter()
        # self-imitation alone; target_kl bounds PPO's steps, not these, and they use no advantage, so
        # they run from the first iteration, as rft's do, while the critic warms up
        if a.sil_steps and self.memory is not None and self.memory.available:
            for _ in range(a.sil_steps):
                logs.setdefault("sil_loss", []).append(self._sil_step()[0])
                sil_steps += 1
        self._updated()
        metrics.update({k: float(np.mean(v)) for k, v in logs.items()})
        metrics["ratio_max"] = float(np.max(logs.get("ratio_max", [1.0])))
        metrics["epochs_run"] = steps / a.minibatches  # < epochs where target_kl stopped the update
        metrics["critic_epochs_run"] = critic_steps / a.minibatches
        metrics["first_minibatch_ratio_dev"] = float(first_dev or 0.0)
        if self.memory is not None:
            metrics["sil_memory_chunks"] = float(self.memory.size)
            metrics["sil_episodes"] = float(self.memory.episodes_added)
            metrics["sil_steps_run"] = float(sil_steps)
            metrics["sil_seconds"] = time.perf_counter() - t_sil
        v = batch.old_value[batch.loss_mask]
        r = batch.returns[batch.loss_mask]
        metrics["explained_variance"] = float(1 - np.var(r - v) / np.var(r)) if np.var(r) > 0 else 0.0
        if dev.type == "cuda":
            metrics["gpu_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
        metrics["update_seconds"] = time.perf_counter() - t0
        metrics["samples_per_s"] = n_valid * max(steps, 1) / a.minibatches / metrics["update_seconds"]
        return metrics

    def _proximal(self, batch: Batch, idx: np.ndarray, cache: Any, row: np.ndarray,
                  behaviour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Decoupled PPO: (log-probs of the stored transitions under the weights at the start of the
        update, min(pi_start / pi_rollout, cap) per sample, their stats), from one no-grad pass."""
        a = self.cfg.algo
        dev = self.policy.device
        prox = behaviour.clone()
        with torch.no_grad():
            for mb in np.array_split(idx, a.minibatches):
                if len(mb) == 0:
                    continue
                m = batch.index(mb)
                prefix = None if cache is None else cache.index(torch.from_numpy(row[mb]).to(dev))
                prox[mb] = self.policy.log_prob_and_value(m.obs, m.chunk.chain, m.chunk.step_mask, m.exec_mask,
                                                          self.sampler, self.cfg.sampler.logprob, prefix).logp
        raw = (prox - behaviour).exp()
        weight = raw.clamp(max=a.behaviour_weight_cap)
        valid = torch.from_numpy(idx).to(dev)
        stats = {"behaviour_weight_mean": float(weight[valid].mean()),
                 "behaviour_weight_capped": float((raw[valid] > a.behaviour_weight_cap).float().mean())}
        return prox, weight, stats

    def _updated(self) -> None:
        """One update done: new weights version, and one step of the weight average."""
        self.version += 1
        self.iteration += 1
        if self.ema is not None:
            self.ema.update(self.policy)

    def eval_state(self) -> dict[str, np.ndarray]:
        """The weights evaluations and checkpoints use: the average where algo.ema_decay is set."""
        from rlsys.actors.inference import state_to_numpy

        return state_to_numpy(self.policy) if self.ema is None else self.ema.numpy_state(self.policy)

    def _cfm_draws(self, batch: Batch, idx: np.ndarray, cache: Any, row: np.ndarray) -> CFMDraws:
        """fpo: ``fpo_draws`` (t, eps) pairs per valid sample, fixed for the whole update, and the
        flow-matching errors under the weights as they are now (the rollout's at staleness 0), so the
        first minibatch's ratios are exactly 1."""
        d, (h, k) = self.cfg.algo.fpo_draws, batch.chunk.chain.shape[2:]
        n = len(batch.loss_mask)
        t = torch.ones(n, d)
        eps = torch.zeros(n, d, h, k)
        t[idx] = sample_timesteps(len(idx) * d, self.cfg.sft.timestep_sampling, self.cfm_generator).view(-1, d)
        eps[idx] = torch.randn(len(idx), d, h, k, generator=self.cfm_generator)
        old = torch.zeros(n, d, device=self.policy.device)
        with torch.no_grad():
            for block in np.array_split(idx, max(1, -(-len(idx) // 256))):
                m = batch.index(block)
                prefix = None if cache is None else cache.index(torch.from_numpy(row[block]).to(self.policy.device))
                old[torch.from_numpy(block)] = self.policy.cfm_errors(m.obs, m.chunk.chain[:, -1], m.exec_mask,
                                                                      t[block], eps[block], prefix)[0]
        return CFMDraws(t=t, eps=eps, old_err=old)

    def _fine_tune(self, segments: list[Segment], t0: float) -> dict[str, float]:
        """``rft``: ``sil_steps`` flow-matching steps on the success memory, nothing else (every segment
        only feeds the memory: stale ones too, since imitation is off-policy)."""
        a = self.cfg.algo
        staleness = [self.version - s.versions[s.valid] for s in segments]
        metrics: dict[str, float] = {"staleness_max": float(max((int(x.max(initial=0)) for x in staleness), default=0)),
                                     "stale_rejected": 0.0}
        steps = [self._sil_step() for _ in range(a.sil_steps)] if self.memory.available else []
        if steps:
            loss, grad_norm = np.mean(steps, axis=0)
            metrics.update(sil_loss=float(loss), grad_norm=float(grad_norm))
            self._updated()
        else:  # no success yet (and no demos): nothing to imitate; weights and version stay (as PPO's skip)
            metrics["skipped"] = 1.0
        metrics.update(sil_memory_chunks=float(self.memory.size), sil_episodes=float(self.memory.episodes_added),
                       sil_steps_run=float(len(steps)), samples=float(len(steps) * a.sil_batch))
        metrics["update_seconds"] = metrics["sil_seconds"] = time.perf_counter() - t0
        metrics["samples_per_s"] = metrics["samples"] / metrics["update_seconds"]
        return metrics

    def _sil_step(self) -> tuple[float, float]:
        """One optimizer step on the self-imitation loss alone -> (loss, policy gradient norm), with
        the policy's groups at ``algo.sil_lr`` where it is set (the critic's group has no gradient) and
        the backbone trained where ``algo.sil_backbone`` is set."""
        a = self.cfg.algo
        self.policy.backbone.requires_grad_(self.backbone_trains)
        try:
            sil = self._sil_loss()
            self.optimizer.zero_grad(set_to_none=True)
            (a.sil_coef * sil).backward()
        finally:  # PPO's steps see the backbone frozen again (AdamW skips parameters without gradients)
            self.policy.backbone.requires_grad_(a.update_backbone)
        gn = torch.nn.utils.clip_grad_norm_(self.actor_params, a.grad_clip)
        policy_groups = [g for i, g in enumerate(self.optimizer.param_groups) if i != 1]  # group 1: critic
        lrs = [g["lr"] for g in policy_groups]
        if a.sil_lr:
            for g in policy_groups:
                g["lr"] = a.sil_lr
        try:
            self.optimizer.step()
        finally:
            for g, lr in zip(policy_groups, lrs):
                g["lr"] = lr
        return sil.item(), float(gn)

    def _sil_loss(self) -> torch.Tensor:
        """The flow-matching loss on one batch of ``sil_batch`` chunks from the self-imitation memory."""
        a = self.cfg.algo
        obs, actions, valid = self.memory.sample(a.sil_batch, self.rng)
        if a.sil_shift:
            obs = dataclasses.replace(obs, images=random_shift(obs.images, a.sil_shift, self.rng))
        return self.policy.sft_loss(obs, actions, valid, self.cfg.sft.timestep_sampling, self.sil_generator)

    def _critic_step(self, obs: Observation, prefix: Any, old_value: torch.Tensor, returns: torch.Tensor) -> float:
        """One value-loss step (no actor gradient: AdamW leaves the actor as it is); returns the loss."""
        a = self.cfg.algo
        value = self.policy.value(obs) if prefix is None else self.policy.value_of(prefix)
        mask = torch.ones(len(returns), dtype=torch.bool, device=returns.device)
        vl = value_loss(value, old_value, returns, mask, a.value_clip, a.value_loss, a.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        (a.value_coef * vl).backward()
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[1]["params"], a.grad_clip)
        self.optimizer.step()
        return vl.item()

    # ------------------------------------------------------------------ state
    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Optimizer state as flat tensors (safetensors) + JSON-able scalars."""
        sd = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, Any] = {"param_groups": sd["param_groups"], "steps": {}}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if k == "step":
                    scalars["steps"][str(pid)] = float(v)
                else:
                    tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
        return tensors, scalars

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
        state: dict[int, dict[str, Any]] = {}
        for key, v in tensors.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        for pid, step in scalars["steps"].items():
            state.setdefault(int(pid), {})["step"] = torch.tensor(step)
        self.optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


@dataclasses.dataclass
class CFMDraws:
    """fpo's fixed draws for one update, indexed by batch row: t [B, N], eps [B, N, H, K] (CPU),
    old_err [B, N] (the policy's device)."""

    t: torch.Tensor
    eps: torch.Tensor
    old_err: torch.Tensor


def concat_batches(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(
        obs=Observation.concat([p.obs for p in parts]),
        chunk=ActionChunk.concat([p.chunk for p in parts]),
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in
           ("exec_mask", "old_logp", "old_value", "advantages", "returns", "loss_mask", "versions")},
    )
