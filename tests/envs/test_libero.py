"""LIBERO through the real simulator (robosuite 1.4 + MuJoCo): conformance kit on libero_spatial and
libero_object, init-state determinism, conventions, scripted-expert success, a tiny evaluation,
bad input. Needs the ``libero`` extra (installed by .ci/run); image steps are kept to tens."""

import numpy as np
import pytest

pytest.importorskip("libero.libero", reason='needs pip install -e ".[libero]"')

from rlsys.config import ConfigError, EnvConfig
from rlsys.envs.api import run_expert_episode
from rlsys.envs.conformance import EnvConformance
from rlsys.envs.libero import MAX_STEPS, LiberoEnv, quat2axisangle
from rlsys.envs.pool import make_single_env


class TestLiberoSpatialConformance(EnvConformance):
    config = EnvConfig(name="libero_spatial", tasks=("0",), image_size=64)
    short_limit = 4

    def solve(self, env):
        return run_expert_episode(env, options={"init_state": 0})[0]


class TestLiberoObjectConformance(EnvConformance):
    config = EnvConfig(name="libero_object", tasks=("0",), image_size=64)
    short_limit = 4

    def solve(self, env):
        return run_expert_episode(env, options={"init_state": 0})[0]


@pytest.fixture(scope="module")
def spatial():
    env = make_single_env(EnvConfig(name="libero_spatial", tasks=("0", "1"), image_size=64))
    yield env
    env.close()


def test_init_state_determinism_and_conventions(spatial):
    a, info = spatial.reset(seed=5, options={"task": "0", "init_state": 7})
    b, info_b = spatial.reset(seed=99, options={"task": "0", "init_state": 7})
    assert info["init_state"] == info_b["init_state"] == 7
    np.testing.assert_array_equal(a["images"], b["images"])  # same init state -> same first observation
    np.testing.assert_array_equal(a["proprio"], b["proprio"])
    c, _ = spatial.reset(seed=5, options={"task": "0", "init_state": 8})
    assert not np.array_equal(a["proprio"], c["proprio"]) or not np.array_equal(a["images"], c["images"])
    assert spatial.reset(seed=57)[1]["init_state"] == 57 % spatial.num_init_states()
    assert spatial.max_episode_steps == MAX_STEPS["libero_spatial"] == 220
    assert info["instruction"] == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    # proprio: eef xyz, eef axis-angle, 2 finger joints; gripper opened by the wait steps
    assert a["proprio"].shape == (8,) and a["proprio"][6] > 0.03 and a["proprio"][7] < -0.03
    # images are rotated 180 degrees: the rendered table (bright) fills the bottom of the agentview
    img = a["images"][0].astype(float)
    assert img[-8:].mean() > img[:8].mean()


def test_training_init_states_restrict_seeded_resets_only():
    """env.init_states: seeded (training) resets draw from the listed ids; evaluation's explicit
    init_state is not restricted; an id past the task's count is a clear error."""
    env = make_single_env(EnvConfig(name="libero_spatial", tasks=("0",), image_size=64, init_states=(3, 10)))
    try:
        assert [env.reset(seed=s)[1]["init_state"] for s in (0, 1, 2, 7)] == [3, 10, 3, 10]
        assert env.reset(seed=0, options={"init_state": 30})[1]["init_state"] == 30
    finally:
        env.close()
    bad = make_single_env(EnvConfig(name="libero_spatial", tasks=("0",), image_size=64, init_states=(50,)))
    try:
        with pytest.raises(ConfigError, match=r"env.init_states: 50 .*0\.\.49"):
            bad.reset(seed=0)
    finally:
        bad.close()


def test_gripper_sign_convention(spatial):
    obs, _ = spatial.reset(seed=0, options={"task": "0", "init_state": 0})
    close = np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32)
    for _ in range(8):
        obs, *_ = spatial.step(close)
    assert obs["proprio"][6] < 0.02  # +1 closes the fingers


def test_quat2axisangle():
    np.testing.assert_allclose(quat2axisangle(np.array([0, 0, 0, 1.0])), 0.0)
    s = np.sin(0.25)
    np.testing.assert_allclose(quat2axisangle(np.array([0, 0, s, np.cos(0.25)])), [0, 0, 0.5], atol=1e-9)
    np.testing.assert_allclose(quat2axisangle(np.array([0, 0, -s, -np.cos(0.25)])), [0, 0, 0.5], atol=1e-9)


def test_bad_input_names_what_is_allowed():
    with pytest.raises(ConfigError, match="libero_spatial"):
        LiberoEnv(suite="libero_spatail")
    with pytest.raises(ConfigError, match="0: pick_up_the_black_bowl"):
        LiberoEnv(suite="libero_spatial", tasks=("no_such_task",))
    with pytest.raises(ConfigError, match="Allowed: agentview, wrist"):
        LiberoEnv(suite="libero_spatial", cameras=("eye",))


def test_tiny_eval_protocol_through_the_cli(tmp_path):
    """`rlsys eval --env libero_spatial`: 1 task x 2 init states, a few steps, table + JSON written."""
    import json

    from rlsys.checkpoint import save_policy
    from rlsys.cli import main
    from rlsys.config import PolicyConfig
    from rlsys.envs.tabletop.env import EMBODIMENT as TABLETOP
    from rlsys.policy.flow_policy import FlowPolicy

    ck = tmp_path / "ck"
    save_policy(ck, FlowPolicy(PolicyConfig()), EnvConfig(), TABLETOP, meta={"stage": "test"})
    main(["eval", "--ckpt", str(ck), "--env", "libero_spatial", "--tasks", "0", "--trials", "2",
          "--init-state-offset", "25", "--out", str(tmp_path / "ev"),
          "--set", "env.max_episode_steps=6", "--set", "env.num_envs=2"])
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert res["env"] == "libero_spatial" and res["init_state_offset"] == 25
    (name, row), = res["tasks"].items()
    assert name.startswith("pick_up_the_black_bowl") and row["episodes"] == 2 and row["success"] == 0.0
    assert "| **mean** |" in (tmp_path / "ev" / "eval.md").read_text()
    assert list((tmp_path / "ev" / "videos").glob("*.gif"))


def test_expert_demos_in_the_standard_format(tmp_path):
    """`rlsys demos --env libero_spatial`: one successful expert episode, LeRobot v2.1 layout."""
    import json

    from rlsys.cli import main
    from rlsys.envs.demos import load_demos

    main(["demos", "--env", "libero_spatial", "--episodes", "1", "--out", str(tmp_path / "d"),
          "--set", 'env.tasks=["0"]', "--set", "env.image_size=32", "--set", "policy.image_size=32"])
    info = json.loads((tmp_path / "d" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 1
    report = json.loads((tmp_path / "d" / "meta" / "expert_report.json").read_text())
    (row,) = report.values()
    assert row["kept"] == 1
    data = load_demos(tmp_path / "d")
    assert data.instructions[0].startswith("pick up the black bowl")
    assert data.images.shape[1:] == (2, 32, 32, 3) and data.actions.shape[1] == 7
    assert data.embodiment.robot == "a Franka Panda arm"
