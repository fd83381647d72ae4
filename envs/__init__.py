"""Env API, vector pool, the embedded tabletop suite and simulator wrappers (``rlsys.envs``)."""
