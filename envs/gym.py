"""Every rlsys env in gymnasium's registry, under the ``rlsys/`` namespace:

    import gymnasium as gym
    env = gym.make("rlsys.envs:rlsys/Tabletop-v0", tasks=["lift"])   # the module prefix registers them
    envs = gym.make_vec("rlsys.envs:rlsys/Tabletop-v0", num_envs=4, vectorization_mode="sync")

The ids come from ``rlsys.registry.ENVS`` names, camel-cased (``libero_spatial`` ->
``rlsys/LiberoSpatial-v0``), third-party envs registered through the ``rlsys.envs`` entry point
included; keyword arguments go to the env's factory. An env whose simulator is not installed is
registered all the same and fails in ``gymnasium.make`` with its own import error.
"""

from __future__ import annotations

from typing import Any

import gymnasium

from rlsys.registry import ENVS

NAMESPACE = "rlsys"
SPELLING = {"robotwin": "RoboTwin"}  # names whose camel case is not the capitalised parts


def gym_id(name: str) -> str:
    camel = SPELLING.get(name) or "".join(part.capitalize() for part in name.split("_"))
    return f"{NAMESPACE}/{camel}-v0"


def _factory(name: str) -> Any:
    def make(render_mode: str | None = None, **kwargs: Any) -> Any:
        env = ENVS.build(name, **kwargs)
        modes = env.metadata.get("render_modes", [])
        if render_mode is not None and render_mode not in modes:  # rlsys envs render rgb arrays, always
            env.close()
            raise ValueError(f"render_mode: got {render_mode!r}; {name} renders {modes}")
        return env

    make.__name__ = f"make_{name}"
    return make


def register_envs() -> list[str]:
    """Register (once) every env of ``ENVS``; -> their gymnasium ids."""
    ids = []
    for name in ENVS.names():
        env_id = gym_id(name)
        if env_id not in gymnasium.registry:
            # the env truncates at its own limit (max_episode_steps) and reports it in ``truncated``
            gymnasium.register(env_id, entry_point=_factory(name), disable_env_checker=False)
        ids.append(env_id)
    return ids
