"""The Ray layer: actors, placement, weight broadcast, restarts. Everything else is plain classes.

- ``EnvWorker`` wraps ``EnvWorkerCore`` (CPU, custom resource ``sim`` when disaggregated).
- ``InferenceActor`` wraps an ``InferenceEngine`` and batches the requests of all env workers
  (``max_batch`` / ``max_wait_ms``); ``LearnerActor`` wraps a ``Learner``; in ``collocated``
  placement ``CollocatedActor`` composes both roles on one copy of the weights.
- Weights: the learner ``ray.put``s its state once per version; the same ObjectRef goes to
  every inference worker. Chunks carry the version; the learner enforces ``max_staleness``.
- Faults: every actor restarts automatically (``max_restarts=-1``). A segment from an env worker
  that died is discarded and the worker is rebuilt; inference calls are retried on a live worker,
  and a restarted inference worker pulls the current weights from the learner. A restarted learner
  would start over from the initial weights, so a learner call that finds it gone raises
  ``LearnerLost``; the training loop then has ``recover_learner`` load the last checkpoint (with its
  optimiser state) into it and give it a version above every one handed out, and the next
  broadcast replaces what the inference workers hold.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from rlsys.actors.env_worker import EnvWorkerCore
from rlsys.actors.inference import InferenceEngine
from rlsys.actors.transport import TransportError, ZmqClient, ZmqServer
from rlsys.config import ConfigError, TrainConfig
from rlsys.evaluation import evaluate
from rlsys.learner.learner import Learner
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.types import ActionChunk, LearnerLost, Observation, Segment
from rlsys.weights import load_numpy_state, split_state, state_to_numpy

RESTART = {"max_restarts": -1}
RETRY = {"max_restarts": -1, "max_task_retries": -1}
# a learner call that fails with one of these found the learner process gone (it is restarting)
LEARNER_GONE = (RayActorError, ActorUnavailableError, ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError)


def _gone(e: BaseException) -> bool:
    """A learner-side failure that means the process died (also when it reached us inside a task error:
    an inference worker fetching weights the dead learner owned)."""
    return isinstance(e, LEARNER_GONE) or isinstance(getattr(e, "cause", None), LEARNER_GONE)

def ensure_ray(cfg: TrainConfig, num_cpus: int | None = None) -> bool:
    """Start a local Ray (loopback only) unless one is already connected; True if it started one."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    r = cfg.rollout
    need = r.num_env_workers + r.num_inference_workers + 2
    ray.init(num_cpus=max(os.cpu_count() or 1, num_cpus or need),
             resources={cfg.placement.sim_resource: r.num_env_workers},
             include_dashboard=False, log_to_driver=True, _node_ip_address="127.0.0.1")
    return True


def start_ray(cfg: TrainConfig) -> None:
    """``ensure_ray``; where that started a local instance, the GPU requests are checked against it;
    on a cluster rlsys did not start, every actor's request against its nodes and autoscaler
    (``rlsys.actors.capacity``)."""
    if ensure_ray(cfg):
        check_local_gpus(cfg)
    else:
        from rlsys.actors.capacity import check_cluster

        check_cluster(cfg)


def actor_options(cfg: TrainConfig, role: str) -> dict[str, Any]:
    """Ray resource requests per role for the placement mode (one place decides placement)."""
    p = cfg.placement
    if role == "env":
        opts: dict[str, Any] = {"num_cpus": 1}
        if p.mode in ("disaggregated", "pipelined"):
            opts["resources"] = {p.sim_resource: 1}
        return opts
    if role == "infer" and p.mode == "collocated":
        raise ValueError("collocated placement serves inference from the learner")
    gpu = (p.learner_gpus if role == "learner" else p.inference_gpus) if p.use_gpu else 0
    return {"num_cpus": 1, "num_gpus": gpu}


def gpu_requests(cfg: TrainConfig) -> list[float]:
    """The GPUs each policy actor of this config asks Ray for (empty without ``use_gpu``)."""
    if not cfg.placement.use_gpu:
        return []
    learner = [actor_options(cfg, "learner")["num_gpus"]]
    if cfg.placement.mode == "collocated":  # the learner serves inference
        return learner
    return learner + [actor_options(cfg, "infer")["num_gpus"]] * cfg.rollout.num_inference_workers


def gpus_fit(requests: list[float], gpus: int) -> bool:
    """Whether Ray can place these GPU requests on ``gpus`` cards at once: a whole number takes
    that many free cards, a fraction shares one card with others whose fractions sum to <= 1."""
    free = [1.0] * gpus
    for r in sorted(requests, reverse=True):
        if r >= 1:
            whole = [i for i, f in enumerate(free) if f == 1.0][: int(r)]
            if len(whole) < r:
                return False
            for i in whole:
                free[i] = 0.0
        else:
            i = next((i for i, f in enumerate(free) if f >= r - 1e-9), None)
            if i is None:
                return False
            free[i] -= r
    return True


def check_local_gpus(cfg: TrainConfig) -> None:
    """On a Ray instance started here (one machine, no autoscaler to add GPU nodes), fail before
    any actor starts when the policy actors' GPU requests cannot all be placed: Ray would leave
    them pending forever."""
    requests = gpu_requests(cfg)
    have = int(ray.cluster_resources().get("GPU", 0))
    if requests and not gpus_fit(requests, have):
        p = cfg.placement
        raise ConfigError(
            f"placement.use_gpu=true asks for GPUs {requests} (learner_gpus={p.learner_gpus}, "
            f"inference_gpus={p.inference_gpus} x {len(requests) - 1} inference workers, mode={p.mode}) but this "
            f"machine's Ray sees {have} GPU(s). Share a card with fractions, e.g. --set placement.learner_gpus=0.5 "
            f"--set placement.inference_gpus=0.5, or use placement.mode=collocated, or placement.use_gpu=false")


@ray.remote
class EnvWorker:
    def __init__(self, cfg: TrainConfig, index: int, episodic: bool) -> None:
        torch.set_num_threads(1)
        self.core = EnvWorkerCore(cfg, index, episodic)
        self.index = index
        self._clients: dict[str, ZmqClient] = {}
        self.transport_fallbacks = 0  # requests re-sent through Ray after the zmq channel failed

    def _fell_back(self, why: str) -> None:
        """Counted (``rollout/transport_fallbacks``) and said once per worker, never silent."""
        if self.transport_fallbacks == 0:
            print(f"rlsys: env worker {self.index}: zmq transport unavailable ({why}); this and later failures "
                  "re-send through Ray actor calls (counted as rollout/transport_fallbacks)", flush=True)
        self.transport_fallbacks += 1

    def rollout(self, policy_actors: list[Any], iteration: int | None = None) -> Segment:
        """Requests go out asynchronously (so env groups overlap with inference); a request whose
        inference worker died is re-sent to the next live one (through Ray). ``iteration``: the
        episode number episodic rollouts start (``EnvWorkerCore.rollout``)."""
        order = [policy_actors[(self.index + i) % len(policy_actors)] for i in range(len(policy_actors))]
        # zmq channel to the first worker; after one failure the rest of the segment goes through Ray
        live = {"zmq": self._zmq_client(order[0]) if self.core.cfg.rollout.transport == "zmq" else None}

        def submit(obs: Observation) -> tuple[Observation, Any, ZmqClient | None]:
            z = live["zmq"]
            return (obs, z.submit(obs), z) if z is not None else (obs, order[0].infer.remote(obs), None)

        def call(method: str, obs: Observation, ref: Any = None) -> Any:
            last: Exception | None = None
            for i, actor in enumerate(order):
                try:
                    return ray.get(ref if i == 0 and ref is not None else getattr(actor, method).remote(obs))
                except (RayActorError, RayTaskError) as e:
                    last = e
            raise RuntimeError(f"no inference worker answered: {last}")

        def wait(handle: tuple[Observation, Any, ZmqClient | None]) -> ActionChunk:
            obs, ref, z = handle
            if z is None:
                return call("infer", obs, ref)
            try:
                return z.wait(ref)
            except TransportError as e:  # worker gone or restarting: Ray path, fresh endpoint next segment
                self._fell_back(str(e))
                self._clients.pop(z.endpoint, None)
                live["zmq"] = None
                return call("infer", obs)

        return self.core.rollout(submit, wait, lambda obs: call("values", obs), iteration)

    def _zmq_client(self, actor: Any) -> ZmqClient | None:
        try:
            endpoint = ray.get(actor.zmq_endpoint.remote(), timeout=60)
        except (RayActorError, RayTaskError, ActorUnavailableError, ray.exceptions.GetTimeoutError) as e:
            self._fell_back(f"no endpoint: {type(e).__name__}")
            return None  # this segment goes through Ray
        if endpoint not in self._clients:
            self._clients[endpoint] = ZmqClient(endpoint, ActionChunk, self.core.cfg.rollout.zmq_timeout_s)
        return self._clients[endpoint]

    def stats(self) -> dict[str, Any]:
        return {**self.core.stats(), "transport_fallbacks": self.transport_fallbacks}

    def null_rollout(self, chunks: int) -> tuple[int, float]:
        return self.core.null_rollout(chunks)

    def pid(self) -> int:
        return os.getpid()


class _TorchThread:
    """Every torch call of an actor runs on this one thread. A second thread that runs OpenMP regions in
    the same process (the actor's constructor on the main thread, say) slowed every later learner step
    ~1.5x on 2 cores, so nothing torch touches runs anywhere else. Inference runs on 1 torch thread (in
    collocated placement the env workers step on the other cores meanwhile); updates on
    ``placement.learner_threads``."""

    def __init__(self, role: str) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"torch-{role}", initializer=torch.set_num_threads,
                                       initargs=(1,))

    def run(self, fn: Any, *args: Any) -> Any:
        """Blocking: ``fn(*args)`` on the torch thread (constructors)."""
        return self.pool.submit(fn, *args).result()

    def call(self, fn: Any, *args: Any, threads: int = 1) -> asyncio.Future:
        """Awaitable: ``fn(*args)`` on the torch thread with ``threads`` torch threads."""
        def call() -> Any:
            if torch.get_num_threads() != threads:  # only this thread sets it in this process
                torch.set_num_threads(threads)
            return fn(*args)

        return asyncio.get_running_loop().run_in_executor(self.pool, call)


def _device(cfg: TrainConfig, role: str) -> str:
    """cuda where placement.use_gpu asks for it; no silent fall-back to the CPU (a slow run nobody asked for)."""
    if not cfg.placement.use_gpu:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if cfg.placement.allow_cpu_fallback:
        print(f"rlsys: placement.allow_cpu_fallback: this {role} actor runs on the CPU (torch sees no CUDA)",
              flush=True)
        return "cpu"
    raise RuntimeError(
        f"placement.use_gpu=true but this {role} actor's torch sees no CUDA device (torch {torch.__version__}, "
        f"CUDA build {torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
        "install a CUDA build of torch on the GPU nodes, or set placement.allow_cpu_fallback=true to run it on the CPU")


class _InferenceRole:
    """Batched inference: requests from all env workers (Ray calls or the zmq channel) wait in one queue
    and are answered ``rollout.max_batch`` at a time, or after ``rollout.max_wait_ms``."""

    cfg: TrainConfig
    engine: InferenceEngine
    torch_thread: _TorchThread

    def _init_inference(self) -> None:
        self._queue: list[tuple[Observation, asyncio.Future]] = []
        self._full = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one torch job at a time: inference, weight loads, updates
        self.batch_sizes: list[int] = []
        self.latencies: list[float] = []
        self.queue_peak = 0
        self._zmq: ZmqServer | None = None

    async def zmq_endpoint(self) -> str:
        """Start (once) the zmq channel that feeds the same batching queue as ``infer``."""
        if self._zmq is None:
            self._zmq = ZmqServer(ray.util.get_node_ip_address(), Observation, self.infer)
            self._zmq.start()
        return self._zmq.endpoint

    async def infer(self, obs: Observation) -> ActionChunk:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((obs, fut))
        self.queue_peak = max(self.queue_peak, len(self._queue))
        if sum(o.batch_size for o, _ in self._queue) >= self.cfg.rollout.max_batch:
            self._full.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
            await asyncio.wait_for(self._full.wait(), self.cfg.rollout.max_wait_ms / 1000.0)
        except asyncio.TimeoutError:
            pass
        while self._queue:
            self._full.clear()
            batch, total = [], 0
            while self._queue and (not batch or total + self._queue[0][0].batch_size <= self.cfg.rollout.max_batch):
                item = self._queue.pop(0)
                batch.append(item)
                total += item[0].batch_size
            obs = Observation.concat([o for o, _ in batch])
            t0 = time.perf_counter()
            async with self._lock:
                try:
                    chunk = await self.torch_thread.call(self.engine.infer, obs)
                except Exception as e:  # hand the error to every waiting request
                    for _, fut in batch:
                        fut.set_exception(e)
                    continue
            self.latencies.append(time.perf_counter() - t0)
            self.batch_sizes.append(total)
            start = 0
            for o, fut in batch:
                fut.set_result(chunk.index(slice(start, start + o.batch_size)))
                start += o.batch_size

    async def values(self, obs: Observation) -> np.ndarray:
        async with self._lock:
            return await self.torch_thread.call(self.engine.values, obs)

    async def evaluate(self, env_cfg: Any, embodiment: Any, kwargs: dict[str, Any]
                       ) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
        """The periodic evaluation (``rlsys.evaluation.evaluate``, ODE) on this worker's weights and
        device, with its simulators started here: the driver never builds the policy (a VLA's would
        not fit there). -> (the result with the weights' version, each task's first-episode frames)."""
        videos: dict[str, list[np.ndarray]] = {}

        def run() -> dict[str, Any]:
            res = evaluate(self.engine.policy, env_cfg, embodiment, videos=videos, **kwargs)
            return {**res, "version": self.engine.version}

        async with self._lock:
            res = await self.torch_thread.call(run)
        return res, videos

    async def infer_stats(self) -> dict[str, Any]:
        b, lat, peak = self.batch_sizes, self.latencies, self.queue_peak
        self.batch_sizes, self.latencies, self.queue_peak = [], [], 0
        dev = self.engine.policy.device
        gpu_gb = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
        return {"batch_size": float(np.mean(b)) if b else 0.0, "latency_s": float(np.mean(lat)) if lat else 0.0,
                "batches": float(len(b)), "version": float(self.engine.version), "queue_peak": float(peak),
                "latencies": lat, "gpu_memory_gb": gpu_gb}

    async def pid(self) -> int:
        return os.getpid()


class _LearnerRole:
    """The learner: updates, the published weights (one ``ray.put`` per version) and the training state."""

    cfg: TrainConfig
    learner: Learner
    torch_thread: _TorchThread
    _lock: asyncio.Lock

    def _init_learner(self, init_state: Any, seed: int, demo_frames: Any, device: str) -> FlowPolicy:
        """``init_state``: the weights, or ``[ObjectRef]`` of them. The driver lets that object go once
        the learner is up, so a restart (Ray re-runs this constructor) finds it gone and starts from
        fresh weights, which the driver then replaces (``RaySystem.recover_learner``)."""
        if isinstance(init_state, list):
            try:
                init_state = ray.get(init_state[0], timeout=60)
            except (ray.exceptions.ObjectLostError, ray.exceptions.ReferenceCountingAssertionError,
                    ray.exceptions.OwnerDiedError, ray.exceptions.GetTimeoutError):
                init_state = None
        torch.manual_seed(seed)
        policy = FlowPolicy(self.cfg.policy).to(device)
        if init_state is not None:
            load_numpy_state(policy, init_state)
        self.learner = Learner(self.cfg, policy, seed, demo_frames=demo_frames)
        self._incarnation = uuid.uuid4().hex  # a new one after every (re)start of this actor
        self._trained = self.learner.trained_names()
        self._published: tuple[int, list[Any]] | None = None
        self._rest: Any = None  # ObjectRef of what no optimizer changes, put once
        return policy

    async def publish(self) -> tuple[int, list[Any]]:
        """(version, [ObjectRef of the trained entries, ObjectRef of the rest]) -- the trained part is
        ``ray.put`` once per version, the rest (a frozen backbone, the normalisation) once per run
        (a worker joins them). The version moves only when an update has
        finished its steps, so a call during an update (an inference worker restarted while
        rollout.overlap collects) gets the weights the other workers hold, never a torn copy."""
        if self._published is None or self._published[0] != self.learner.version:
            version, (trained, rest) = await self.torch_thread.call(
                lambda: (self.learner.version, split_state(self.learner.policy, self._trained)))
            if self._rest is None:
                self._rest = ray.put(rest)
            self._published = (version, [ray.put(trained), self._rest])
        return self._published

    async def update(self, segments: list[Segment]) -> dict[str, float]:
        async with self._lock:
            metrics = await self.torch_thread.call(self._update, segments, threads=self.cfg.placement.learner_threads)
        self._updated()
        return metrics

    def _update(self, segments: list[Segment]) -> dict[str, float]:
        metrics = self.learner.update(segments)
        metrics["torch_threads"] = float(torch.get_num_threads())  # placement.learner_threads, as set
        return metrics

    def _updated(self) -> None:
        """After an update or a loaded state: nothing to do unless this actor also serves inference."""

    async def training_state(self, trained_only: bool = False) -> dict[str, Any]:
        """What a checkpoint holds. ``trained_only``: where parts of the policy never train (frozen,
        LoRA-adapted), ``policy`` holds only the trained entries and ``complete`` is False."""
        return await self.torch_thread.call(self._training_state, trained_only)

    def _training_state(self, trained_only: bool = False) -> dict[str, Any]:
        tensors, scalars = self.learner.optimizer_state()
        frozen = any(id(p) not in self.learner.trained_ids() for p in self.learner.policy.parameters())
        partial = trained_only and frozen
        imitation = self.learner.imitation_state()
        return {"policy": state_to_numpy(self.learner.policy, self._trained if partial else None),
                "imitation": None if imitation is None else imitation[0],
                "imitation_scalars": None if imitation is None else imitation[1],
                "complete": not partial, "optimizer": tensors, "optimizer_scalars": scalars,
                "version": self.learner.version, "iteration": self.learner.iteration,
                "rng": self.learner.rng.bit_generator.state}

    async def load_training_state(self, state: dict[str, Any]) -> None:
        await self.torch_thread.call(self._load_training_state, state)
        self._updated()

    async def incarnation(self) -> str:
        """Which start of this actor answers: the driver notices a restart even when no call failed
        (a call queued during the restart runs on the fresh actor)."""
        return self._incarnation

    async def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """A restarted learner before the first checkpoint: the run's initial weights (fresh optimiser)."""
        async with self._lock:
            await self.torch_thread.call(load_numpy_state, self.learner.policy, weights)
            self._published = self._rest = None

    async def set_version(self, version: int) -> int:
        """After a restart: number the restored weights above every version handed out before, so
        samples from the lost weights can never pass as fresh."""
        async with self._lock:
            self.learner.version = version
            self._published = None
            self._updated()
        return version

    def _load_training_state(self, state: dict[str, Any]) -> None:
        load_numpy_state(self.learner.policy, state["policy"])
        self._published = self._rest = None  # every part may have changed
        self.learner.load_optimizer_state(state["optimizer"], state["optimizer_scalars"])
        self.learner.version, self.learner.iteration = state["version"], state["iteration"]
        self.learner.rng.bit_generator.state = state["rng"]
        if state.get("imitation") is not None:  # checkpoints written before the memory was kept: refills
            self.learner.load_imitation_state(state["imitation"], state["imitation_scalars"])


@ray.remote
class InferenceActor(_InferenceRole):
    """An inference worker with its own copy of the weights; a (re)started one pulls the learner's."""

    def __init__(self, cfg: TrainConfig, learner: Any = None, seed: int = 0) -> None:
        self.cfg, self.torch_thread = cfg, _TorchThread("infer")
        device = _device(cfg, "inference")
        self.engine = self.torch_thread.run(lambda: InferenceEngine(cfg, seed=seed, device=device))
        self._init_inference()
        self._rest_id = ""  # the rest-of-the-weights object this worker holds
        if learner is not None:
            version, (trained, rest) = ray.get(learner.publish.remote())
            self.torch_thread.run(self.engine.set_weights, {**ray.get(rest), **ray.get(trained)}, version)
            self._rest_id = rest.hex()

    async def set_weights(self, trained: dict[str, np.ndarray], version: int, rest: list[Any]) -> int:
        """``trained``: the entries updates change; ``rest``: [ObjectRef] of the others, fetched only
        when it is not the one already loaded."""
        async with self._lock:
            if rest[0].hex() != self._rest_id:
                full = {**(await rest[0]), **trained}
                await self.torch_thread.call(self.engine.set_weights, full, version)
                self._rest_id = rest[0].hex()
            else:
                await self.torch_thread.call(self.engine.set_weights, trained, version, True)
        return version


@ray.remote
class LearnerActor(_LearnerRole):
    """The learner apart from inference (disaggregated and pipelined placement)."""

    def __init__(self, cfg: TrainConfig, init_state: dict[str, np.ndarray] | None = None, seed: int = 0,
                 demo_frames: Any = None) -> None:
        self.cfg, self.torch_thread = cfg, _TorchThread("learner")
        device = _device(cfg, "learner")
        self.torch_thread.run(self._init_learner, init_state, seed, demo_frames, device)
        self._lock = asyncio.Lock()

    async def pid(self) -> int:
        return os.getpid()


@ray.remote
class CollocatedActor(_LearnerRole, _InferenceRole):
    """Collocated placement: the learner and an inference server on one copy of the weights, time-sliced
    on one torch thread; inference answers with the new weights as soon as an update ends."""

    def __init__(self, cfg: TrainConfig, init_state: dict[str, np.ndarray] | None = None, seed: int = 0,
                 demo_frames: Any = None) -> None:
        self.cfg, self.torch_thread = cfg, _TorchThread("learner")
        device = _device(cfg, "learner")

        def build() -> None:
            policy = self._init_learner(init_state, seed, demo_frames, device)
            self.engine = InferenceEngine(cfg, policy, seed=seed, device=device)

        self.torch_thread.run(build)
        self._init_inference()
        self._updated()

    def _updated(self) -> None:
        self.engine.version = self.learner.version


class RaySystem:
    """Starts and drives the actors for one run (placement from ``cfg.placement.mode``)."""

    def __init__(self, cfg: TrainConfig, init_state: dict[str, np.ndarray], episodic: bool,
                 demo_frames: Any = None) -> None:
        """``demo_frames``: the SFT demo frames that join an imitating algorithm's memory (``imitation.demos``)."""
        start_ray(cfg)
        self.cfg, self.episodic = cfg, episodic
        r = cfg.rollout
        # Ray restarts a dead learner with its constructor's arguments (the initial weights): its calls
        # are not retried, so the driver hears of the death (LearnerLost) and restores it.
        collocated = cfg.placement.mode == "collocated"
        learner_cls = CollocatedActor if collocated else LearnerActor
        # the initial weights travel as a nested reference the driver holds only until the learner is up
        # (a VLA's would otherwise stay in the object store all run); the demo frames stay for restarts
        self._init_ref: Any = ray.put(init_state)
        self._demo_ref = ray.put(demo_frames)
        self.learner = learner_cls.options(**actor_options(cfg, "learner"), **RESTART).remote(
            cfg, [self._init_ref], seed=cfg.seed, demo_frames=self._demo_ref)
        self.learner_restarts = 0
        self.max_version = 0  # the highest weight version handed out
        self.broadcast_version: int | None = None  # the version the inference workers were last sent
        self.incarnation: str | None = None  # the learner start whose state the driver knows (first call)
        if collocated:
            self.infer = [self.learner]
        else:
            self.infer = [InferenceActor.options(**actor_options(cfg, "infer"), **RETRY).remote(
                cfg, learner=self.learner, seed=cfg.seed + 1 + i) for i in range(r.num_inference_workers)]
        self.env_workers = [EnvWorker.options(**actor_options(cfg, "env"), **RESTART).remote(cfg, i, episodic)
                            for i in range(r.num_env_workers)]
        self.worker_restarts = 0
        self.discarded_segments = 0
        self.stats_unavailable = 0  # env workers that could not report their counters (restarting)

    def _learner(self, ref: Any) -> Any:
        """``ray.get`` of a learner call; LearnerLost where the learner process died."""
        try:
            return ray.get(ref)
        except (RayTaskError, *LEARNER_GONE) as e:
            if _gone(e):
                raise LearnerLost(f"the learner actor died ({type(e).__name__})") from e
            raise

    def check_learner(self) -> None:
        """LearnerLost if the learner is not the one whose state the driver knows (it restarted)."""
        now = self._learner(self.learner.incarnation.remote())
        if self.incarnation is None:
            self.incarnation = now
            self._init_ref = None  # the learner has its weights: the object store may let them go
        elif now != self.incarnation:
            raise LearnerLost("the learner actor was restarted")

    def evaluate(self, env_cfg: Any, embodiment: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, list]]:
        """The periodic evaluation of the learner's current weights, run by the first inference worker
        (the collocated actor) after it got them: ``InferenceRole.evaluate``."""
        self.sync_weights()
        ref = self.infer[0].evaluate.remote(env_cfg, embodiment, kwargs)
        return self._learner(ref) if self.infer[0] is self.learner else ray.get(ref)

    def training_state(self, trained_only: bool = False) -> dict[str, Any]:
        """What a checkpoint holds; never a restarted learner's initial state."""
        state = self._learner(self.learner.training_state.remote(trained_only=trained_only))
        self.check_learner()
        return state

    def sync_weights(self) -> tuple[int, float]:
        """Broadcast the learner's current weights (one ray.put, same ref to all). -> (version, seconds)."""
        t0 = time.perf_counter()
        self.check_learner()
        version, (trained, rest) = self._learner(self.learner.publish.remote())
        # a version the workers hold already (sent for the evaluation after the last update) is not sent
        # again; a restarted worker pulls the learner's weights itself
        if self.infer[0] is not self.learner and version != self.broadcast_version:
            self._learner([w.set_weights.remote(trained, version, [rest]) for w in self.infer])
            self.broadcast_version = version
        self.max_version = max(self.max_version, version)
        return version, time.perf_counter() - t0

    def recover_learner(self, state: dict[str, Any], timeout_s: float = 300.0) -> int:
        """After LearnerLost: wait for Ray's restart of the learner, load ``state`` (the training state
        of the last checkpoint, or ``{"policy": the run's initial weights}`` before the first one) and
        number the weights above every version handed out (+ max_staleness, so no sample of the lost
        weights passes the staleness check). -> that version; the next ``sync_weights`` re-broadcasts it."""
        self.learner_restarts += 1
        deadline = time.time() + timeout_s
        while True:
            try:
                self.incarnation = ray.get(self.learner.incarnation.remote(), timeout=30)
                break
            except (RayActorError, ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(1.0)
        if "optimizer" in state:
            ray.get(self.learner.load_training_state.remote(state))
        else:
            ray.get(self.learner.load_weights.remote(state["policy"]))
        version = self.max_version + 1 + self.cfg.rollout.max_staleness
        ray.get(self.learner.set_version.remote(version))
        self.max_version = version
        return version

    def collect(self, iteration: int | None = None) -> list[Segment]:
        """One segment per env worker, in worker order (``iteration``: for episodic rollouts)."""
        futures = [w.rollout.remote(self.infer, iteration) for w in self.env_workers]
        segments: list[Segment] = []
        for fut in futures:
            try:
                segments.append(ray.get(fut))
            except (RayActorError, RayTaskError, ActorUnavailableError) as e:
                # partial segment discarded; Ray restarts the actor (its constructor rebuilds the pool)
                self.discarded_segments += 1
                self.worker_restarts += isinstance(e, RayActorError)
        return segments

    def update(self, segments: list[Segment]) -> dict[str, float]:
        return self.finish_update(self.start_update(segments))

    def start_update(self, segments: list[Segment]) -> Any:
        """The update runs in the learner's actor; the driver may collect meanwhile (rollout.overlap)."""
        return self.learner.update.remote(segments)

    def finish_update(self, pending: Any) -> dict[str, float]:
        metrics = self._learner(pending)
        self.check_learner()  # the update ran on the learner the driver knows, not a fresh restart
        return metrics

    def stats(self) -> dict[str, Any]:
        env = []
        for w in self.env_workers:
            try:
                env.append(ray.get(w.stats.remote(), timeout=60))
            except (RayActorError, RayTaskError, ActorUnavailableError, ray.exceptions.GetTimeoutError) as e:
                # restarting: its counters start again with the new process
                if self.stats_unavailable == 0:
                    print(f"rlsys: an env worker's stats are unavailable ({type(e).__name__}); counted as "
                          "rollout/stats_unavailable", flush=True)
                self.stats_unavailable += 1
        get = self._learner if self.infer[0] is self.learner else ray.get  # collocated: the learner answers
        infer = get([w.infer_stats.remote() for w in self.infer])
        return {"env": env, "infer": infer}

    def shutdown(self) -> None:
        for a in [*self.env_workers, *self.infer, self.learner]:
            ray.kill(a, no_restart=True)
