import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
