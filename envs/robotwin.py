"""RoboTwin 2.0 (dual-arm AgileX ALOHA, SAPIEN) behind the rlsys env API: the five box tasks.

Install: ``scripts/setup_robotwin.sh VENV`` (RoboTwin's runtime needs numpy 1.26 and mplib 0.2.1, so
it lives in its own venv) and ``scripts/setup_vulkan.sh`` (a SAPIEN-capable Vulkan device on a CPU
machine). The simulators then run in that venv's interpreter, one per subprocess: set
``env.python=VENV/bin/python`` and ``env.subprocess=true`` (the ``robotwin_*`` presets do).
Assets: ``env`` option ``asset_dir`` or ``ROBOTWIN_ASSETS_ROOT`` (check them with
``rlsys assets robotwin --dir DIR``). Registered as ``robotwin``.

Conventions (RoboTwin 2.0's own, read from its task code and evaluation script):

- **Tasks**: ``stack_blocks_two``, ``stack_blocks_three``, ``handover_block``,
  ``blocks_ranking_rgb``, ``blocks_ranking_size`` (the tasks that load no object meshes; the others
  need upstream assets that cannot be had offline). Built directly with ``setup_demo(**args)`` in
  the clean ("Easy", ``demo_clean``) setting; the embodiment's URDF is overridden with the offline
  variant when the upstream one is incomplete.
- **Episodes**: the scene seed is ``options["init_state"]``, else the reset seed (with ``init_states``
  listed, ``env.init_states``: the listed seed the reset seed picks, e.g. the demos'). A seed whose
  objects do not settle (RoboTwin's ``UnStableError``) moves to the next seed, as RoboTwin does;
  ``info["scene_seed"]`` says which seed ran. RoboTwin's evaluation uses seeds from 100000
  (``EVAL_SEED0``; demos from 0), 100 per task, skipping seeds its expert cannot solve.
- **Action** (14): absolute joint targets ``[left j1..j6, left gripper, right j1..j6, right
  gripper]``; joints in rad within the URDF's limits (+-10, ``action_space``), gripper 0 = closed,
  1 = open. Each step is RoboTwin's ``take_action``: the move to the target is time-parameterised
  with mplib's TOPP at 250 Hz and simulated until it is reached.
- **Step limit**: RoboTwin's ``_eval_step_limit.yml`` (``STEP_LIMITS``), counted in actions.
- **Images**: ``head`` (the static head camera), ``left_wrist``, ``right_wrist``: rendered at
  ``round(4/3 * image_size) x image_size`` (RoboTwin's D435 aspect and 37 degree vertical field of
  view) with the rasterising shader and no shadows (the ray tracer RoboTwin selects does not run on
  a CPU device), then resized to ``image_size`` square. **Proprio** (14): the joint state in the
  action's layout.
- **Instruction**: one of the task's ``seen`` templates filled with the episode's objects and arms
  (``options["instruction_type"] = "unseen"`` for RoboTwin's evaluation split).
- **Reward** 1.0 when the task's success check first holds (checked every physics step, as in
  RoboTwin); that step terminates.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rlsys.config import RenderConfig
from rlsys.configtools import ConfigError, suggest
from rlsys.envs.api import Embodiment, RobotEnv, reset_task, validate_action

# Base_Task methods that plan or move the robot; ``get_info()`` must not run them (``_scene_info``)
MOTION_PRIMITIVES = ("move", "grasp_actor", "place_actor", "move_by_displacement", "back_to_origin")


def _no_motion(*args: Any, **kwargs: Any) -> None:
    return None


STEP_LIMITS = {"stack_blocks_two": 800, "stack_blocks_three": 1200, "handover_block": 800,
               "blocks_ranking_rgb": 1200, "blocks_ranking_size": 1200}
CAMERAS = {"head": "head_camera", "left_wrist": "left_camera", "right_wrist": "right_camera"}
EVAL_SEED0 = 100_000
SIM_HZ, FRAME_EVERY = 250, 15  # RoboTwin's physics rate and its demo frame interval (save_freq)
DEFAULT_ICD = Path.home() / ".cache" / "rlsys" / "vulkan" / "lvp_icd.json"
INSTALL_HINT = ("RoboTwin is not importable in this interpreter. It runs in its own venv: "
                "scripts/setup_robotwin.sh VENV, then env.python=VENV/bin/python and env.subprocess=true")
JOINT_NAMES = tuple(f"{s}_j{i}" for s in ("left", "right") for i in range(1, 7))
EMBODIMENT = Embodiment(
    robot="an AgileX ALOHA (aloha-agilex) with two 6-DoF arms and parallel grippers",
    arms="dual arms",
    control_hz=SIM_HZ / FRAME_EVERY,
    action_dim=14,
    proprio_dim=14,
    action_names=(*JOINT_NAMES[:6], "left_gripper", *JOINT_NAMES[6:], "right_gripper"),
)
# arm joint limits (rad) as arx5_description_isaac.urdf declares them (fl/fr joint1..6: +-10; RoboTwin's
# planner uses that range, e.g. it may turn joint 6 past +-2 pi)
JOINT_LOW, JOINT_HIGH = np.full(6, -10.0, np.float32), np.full(6, 10.0, np.float32)
ACTION_LOW = np.concatenate([JOINT_LOW, [0.0], JOINT_LOW, [0.0]]).astype(np.float32)
ACTION_HIGH = np.concatenate([JOINT_HIGH, [1.0], JOINT_HIGH, [1.0]]).astype(np.float32)


def assets_root(asset_dir: str | None) -> Path:
    root = asset_dir or os.environ.get("ROBOTWIN_ASSETS_ROOT") or os.environ.get("ASSETS_PATH")
    if not root:
        raise FileNotFoundError("RoboTwin assets: set ROBOTWIN_ASSETS_ROOT (or the env option asset_dir) to the "
                                "folder holding assets/embodiments/aloha-agilex; check it with "
                                "rlsys assets robotwin --dir DIR")
    return Path(root).expanduser().resolve()


def check_tasks(tasks: tuple[str, ...], root: Path) -> dict[str, Any]:
    """Unknown task or a task the assets cannot run -> ConfigError naming what is missing."""
    from rlsys.envs import robotwin_assets as ra

    for t in tasks:
        if t not in STEP_LIMITS and t not in ra.OBJECT_TASKS:
            raise ConfigError(f"env.tasks: unknown RoboTwin task {t!r}. {suggest(t, STEP_LIMITS)}")
    result = ra.check(root)
    for t in tasks:
        if t not in result["runnable_tasks"] or t not in STEP_LIMITS:
            missing = result["blocked_tasks"].get(t, ["object meshes (not wrapped yet)"])
            raise ConfigError(f"env.tasks: RoboTwin task {t!r} cannot run with the assets in {root}: missing "
                              f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}. Runnable here: "
                              f"{', '.join(r for r in result['runnable_tasks'] if r in STEP_LIMITS) or 'none'}")
    return result


def preflight(cfg: Any, host: bool = True) -> None:
    """Checks of an ``EnvConfig(name="robotwin")`` that need no simulator: task and camera names, and on
    this host tasks vs assets, where the runtime lives, the Vulkan device. Raises ``ConfigError``."""
    import importlib.util

    from rlsys.envs import robotwin_assets as ra

    for t in cfg.tasks:
        if t not in STEP_LIMITS and t not in ra.OBJECT_TASKS:
            raise ConfigError(f"env.tasks: unknown RoboTwin task {t!r}. {suggest(t, STEP_LIMITS)}")
    for c in cfg.cameras:
        if c not in CAMERAS:
            raise ConfigError(f"env.cameras: unsupported RoboTwin camera {c!r}. Allowed: {', '.join(CAMERAS)}")
    if not host:
        return
    try:
        root = assets_root(None)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    check_tasks(tuple(cfg.tasks) or tuple(STEP_LIMITS), root)
    if not cfg.python and importlib.util.find_spec("robotwin") is None:
        raise ConfigError(f"env.python: {INSTALL_HINT}")
    system_icd = Path("/usr/share/vulkan/icd.d").is_dir()
    if "VK_ICD_FILENAMES" not in os.environ and not DEFAULT_ICD.is_file() and not system_icd:
        raise ConfigError("RoboTwin renders with SAPIEN, which needs a Vulkan device: run scripts/setup_vulkan.sh "
                          "(Mesa lavapipe on a CPU machine) or set VK_ICD_FILENAMES")


def _import_runtime(root: Path, image_size: int) -> Any:
    """Import RoboTwin with the CPU-friendly settings; returns the ``robotwin`` package."""
    if "VK_ICD_FILENAMES" not in os.environ and DEFAULT_ICD.is_file():
        os.environ["VK_ICD_FILENAMES"] = str(DEFAULT_ICD)  # scripts/setup_vulkan.sh's default place
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["ASSETS_PATH"] = str(root)  # RoboTwin's task helpers read it
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import robotwin
            import robotwin.envs._base_task
            import robotwin.envs.camera.camera as cam
            import sapien
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    if not getattr(sapien.render, "_rlsys_patched", False):
        # RoboTwin selects the ray-tracing shader; on a CPU Vulkan device it takes ~70 s per frame and
        # then crashes. Keep the rasteriser (one simulator per process, so a process-wide switch).
        set_dir = sapien.render.set_camera_shader_dir
        sapien.render.set_camera_shader_dir = lambda _d: set_dir("default")
        sapien.render._rlsys_patched = True
        load = cam.load_task_config

        def load_camera_config(name: str) -> dict[str, Any]:
            cfg = load(name)
            if name == "_camera_config":
                cfg["rlsys"] = {"fovy": 37, "w": round(image_size * 4 / 3), "h": image_size}
            return cfg

        cam.load_task_config = load_camera_config
        _let_fingers_touch()
        _plan_from_the_arms_state()
    return robotwin


def _let_fingers_touch() -> None:
    """RoboTwin's mplib path (the runtime's CPU planner; upstream plans with cuRobo on CUDA) rejects
    every IK solution whose gripper fingers touch the table: a 5 cm block sits on it, so a grasp puts
    the fingertips at table level, and the expert failed at a pre-grasp or place pose on every seed
    tried (0/14 on stack_blocks_two). The planner's world holds only the table, walls and arms, so
    the fingers (links 7, 8 of each arm) are allowed to touch it; arm links still may not."""
    from robotwin.envs.robot import planner

    init = planner.MplibPlanner.__init__
    if getattr(init, "_rlsys", False):
        return

    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        world = getattr(self.planner, "planning_world", None)
        if world is not None:
            acm = world.get_allowed_collision_matrix()
            for link in ("fl_link7", "fl_link8", "fr_link7", "fr_link8"):
                acm.set_default_entry(link, True)

    patched._rlsys = True  # type: ignore[attr-defined]
    planner.MplibPlanner.__init__ = patched


def pad_at_move_group(planner: Any, qpos: Any, articulation: Any = None) -> np.ndarray:
    """A move group's joint values -> the model's full joint vector with them at the move group's own
    joint indices (mplib 0.2.1 writes them into the first entries instead)."""
    art = planner.robot if articulation is None else articulation
    qpos = np.asarray(qpos, np.float64)
    if len(qpos) == art.get_move_group_qpos_dim():
        full = np.array(art.get_qpos(), np.float64)
        full[art.get_move_group_joint_indices()] = qpos
        qpos = full
    if len(qpos) != len(planner.joint_limits):
        raise ValueError(f"mplib planner: got {len(qpos)} joint values; allowed: the move group's "
                         f"{art.get_move_group_qpos_dim()} or all {len(planner.joint_limits)}")
    return qpos


def _plan_from_the_arms_state() -> None:
    """Plan every motion from where the arms are.

    RoboTwin's mplib path hands the planner one arm's 6 joint values. mplib 0.2.1 pads them to the
    model's full joint vector by writing them into its *first* six entries
    (``Planner.pad_move_group_qpos``), but aloha-agilex's arm joints are not first (left 6, 14, 18, ...;
    right 7, 15, 19, ...). So the planner started each path from the arm joints its previous IK
    search had left in the model, not from the arm's, and the executed path began with a jump to
    there: a placed block knocked off the table, an arm turned through a full revolution. The
    expert planned stack_blocks_two to success on 2 of seeds 0-3, and 4 of 4 with this fix. The values
    now go to the move group's own indices, and before each plan the model takes the simulator's whole
    joint state, so the other arm is where it is (the wrapper's joint order is the articulation's:
    checked by name)."""
    import mplib
    from robotwin.envs.robot import planner

    if getattr(mplib.Planner.pad_move_group_qpos, "_rlsys", False):
        return
    mplib.Planner.pad_move_group_qpos = pad_at_move_group
    pad_at_move_group._rlsys = True  # type: ignore[attr-defined]

    def synced(plan: Any) -> Any:
        def run(self: Any, curr_joint_pos: Any, *args: Any, **kwargs: Any) -> Any:
            model = self.planner.robot
            names = list(model.get_user_joint_names())
            if sorted(names) != sorted(self.all_joints):
                raise RuntimeError(f"RoboTwin planner: the model's joints {names} are not the robot's "
                                   f"{self.all_joints}")
            q = np.asarray(curr_joint_pos, np.float64)
            model.set_qpos(q[[self.all_joints.index(n) for n in names]], True)
            return plan(self, curr_joint_pos, *args, **kwargs)

        return run

    wrapper = planner.MplibWrapperPlanner
    wrapper.plan_path, wrapper.plan_batch = synced(wrapper.plan_path), synced(wrapper.plan_batch)


class RoboTwinEnv(RobotEnv):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 16}

    def __init__(
        self,
        tasks: tuple[str, ...] | list[str] = (),
        cameras: tuple[str, ...] | list[str] = ("head", "left_wrist", "right_wrist"),
        image_size: int = 64,
        max_episode_steps: int = 0,
        render: RenderConfig | None = None,
        asset_dir: str | None = None,
        init_states: tuple[int, ...] | list[int] = (),
    ) -> None:
        for c in cameras:
            if c not in CAMERAS:
                raise ConfigError(f"env.cameras: unsupported RoboTwin camera {c!r}. Allowed: {', '.join(CAMERAS)}")
        self.root = assets_root(asset_dir)
        self.task_names = tuple(tasks) or tuple(STEP_LIMITS)
        self.asset_report = check_tasks(self.task_names, self.root)
        self.asset_status = "upstream" if self.asset_report["urdf"] == "upstream" else "offline-urdf"
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self._limit = int(max_episode_steps)
        self.max_episode_steps = self._limit or max(STEP_LIMITS[t] for t in self.task_names)
        self.embodiment = EMBODIMENT
        self.render_mode = "rgb_array"
        self.observation_space = gym.spaces.Dict({
            "images": gym.spaces.Box(0, 255, (len(self.cameras), self.image_size, self.image_size, 3), np.uint8),
            "proprio": gym.spaces.Box(-10.0, 10.0, (EMBODIMENT.proprio_dim,), np.float32),
        })
        self.action_space = gym.spaces.Box(ACTION_LOW, ACTION_HIGH, dtype=np.float32)
        self._rt = _import_runtime(self.root, self.image_size)
        self._args = self._task_args()
        self._sim: Any = None
        self._task = self.task_names[0]
        self._instruction = ""
        self._raw: dict[str, Any] = {}
        self._steps = 0
        self._succeeded = False
        self.scene_seed = 0
        self.train_init_states = tuple(int(j) for j in init_states)  # env.init_states: training scene seeds

    # ------------------------------------------------------------------ set-up
    def _task_args(self) -> dict[str, Any]:
        import yaml
        from robotwin.config import load_task_config

        args = load_task_config("demo_clean")
        emb_dir = self.root / "assets" / "embodiments" / "aloha-agilex"
        emb = yaml.safe_load((emb_dir / "config.yml").read_text())
        if self.asset_report["urdf"] != "upstream":
            from rlsys.envs.robotwin_assets import EMB, OFFLINE_URDF

            emb["urdf_path"] = "./" + str(Path(OFFLINE_URDF).relative_to(EMB))
        emb["static_camera_list"] = [c for c in emb["static_camera_list"] if c["name"] == "head_camera"]
        args["camera"].update(head_camera_type="rlsys", wrist_camera_type="rlsys",
                              collect_head_camera="head" in self.cameras,
                              collect_wrist_camera=any(c.endswith("wrist") for c in self.cameras))
        args["data_type"].update(rgb=True, qpos=True, endpose=False, depth=False, pointcloud=False)
        args.update(planner_backend="mplib", left_robot_file=str(emb_dir), right_robot_file=str(emb_dir),
                    left_embodiment_config=emb, right_embodiment_config=emb, dual_arm_embodied=True,
                    embodiment_name="aloha-agilex", render_freq=0, save_data=False, eval_mode=True,
                    eval_video_log=False, need_plan=True, save_freq=FRAME_EVERY)
        return args

    def _make(self, task: str) -> Any:
        import importlib

        from robotwin.envs._base_task import Base_Task

        cls = getattr(importlib.import_module(f"robotwin.envs.{task}"), task)

        class Task(cls):  # type: ignore[misc, valid-type]
            frames: list[dict[str, Any]] | None = None

            def setup_scene(self, **kw: Any) -> Any:  # lights without shadows: ~8x cheaper frames on CPU
                return Base_Task.setup_scene(self, shadow=False, **kw)

            def _take_picture(self, reward: Any = None) -> None:  # the expert's frames, kept in memory
                if self.frames is not None:
                    self.frames.append(self.get_obs())

        return Task()

    def _close_sim(self) -> None:
        if self._sim is not None:
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                self._sim.close_env(clear_cache=True)
            self._sim = None

    def _setup(self, task: str, seed: int) -> int:
        """Build ``task`` at scene seed ``seed`` (next seeds while the scene is unstable) -> the seed used."""
        from robotwin.envs.utils.create_actor import UnStableError

        for s in range(seed, seed + 50):
            self._close_sim()
            self._sim = self._make(task)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    self._sim.setup_demo(now_ep_num=s, seed=s, **self._args)
            except UnStableError:
                continue
            if self._limit:
                self._sim.step_lim = self._limit
            return s
        raise RuntimeError(f"RoboTwin {task}: no stable scene in seeds {seed}..{seed + 49}")

    # ------------------------------------------------------------------ API
    @property
    def instruction(self) -> str:
        return self._instruction

    @property
    def task(self) -> str:
        return self._task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        task = options.get("task")
        if isinstance(task, (int, np.integer)):  # an index into env.tasks
            options = {**options, "task": self.task_names[int(task)]}
        self._task = reset_task(options, self.task_names, self.np_random)
        j = options.get("init_state")
        seed0 = int(j) if j is not None else (int(seed) if seed is not None else int(self.np_random.integers(1 << 30)))
        if j is None and self.train_init_states:  # a training reset: one of the listed scene seeds
            seed0 = self.train_init_states[seed0 % len(self.train_init_states)]
        self.scene_seed = self._setup(self._task, seed0)
        self._instruction = self._make_instruction(options.get("instruction_type", "seen"))
        self._steps, self._succeeded = 0, False
        self._raw = self._sim.get_obs()
        return self._obs(), self._info(False)

    def _make_instruction(self, kind: str) -> str:
        from robotwin.description.instructions import generate_episode_descriptions

        if kind not in ("seen", "unseen"):
            raise ConfigError(f"reset options.instruction_type: {kind!r}; allowed: seen, unseen")
        with contextlib.redirect_stdout(io.StringIO()):
            desc = generate_episode_descriptions(self._task, [self._scene_info()], 1, self.scene_seed)
        return random.Random(self.scene_seed).choice(desc[0][kind])

    def _scene_info(self) -> dict[str, Any]:
        """The task's ``get_info()`` (placeholders for its instruction), read with the robot held still.

        In the packaged tasks ``stack_blocks_three`` and ``blocks_ranking_size``, ``get_info()`` replays
        the whole scripted pick-and-place to learn which arm moves which block: it plans (minutes on a
        CPU) and executes every motion, so the episode would start with the robot away from its home
        pose and ``plan_success`` already False (the expert then planned nothing). The arm choice only
        depends on the block poses, so the motion primitives are no-ops while it reads them.
        """
        sim = self._sim
        kept = {k: getattr(sim, k) for k in ("last_gripper", "last_actor") if hasattr(sim, k)}
        for name in MOTION_PRIMITIVES:  # instance attributes shadow the Base_Task methods
            setattr(sim, name, _no_motion)
        try:
            return sim.get_info()
        finally:
            for name in MOTION_PRIMITIVES:
                delattr(sim, name)
            for k, v in kept.items():
                setattr(sim, k, v)
            sim.plan_success = True

    def step(self, action: Any):
        a = np.clip(validate_action(action, EMBODIMENT.action_dim), ACTION_LOW, ACTION_HIGH)
        sim = self._sim
        with contextlib.redirect_stdout(io.StringIO()):
            sim.take_action(a.astype(np.float64))
        self._steps += 1
        self._raw = sim.get_obs()
        success = bool(sim.eval_success)
        reward = 1.0 if success and not self._succeeded else 0.0
        self._succeeded = self._succeeded or success
        limit = self._limit or STEP_LIMITS[self._task]
        truncated = bool(self._steps >= limit and not success)
        return self._obs(), reward, success, truncated, self._info(success)

    def _obs(self) -> dict[str, np.ndarray]:
        import cv2

        imgs = []
        for c in self.cameras:
            rgb = np.asarray(self._raw["observation"][CAMERAS[c]]["rgb"])
            imgs.append(cv2.resize(rgb, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA))
        proprio = np.asarray(self._raw["joint_action"]["vector"], np.float32).reshape(-1)
        return {"images": np.stack(imgs).astype(np.uint8), "proprio": proprio}

    def _info(self, success: bool) -> dict[str, Any]:
        return {"instruction": self._instruction, "task": self._task, "success": bool(success),
                "init_state": self.scene_seed, "scene_seed": self.scene_seed, "asset_status": self.asset_status}

    def privileged_state(self) -> dict[str, Any]:
        """Joint state and the task's episode facts (objects and arms), for experts and debugging."""
        return {"qpos": np.asarray(self._raw["joint_action"]["vector"], np.float64),
                "episode": dict(self._sim.get_info()), "scene_seed": self.scene_seed}

    def expert(self) -> RoboTwinExpert:
        """RoboTwin's own scripted expert (``play_once``, planned with mplib) for the current episode,
        recorded and replayed as joint targets. Call right after ``reset``; ``expert.planned`` says
        whether the plan succeeded in simulation."""
        import mplib

        task, seed, instruction = self._task, self.scene_seed, self._instruction
        sim = self._sim
        sim.frames, sim.save_data = [], True
        mplib.set_global_seed(int(seed))  # the planner's RRT: the same scene seed plans the same way
        failure = ""
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                sim.play_once()
            except Exception as e:  # e.g. no grasp pose planned (RoboTwin's Action asserts on None); RoboTwin's
                failure = f"{type(e).__name__}: {e}"  # own demo collection counts any error as a failed seed
        planned = bool(not failure and sim.plan_success and sim.check_success())
        targets = [np.asarray(f["joint_action"]["vector"], np.float32) for f in sim.frames]
        self._setup(task, seed)  # the same scene again, for the replay
        self._instruction = instruction
        self._steps, self._succeeded = 0, False
        self._raw = self._sim.get_obs()
        return RoboTwinExpert(targets[1:], planned, failure)

    def render(self) -> np.ndarray:
        return self._obs()["images"][0]

    def close(self) -> None:
        self._close_sim()


class RoboTwinExpert:
    """Replays the joint targets RoboTwin's planner produced at its demo frame rate."""

    def __init__(self, targets: list[np.ndarray], planned: bool, failure: str = "") -> None:
        self.targets, self.planned, self.failure, self.t = targets, planned, failure, 0

    def act(self, _state: dict[str, Any]) -> np.ndarray:
        if not self.targets:
            raise RuntimeError("RoboTwin expert: the planner produced no joint targets for this episode "
                               "(planned=False); skip it (rlsys demos does)")
        a = self.targets[min(self.t, len(self.targets) - 1)]
        self.t += 1
        return a


def make_env(**kwargs: Any) -> RoboTwinEnv:
    return RoboTwinEnv(**kwargs)
