"""Scripted expert for SimplerEnv's Bridge pick-and-place tasks from privileged state.

Carrot-on-plate, spoon-on-towel, green-cube-on-yellow-cube (and eggplant-in-basket): turn the hand
about the vertical so the fingers close across the object's short side, move above it, descend,
close, lift, carry above the target, lower, open. Closed loop: every step's action is read off the
current state (the hand's distance to the phase's goal, clipped to ``STEP_M``; the finger axis's angle
to the wanted one, clipped to ``YAW_STEP``), as a policy must act from what it sees. The hand holds
still while the fingers close or open. A phase ends once the hand is within ``ARRIVE_M`` of its goal,
or has stopped (moved less than ``STALL_M`` in a step: a goal that contact leaves out of reach), and
is turned within ``ARRIVE_RAD``, after its least number of steps; or after ``PHASE_STEPS`` steps. (The
controller adds each action to its target, so pushing on towards a goal that cannot be reached winds
the target past it, and the next phase first has to unwind that.) An expert that tracked its own
accumulated target instead was as successful but taught SFT nothing: its actions depended on the step
count, not on the scene, and a policy's small errors drifted the controller's target with no demo
showing a correction.
Per-task success: ``benchmarks/simpler_expert.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlsys.envs.simpler import POS_SCALE, ROT_SCALE

STEP_M = 0.02  # target increment per control step (m)
YAW_STEP = 0.2  # rad per control step
ARRIVE_M, ARRIVE_RAD = 0.004, 0.03  # a phase's goal is reached within these
STALL_M = 0.001  # a hand moving less than this in a step has stopped
PHASE_STEPS = 15  # a phase that has not arrived by then (e.g. blocked by contact) moves on
# The hand turns by the least angle that aligns its fingers with the object's short side, a turn in
# [centre - pi/2, centre + pi/2): the choice jumps by pi at the interval's ends. With centre 0 one of
# the carrot's and the spoon's two grid orientations sits on that jump (turns of -1.56 and +1.56 rad
# for nearly the same scene), so demos would turn either way at random; their centre puts the jump
# where no grid orientation (+-0.3 rad, env.placement=random) lies.
TURN_CENTRE = {"bridge_carrot_generated_modified": -0.8, "bridge_spoon_generated_modified": -0.8}
OPEN, CLOSE = 1.0, -1.0


def _yaw(q_wxyz: np.ndarray) -> float:
    w, x, y, z = q_wxyz
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _finger_axis(fingers: np.ndarray) -> float:
    """Yaw of the line from the left to the right finger (the axis the fingers close along)."""
    (lx, ly, _), (rx, ry, _) = fingers
    return float(np.arctan2(ry - ly, rx - lx))


def _wrap_half(a: float) -> float:
    """Angle difference for an axis (a line): wrapped to [-pi/2, pi/2)."""
    return float((a + np.pi / 2) % np.pi - np.pi / 2)


class BridgeExpert:
    def __init__(self, state: dict[str, Any]) -> None:
        objs = state["objects"]
        src, dst = objs[state["source"]], objs[state["target"]]
        self.src_name = state["source"]
        g, p = src[0].copy(), dst[0].copy()
        p[2] += 0.045
        self.plan = {  # phase: (goal, gripper, steps at least), in order
            "turn": (np.array([g[0], g[1], g[2] + 0.08]), OPEN, 3),
            "descend": (g, OPEN, 1),
            "close": (g, CLOSE, 4),
            "lift": (np.array([g[0], g[1], g[2] + 0.1]), CLOSE, 1),
            "carry": (np.array([p[0], p[1], g[2] + 0.1]), CLOSE, 1),
            "lower": (p, CLOSE, 1),
            "release": (p, OPEN, 3),
            "retreat": (p + np.array([0, 0, 0.08]), OPEN, 1_000),
        }
        self.next_phase = dict(zip(self.plan, list(self.plan)[1:]))
        # align the finger axis with the object's local y (its short side), turning the least
        closing = _finger_axis(state["fingers"])
        centre = TURN_CENTRE.get(self.src_name, 0.0)
        self.closing = closing + centre + _wrap_half(_yaw(src[1]) + np.pi / 2 - closing - centre)
        base_yaw = _yaw(state["base_quat_wxyz"])
        c, s = np.cos(base_yaw), np.sin(base_yaw)
        self.world_to_base = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])
        self.phase, self.count = "turn", 0
        self.last_ee = np.asarray(state["ee_pos"], float)

    def act(self, state: dict[str, Any]) -> np.ndarray:
        self.count += 1
        goal, grip, steps = self.plan[self.phase]
        ee = np.asarray(state["ee_pos"], float)
        err = goal - ee
        stalled = self.count >= 2 and np.linalg.norm(ee - self.last_ee) < STALL_M
        self.last_ee = ee
        a = np.zeros(7, np.float32)
        if self.phase not in ("close", "release"):
            a[:3] = self.world_to_base @ np.clip(err, -STEP_M, STEP_M) / POS_SCALE
        turn = 0.0
        if self.phase in ("turn", "descend"):  # the grasp's orientation; held by the wrist after that
            turn = _wrap_half(self.closing - _finger_axis(state["fingers"]))
            a[5] = np.clip(turn, -YAW_STEP, YAW_STEP) / ROT_SCALE
        a[6] = grip
        arrived = (np.linalg.norm(err) < ARRIVE_M or stalled) and abs(turn) < ARRIVE_RAD and self.count >= steps
        if (arrived or self.count >= PHASE_STEPS) and self.phase != "retreat":
            self.phase, self.count = self.next_phase[self.phase], 0
        return np.clip(a, -1.0, 1.0)
