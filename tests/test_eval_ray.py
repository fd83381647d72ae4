"""`rlsys eval --workers N` shards episodes over Ray tasks and reproduces the local result exactly."""

import json

from rlsys.checkpoint import save_policy
from rlsys.cli import main
from rlsys.config import EnvConfig, PolicyConfig
from rlsys.envs.tabletop.env import EMBODIMENT
from rlsys.policy.flow_policy import FlowPolicy


def test_ray_sharded_eval_matches_local(tmp_path):
    import ray
    import torch

    torch.manual_seed(3)
    ck = tmp_path / "ck"
    save_policy(ck, FlowPolicy(PolicyConfig()), EnvConfig(), EMBODIMENT, meta={"stage": "test"})
    common = ["--ckpt", str(ck), "--tasks", "lift", "--episodes", "4",
              "--set", "env.max_episode_steps=15", "--set", "env.num_envs=2"]
    main(["eval", *common, "--out", str(tmp_path / "local")])
    try:
        main(["eval", *common, "--out", str(tmp_path / "ray"), "--workers", "2"])
    finally:
        ray.shutdown()  # later tests start their own Ray
    local = json.loads((tmp_path / "local" / "eval.json").read_text())
    ray_ = json.loads((tmp_path / "ray" / "eval.json").read_text())
    assert ray_["ray_workers"] == 2
    assert ray_["tasks"] == local["tasks"]  # same seeds, ODE: identical per-task success
    assert sorted(p.name for p in (tmp_path / "ray" / "videos").glob("*.gif")) == ["lift.gif"]
