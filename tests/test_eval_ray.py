"""`rlsys eval --workers N` shards episodes over Ray tasks and reproduces the local result exactly.

Both evaluations run as `rlsys` subprocesses (as a user runs them): the Ray driver then lives
outside pytest's process and output capture."""

import json
import os
import subprocess
import sys

MAKE_CKPT = """
import sys, torch
from rlsys.checkpoint import save_policy
from rlsys.config import EnvConfig, PolicyConfig
from rlsys.envs.tabletop.env import EMBODIMENT
from rlsys.policy.flow_policy import FlowPolicy
torch.manual_seed(3)
save_policy(sys.argv[1], FlowPolicy(PolicyConfig()), EnvConfig(), EMBODIMENT, meta={"stage": "test"})
"""


def run(code: str, *args: str) -> None:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def rlsys(*args: str) -> None:
    run("import sys; from rlsys.cli import main; main(sys.argv[1:])", *args)


def test_ray_sharded_eval_matches_local(tmp_path):
    ck = tmp_path / "ck"
    run(MAKE_CKPT, str(ck))
    common = ["--ckpt", str(ck), "--tasks", "lift", "--episodes", "4",
              "--set", "env.max_episode_steps=15", "--set", "env.num_envs=2"]
    rlsys("eval", *common, "--out", str(tmp_path / "local"))
    rlsys("eval", *common, "--out", str(tmp_path / "ray"), "--workers", "2")
    local = json.loads((tmp_path / "local" / "eval.json").read_text())
    ray_ = json.loads((tmp_path / "ray" / "eval.json").read_text())
    assert ray_["ray_workers"] == 2 and "ray_workers" not in local
    assert ray_["tasks"] == local["tasks"]  # same seeds, ODE: identical per-task success
    assert sorted(p.name for p in (tmp_path / "ray" / "videos").glob("*.gif")) == ["lift.gif"]
