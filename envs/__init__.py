"""Env API, vector pool, the embedded tabletop suite and simulator wrappers (``rlsys.envs``).

Importing this package registers every env with gymnasium as ``rlsys/<Name>-v0`` (``rlsys.envs.gym``)."""

from rlsys.envs.gym import register_envs

register_envs()
