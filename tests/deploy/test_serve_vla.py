"""``rlsys serve`` with a transformers policy checkpoint (a tiny random-weight pi0.5): spec and
actions over HTTP, the executed-actions count in the spec."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

pytest.importorskip("transformers", reason="the vla extra: pip install -e '.[vla]'")

from rlsys.checkpoint import save_policy
from rlsys.config import load_config
from rlsys.envs.tabletop.env import EMBODIMENT
from rlsys.policy.flow_policy import FlowPolicy

PORT = 18437


def test_a_pi05_checkpoint_serves_actions(tmp_path):
    from ray import serve

    from rlsys.deploy.client import PolicyClient
    from rlsys.deploy.serve import prepare_env, start

    cfg = load_config("tabletop_sft", ["env.cameras=[agentview]", "policy.num_cameras=1", "env.image_size=32",
                                       "policy.image_size=32", "policy.model=pi05", "policy.model_config=pi05_tiny",
                                       "policy.vocab_size=256", "policy.execute_steps=3"])
    torch.manual_seed(0)
    save_policy(tmp_path / "ck", FlowPolicy(cfg.policy), cfg.env, EMBODIMENT, meta={"version": 2})
    prepare_env()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        start(str(tmp_path / "ck"), port=PORT)
        client = PolicyClient(f"http://127.0.0.1:{PORT}")
        spec = client.spec()
        assert spec["horizon"] == 5 and spec["execute_steps"] == 3 and spec["action_dim"] == 7
        rng = np.random.default_rng(0)
        a = client.act(rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), rng.normal(size=8), "lift the cube")
        assert a.shape == (5, 7) and np.isfinite(a).all()
    finally:
        serve.shutdown()
        ray.shutdown()
