"""The registry (lazy entries, entry points, suggestions) and the typed contracts between stages."""

import json
import subprocess
import sys

import numpy as np
import pytest

from rlsys.config import ConfigError
from rlsys.registry import ENVS, SAMPLERS, Registry
from rlsys.types import ActionChunk, Batch, ContractError, Observation


def test_registry_lazy_import_and_suggestions():
    assert "tabletop" in ENVS.names() and {"ode", "flow_sde", "flow_noise"} <= set(SAMPLERS.names())
    with pytest.raises(ConfigError, match="Did you mean 'tabletop'"):
        ENVS.get("tabeltop")
    reg = Registry("things")
    reg.register("lazy", "json:dumps")
    assert reg.get("lazy") is json.dumps
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("lazy", "json:loads")


def test_heavy_modules_are_not_imported_until_chosen():
    code = ("import sys, rlsys.registry, rlsys.config; "
            "print('mujoco' in sys.modules, 'rlsys.envs.tabletop.env' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_entry_point_group_adds_envs(monkeypatch):
    from importlib.metadata import EntryPoint

    reg = Registry("envs")
    ep = EntryPoint(name="third_party_sim", value="json:dumps", group="rlsys.envs")
    monkeypatch.setattr("rlsys.registry.entry_points", lambda group: [ep] if group == "rlsys.envs" else [])
    assert "third_party_sim" in reg.names() and reg.get("third_party_sim") is json.dumps


# ---------------------------------------------------------------- contracts
def _obs(b=2):
    return dict(images=np.zeros((b, 2, 64, 64, 3), np.uint8), proprio=np.zeros((b, 8), np.float32),
                tokens=np.zeros((b, 48), np.int64), token_mask=np.zeros((b, 48), bool),
                action_dim=np.full(b, 7, np.int64))


def test_observation_validates_fields():
    Observation(**_obs())
    with pytest.raises(ContractError, match="Observation.images: expected dtype uint8"):
        Observation(**{**_obs(), "images": np.zeros((2, 2, 64, 64, 3), np.float32)})
    with pytest.raises(ContractError, match="Observation.proprio: leading dims"):
        Observation(**{**_obs(), "proprio": np.zeros((3, 8), np.float32)})
    with pytest.raises(ContractError, match="Observation.tokens: expected 2 dims"):
        Observation(**{**_obs(), "tokens": np.zeros((2,), np.int64)})


def test_action_chunk_validates_chain_shape():
    kw = dict(actions=np.zeros((2, 5, 7), np.float32), action_mask=np.ones((2, 7), bool),
              chain=np.zeros((2, 5, 5, 7), np.float32), step_mask=np.zeros((2, 4), bool),
              logp_steps=np.zeros((2, 5), np.float32), value=np.zeros(2, np.float32),
              noise_level=np.zeros(2, np.float32), version=0)
    ActionChunk(**kw)
    with pytest.raises(ContractError, match="S\\+1 states"):
        ActionChunk(**{**kw, "step_mask": np.zeros((2, 3), bool)})
    with pytest.raises(ContractError, match="ActionChunk.value: expected dtype float32"):
        ActionChunk(**{**kw, "value": np.zeros(2, np.float64)})
    chunk = ActionChunk(**kw)
    with pytest.raises(ContractError, match=r"Batch.old_logp: leading dims \(3,\), expected \(2,\)"):
        Batch(obs=Observation(**_obs()), chunk=chunk, exec_mask=np.ones((2, 5), bool),
              old_logp=np.zeros(3, np.float32), old_value=np.zeros(2, np.float32),
              advantages=np.zeros(2, np.float32), returns=np.zeros(2, np.float32),
              loss_mask=np.ones(2, bool), versions=np.zeros(2, np.int64))
