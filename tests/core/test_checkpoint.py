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
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "manifest.json",
                                                                      "model.safetensors", "normalization.json"]
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

    from rlsys.checkpoint import load_policy, save_policy, write_manifest
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.evaluation import run_eval_command
    from rlsys.policy.flow_policy import FlowPolicy

    save_policy(tmp_path / "ck", FlowPolicy(PolicyConfig()), EnvConfig(), EMBODIMENT)
    cfg_file = tmp_path / "ck" / "config.json"
    data = json.loads(cfg_file.read_text())
    gone = str(tmp_path / "venv-elsewhere" / "bin" / "python")
    data["env"].update(name="robotwin", tasks=["stack_blocks_two"], cameras=["head"], subprocess=True, python=gone)
    cfg_file.write_text(json.dumps(data))
    write_manifest(tmp_path / "ck")  # as if written so on the machine that trained it
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


# ---------------------------------------------------------------- crash safety
def tiny_policy_and_env():
    from rlsys.config import EnvConfig, PolicyConfig
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.policy.flow_policy import FlowPolicy

    torch.manual_seed(0)
    return FlowPolicy(PolicyConfig(width=32, heads=2, backbone_layers=1, expert_layers=1)), EnvConfig(), EMBODIMENT


def test_a_damaged_file_is_named_when_the_checkpoint_loads(tmp_path):
    """Truncated or changed files (safetensors or JSON) fail the load with a CheckpointError naming
    the file; a checkpoint from before manifests still has its JSON and weights checked as read."""
    from rlsys.checkpoint import MANIFEST, CheckpointError, load_policy, save_policy

    pol, env, emb = tiny_policy_and_env()
    for name, damage, msg in (("model.safetensors", lambda b: b[: len(b) // 2], "truncated or damaged"),
                              ("model.safetensors", lambda b: b[:-1] + bytes([b[-1] ^ 1]), "contents differ"),
                              ("config.json", lambda b: b[:-3], "truncated or damaged")):
        ck = save_policy(tmp_path / f"ck_{len(list(tmp_path.iterdir()))}", pol, env, emb)
        f = ck / name
        f.write_bytes(damage(f.read_bytes()))
        with pytest.raises(CheckpointError, match=f"{f}: .*{msg}"):
            load_policy(ck)
    old = save_policy(tmp_path / "old", pol, env, emb)  # no manifest: the readers' own checks
    (old / MANIFEST).unlink()
    (old / "model.safetensors").write_bytes((old / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        load_policy(old)


def test_rotation_keeps_the_newest_k_and_the_link_follows(tmp_path):
    from rlsys.checkpoint import checkpoint_candidates, load_policy, save_rotating, save_training_checkpoint

    pol, env, emb = tiny_policy_and_env()
    for it in range(1, 6):
        save_rotating(tmp_path, it, 3, lambda folder, it=it: save_training_checkpoint(
            folder, pol, env, emb, {"iteration": it}, {}, meta={"iteration": it}))
    assert [p.name for p in checkpoint_candidates(tmp_path)] == ["iter_000005", "iter_000004", "iter_000003"]
    assert (tmp_path / "checkpoint").resolve() == (tmp_path / "checkpoints" / "iter_000005").resolve()
    assert load_policy(tmp_path / "checkpoint")[3]["iteration"] == 5


WRITER = """
import sys, torch
from rlsys.checkpoint import save_rotating, save_training_checkpoint
from rlsys.config import EnvConfig, PolicyConfig
from rlsys.envs.tabletop.env import EMBODIMENT
from rlsys.policy.flow_policy import FlowPolicy
pol = FlowPolicy(PolicyConfig())
opt = {f"m{i}": torch.randn(256, 1024).numpy() for i in range(8)}
it = 0
while True:
    it += 1
    save_rotating(__import__("pathlib").Path(sys.argv[1]), it, 2, lambda folder: save_training_checkpoint(
        folder, pol, EnvConfig(), EMBODIMENT, {"iteration": it}, opt, meta={"iteration": it}))
    print(it, flush=True)
"""


def test_a_write_killed_at_any_point_leaves_only_complete_checkpoints(tmp_path):
    """SIGKILL a process that keeps writing rotating training checkpoints, at random moments: every
    checkpoint folder it leaves loads (manifest, weights, optimizer), and the link points at one."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from rlsys.checkpoint import checkpoint_candidates, load_training_checkpoint

    rng = random.Random(0)
    interrupted = 0
    for trial in range(6):
        run = tmp_path / f"run{trial}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # one checkpoint written, then kill somewhere in a later write
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += any((run / "checkpoints").glob(".iter_*.tmp-*"))  # a write the kill cut short
        found = checkpoint_candidates(run)
        assert found, trial
        for folder in found:
            _, _, trainer, optimizer = load_training_checkpoint(folder)
            assert trainer["iteration"] >= 1 and len(optimizer) == 8
        link = run / "checkpoint"
        assert link.is_symlink() and link.resolve() in {f.resolve() for f in found}
    assert interrupted >= 2, "the kills never landed inside a write: the test proves nothing"


def test_a_trained_only_checkpoint_loads_its_frozen_weights_from_its_base(tmp_path):
    """policy.freeze: the RL checkpoint holds the trained entries; base.json names the complete start
    checkpoint (and its weights' sha256); loading joins them exactly; a base that moved or changed is
    named in the error."""
    import shutil

    from rlsys.checkpoint import BASE, CheckpointError, load_policy, save_policy, save_state
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.weights import state_to_numpy

    torch.manual_seed(0)
    cfg = PolicyConfig(freeze=("vision",))
    start = FlowPolicy(cfg)
    start.set_normalization(np.full(7, 0.1), np.full(7, 0.5), np.zeros(8), np.ones(8))
    save_policy(tmp_path / "sft", start, EnvConfig(), EMBODIMENT)
    trained = {n for n, p in start.named_parameters() if id(p) not in start.frozen_ids()}
    assert trained and len(trained) < len(start.state_dict())
    with torch.no_grad():  # "RL": the trained weights move, the frozen ones cannot
        for n, p in start.named_parameters():
            if n in trained:
                p.add_(0.01)
    want = state_to_numpy(start)
    save_state(tmp_path / "rl", state_to_numpy(start, trained), cfg, EnvConfig(), EMBODIMENT, base=tmp_path / "sft")
    link = json.loads((tmp_path / "rl" / BASE).read_text())
    assert link["path"] == str((tmp_path / "sft").resolve()) and link["entries"] == len(trained)
    from safetensors.numpy import load_file

    assert set(load_file(str(tmp_path / "rl" / "model.safetensors"))) == trained
    loaded, *_ = load_policy(tmp_path / "rl", expect=cfg)
    got = state_to_numpy(loaded)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(CheckpointError, match="a base must be complete"):
        save_state(tmp_path / "rl2", state_to_numpy(start, trained), cfg, EnvConfig(), EMBODIMENT, base=tmp_path / "rl")
    shutil.move(tmp_path / "sft", tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match=r"holds only the weights RL trained; the frozen rest is in its base "
                                              r"checkpoint .*sft, which is missing"):
        load_policy(tmp_path / "rl")
    save_policy(tmp_path / "sft", FlowPolicy(cfg), EnvConfig(), EMBODIMENT)  # another model in its place
    with pytest.raises(CheckpointError, match="not the base .* was trained from"):
        load_policy(tmp_path / "rl")
