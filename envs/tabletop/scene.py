"""MJCF for the embedded tabletop scene, built in code (no external assets).

Frame: table top at z = 0, x points away from the robot (which stands behind x = -0.45), y to the
robot's left. The end-effector is a gravity-compensated hand on x/y/z slide joints and a yaw hinge,
driven by position actuators (an operational-space controller in miniature), with a two-finger
parallel gripper whose fingers close along the hand's y axis.
"""

from __future__ import annotations

CUBE_HALF = 0.02
PLATE_RADIUS = 0.05
PLATE_HALF_HEIGHT = 0.001  # plates are flat mats: drawn, but cubes slide over them
TABLE_HALF = 0.4
HAND_HOME = (0.0, 0.0, 0.22)
FINGER_OPEN = 0.045  # finger joint position when open (inner face offset from hand centre)
FINGER_CLOSED = 0.0

CUBE_COLORS = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.15, 0.3, 0.9),
}
PLATE_COLORS = {
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.6, 0.25, 0.75),
}


def _cube(name: str, rgb: tuple[float, float, float]) -> str:
    r, g, b = rgb
    return f"""
    <body name="cube_{name}" pos="0 0 {CUBE_HALF}">
      <freejoint name="cube_{name}"/>
      <geom name="cube_{name}" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" mass="0.05"
            rgba="{r} {g} {b} 1" friction="1.5 0.01 0.001" condim="4" solref="0.01 1"/>
    </body>"""


def _plate(name: str, rgb: tuple[float, float, float]) -> str:
    r, g, b = rgb
    return f"""
    <body name="plate_{name}" pos="0 0 {PLATE_HALF_HEIGHT}">
      <geom name="plate_{name}" type="cylinder" size="{PLATE_RADIUS} {PLATE_HALF_HEIGHT}"
            rgba="{r} {g} {b} 1" contype="0" conaffinity="0"/>
    </body>"""


def build_xml(image_size: int) -> str:
    cubes = "".join(_cube(n, c) for n, c in CUBE_COLORS.items())
    plates = "".join(_plate(n, c) for n, c in PLATE_COLORS.items())
    hx, hy, hz = HAND_HOME
    return f"""<mujoco model="rlsys_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.005" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{max(image_size, 64)}" offheight="{max(image_size, 64)}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5"/>
  </visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.42 0.3" rgb2="0.5 0.38 0.27"
             width="64" height="64"/>
    <material name="table" texture="grid" texrepeat="4 4"/>
  </asset>
  <default>
    <geom solimp="0.95 0.99 0.001" solref="0.004 1"/>
  </default>
  <worldbody>
    <light pos="0 0 1.5" dir="0 0 -1" castshadow="false" diffuse="0.6 0.6 0.6"/>
    <geom name="floor" type="plane" pos="0 0 -0.5" size="2 2 0.1" rgba="0.3 0.3 0.32 1"/>
    <geom name="table" type="box" pos="0 0 -0.02" size="{TABLE_HALF} {TABLE_HALF} 0.02"
          material="table" friction="0.5 0.01 0.001" priority="1"/>
    <camera name="agentview" pos="-0.42 0 0.42" xyaxes="0 -1 0 0.69 0 0.723" fovy="58"/>
    <camera name="frontview" pos="0.7 0 0.45" xyaxes="0 1 0 -0.55 0 0.83" fovy="50"/>
    <body name="hand" pos="{hx} {hy} {hz}" gravcomp="1">
      <joint name="hand_x" type="slide" axis="1 0 0" damping="60" range="-0.3 0.3"/>
      <joint name="hand_y" type="slide" axis="0 1 0" damping="60" range="-0.35 0.35"/>
      <joint name="hand_z" type="slide" axis="0 0 1" damping="60" range="-0.22 0.15"/>
      <joint name="hand_yaw" type="hinge" axis="0 0 1" damping="3" range="-3.2 3.2"/>
      <geom name="palm" type="box" size="0.02 0.06 0.012" pos="0 0 0.045" mass="0.5"
            rgba="0.25 0.25 0.28 1"/>
      <site name="grip" pos="0 0 0" size="0.005" rgba="1 0 0 0"/>
      <camera name="wrist" pos="0.03 0 0.03" xyaxes="0 -1 0 1 0 0" fovy="85"/>
      <body name="finger_left" pos="0 0 0.0" gravcomp="1">
        <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_OPEN}" damping="5"/>
        <geom name="finger_left" type="box" size="0.02 0.006 0.032" pos="0 0.006 0.0" mass="0.05"
              rgba="0.35 0.35 0.38 1" friction="2 0.05 0.001" condim="4"/>
      </body>
      <body name="finger_right" pos="0 0 0.0" gravcomp="1">
        <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_OPEN}" damping="5"/>
        <geom name="finger_right" type="box" size="0.02 0.006 0.032" pos="0 -0.006 0.0" mass="0.05"
              rgba="0.35 0.35 0.38 1" friction="2 0.05 0.001" condim="4"/>
      </body>
    </body>{cubes}{plates}
  </worldbody>
  <equality>
    <joint joint1="finger_left" joint2="finger_right" polycoef="0 1 0 0 0"/>
  </equality>
  <actuator>
    <position name="hand_x" joint="hand_x" kp="1500" forcerange="-60 60"/>
    <position name="hand_y" joint="hand_y" kp="1500" forcerange="-60 60"/>
    <position name="hand_z" joint="hand_z" kp="1500" forcerange="-60 60"/>
    <position name="hand_yaw" joint="hand_yaw" kp="40" forcerange="-10 10"/>
    <position name="gripper" joint="finger_left" kp="300" forcerange="-12 12"/>
  </actuator>
</mujoco>
"""
