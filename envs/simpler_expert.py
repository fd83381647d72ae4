"""Scripted expert for SimplerEnv's Bridge pick-and-place tasks from privileged state.

Carrot-on-plate, spoon-on-towel, green-cube-on-yellow-cube (and eggplant-in-basket): turn the hand
about the vertical so the fingers close across the object's short side, move above it, descend,
close, lift, carry above the target, lower, open. The arm controller accumulates targets
(``use_target``), so the expert tracks its own target and sends bounded target increments.
Per-task success: ``benchmarks/simpler_expert.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlsys.envs.simpler import POS_SCALE, ROT_SCALE

STEP_M = 0.02  # target increment per control step (m)
YAW_STEP = 0.2  # rad per control step
OPEN, CLOSE = 1.0, -1.0


def _yaw(q_wxyz: np.ndarray) -> float:
    w, x, y, z = q_wxyz
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _wrap_half(a: float) -> float:
    """Angle difference for an axis (a line): wrapped to [-pi/2, pi/2)."""
    return float((a + np.pi / 2) % np.pi - np.pi / 2)


class BridgeExpert:
    def __init__(self, state: dict[str, Any]) -> None:
        objs = state["objects"]
        src, dst = objs[state["source"]], objs[state["target"]]
        self.src_name = state["source"]
        self.grasp = src[0].copy()
        self.place = dst[0].copy()
        self.place[2] = dst[0][2] + 0.045
        self.above = 0.08
        # fingers close along (right - left); align that axis with the object's local y (short side)
        f = state["fingers"]
        closing = np.arctan2(f[1][1] - f[0][1], f[1][0] - f[0][0])
        self.turn = _wrap_half(_yaw(src[1]) + np.pi / 2 - closing)
        self.target = np.asarray(state["ee_pos"], float).copy()
        base_yaw = _yaw(state["base_quat_wxyz"])
        c, s = np.cos(base_yaw), np.sin(base_yaw)
        self.world_to_base = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])
        self.turned = 0.0
        self.phase, self.count = "turn", 0

    def act(self, state: dict[str, Any]) -> np.ndarray:
        self.count += 1
        g, p = self.grasp, self.place
        plan = {  # phase: (goal, gripper, steps at least/most)
            "turn": (np.array([g[0], g[1], g[2] + self.above]), OPEN, 10),
            "descend": (g, OPEN, 8),
            "close": (g, CLOSE, 4),
            "lift": (np.array([g[0], g[1], g[2] + 0.1]), CLOSE, 6),
            "carry": (np.array([p[0], p[1], g[2] + 0.1]), CLOSE, 10),
            "lower": (p, CLOSE, 4),
            "release": (p, OPEN, 4),
            "retreat": (p + np.array([0, 0, 0.08]), OPEN, 1_000),
        }
        goal, grip, steps = plan[self.phase]
        delta = np.clip(goal - self.target, -STEP_M, STEP_M)
        self.target = self.target + delta
        a = np.zeros(7, np.float32)
        a[:3] = self.world_to_base @ delta / POS_SCALE
        if self.phase == "turn" and abs(self.turn - self.turned) > 1e-6:
            d = float(np.clip(self.turn - self.turned, -YAW_STEP, YAW_STEP))
            self.turned += d
            a[5] = d / ROT_SCALE
        a[6] = grip
        arrived = np.linalg.norm(goal - self.target) < 1e-6 and abs(self.turn - self.turned) < 1e-6
        if arrived and self.count >= steps and self.phase != "retreat":
            order = list(plan)
            self.phase, self.count = order[order.index(self.phase) + 1], 0
        return np.clip(a, -1.0, 1.0)
