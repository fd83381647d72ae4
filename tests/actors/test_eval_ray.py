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


def _spy_run_episodes(monkeypatch) -> list:
    """Record what every block hands ``run_episodes`` (no episodes are run)."""
    import numpy as np

    import rlsys.evaluation as ev

    calls = []

    def spy(policy, pool, builder, task, seeds, sampler, generator, frames=None, init_states=None, infos=None):
        calls.append((task, tuple(seeds), tuple(init_states or ()), sampler, generator.get_state().tolist()))
        return np.zeros(len(seeds), bool)

    monkeypatch.setattr(ev, "run_episodes", spy)
    return calls


def test_every_block_gets_the_same_noise_locally_and_on_ray(monkeypatch):
    """Sharding must not change what an episode samples: each block of episodes gets its env seeds,
    init states, sampler and sampler-noise generator from (task, first episode) alone. (Before, the
    local path ran one generator through all blocks and Ray's restarted it per block.)"""
    import dataclasses

    import numpy as np
    import torch

    import rlsys.evaluation as ev
    from rlsys.config import EnvConfig, PolicyConfig
    from rlsys.envs.tabletop.env import EMBODIMENT
    from rlsys.flow import FlowSDE
    from rlsys.policy.flow_policy import FlowPolicy

    calls = _spy_run_episodes(monkeypatch)
    env = EnvConfig(tasks=("lift", "stack"), image_size=32, cameras=("agentview",))
    policy = FlowPolicy(PolicyConfig(image_size=32, num_cameras=1))
    sampler = FlowSDE(0.3)
    local = ev.evaluate(policy, env, EMBODIMENT, 5, ("lift", "stack"), num_envs=2, sampler=sampler, seed=7)
    assert local["sampler"] == "FlowSDE(noise_level=0.3, exclude_last_step=False)"
    local_calls = list(calls)
    calls.clear()
    state = {k: v.numpy() for k, v in policy.state_dict().items()}
    for j, task in enumerate(("lift", "stack")):  # the blocks evaluate_on_ray submits, run in-process
        for start in range(0, 5, 2):
            ev._eval_block(policy.cfg, state, dataclasses.replace(env, num_envs=2), EMBODIMENT, task,
                           [ev.EVAL_SEED_BASE + 10_000 * j + start + i for i in range(2)],
                           ev.episode_init_states(0, (), start, 2), min(2, 5 - start), False, sampler, (7, j, start))
    assert len(local_calls) == 6 and calls == local_calls
    # blocks differ from each other, and the noise does not depend on what ran before
    assert len({str(c[4]) for c in calls}) == 6
    g = ev.block_generator(7, 1, 2)
    assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=ev.block_generator(7, 1, 2)))
    assert np.array_equal(calls[4][1], [ev.EVAL_SEED_BASE + 10_000 + 2, ev.EVAL_SEED_BASE + 10_000 + 3])


def test_eval_with_the_rollout_sampler(tmp_path):
    import pytest

    from rlsys.config import load_config
    from rlsys.evaluation import run_eval_command

    ck = tmp_path / "ck"
    run(MAKE_CKPT, str(ck))
    small = ["env.max_episode_steps=10", "env.num_envs=2", "sampler.noise_level=0.4"]
    res = run_eval_command(load_config("tabletop_sft", small), str(ck), str(tmp_path / "ev"), 2, ["lift"],
                           sampler="rollout")
    assert res["sampler"].startswith("FlowSDE(noise_level=0.4") and res["tasks"]["lift"]["episodes"] == 2
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["sampler"] == res["sampler"]
    with pytest.raises(ValueError, match="needs a noise head"):  # the checkpoint has no such head
        run_eval_command(load_config("tabletop_sft", [*small, "sampler.name=flow_noise", "policy.noise_head=true"]),
                         str(ck), None, 2, ["lift"], sampler="rollout")
