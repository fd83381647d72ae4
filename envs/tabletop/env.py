"""``tabletop``: the embedded MuJoCo language-conditioned manipulation suite (the default task).

Action (7, LIBERO-like layout, each in [-1, 1]):
    0-2  end-effector translation delta, 1.0 = 2 cm per control step (x forward, y left, z up)
    3-4  roll / pitch delta: unused by this embodiment (ignored; kept for the LIBERO layout)
    5    yaw delta, 1.0 = 0.15 rad per control step
    6    gripper: -1 fully open ... +1 fully closed (LIBERO/robosuite sign convention)
Control runs at 10 Hz (20 physics steps of 5 ms). Deltas are applied to the *measured* pose
(like robosuite's OSC delta controller), so a zero action holds the hand still.

Proprio (8, LIBERO-like): hand xyz (m), hand axis-angle (rad; only z is non-zero here),
two finger joint positions (m, 0 = closed, 0.045 = open).

Auto-reset is not done here (single env); see rlsys.envs.pool.EnvPool.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from rlsys.config import RenderConfig
from rlsys.configtools import ConfigError
from rlsys.envs.api import Embodiment, RobotEnv, validate_action
from rlsys.envs.render import Renderer, configure_gl
from rlsys.envs.tabletop import scene
from rlsys.envs.tabletop.tasks import CUBES, PLATES, PROGRESS, STEP_M, TASKS, Expert, check_names

configure_gl()
import mujoco  # noqa: E402  (after MUJOCO_GL is settled)

SUBSTEPS = 20
DEFAULT_MAX_STEPS = 100
YAW_STEP = 0.15
WORKSPACE_LO = np.array([-0.28, -0.33, 0.02])
WORKSPACE_HI = np.array([0.28, 0.33, 0.3])
EMBODIMENT = Embodiment(
    robot="a tabletop parallel-jaw gripper",
    arms="single arm",
    control_hz=10.0,
    action_dim=7,
    proprio_dim=8,
    action_names=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
)


class TabletopEnv(RobotEnv):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        tasks: tuple[str, ...] | list[str] = (),
        cameras: tuple[str, ...] | list[str] = ("agentview", "wrist"),
        image_size: int = 64,
        max_episode_steps: int = 0,
        render: RenderConfig | None = None,
        render_mode: str | None = "rgb_array",
        reward: str = "sparse",
    ) -> None:
        tasks = check_names(tasks, cameras, reward)
        self.reward_mode = reward
        self.task_names = tasks
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps) or DEFAULT_MAX_STEPS
        self.embodiment = EMBODIMENT
        self.render_mode = render_mode
        self.model = mujoco.MjModel.from_xml_string(scene.build_xml(self.image_size))
        self.data = mujoco.MjData(self.model)
        self._renderer = Renderer(self.model, self.image_size, render or RenderConfig())
        self._ids()
        self.observation_space = gym.spaces.Dict(
            {
                "images": gym.spaces.Box(0, 255, (len(self.cameras), image_size, image_size, 3), np.uint8),
                "proprio": gym.spaces.Box(-10.0, 10.0, (EMBODIMENT.proprio_dim,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (EMBODIMENT.action_dim,), np.float32)
        self._task = tasks[0]
        self._roles: dict[str, str] = {}
        self._steps = 0
        self._succeeded = False

    # ------------------------------------------------------------------ ids and state
    def _ids(self) -> None:
        m = self.model
        jid = {n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in
               ("hand_x", "hand_y", "hand_z", "hand_yaw", "finger_left", "finger_right")}
        self._hand_q = np.array([m.jnt_qposadr[jid[n]] for n in ("hand_x", "hand_y", "hand_z", "hand_yaw")])
        self._hand_v = np.array([m.jnt_dofadr[jid[n]] for n in ("hand_x", "hand_y", "hand_z", "hand_yaw")])
        self._finger_q = np.array([m.jnt_qposadr[jid["finger_left"]], m.jnt_qposadr[jid["finger_right"]]])
        self._cube_q = {c: m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"cube_{c}")]
                        for c in CUBES}
        self._cube_geom = {c: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"cube_{c}") for c in CUBES}
        self._plate_body = {p: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f"plate_{p}") for p in PLATES}
        self._fingers = (mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "finger_left"),
                         mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "finger_right"))
        self._grip_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "grip")
        self._home = np.array([*scene.HAND_HOME])

    def _held(self, cube: str) -> bool:
        g = self._cube_geom[cube]
        touching = set()
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            if c.geom1 == g and c.geom2 in self._fingers:
                touching.add(c.geom2)
            elif c.geom2 == g and c.geom1 in self._fingers:
                touching.add(c.geom1)
        return len(touching) == 2

    def privileged_state(self) -> dict[str, Any]:
        d = self.data
        s: dict[str, Any] = {"hand": d.site_xpos[self._grip_site].copy(),
                             "yaw": float(d.qpos[self._hand_q[3]]),
                             "fingers": d.qpos[self._finger_q].copy()}
        for c in CUBES:
            a = self._cube_q[c]
            s[f"cube_{c}"] = d.qpos[a : a + 3].copy()
            s[f"held_{c}"] = self._held(c)
        for p in PLATES:
            s[f"plate_{p}"] = self.model.body_pos[self._plate_body[p]].copy()
        return s

    # ------------------------------------------------------------------ gym API
    @property
    def instruction(self) -> str:
        return TASKS[self._task].template.format(**self._roles)

    @property
    def task(self) -> str:
        return self._task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        task = (options or {}).get("task")
        if task is None:
            task = self.task_names[int(rng.integers(len(self.task_names)))]
        elif task not in self.task_names:
            raise ConfigError(f"reset options.task: {task!r} is not one of {self.task_names}")
        self._task = task
        self._roles = TASKS[task].roles(rng)
        while True:  # never start an episode already solved (e.g. two cubes placed "next to" each other)
            mujoco.mj_resetData(self.model, self.data)
            self._place_objects(rng)
            mujoco.mj_forward(self.model, self.data)
            for _ in range(10):  # let objects settle on the table
                mujoco.mj_step(self.model, self.data)
            if not TASKS[task].success(self.privileged_state(), self._roles):
                break
        self._steps = 0
        self._succeeded = False
        self._progress = self._potential(self.privileged_state())
        return self._obs(), self._info(False)

    def _potential(self, state: dict[str, Any]) -> float:
        if self.reward_mode == "sparse":
            return 0.0
        return PROGRESS[self._task](state, self._roles)

    def _place_objects(self, rng: np.random.Generator) -> None:
        names = [f"cube_{c}" for c in CUBES] + [f"plate_{p}" for p in PLATES]
        while True:
            xy = np.stack([rng.uniform(-0.15, 0.15, len(names)), rng.uniform(-0.17, 0.17, len(names))], 1)
            dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(names))
            if dist.min() > 0.1:
                break
        for (x, y), name in zip(xy, names):
            kind, color = name.split("_")
            if kind == "cube":
                a = self._cube_q[color]
                yaw = rng.uniform(-0.4, 0.4)
                self.data.qpos[a : a + 7] = [x, y, scene.CUBE_HALF, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            else:
                self.model.body_pos[self._plate_body[color]] = [x, y, scene.PLATE_HALF_HEIGHT]
        offset = rng.uniform(-0.03, 0.03, 3)
        self.data.qpos[self._hand_q[:3]] = offset
        self.data.ctrl[:3] = offset
        self.data.qpos[self._finger_q] = scene.FINGER_OPEN
        self.data.ctrl[4] = scene.FINGER_OPEN

    def step(self, action: Any):
        a = np.clip(validate_action(action, EMBODIMENT.action_dim), -1.0, 1.0)
        d = self.data
        hand = d.qpos[self._hand_q[:3]] + self._home
        target = np.clip(hand + a[:3] * STEP_M, WORKSPACE_LO, WORKSPACE_HI)
        d.ctrl[:3] = target - self._home
        d.ctrl[3] = np.clip(d.qpos[self._hand_q[3]] + a[5] * YAW_STEP, -3.1, 3.1)
        d.ctrl[4] = scene.FINGER_OPEN * (1.0 - a[6]) / 2.0
        mujoco.mj_step(self.model, d, nstep=SUBSTEPS)
        self._steps += 1
        state = self.privileged_state()
        success = TASKS[self._task].success(state, self._roles)
        reward = 1.0 if success and not self._succeeded else 0.0
        if self.reward_mode != "sparse":  # progress made this step (potential difference)
            progress = self._potential(state)
            reward += progress - self._progress
            self._progress = progress
        self._succeeded = self._succeeded or success
        terminated = bool(success)
        truncated = bool(self._steps >= self.max_episode_steps and not terminated)
        return self._obs(), reward, terminated, truncated, self._info(success)

    def _obs(self) -> dict[str, np.ndarray]:
        d = self.data
        yaw = float(d.qpos[self._hand_q[3]])
        proprio = np.concatenate(
            [d.site_xpos[self._grip_site], [0.0, 0.0, yaw], d.qpos[self._finger_q]]
        ).astype(np.float32)
        images = self._renderer.render(self.data, self.cameras)  # cameras=() -> no rendering
        return {"images": images, "proprio": proprio}

    def _info(self, success: bool) -> dict[str, Any]:
        return {"instruction": self.instruction, "task": self._task, "success": bool(success)}

    def render(self) -> np.ndarray:
        return self._renderer.render(self.data, self.cameras[:1])[0]

    def expert(self) -> Expert:
        """Scripted expert for the current episode (call right after reset)."""
        return Expert(self._task, self._roles, self.privileged_state())

    def close(self) -> None:
        self._renderer.close()


def make_env(**kwargs: Any) -> TabletopEnv:
    return TabletopEnv(**kwargs)
