"""``EnvPool``: N envs stepped together, in-process or one simulator per subprocess.

Vector API (gymnasium-style, batched over N envs):

- ``reset(seeds=None, options=None) -> (obs, infos)``; ``obs = {"images": [N, C, S, S, 3] uint8,
  "proprio": [N, P] float32}``, ``infos`` a list of per-env dicts (instruction, task, success)
- ``step(actions [N, A]) -> obs, rewards [N], terminated [N], truncated [N], infos``
- ``execute_chunk(actions [N, H, A]) -> PoolChunk`` runs each env up to H sub-steps, stopping at
  its first done.

Auto-reset (same step): when an env's episode ends, it is reset at once; the returned ``obs`` is
the first observation of the new episode and the last observation of the finished one is kept in
``final_obs`` (needed to bootstrap on truncation). Episode seeds are deterministic:
``SeedSequence([seed, group, episode])`` where ``group`` is the env index, or the env's seed
group when ``seed_groups`` is given (envs of one group start every episode from the same state,
as GRPO needs). An observation or reward with NaN/inf marks the chunk ``bad``; the env is reset.

Subprocess mode gives crash isolation (a dead simulator raises ``EnvCrashed``; ``restart(i)``
brings it back) and hang detection (a call slower than ``step_timeout_s`` kills the process).
``python=`` starts the subprocesses with another interpreter (a simulator in its own venv).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlsys.config import EnvConfig
from rlsys.envs.api import ChunkStep, Embodiment, execute_chunk
from rlsys.registry import ENVS


class EnvCrashed(RuntimeError):
    """A simulator subprocess died or hung; ``env_index`` says which."""

    def __init__(self, env_index: int, message: str) -> None:
        super().__init__(f"env {env_index}: {message}")
        self.env_index = env_index


class EnvError(RuntimeError):
    """The simulator raised; the message carries its traceback."""


def make_single_env(cfg: EnvConfig) -> Any:
    """Build one env of ``cfg`` through the registry (lazy import of the simulator)."""
    factory = ENVS.get(cfg.name)
    kwargs: dict[str, Any] = {"cameras": cfg.cameras, "image_size": cfg.image_size, "render": cfg.render}
    if cfg.tasks:
        kwargs["tasks"] = cfg.tasks
    if cfg.max_episode_steps:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    if cfg.init_states:
        kwargs["init_states"] = cfg.init_states
    if cfg.reward != "sparse":
        kwargs["reward"] = cfg.reward
    if cfg.placement != "grid":
        kwargs["placement"] = cfg.placement
    return factory(**kwargs)


# Fault injection for benchmarks/chaos.py: a simulator subprocess started with RLSYS_FAULT_INJECTION=1
# in its environment turns SIGUSR1 into one poisoned step (a NaN observation, an inf reward), as a
# diverging simulator would produce. Off (no handler) otherwise.
FAULT_INJECTION_ENV = "RLSYS_FAULT_INJECTION"
_poison = {"armed": False}


class _PoisonedStep:
    """``env`` whose next ``step`` returns a NaN proprio observation and an inf reward."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def step(self, action: np.ndarray) -> Any:
        obs, _, terminated, truncated, info = self.env.step(action)
        obs = {**obs, "proprio": np.full_like(obs["proprio"], np.nan)}
        return obs, float("inf"), terminated, truncated, info


class _Server:
    """Runs commands against one env; used in-process and inside the subprocess loop."""

    def __init__(self, cfg: EnvConfig) -> None:
        self.env = make_single_env(cfg)

    def handle(self, cmd: str, payload: Any) -> Any:
        env = self.env
        if cmd == "spec":
            return (env.embodiment, env.cameras, env.task_names, env.observation_space, env.action_space,
                    env.max_episode_steps)
        if cmd == "reset":
            seed, options = payload
            return env.reset(seed=seed, options=options)
        if cmd == "step":
            return env.step(payload)
        if cmd == "chunk":
            actions, length, next_seed = payload
            if _poison["armed"]:  # fault injection (FAULT_INJECTION_ENV)
                _poison["armed"] = False
                res = execute_chunk(_PoisonedStep(env), actions, length)
            else:
                res = execute_chunk(env, actions, length)
            reset = env.reset(seed=next_seed) if res.done and next_seed is not None else None
            return res, reset
        if cmd == "privileged":
            return env.privileged_state()
        if cmd == "close":
            env.close()
            return None
        raise ValueError(f"unknown env command {cmd!r}")


def _subprocess_main(conn: Any, cfg: EnvConfig) -> None:
    if os.environ.get(FAULT_INJECTION_ENV) == "1":
        signal.signal(signal.SIGUSR1, lambda *_: _poison.update(armed=True))
    try:
        server = _Server(cfg)
        conn.send(("ok", None))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            cmd, payload = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        try:
            conn.send(("ok", server.handle(cmd, payload)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
        if cmd == "close":
            return


def _foreign_main(fd: int) -> None:
    """Entry point of a simulator process started with another interpreter (``python=``)."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    _subprocess_main(conn, conn.recv())


class _ForeignProcess:
    """A simulator process under another interpreter (its own venv). multiprocessing's spawn would
    hand the child this interpreter's ``sys.path``; a plain ``Popen`` keeps the child's own."""

    def __init__(self, python: str, cfg: EnvConfig) -> None:
        import subprocess

        self.conn, child = mp.Pipe()
        fd = child.fileno()
        self.popen = subprocess.Popen([python, "-c", f"from rlsys.envs.pool import _foreign_main; _foreign_main({fd})"],
                                      pass_fds=(fd,))
        child.close()
        self.conn.send(cfg)

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        self.popen.kill()

    def join(self, timeout: float | None = None) -> None:
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()


class _Remote:
    def __init__(self, cfg: EnvConfig, index: int, python: str | None) -> None:
        self.index, self.timeout = index, cfg.step_timeout_s
        self.proc: Any
        if python:
            foreign = _ForeignProcess(python, cfg)
            self.conn, self.proc = foreign.conn, foreign
        else:
            ctx = mp.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_subprocess_main, args=(child, cfg), daemon=True)
            self.proc.start()
            child.close()
        self.recv(timeout=max(self.timeout, 120.0))  # construction (imports, assets) can be slow

    def send(self, cmd: str, payload: Any = None) -> None:
        try:
            self.conn.send((cmd, payload))
        except (BrokenPipeError, OSError) as e:
            raise EnvCrashed(self.index, f"simulator process is gone ({e})") from e

    def recv(self, timeout: float | None = None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        if not self.conn.poll(timeout):
            self.kill()
            raise EnvCrashed(self.index, f"no answer within {timeout:.0f}s (hang); process killed")
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError) as e:
            code = self.proc.exitcode
            raise EnvCrashed(self.index, f"simulator process died (exit code {code})") from e
        if status == "error":
            raise EnvError(f"env {self.index} raised:\n{value}")
        return value

    def call(self, cmd: str, payload: Any = None) -> Any:
        self.send(cmd, payload)
        return self.recv()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)


class _Local:
    def __init__(self, cfg: EnvConfig, index: int) -> None:
        self.server = _Server(cfg)
        self._pending: Any = None

    def send(self, cmd: str, payload: Any = None) -> None:
        self._pending = self.server.handle(cmd, payload)

    def recv(self, timeout: float | None = None) -> Any:
        out, self._pending = self._pending, None
        return out

    def call(self, cmd: str, payload: Any = None) -> Any:
        return self.server.handle(cmd, payload)

    def kill(self) -> None:
        pass


@dataclass
class PoolChunk:
    """Result of ``EnvPool.execute_chunk`` for N envs (H = chunk length).

    obs:         observation to act on next (first obs of a new episode where one ended)
    final_obs:   last observation of each env's chunk (before any auto-reset)
    rewards [N, H] float32, exec_mask [N, H] bool, terminated/truncated/success/bad [N] bool
    instructions / tasks: for ``obs`` (the new episode's where one ended)
    episode_ids [N] int64: the episode each chunk belonged to
    """

    obs: dict[str, np.ndarray]
    final_obs: dict[str, np.ndarray]
    rewards: np.ndarray
    exec_mask: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    bad: np.ndarray
    instructions: list[str]
    tasks: list[str]
    episode_ids: np.ndarray


def _stack(obs_list: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}


class EnvPool:
    def __init__(
        self,
        cfg: EnvConfig,
        seed: int = 0,
        num_envs: int | None = None,
        env_id_offset: int = 0,
        seed_groups: list[int] | None = None,
        python: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.num_envs = num_envs or cfg.num_envs
        self.seed = seed
        self.env_ids = np.arange(env_id_offset, env_id_offset + self.num_envs, dtype=np.int64)
        self.seed_groups = list(seed_groups) if seed_groups is not None else list(self.env_ids)
        if len(self.seed_groups) != self.num_envs:
            raise ValueError(f"seed_groups: expected {self.num_envs} entries, got {len(self.seed_groups)}")
        self._python = python
        self._envs: list[Any] = [self._spawn(i) for i in range(self.num_envs)]
        spec = self._envs[0].call("spec")
        self.embodiment: Embodiment = spec[0]
        self.cameras: tuple[str, ...] = spec[1]
        self.task_names: tuple[str, ...] = spec[2]
        self.single_observation_space, self.single_action_space = spec[3], spec[4]
        self.max_episode_steps: int = int(spec[5])
        self._episode = np.zeros(self.num_envs, np.int64)
        self._last_obs: list[dict[str, np.ndarray]] = [{} for _ in range(self.num_envs)]
        self._instructions = [""] * self.num_envs
        self._tasks = [""] * self.num_envs
        self._chunk_len = 1  # sub-steps of the chunk being executed
        self._since_spawn = np.zeros(self.num_envs, np.int64)  # episodes each simulator process ran
        self.recycled = 0  # simulator processes replaced by env.recycle_every
        self.restarts = 0
        self.bad_episodes = 0

    def _spawn(self, i: int) -> Any:
        if not self.cfg.subprocess:
            return _Local(self.cfg, i)
        return _Remote(self.cfg, i, self._python or self.cfg.python or None)

    def episode_seed(self, i: int, episode: int) -> int:
        return int(np.random.SeedSequence([self.seed, int(self.seed_groups[i]), episode]).generate_state(1)[0])

    def episode_ids(self) -> np.ndarray:
        return self.env_ids * 1_000_000 + self._episode

    # ------------------------------------------------------------------ vector API
    def reset(
        self, seeds: list[int] | None = None, options: list[dict[str, Any] | None] | None = None,
        episode: int | None = None,
    ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        """``episode``: every env starts its episode number ``episode`` (its seed, its id), whatever ran
        before: episodic rollouts pass the iteration, so iteration k starts from the same states in a
        resumed run as in an uninterrupted one."""
        if episode is not None:
            self._episode[:] = episode
        for i, env in enumerate(self._envs):
            seed = seeds[i] if seeds is not None else self.episode_seed(i, int(self._episode[i]))
            env.send("reset", (seed, options[i] if options is not None else None))
        results = [env.recv() for env in self._envs]
        for i, (o, info) in enumerate(results):
            self._instructions[i], self._tasks[i] = info["instruction"], info["task"]
            self._last_obs[i] = o
        return _stack([r[0] for r in results]), [r[1] for r in results]

    def step(self, actions: np.ndarray):
        """One sub-step for every env (a chunk of length 1), gymnasium SAME_STEP auto-reset."""
        res = self.execute_chunk(np.asarray(actions)[:, None, :])
        infos = [
            {"instruction": self._instructions[i], "task": self._tasks[i], "success": bool(res.success[i]),
             **({"final_obs": {k: v[i] for k, v in res.final_obs.items()}}
                if res.terminated[i] or res.truncated[i] else {})}
            for i in range(self.num_envs)
        ]
        return res.obs, res.rewards[:, 0], res.terminated, res.truncated, infos

    def _receive(self, i: int) -> tuple[ChunkStep, Any]:
        """Env i's chunk result; a simulator that died or hung is replaced (``_replace_crashed``)."""
        try:
            return self._envs[i].recv()
        except EnvCrashed as e:
            return self._replace_crashed(i, e)

    def _replace_crashed(self, i: int, e: EnvCrashed) -> tuple[ChunkStep, Any]:
        """Env i's simulator died or hung: it is replaced (``restart``) and its chunk comes back ``bad``
        (its episode is dropped downstream), with the new episode's first observation as the reset."""
        if self.restarts == 0:
            print(f"rlsys: env {i}: {e}; restarted (its episode is dropped; counted as rollout/sim_restarts "
                  "and rollout/bad_episodes)", flush=True)
        h = self._chunk_len
        first = self.restart(i)
        self._episode[i] -= 1  # the caller's reset bookkeeping counts the new episode once
        lost = ChunkStep(self._last_obs[i], np.zeros(h, np.float32), np.zeros(h, bool), False, True, False, {},
                         bad=True)
        return lost, (first, {"instruction": self._instructions[i], "task": self._tasks[i]})

    def _maybe_recycle(self, i: int, reset: Any) -> Any:
        """``env.recycle_every``: past that many episodes, env i's process is replaced and the new one
        reset to the seed the old one just started (the same first observation for a seeded env)."""
        self._since_spawn[i] += 1
        if not self.cfg.recycle_every or self._since_spawn[i] < self.cfg.recycle_every:
            return reset
        self._envs[i].kill()
        self._envs[i] = self._spawn(i)
        self._since_spawn[i] = 0
        self.recycled += 1
        return self._envs[i].call("reset", (self.episode_seed(i, int(self._episode[i])), None))

    def _idle(self, i: int, h: int) -> ChunkStep:
        return ChunkStep(self._last_obs[i], np.zeros(h, np.float32), np.zeros(h, bool), False, False, False, {})

    def execute_chunk(self, actions: np.ndarray, lengths: np.ndarray | None = None,
                      autoreset: bool = True) -> PoolChunk:
        """``lengths[i]`` caps env i's sub-steps; 0 leaves env i untouched (no step, no reset).
        With ``autoreset=False`` an ended env is left as it is (the caller resets the pool)."""
        actions = np.asarray(actions, dtype=np.float32)
        n, h = actions.shape[:2]
        if n != self.num_envs:
            raise ValueError(f"execute_chunk: got actions for {n} envs, pool has {self.num_envs}")
        episode_ids = self.episode_ids()
        self._chunk_len = h
        active = [lengths is None or int(lengths[i]) > 0 for i in range(n)]
        lost: dict[int, EnvCrashed] = {}
        for i, env in enumerate(self._envs):
            if active[i]:
                length = int(lengths[i]) if lengths is not None else h
                nxt = self.episode_seed(i, int(self._episode[i]) + 1) if autoreset else None
                try:
                    env.send("chunk", (actions[i], length, nxt))
                except EnvCrashed as e:  # died since the last chunk
                    lost[i] = e
        out = [(self._replace_crashed(i, lost[i]) if i in lost else self._receive(i)) if active[i]
               else (self._idle(i, h), None) for i in range(n)]
        obs, final = [], []
        bad = np.zeros(n, bool)
        for i, (res, reset) in enumerate(out):
            bad[i] = res.bad
            if bad[i]:  # nothing non-finite leaves the pool; the episode is dropped downstream
                res.rewards[:] = np.nan_to_num(res.rewards, nan=0.0, posinf=0.0, neginf=0.0)
                res.obs = {k: np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for k, v in res.obs.items()}
            final.append(res.obs)
            if bad[i] and reset is None and autoreset:  # drop the episode: reset the env
                self.bad_episodes += 1
                reset = self._envs[i].call("reset", (self.episode_seed(i, int(self._episode[i]) + 1), None))
            elif bad[i]:
                self.bad_episodes += 1
            if res.done and not autoreset:
                self._episode[i] += 1
            if reset is not None:
                self._episode[i] += 1
                reset = self._maybe_recycle(i, reset)
                obs.append(reset[0])
                self._instructions[i], self._tasks[i] = reset[1]["instruction"], reset[1]["task"]
            else:
                obs.append(res.obs)
            self._last_obs[i] = obs[-1]
        return PoolChunk(
            obs=_stack(obs),
            final_obs=_stack(final),
            rewards=np.stack([r.rewards for r, _ in out]).astype(np.float32),
            exec_mask=np.stack([r.exec_mask for r, _ in out]),
            terminated=np.array([r.terminated for r, _ in out]) & ~bad,
            truncated=np.array([r.truncated for r, _ in out]) | bad,
            success=np.array([r.success for r, _ in out]) & ~bad,
            bad=bad,
            instructions=list(self._instructions),
            tasks=list(self._tasks),
            episode_ids=episode_ids,
        )

    @property
    def instructions(self) -> list[str]:
        return list(self._instructions)

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def privileged_state(self, i: int) -> dict[str, Any]:
        return self._envs[i].call("privileged")

    def restart(self, i: int) -> dict[str, np.ndarray]:
        """Replace env ``i`` (after EnvCrashed) with a fresh one; its episode is abandoned.

        Returns the new env's first observation."""
        self._envs[i].kill()
        self._envs[i] = self._spawn(i)
        self.restarts += 1
        self._episode[i] += 1
        obs, info = self._envs[i].call("reset", (self.episode_seed(i, int(self._episode[i])), None))
        self._instructions[i], self._tasks[i] = info["instruction"], info["task"]
        self._last_obs[i] = obs
        return obs

    def close(self) -> None:
        for env in self._envs:
            try:
                env.call("close")
            except (EnvCrashed, EnvError):
                pass
            env.kill()
        self._envs = []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
