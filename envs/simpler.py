"""SimplerEnv's WidowX Bridge digital twins (ManiSkill3 / SAPIEN, CPU backend) behind the rlsys env API.

Install: ``scripts/setup_vulkan.sh`` (a SAPIEN-capable Vulkan device on a CPU machine) and
``pip install -e ".[simpler]"``; assets: ``rlsys assets simpler --dir DIR`` then
``MS_ASSET_DIR=DIR`` (or ``env`` option ``asset_dir``). Registered as ``simpler_bridge``.

Tasks (``task_names``) -> ManiSkill env ids, step limits as registered there (SimplerEnv's Bridge
evaluation): ``carrot_on_plate`` (PutCarrotOnPlateInScene-v1, 60), ``spoon_on_towel``
(PutSpoonOnTableClothInScene-v1, 60), ``stack_cube`` (StackGreenCubeOnYellowCubeBakedTexInScene-v1,
60), ``eggplant_in_basket`` (PutEggplantInBasketScene-v1, 120). Instructions come from the task.

- **Episodes**: ``reset(options={"init_state": j})`` is SimplerEnv's ``episode_id`` j (object
  position x orientation grid, 24 per task in the visual-matching protocol); else ``seed % 24``.
  With ``placement="random"`` a reset without ``init_state`` (demos, RL rollouts) instead draws a
  placement off the grid from the reset seed (``random_placement``; ``info["init_state"]`` is -1), so
  training never sees an evaluation episode; an explicit ``init_state`` still selects the grid.
- **Action** (7, in [-1, 1]): delta end-effector pose in the robot base frame through the task's
  own controller (``arm_pd_ee_target_delta_pose_align2``): 0-2 translation, 1.0 = ``POS_SCALE``
  (5 cm); 3-5 rotation vector (axis-angle), 1.0 = ``ROT_SCALE`` (0.25 rad); 6 gripper
  **+1 open, -1 close** (the Bridge convention; the WidowX fingers' 14-38 mm range).
- **Image**: ``3rd_view`` (the 640x480 Bridge camera with the real-photo overlay), resized to
  ``image_size`` x ``image_size``. **Proprio** (8): the 8 joint positions (6 arm + 2 fingers).
- **Info**: ``success`` plus the task's partial metrics (``is_src_obj_grasped``,
  ``consecutive_grasp``, ``src_on_target``, ``moved_correct_obj``, ``moved_wrong_obj``) and
  ``asset_status`` (``official`` or ``stand-in``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rlsys.config import RenderConfig
from rlsys.configtools import ConfigError, suggest
from rlsys.envs.api import Embodiment, RobotEnv, init_state_index, reset_task, validate_action

TASKS = {
    "carrot_on_plate": ("PutCarrotOnPlateInScene-v1", 60),
    "spoon_on_towel": ("PutSpoonOnTableClothInScene-v1", 60),
    "stack_cube": ("StackGreenCubeOnYellowCubeBakedTexInScene-v1", 60),
    "eggplant_in_basket": ("PutEggplantInBasketScene-v1", 120),
}
CAMERAS = {"3rd_view": "3rd_view_camera"}
POS_SCALE, ROT_SCALE = 0.05, 0.25
PARTIAL = ("is_src_obj_grasped", "consecutive_grasp", "src_on_target", "moved_correct_obj", "moved_wrong_obj")
PLACEMENT_MARGIN_M = 0.02  # random placements: the grid's area widened by this on every side
PLACEMENT_YAW = 0.3  # rad: a random placement turns the source object's grid orientation by up to this
DEFAULT_ICD = Path.home() / ".cache" / "rlsys" / "vulkan" / "lvp_icd.json"
EMBODIMENT = Embodiment(
    robot="a WidowX 250 S arm", arms="single arm", control_hz=5.0, action_dim=7, proprio_dim=8,
    action_names=("dx", "dy", "dz", "drx", "dry", "drz", "gripper"),
)


def check_names(tasks: tuple[str, ...] | list[str], cameras: tuple[str, ...] | list[str]) -> None:
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"env.tasks: unknown SimplerEnv task {t!r}. {suggest(t, TASKS)} "
                              f"Tasks: {', '.join(TASKS)}")
    for c in cameras:
        if c not in CAMERAS:
            raise ConfigError(f"env.cameras: unsupported SimplerEnv camera {c!r}. Allowed: {', '.join(CAMERAS)}")


def preflight(cfg: Any, host: bool = True) -> None:
    """Config-time check of an ``EnvConfig(name="simpler_bridge")``: task and camera names."""
    check_names(cfg.tasks, cfg.cameras)


def import_maniskill(asset_dir: str | None) -> Any:
    """Set up Vulkan + asset env vars, import mani_skill's envs; clear errors for what is missing."""
    if "VK_ICD_FILENAMES" not in os.environ and DEFAULT_ICD.is_file():
        os.environ["VK_ICD_FILENAMES"] = str(DEFAULT_ICD)  # scripts/setup_vulkan.sh's default place
    os.environ["MS_SKIP_ASSET_DOWNLOAD_PROMPT"] = "1"  # else a missing asset blocks on input()
    if asset_dir:
        os.environ["MS_ASSET_DIR"] = str(asset_dir)
    from rlsys.envs import simpler_assets

    root = os.environ.get("MS_ASSET_DIR", str(Path.home() / ".maniskill"))
    result = simpler_assets.check(root)
    if result["status"] == "incomplete":
        raise FileNotFoundError("\n".join(simpler_assets.report_lines(result)))
    try:
        import mani_skill
        import mani_skill.envs  # registers the Bridge tasks
    except ImportError as e:
        raise ImportError(f'SimplerEnv needs ManiSkill3: pip install -e ".[simpler]" ({e})') from e
    if Path(mani_skill.ASSET_DIR).resolve() != (Path(root) / "data").resolve():
        raise RuntimeError(f"mani_skill was imported with MS_ASSET_DIR={mani_skill.ASSET_DIR} before rlsys set "
                           f"{root}; set MS_ASSET_DIR before importing mani_skill")
    return result["status"]


def random_placement(xyz_configs: np.ndarray, quat_configs: np.ndarray, source: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One placement off a task's episode grid -> (xyz [n_objects, 3], quat wxyz [n_objects, 4]).

    ``xyz_configs`` [n_positions, n_objects, 3] and ``quat_configs`` [n_orientations, n_objects, 4] are
    the task's grid. Each object's xy is uniform over the grid's area widened by ``PLACEMENT_MARGIN_M``,
    redrawn until every pair is at least as far apart as the grid's closest pair less twice the margin;
    heights are the grid's. Orientations are one of the grid's, the ``source`` object's turned about
    the vertical by a uniform angle in +-``PLACEMENT_YAW``."""
    xyz_configs, quat_configs = np.asarray(xyz_configs, np.float64), np.asarray(quat_configs, np.float64)
    xy = xyz_configs[..., :2]
    lo, hi = xy.reshape(-1, 2).min(0) - PLACEMENT_MARGIN_M, xy.reshape(-1, 2).max(0) + PLACEMENT_MARGIN_M
    n = xy.shape[1]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    closest = min((np.linalg.norm(xy[:, i] - xy[:, j], axis=-1).min() for i, j in pairs), default=0.0)
    while True:
        draw = rng.uniform(lo, hi, size=(n, 2))
        if all(np.linalg.norm(draw[i] - draw[j]) >= closest - 2 * PLACEMENT_MARGIN_M for i, j in pairs):
            break
    xyz = xyz_configs[0].copy()
    xyz[:, :2] = draw
    quat = quat_configs[rng.integers(len(quat_configs))].copy()
    half = rng.uniform(-PLACEMENT_YAW, PLACEMENT_YAW) / 2
    (w1, z1), (w2, x2, y2, z2) = (np.cos(half), np.sin(half)), quat[source]
    quat[source] = (w1 * w2 - z1 * z2, w1 * x2 - z1 * y2, w1 * y2 + z1 * x2, w1 * z2 + z1 * w2)  # yaw (x) q
    return xyz, quat


class SimplerEnv(RobotEnv):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        tasks: tuple[str, ...] | list[str] = (),
        cameras: tuple[str, ...] | list[str] = ("3rd_view",),
        image_size: int = 128,
        max_episode_steps: int = 0,
        render: RenderConfig | None = None,
        asset_dir: str | None = None,
        sim_cache: int = 1,
        init_states: tuple[int, ...] | list[int] = (),
        placement: str = "grid",
    ) -> None:
        check_names(tasks, cameras)
        self.asset_status = import_maniskill(asset_dir)
        self.task_names = tuple(tasks) or tuple(TASKS)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self._limit = int(max_episode_steps)
        self.max_episode_steps = self._limit or max(TASKS[t][1] for t in self.task_names)
        self.embodiment = EMBODIMENT
        self.render_mode = "rgb_array"
        self.observation_space = gym.spaces.Dict({
            "images": gym.spaces.Box(0, 255, (len(self.cameras), self.image_size, self.image_size, 3), np.uint8),
            "proprio": gym.spaces.Box(-10.0, 10.0, (EMBODIMENT.proprio_dim,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (EMBODIMENT.action_dim,), np.float32)
        self._sims: dict[str, Any] = {}
        self.sim_cache = max(1, int(sim_cache))
        self._task = self.task_names[0]
        self._raw: dict[str, Any] = {}
        self._info_raw: dict[str, Any] = {}
        self._steps = 0
        self._succeeded = False
        self.init_state_index = 0
        self.train_init_states = tuple(int(j) for j in init_states)  # env.init_states: training resets draw from these
        if placement not in ("grid", "random"):
            raise ConfigError(f"env.placement: got {placement!r}; allowed: 'grid' | 'random'")
        self.placement = placement

    def _sim(self, task: str) -> Any:
        if task not in self._sims:
            while len(self._sims) >= self.sim_cache:
                self._sims.pop(next(iter(self._sims))).close()
            try:
                self._sims[task] = gym.make(TASKS[task][0], num_envs=1, sim_backend="cpu", render_backend="cpu")
            except RuntimeError as e:
                if "rendering device" in str(e) or "vulkan" in str(e).lower():
                    raise RuntimeError(f"SAPIEN found no Vulkan rendering device ({e}). On a CPU machine run "
                                       f"scripts/setup_vulkan.sh (Mesa 25 lavapipe).") from e
                raise
        return self._sims[task]

    @property
    def instruction(self) -> str:
        return str(self._sims[self._task].unwrapped.get_language_instruction()[0])

    @property
    def task(self) -> str:
        return self._task

    def num_init_states(self, task: str | None = None) -> int:
        u = self._sim(task or self._task).unwrapped
        return len(u.xyz_configs) * len(u.quat_configs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        self._task = task = reset_task(options, self.task_names, self.np_random)
        sim = self._sim(task)
        if self.placement == "random" and options.get("init_state") is None:
            self.init_state_index = -1
            self._raw, self._info_raw = self._reset_off_grid(sim, seed)
        else:
            self.init_state_index = init_state_index(options, seed, self.np_random, self.num_init_states(task),
                                                     self.train_init_states)
            self._raw, self._info_raw = sim.reset(seed=int(seed or 0),
                                                  options={"episode_id": self.init_state_index})
        self._steps, self._succeeded = 0, False
        return self._obs(), self._info(False)

    def _reset_off_grid(self, sim: Any, seed: int | None) -> tuple[Any, Any]:
        """Reset with a one-entry grid holding ``random_placement``'s draw, then restore the task's grid."""
        import torch

        u = sim.unwrapped
        rng = np.random.default_rng(seed) if seed is not None else self.np_random
        grid = u.xyz_configs, u.quat_configs
        xyz, quat = random_placement(grid[0].cpu().numpy(), grid[1].cpu().numpy(),
                                     list(u.objs).index(u.source_obj_name), rng)
        u.xyz_configs = torch.as_tensor(xyz[None], dtype=grid[0].dtype)
        u.quat_configs = torch.as_tensor(quat[None], dtype=grid[1].dtype)
        try:
            return sim.reset(seed=int(seed or 0), options={"episode_id": 0})
        finally:
            u.xyz_configs, u.quat_configs = grid

    def step(self, action: Any):
        a = np.clip(validate_action(action, EMBODIMENT.action_dim), -1.0, 1.0)
        native = np.concatenate([a[:3] * POS_SCALE, a[3:6] * ROT_SCALE, a[6:]]).astype(np.float32)
        self._raw, _, _, _, self._info_raw = self._sims[self._task].step(native)
        self._steps += 1
        success = bool(np.asarray(self._info_raw["success"]).reshape(-1)[0])
        reward = 1.0 if success and not self._succeeded else 0.0
        self._succeeded = self._succeeded or success
        limit = self._limit or TASKS[self._task][1]
        truncated = bool(self._steps >= limit and not success)
        return self._obs(), reward, success, truncated, self._info(success)

    def _obs(self) -> dict[str, np.ndarray]:
        from PIL import Image

        imgs = []
        for c in self.cameras:
            rgb = np.asarray(self._raw["sensor_data"][CAMERAS[c]]["rgb"])[0]
            imgs.append(np.asarray(Image.fromarray(rgb).resize((self.image_size, self.image_size), Image.BILINEAR)))
        proprio = np.asarray(self._raw["agent"]["qpos"], np.float32).reshape(-1)[:8]
        return {"images": np.stack(imgs).astype(np.uint8), "proprio": proprio}

    def _info(self, success: bool) -> dict[str, Any]:
        info: dict[str, Any] = {"instruction": self.instruction, "task": self._task, "success": bool(success),
                                "init_state": self.init_state_index, "asset_status": self.asset_status}
        for k in PARTIAL:
            if k in self._info_raw:
                info[k] = bool(np.asarray(self._info_raw[k]).reshape(-1)[0])
        return info

    def privileged_state(self) -> dict[str, Any]:
        """Object poses (world), the gripper's pose and opening, for scripted experts."""
        u = self._sims[self._task].unwrapped
        links = u.agent.robot.links_map
        ee = links["ee_gripper_link"].pose
        objs = {n: (np.asarray(o.pose.p)[0], np.asarray(o.pose.q)[0]) for n, o in u.objs.items()}
        return {"ee_pos": np.asarray(ee.p)[0], "ee_quat_wxyz": np.asarray(ee.q)[0],
                "fingers": np.stack([np.asarray(links[f"{s}_finger_link"].pose.p)[0] for s in ("left", "right")]),
                "base_quat_wxyz": np.asarray(u.agent.robot.pose.q)[0],
                "qpos": np.asarray(self._raw["agent"]["qpos"])[0], "objects": objs,
                "source": u.source_obj_name, "target": getattr(u, "target_obj_name", None)}

    def expert(self) -> Any:
        """Scripted pick-and-place expert for the current episode (call right after reset)."""
        from rlsys.envs.simpler_expert import BridgeExpert

        return BridgeExpert(self.privileged_state())

    def render(self) -> np.ndarray:
        return self._obs()["images"][0]

    def close(self) -> None:
        while self._sims:
            _, sim = self._sims.popitem()
            with contextlib.suppress(Exception):
                sim.close()


def make_env(**kwargs: Any) -> SimplerEnv:
    return SimplerEnv(**kwargs)
