"""Metric names, defined once; logs, TensorBoard and Ray metrics all use these strings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# rollout
ENV_STEPS = "rollout/env_steps"
ENV_STEPS_PER_S = "rollout/env_steps_per_s"
CHUNKS_PER_S = "rollout/chunks_per_s"
EPISODES = "rollout/episodes"
SUCCESS_RATE = "rollout/success_rate"
REWARD_PER_STEP = "rollout/reward_per_step"  # mean reward per executed env step (shaped rewards move first)
ACTOR_RESTARTS = "rollout/actor_restarts"
DISCARDED_SEGMENTS = "rollout/discarded_segments"
BAD_EPISODES = "rollout/bad_episodes"  # episodes dropped: NaN/inf, or their simulator died or hung
SIM_RESTARTS = "rollout/sim_restarts"  # simulator subprocesses replaced after dying or hanging
SIM_RECYCLED = "rollout/sim_recycled"  # simulator subprocesses replaced by env.recycle_every
# inference
INFER_BATCH_SIZE = "infer/batch_size"
INFER_LATENCY_S = "infer/latency_s"
INFER_QUEUE_DEPTH = "infer/queue_depth"  # peak pending requests in a policy actor this iteration
# requests re-sent through Ray actor calls after the zmq channel failed (summed over env workers)
TRANSPORT_FALLBACKS = "rollout/transport_fallbacks"
STATS_UNAVAILABLE = "rollout/stats_unavailable"  # env workers whose counters could not be read (restarting)
INFER_LATENCY_HIST = "infer/batch_latency_s"  # histogram of every inference batch's latency
INFER_GPU_MEMORY_GB = "infer/gpu_memory_gb"  # peak CUDA memory of the busiest policy actor (0 on the CPU)
# learner
POLICY_LOSS = "learner/policy_loss"
VALUE_LOSS = "learner/value_loss"
ENTROPY = "learner/entropy"
APPROX_KL = "learner/approx_kl"
CLIP_FRACTION = "learner/clip_fraction"
RATIO_MEAN = "learner/ratio_mean"
RATIO_MAX = "learner/ratio_max"
FIRST_RATIO_DEV = "learner/first_minibatch_ratio_dev"
EXPLAINED_VARIANCE = "learner/explained_variance"
GRAD_NORM = "learner/grad_norm"
EPOCHS_RUN = "learner/epochs_run"  # epochs (fractional) the update ran before algo.target_kl stopped it
CRITIC_EPOCHS_RUN = "learner/critic_epochs_run"  # the critic's epochs (target_kl does not stop them)
SAMPLES = "learner/samples"
SAMPLES_PER_S = "learner/samples_per_s"
STALENESS_MAX = "learner/staleness_max"
STALE_REJECTED = "learner/stale_rejected"
LEARNER_RESTARTS = "learner/restarts"  # learner actors restarted from the last checkpoint (a fault)
UPDATES_LOST = "learner/updates_lost"  # the updates those restarts lost (iterations since that checkpoint)
WEIGHT_VERSION = "learner/weight_version"
# torch CPU threads the update ran on (placement.learner_threads; the actor's inference runs on 1)
LEARNER_TORCH_THREADS = "learner/torch_threads"
LEARNER_GPU_MEMORY_GB = "learner/gpu_memory_gb"  # peak CUDA memory of the update (0 on the CPU)
SIL_LOSS = "learner/sil_loss"  # flow-matching loss on the imitation memory (rft, ppo_rft)
SIL_MEMORY_CHUNKS = "learner/sil_memory_chunks"  # chunks of successful episodes held for self-imitation
SIL_EPISODES = "learner/sil_episodes"  # successful episodes that entered the memory so far
SIL_STEPS_RUN = "learner/sil_steps_run"  # imitation-only steps after any PPO epochs (imitation.steps)
# grpo: fraction of groups whose rollouts disagree (not all failed, not all succeeded): the groups
# that carry a learning signal; the rest are dropped by grpo.filter_groups or have zero advantage
GROUPS_INFORMATIVE = "learner/groups_informative"
BROADCAST_S = "time/broadcast_s"  # ~0 where the workers already had the version (sent for an evaluation)
COLLECT_S = "time/collect_s"  # collecting the segments this iteration trains on
# the driver's wait for the update: with rollout.overlap it also covers collecting the next segments
UPDATE_S = "time/update_s"
LEARNER_S = "time/learner_s"  # the update itself, in the learner (time/update_s less any waiting)
SIL_S = "time/sil_s"  # the part of time/learner_s spent in the imitation-only steps (imitation.steps)
# with rollout.overlap: the part of the iteration in which collection and the update ran at once
OVERLAP_S = "time/overlap_s"
ITERATION_S = "time/iteration_s"
EVAL_SUCCESS = "eval/success_rate"

LEARNER_KEYS = {
    "policy_loss": POLICY_LOSS, "value_loss": VALUE_LOSS, "entropy": ENTROPY, "approx_kl": APPROX_KL,
    "clip_fraction": CLIP_FRACTION, "ratio_mean": RATIO_MEAN, "ratio_max": RATIO_MAX,
    "first_minibatch_ratio_dev": FIRST_RATIO_DEV, "explained_variance": EXPLAINED_VARIANCE,
    "grad_norm": GRAD_NORM, "epochs_run": EPOCHS_RUN, "critic_epochs_run": CRITIC_EPOCHS_RUN,
    "samples": SAMPLES, "samples_per_s": SAMPLES_PER_S,
    "staleness_max": STALENESS_MAX, "stale_rejected": STALE_REJECTED, "gpu_memory_gb": LEARNER_GPU_MEMORY_GB,
    "sil_loss": SIL_LOSS, "sil_memory_chunks": SIL_MEMORY_CHUNKS, "sil_episodes": SIL_EPISODES,
    "sil_steps_run": SIL_STEPS_RUN, "sil_seconds": SIL_S, "update_seconds": LEARNER_S,
    "groups_informative": GROUPS_INFORMATIVE, "torch_threads": LEARNER_TORCH_THREADS,
}


ALL = sorted(v for k, v in list(globals().items()) if k.isupper() and isinstance(v, str) and "/" in v)


def prometheus_name(key: str) -> str:
    """``rollout/env_steps_per_s`` -> ``rlsys_rollout_env_steps_per_s`` (what Grafana queries)."""
    return "rlsys_" + key.replace("/", "_")


class RayMetrics:
    """Per-iteration values as ``ray.util.metrics`` gauges (Prometheus via Ray's metrics agent),
    tagged with the run name; env steps also as a counter."""

    def __init__(self, run: str) -> None:
        from ray.util import metrics

        self._m = metrics
        self.tags = {"run": run}
        self._gauges: dict[str, Any] = {}
        self._steps = metrics.Counter(prometheus_name("rollout/env_steps_total"), "env steps", tag_keys=("run",))
        self._latency = metrics.Histogram(prometheus_name(INFER_LATENCY_HIST), "inference batch latency (s)",
                                          boundaries=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
                                          tag_keys=("run",))

    def record(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in ALL or key == INFER_LATENCY_HIST or not isinstance(value, (int, float)):
                continue
            if key not in self._gauges:
                self._gauges[key] = self._m.Gauge(prometheus_name(key), key, tag_keys=("run",))
            self._gauges[key].set(float(value), tags=self.tags)
        if ENV_STEPS in row:
            self._steps.inc(float(row[ENV_STEPS]), tags=self.tags)
        for v in row[INFER_LATENCY_HIST] if isinstance(row.get(INFER_LATENCY_HIST), list) else ():
            self._latency.observe(float(v), tags=self.tags)


class MetricsLogger:
    """JSONL (always), TensorBoard, Ray/Prometheus gauges (when Ray is up) and the experiment trackers
    ``tracking`` names (``rlsys.trackers``) for one run; ``config``: the run's config, for the trackers.

    A tracker that fails (a server gone, a full disk) is reported once and dropped: the run goes on,
    metrics.jsonl stays complete."""

    def __init__(self, run_dir: Path, tracking: Any = None, config: dict[str, Any] | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.ray: RayMetrics | None = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is a core dependency; tolerate a trimmed install
            self.tb = None
        self.trackers: dict[str, Any] = {}
        if tracking is not None and tracking.trackers:
            from rlsys.registry import TRACKERS

            for name in tracking.trackers:
                self.trackers[name] = TRACKERS.build(name, run_dir, config or {}, tracking)
                print(f"metrics: {name} -> {self.trackers[name].where}", flush=True)

    def _to_trackers(self, step: int, row: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.log(step, scalars)
            except Exception as e:  # a tracker is never required
                print(f"metrics: tracker {name} failed ({type(e).__name__}: {e}); it is dropped, "
                      f"{self.path} keeps every row", flush=True)
                del self.trackers[name]

    def log(self, step: int, row: dict[str, Any]) -> None:
        if self.ray is None:
            import ray

            if ray.is_initialized():
                self.ray = RayMetrics(self.path.parent.name)
        if self.ray is not None:
            self.ray.record(row)
        with open(self.path, "a") as f:
            f.write(json.dumps({"iteration": step, **row}) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
                elif k == INFER_LATENCY_HIST and v:
                    self.tb.add_histogram(k, np.asarray(v, dtype=np.float32), step)
            self.tb.flush()
        self._to_trackers(step, row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        for tracker in self.trackers.values():
            try:
                tracker.close()
            except Exception as e:
                print(f"metrics: closing {type(tracker).__name__} failed: {e}", flush=True)
        self.trackers = {}
