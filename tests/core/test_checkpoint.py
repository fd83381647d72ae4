"""Checkpoints: round trip, loading without the simulator, fresh heads for an RL start."""

import json
import sys

import numpy as np
import pytest
import torch

from rlsys.config import ConfigError, EnvConfig, PolicyConfig, load_config
from rlsys.types import ContractError


def test_checkpoint_round_trip_same_actions(tmp_path):
    from rlsys.checkpoint import CheckpointError, load_policy, save_policy
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.flow import ODE
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.prompt import ObservationBuilder

    torch.manual_seed(0)
    pol = FlowPolicy(PolicyConfig())
    pol.set_normalization(np.full(7, 0.1), np.full(7, 0.5), np.zeros(8), np.ones(8))
    save_policy(tmp_path / "ck", pol, EnvConfig(), EMBODIMENT, meta={"stage": "test"})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors",
                                                                      "normalization.json"]
    loaded, env_cfg, emb, meta = load_policy(tmp_path / "ck")
    assert env_cfg == EnvConfig() and emb == EMBODIMENT and meta["stage"] == "test"
    obs = ObservationBuilder(pol.cfg, EMBODIMENT)(np.zeros((3, 2, 64, 64, 3), np.uint8),
                                                    np.zeros((3, 8), np.float32), ["pick up the red cube"] * 3)
    a = pol.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions
    b = loaded.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="policy.width: checkpoint 128 vs requested 64"):
        load_policy(tmp_path / "ck", expect=PolicyConfig(width=64))
    # overwriting is atomic: the folder is replaced whole
    save_policy(tmp_path / "ck", pol, EnvConfig(), EMBODIMENT, meta={"stage": "second"})
    assert load_policy(tmp_path / "ck")[3]["stage"] == "second"
    assert not any(p.name.startswith(".ck") for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_policy(tmp_path)


def test_checkpoint_loads_where_its_simulator_is_absent(tmp_path, monkeypatch):
    """A policy trained with RoboTwin in its own venv loads on a machine with neither that venv nor
    the assets (serving, an RL start elsewhere); running its env there still fails with the reason."""
    import dataclasses

    from rlsys.checkpoint import load_policy, save_policy
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.evaluation import run_eval_command
    from rlsys.policy.flow_policy import FlowPolicy

    save_policy(tmp_path / "ck", FlowPolicy(PolicyConfig()), EnvConfig(), EMBODIMENT)
    cfg_file = tmp_path / "ck" / "config.json"
    data = json.loads(cfg_file.read_text())
    gone = str(tmp_path / "venv-elsewhere" / "bin" / "python")
    data["env"].update(name="robotwin", tasks=["stack_blocks_two"], cameras=["head"], subprocess=True, python=gone)
    cfg_file.write_text(json.dumps(data))
    (tmp_path / "no_assets").mkdir()
    monkeypatch.setenv("ROBOTWIN_ASSETS_ROOT", str(tmp_path / "no_assets"))
    monkeypatch.delenv("ASSETS_PATH", raising=False)

    policy, env_cfg, _, _ = load_policy(tmp_path / "ck")
    assert env_cfg.name == "robotwin" and env_cfg.python == gone and policy is not None
    with pytest.raises(ConfigError, match="python: .*executable interpreter"):
        dataclasses.replace(env_cfg)  # the machine checks are back outside the checkpoint load
    with pytest.raises(ConfigError, match="python: .*executable interpreter"):
        run_eval_command(load_config("tabletop_sft"), str(tmp_path / "ck"), str(tmp_path / "ev"), 1, None)
    here = load_config("tabletop_sft", [f"env.python={sys.executable}", "env.subprocess=true"])
    with pytest.raises(ConfigError, match="'stack_blocks_two' cannot run with the assets"):
        run_eval_command(here, str(tmp_path / "ck"), str(tmp_path / "ev"), 1, None)
    assert not (tmp_path / "ev").exists()


def test_checkpoint_loads_with_a_fresh_critic_of_another_kind(tmp_path):
    """RL from an SFT checkpoint may swap the (never SFT-trained) value head; nothing else changes."""
    from rlsys.checkpoint import CheckpointError, load_policy, save_policy
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.policy.flow_policy import AttentionPoolValue, FlowPolicy

    torch.manual_seed(0)
    pol = FlowPolicy(PolicyConfig())
    save_policy(tmp_path / "ck", pol, EnvConfig(), EMBODIMENT, meta={"stage": "sft"})
    want = PolicyConfig(critic="attention")
    with pytest.raises(CheckpointError, match="policy.critic: checkpoint 'pooled' vs requested 'attention'"):
        load_policy(tmp_path / "ck", expect=want)
    loaded = load_policy(tmp_path / "ck", expect=want, critic="attention")[0]
    assert loaded.cfg == want and isinstance(loaded.value_head, AttentionPoolValue)
    old = pol.state_dict()
    for k, v in loaded.state_dict().items():
        if not k.startswith("value_head."):
            torch.testing.assert_close(v, old[k], msg=k)
    same = load_policy(tmp_path / "ck", critic="pooled")[0]  # same kind: the stored head is kept
    torch.testing.assert_close(same.value_head[0].weight, pol.value_head[0].weight)


def test_flow_noise_rl_starts_from_an_sft_checkpoint_without_a_noise_head(tmp_path):
    """pi-RL's Flow-Noise: the RL start adds a fresh learned-std head to an SFT policy; the flow is kept."""
    from rlsys.checkpoint import CheckpointError, load_policy, save_policy
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.flow import ODE, FlowNoise
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.prompt import ObservationBuilder

    torch.manual_seed(0)
    sft = FlowPolicy(PolicyConfig())
    save_policy(tmp_path / "ck", sft, EnvConfig(), EMBODIMENT)
    want = PolicyConfig(noise_head=True)
    with pytest.raises(CheckpointError, match="policy.noise_head: checkpoint False vs requested True"):
        load_policy(tmp_path / "ck", expect=want)
    rl = load_policy(tmp_path / "ck", expect=want, noise_head=True)[0]
    assert rl.cfg == want and not rl.noise_head.weight.any() and not rl.noise_head.bias.any()
    obs = ObservationBuilder(sft.cfg, EMBODIMENT)(np.zeros((2, 2, 64, 64, 3), np.uint8),
                                                   np.zeros((2, 8), np.float32), ["lift the cube"] * 2)
    np.testing.assert_array_equal(rl.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions,
                                  sft.sample(obs, ODE(), torch.Generator().manual_seed(1)).actions)
    with pytest.raises(ContractError, match="needs a noise head"):
        sft.sample(obs, FlowNoise(), torch.Generator().manual_seed(1))
    out = rl.sample(obs, FlowNoise(), torch.Generator().manual_seed(1))
    assert np.isfinite(out.actions).all()
    assert len(load_policy(tmp_path / "ck", noise_head=False)[0].state_dict()) < len(rl.state_dict())
