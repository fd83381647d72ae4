"""Offscreen MuJoCo rendering with cheap defaults and clear errors about the GL backend."""

from __future__ import annotations

import atexit
import os
import sys
import weakref
from typing import Any

import numpy as np

from rlsys.config import RenderConfig

GL_BACKENDS = ("egl", "osmesa", "glfw")
_LATE = False  # mujoco was imported before MUJOCO_GL was set (it then picked its own backend)


class RenderError(RuntimeError):
    """Offscreen rendering is unavailable (bad or unusable MUJOCO_GL backend)."""


def configure_gl() -> str:
    """Settle ``MUJOCO_GL`` before mujoco is imported: default ``egl`` (headless), validate others."""
    global _LATE
    _LATE = "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend not in GL_BACKENDS:
        raise RenderError(
            f"MUJOCO_GL={backend!r} is not supported; use one of {', '.join(GL_BACKENDS)} "
            "(egl: headless GPU or Mesa; osmesa: software, needs libosmesa6; glfw: needs a display)"
        )
    # One Mesa thread per simulator process: processes then scale with cores.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    return backend


_LIVE: weakref.WeakSet[Renderer] = weakref.WeakSet()


def _close_all() -> None:
    # Free GL contexts before mujoco's own exit hook terminates EGL (atexit runs last-in first-out,
    # so this is registered after the first context exists).
    for r in list(_LIVE):
        r.close()


class Renderer:
    """Renders named cameras of a model to ``uint8 [C, S, S, 3]``; the GL context is made lazily."""

    def __init__(self, model: Any, size: int, quality: RenderConfig) -> None:
        import mujoco

        self._mujoco = mujoco
        self.model = model
        self.size = size
        model.vis.quality.shadowsize = 4096 if quality.shadows else 0
        model.vis.quality.offsamples = 4 if quality.multisample else 0
        self.quality = quality
        self._renderer: Any = None

    def _make(self) -> Any:
        mj = self._mujoco
        try:
            r = mj.Renderer(self.model, self.size, self.size)
        except Exception as e:  # mujoco raises several types for a missing GL
            if _LATE:
                raise RenderError(
                    "mujoco was imported before MUJOCO_GL was set, so it chose its own GL backend "
                    f"({e}). Export MUJOCO_GL=egl (or osmesa) before starting Python, or import "
                    "rlsys.envs before mujoco"
                ) from e
            raise RenderError(
                f"could not create an offscreen renderer with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: "
                f"{e}. Set MUJOCO_GL to one of {', '.join(GL_BACKENDS)} (egl needs libEGL/Mesa; "
                "osmesa needs Debian's libosmesa6)"
            ) from e
        if not _LIVE:
            atexit.register(_close_all)
        _LIVE.add(self)
        flags = r.scene.flags
        flags[mj.mjtRndFlag.mjRND_SHADOW] = self.quality.shadows
        flags[mj.mjtRndFlag.mjRND_REFLECTION] = self.quality.reflections
        flags[mj.mjtRndFlag.mjRND_SKYBOX] = False
        return r

    def render(self, data: Any, cameras: tuple[str, ...]) -> np.ndarray:
        if not cameras:  # state-only use (experts, benchmarks): no GL context at all
            return np.empty((0, self.size, self.size, 3), np.uint8)
        if self._renderer is None:
            self._renderer = self._make()
        out = np.empty((len(cameras), self.size, self.size, 3), np.uint8)
        for i, cam in enumerate(cameras):
            self._renderer.update_scene(data, camera=cam)
            out[i] = self._renderer.render()
        return out

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
