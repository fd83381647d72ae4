"""One registration mechanism for envs, backbones, samplers and algorithms.

Entries are either objects registered with a decorator, or lazy ``"module:attr"`` strings whose
module is imported only when the entry is chosen (heavy simulators stay unimported otherwise).
Third-party packages add entries through the entry-point group ``rlsys.<kind>`` (for example
``[project.entry-points."rlsys.envs"] my_sim = "my_pkg.env:make_env"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from rlsys.configtools import ConfigError, check, suggest


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}  # name -> object or "module:attr"
        self._entry_points_loaded = False

    def register(self, name: str, target: Any = None) -> Any:
        """``@reg.register("x")`` on an object, or ``reg.register("x", "pkg.mod:attr")`` (lazy)."""
        if target is not None:
            self._add(name, target)
            return target

        def deco(obj: Any) -> Any:
            self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, target: Any) -> None:
        if name in self._entries and self._entries[name] is not target:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = target

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=f"rlsys.{self.kind}"):
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def check_name(self, name: str, field: str) -> None:
        """Config check (``__post_init__``): ``name`` is registered, else ``field: got ...; allowed: one of ...``
        without importing the entry."""
        check(name in self, field, f"one of {', '.join(self.names())}", name)

    def get(self, name: str) -> Any:
        self._load_entry_points()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} "
                              f"{name!r}. {suggest(name, self._entries)}")
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split(".") if attr else []:
                obj = getattr(obj, part)
            self._entries[name] = target = obj
        return target

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        factory: Callable[..., Any] = self.get(name)
        return factory(*args, **kwargs)


ENVS = Registry("envs")
MODELS = Registry("models")
SAMPLERS = Registry("samplers")
ALGORITHMS = Registry("algorithms")
TRACKERS = Registry("trackers")

# Built-in entries, lazily imported.
ENVS.register("tabletop", "rlsys.envs.tabletop.env:make_env")
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
for _suite in LIBERO_SUITES:
    ENVS.register(_suite, f"rlsys.envs.libero:make_{_suite}")
ENVS.register("simpler_bridge", "rlsys.envs.simpler:make_env")
ENVS.register("robotwin", "rlsys.envs.robotwin:make_env")
# Per-env checks of an EnvConfig, run when the config is built (bad input fails before Ray, SFT or a
# run directory exist): ``fn(cfg, host)`` checks task and camera names, and with host=True what this
# machine must have. Light imports only: the simulator itself may live in another venv.
ENV_PREFLIGHT = {"tabletop": "rlsys.envs.tabletop.tasks:preflight", "simpler_bridge": "rlsys.envs.simpler:preflight",
                 "robotwin": "rlsys.envs.robotwin:preflight",
                 **{suite: "rlsys.envs.libero:preflight" for suite in LIBERO_SUITES}}
# Envs whose factory takes ``init_states`` (fixed initial-state suites; see EnvConfig.init_states).
ENV_FIXED_INIT_STATES = {"simpler_bridge", "robotwin", *LIBERO_SUITES}
# Envs whose factory takes ``placement="random"`` (training placements off the evaluation grid).
ENV_RANDOM_PLACEMENT = {"simpler_bridge"}


def preflight_env(cfg: Any, host: bool = True) -> None:
    """Env-config checks before any actor starts. ``host=False``: only those that do not depend on
    this machine (a config read back from a checkpoint; see ``rlsys.config.stored_config``)."""
    ENVS.check_name(cfg.name, "name")
    if cfg.init_states and cfg.name not in ENV_FIXED_INIT_STATES:
        raise ConfigError(f"init_states: env {cfg.name!r} has no fixed initial states (allowed with "
                          f"{', '.join(sorted(ENV_FIXED_INIT_STATES))}); leave it empty")
    if cfg.placement == "random" and cfg.name not in ENV_RANDOM_PLACEMENT:
        raise ConfigError(f"placement: 'random' is defined for {', '.join(sorted(ENV_RANDOM_PLACEMENT))}; "
                          f"env {cfg.name!r} allows 'grid' only")
    if cfg.placement == "random" and cfg.init_states:
        raise ConfigError("placement: 'random' places training resets off the grid, so init_states "
                          f"{cfg.init_states} would never be used; leave init_states empty or use 'grid'")
    if cfg.reward != "sparse" and cfg.name != "tabletop":
        raise ConfigError(f"reward: {cfg.reward!r} is defined for the tabletop env only; {cfg.name} is sparse")
    target = ENV_PREFLIGHT.get(cfg.name)
    if target:
        module, _, attr = target.partition(":")
        getattr(importlib.import_module(module), attr)(cfg, host)


MODELS.register("tiny", "rlsys.policy.tiny:TinyModel")
MODELS.register("pi0", "rlsys.policy.pi0:PI0")
MODELS.register("pi05", "rlsys.policy.pi0:PI05")
MODELS.register("vlm_dit", "rlsys.policy.vlm_dit:VLMDiT")
SAMPLERS.register("ode", "rlsys.flow:ODE")
SAMPLERS.register("flow_sde", "rlsys.flow:FlowSDE")
SAMPLERS.register("flow_noise", "rlsys.flow:FlowNoise")
ALGORITHMS.register("ppo", "rlsys.learner.algorithms.ppo:PPO")
ALGORITHMS.register("grpo", "rlsys.learner.algorithms.grpo:GRPO")
ALGORITHMS.register("rft", "rlsys.learner.algorithms.rft:RFT")
ALGORITHMS.register("ppo_rft", "rlsys.learner.algorithms.ppo_rft:PPORFT")
TRACKERS.register("wandb", "rlsys.trackers:WandbTracker")
TRACKERS.register("mlflow", "rlsys.trackers:MLflowTracker")
