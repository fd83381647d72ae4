"""The tiny flow policy: observation checks, the SFT loss on real demos, normalisation stats."""


import numpy as np
import pytest
import torch

from rlsys.config import PolicyConfig, load_config
from rlsys.types import ContractError, Observation


def _obs(b=2):
    return dict(images=np.zeros((b, 2, 64, 64, 3), np.uint8), proprio=np.zeros((b, 8), np.float32),
                tokens=np.zeros((b, 48), np.int64), token_mask=np.zeros((b, 48), bool),
                action_dim=np.full(b, 7, np.int64))


def test_policy_rejects_mismatched_observations():
    from rlsys.envs.api import Embodiment
    from rlsys.flow import ODE
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.prompt import ObservationBuilder

    pol = FlowPolicy(PolicyConfig())
    bad = Observation(**{**_obs(), "images": np.zeros((2, 1, 64, 64, 3), np.uint8)})
    with pytest.raises(ContractError, match="policy expects \\[B, 2, 64, 64, 3\\]"):
        pol.sample(bad, ODE())
    wide = Embodiment("a big robot", "dual arms", 50.0, 14, 14, tuple(f"j{i}" for i in range(14)))
    with pytest.raises(ContractError, match="14 action channels but policy.action_channels is 7"):
        ObservationBuilder(PolicyConfig(), wide)


def test_sft_loss_decreases_on_demos(demo_dir):
    from rlsys.envs.demos import load_demos
    from rlsys.policy.flow_policy import FlowPolicy
    from rlsys.prompt import ObservationBuilder
    from rlsys.sft import SFTData, normalization_stats, train_sft

    ds = load_demos(demo_dir)
    cfg = load_config("tabletop_sft", ["sft.steps=40", "sft.batch_size=16", "sft.log_every=10", "sft.lr=1e-3"])
    torch.manual_seed(0)
    pol = FlowPolicy(cfg.policy)
    pol.set_normalization(**normalization_stats(ds))
    data = SFTData(ds, ObservationBuilder(cfg.policy, ds.embodiment), 5)
    hist = train_sft(pol, data, cfg)
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]



def test_normalization_floors_near_constant_channels():
    from rlsys.envs.demos import DemoSet
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.sft import STD_FLOOR, normalization_stats

    states = np.zeros((10, 8), np.float32)
    states[:, 0] = np.linspace(0, 1, 10)
    states[:, 5] = np.linspace(0, 1e-5, 10)  # a yaw that barely moves in the demos
    ds = DemoSet(images=np.zeros((10, 1, 16, 16, 3), np.uint8), states=states,
                 actions=np.zeros((10, 7), np.float32), episode_index=np.zeros(10, np.int64),
                 frame_index=np.arange(10), instructions=["x"] * 10, episode_starts=np.zeros(1, np.int64),
                 episode_lengths=np.array([10]), info={}, embodiment=EMBODIMENT)
    st = normalization_stats(ds)
    assert st["proprio_std"][5] == pytest.approx(STD_FLOOR) and st["proprio_std"][3] == 1.0
    assert st["action_std"].min() == 1.0  # constant channels get std 1
