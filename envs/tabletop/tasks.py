"""Language-conditioned tasks of the tabletop suite and their scripted experts.

Every task uses the same scene (three cubes: red/green/blue, two plates: yellow/purple); the
instruction decides which objects matter. Success is sparse and binary, checked every control
step from simulator state. Experts use privileged state (object poses) and reach >= 95% success.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlsys.configtools import ConfigError, suggest
from rlsys.envs.tabletop.scene import CUBE_COLORS, CUBE_HALF, PLATE_COLORS, PLATE_RADIUS

CUBES = tuple(CUBE_COLORS)
PLATES = tuple(PLATE_COLORS)
EDGE_Y = 0.22  # push tasks: the cube centre must pass |y| > EDGE_Y on the named side
LIFT_Z = 0.1  # lift: cube centre above this height (table top at 0)
GRASP_Z = CUBE_HALF + 0.02  # hand height when grasping a cube resting on the table
CARRY_Z = 0.15
STEP_M = 0.02  # metres per unit action on x/y/z (see env.py)


@dataclass(frozen=True)
class Task:
    name: str
    template: str  # formatted with the sampled roles: {cube}, {other}, {plate}
    roles: Callable[[np.random.Generator], dict[str, str]]
    success: Callable[[dict[str, np.ndarray], dict[str, str]], bool]


def _one_cube(rng: np.random.Generator) -> dict[str, str]:
    return {"cube": str(rng.choice(CUBES))}


def _cube_plate(rng: np.random.Generator) -> dict[str, str]:
    return {"cube": str(rng.choice(CUBES)), "plate": str(rng.choice(PLATES))}


def _two_cubes(rng: np.random.Generator) -> dict[str, str]:
    a, b = rng.choice(CUBES, size=2, replace=False)
    return {"cube": str(a), "other": str(b)}


def _resting(s: dict[str, np.ndarray], cube: str) -> bool:
    """On the table or a plate, not held by the gripper."""
    return bool(s[f"cube_{cube}"][2] < CUBE_HALF + 0.012 and not s[f"held_{cube}"])


def _lifted(s: dict[str, np.ndarray], r: dict[str, str]) -> bool:
    return bool(s[f"cube_{r['cube']}"][2] > LIFT_Z)


def lift_progress(s: dict[str, Any], r: dict[str, str]) -> float:
    """Potential in [0, 1] for shaped lift rewards: reach the cube (0.3), hold it (0.3), raise it
    toward LIFT_Z (0.4). The env rewards its change per step, so an episode's shaping sums to
    ``final - initial`` and cannot outweigh the success reward of 1."""
    cube = s[f"cube_{r['cube']}"]
    reach = 1.0 - np.tanh(10.0 * float(np.linalg.norm(s["hand"] - cube)))
    lift = np.clip((cube[2] - CUBE_HALF) / (LIFT_Z - CUBE_HALF), 0.0, 1.0) if s[f"held_{r['cube']}"] else 0.0
    return float(0.3 * reach + 0.3 * float(s[f"held_{r['cube']}"]) + 0.4 * lift)


# Shaped-reward potentials (``env.reward: shaped``) by task; the others are sparse only.
PROGRESS = {"lift": lift_progress}


def _on_plate(s: dict[str, np.ndarray], r: dict[str, str]) -> bool:
    d = np.linalg.norm(s[f"cube_{r['cube']}"][:2] - s[f"plate_{r['plate']}"][:2])
    return bool(d < PLATE_RADIUS - 0.01 and _resting(s, r["cube"]))


def _stacked(s: dict[str, np.ndarray], r: dict[str, str]) -> bool:
    top, bottom = s[f"cube_{r['cube']}"], s[f"cube_{r['other']}"]
    dz = top[2] - bottom[2]
    return bool(
        np.linalg.norm(top[:2] - bottom[:2]) < 0.025
        and abs(dz - 2 * CUBE_HALF) < 0.008
        and not s[f"held_{r['cube']}"]
    )


def _pushed(side: float) -> Callable[[dict[str, np.ndarray], dict[str, str]], bool]:
    def ok(s: dict[str, np.ndarray], r: dict[str, str]) -> bool:
        c = s[f"cube_{r['cube']}"]
        return bool(side * c[1] > EDGE_Y and c[2] < CUBE_HALF + 0.01)

    return ok


def _next_to(s: dict[str, np.ndarray], r: dict[str, str]) -> bool:
    d = np.linalg.norm(s[f"cube_{r['cube']}"][:2] - s[f"cube_{r['other']}"][:2])
    return bool(0.045 <= d <= 0.105 and _resting(s, r["cube"]) and _resting(s, r["other"]))


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("lift", "pick up the {cube} cube", _one_cube, _lifted),
        Task("place_on_plate", "put the {cube} cube on the {plate} plate", _cube_plate, _on_plate),
        Task("stack", "stack the {cube} cube on the {other} cube", _two_cubes, _stacked),
        Task("push_left", "push the {cube} cube to the left edge of the table", _one_cube, _pushed(1.0)),
        Task("push_right", "push the {cube} cube to the right edge of the table", _one_cube, _pushed(-1.0)),
        Task("place_next_to", "put the {cube} cube next to the {other} cube", _two_cubes, _next_to),
    )
}


# --------------------------------------------------------------------------- scripted expert


@dataclass
class Waypoint:
    target: Callable[[dict[str, np.ndarray]], np.ndarray]  # hand xyz target from state
    grip: float  # -1 open, +1 close
    tol: float = 0.006
    min_steps: int = 0  # stay at least this many steps (gripper closing/opening)


class Expert:
    """Waypoint-following scripted expert; ``act(state) -> action [7]`` in [-1, 1]."""

    def __init__(self, task: str, roles: dict[str, str], state: dict[str, np.ndarray]) -> None:
        self.plan = _PLANS[task](roles, state)
        self.phase = 0
        self.steps = 0

    def act(self, s: dict[str, np.ndarray]) -> np.ndarray:
        hand = s["hand"]
        while True:
            wp = self.plan[min(self.phase, len(self.plan) - 1)]
            err = wp.target(s) - hand
            last = self.phase >= len(self.plan) - 1
            if not last and np.max(np.abs(err)) < wp.tol and self.steps >= wp.min_steps:
                self.phase += 1
                self.steps = 0
                continue
            break
        self.steps += 1
        action = np.zeros(7, np.float32)
        action[:3] = np.clip(err / STEP_M, -1.0, 1.0)
        action[6] = wp.grip
        return action


def _pick(cube: str) -> list[Waypoint]:
    def above(s: dict[str, np.ndarray]) -> np.ndarray:
        c = s[f"cube_{cube}"]
        return np.array([c[0], c[1], CARRY_Z])

    def at(s: dict[str, np.ndarray]) -> np.ndarray:
        c = s[f"cube_{cube}"]
        return np.array([c[0], c[1], c[2] + GRASP_Z - CUBE_HALF])

    return [
        Waypoint(above, -1.0, tol=0.008),
        Waypoint(at, -1.0, tol=0.005),
        Waypoint(at, 1.0, tol=0.02, min_steps=4),
        Waypoint(above, 1.0, tol=0.01),
    ]


def _place(xy: Callable[[dict[str, np.ndarray]], np.ndarray], z: float) -> list[Waypoint]:
    def above(s: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([*xy(s), CARRY_Z])

    def down(s: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([*xy(s), z])

    return [
        Waypoint(above, 1.0, tol=0.006),
        Waypoint(down, 1.0, tol=0.006),
        Waypoint(down, -1.0, tol=0.03, min_steps=3),
        Waypoint(above, -1.0, tol=0.01),
    ]


def _plan_lift(r: dict[str, str], s0: dict[str, np.ndarray]) -> list[Waypoint]:
    return _pick(r["cube"])


def _plan_place_on_plate(r: dict[str, str], s0: dict[str, np.ndarray]) -> list[Waypoint]:
    plate = r["plate"]
    return _pick(r["cube"]) + _place(lambda s: s[f"plate_{plate}"][:2], GRASP_Z + 0.01)


def _plan_stack(r: dict[str, str], s0: dict[str, np.ndarray]) -> list[Waypoint]:
    other = r["other"]
    return _pick(r["cube"]) + _place(lambda s: s[f"cube_{other}"][:2], GRASP_Z + 2 * CUBE_HALF + 0.006)


def _plan_next_to(r: dict[str, str], s0: dict[str, np.ndarray]) -> list[Waypoint]:
    other, cube = r["other"], r["cube"]
    # Place beside `other`, on the side facing where the cube started (free space by construction).
    d = s0[f"cube_{cube}"][:2] - s0[f"cube_{other}"][:2]
    offset = 0.075 * d / max(float(np.linalg.norm(d)), 1e-6)
    return _pick(cube) + _place(lambda s: s[f"cube_{other}"][:2] + offset, GRASP_Z + 0.008)


def _plan_push(side: float) -> Callable[[dict[str, str], dict[str, np.ndarray]], list[Waypoint]]:
    def plan(r: dict[str, str], s0: dict[str, np.ndarray]) -> list[Waypoint]:
        cube = r["cube"]
        back = -side * 0.055  # start on the far side of the cube from the target edge

        def above(s: dict[str, np.ndarray]) -> np.ndarray:
            c = s[f"cube_{cube}"]
            return np.array([c[0], c[1] + back, CARRY_Z])

        def low(s: dict[str, np.ndarray]) -> np.ndarray:
            c = s[f"cube_{cube}"]
            return np.array([c[0], c[1] + back, GRASP_Z + 0.005])

        def push(s: dict[str, np.ndarray]) -> np.ndarray:
            c = s[f"cube_{cube}"]
            return np.array([c[0], side * (EDGE_Y + 0.08) + back, GRASP_Z + 0.005])

        return [
            Waypoint(above, 1.0, tol=0.006),
            Waypoint(low, 1.0, tol=0.006),
            Waypoint(push, 1.0, tol=0.006),
        ]

    return plan


_PLANS = {
    "lift": _plan_lift,
    "place_on_plate": _plan_place_on_plate,
    "stack": _plan_stack,
    "push_left": _plan_push(1.0),
    "push_right": _plan_push(-1.0),
    "place_next_to": _plan_next_to,
}


CAMERAS = ("agentview", "wrist", "frontview")


def check_names(tasks: tuple[str, ...] | list[str], cameras: tuple[str, ...] | list[str], reward: str
                ) -> tuple[str, ...]:
    """The tasks (all where none are named), after checking tasks, cameras and the reward kind."""
    tasks = tuple(tasks) or tuple(TASKS)
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"env.tasks: unknown tabletop task {t!r}. {suggest(t, TASKS)} Tasks: {', '.join(TASKS)}")
    if reward not in ("sparse", "shaped"):
        raise ConfigError(f"env.reward: {reward!r}; allowed: sparse, shaped")
    if reward == "shaped" and not set(tasks) <= set(PROGRESS):
        raise ConfigError(f"env.reward: shaped rewards are defined for {', '.join(PROGRESS)} only, "
                          f"not {', '.join(sorted(set(tasks) - set(PROGRESS)))}")
    for c in cameras:
        if c not in CAMERAS:
            raise ConfigError(f"env.cameras: unknown tabletop camera {c!r}. {suggest(c, CAMERAS)} "
                              f"Cameras: {', '.join(CAMERAS)}")
    return tasks


def preflight(cfg: Any, host: bool = True) -> None:
    """Config-time check of an ``EnvConfig(name="tabletop")``: task, camera and reward names."""
    check_names(cfg.tasks, cfg.cameras, cfg.reward)
