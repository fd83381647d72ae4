"""RoboTwin 2.0 through its own interpreter (the venv of scripts/setup_robotwin.sh, run by .ci/run):
the conformance kit and per-task checks run there (tests/envs/robotwin_kit.py), and an EnvPool in this
interpreter drives RoboTwin simulators in that one (numpy 2 here, 1.26 there). Bad configs fail
here, before any simulator starts."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kit import REPO
from kit import ROBOTWIN_ASSETS as SHARED
from kit import ROBOTWIN_PYTHON as PYTHON

from rlsys.config import ConfigError, EnvConfig
from rlsys.envs.pool import EnvPool

pytestmark = [
    pytest.mark.skipif(not Path(PYTHON).is_file(), reason=f"no RoboTwin venv at {PYTHON} (scripts/setup_robotwin.sh)"),
    pytest.mark.skipif(not (SHARED / "assets").is_dir(), reason=f"no RoboTwin assets at {SHARED}"),
]


@pytest.fixture(autouse=True)
def _assets(monkeypatch):
    monkeypatch.setenv("ROBOTWIN_ASSETS_ROOT", str(SHARED))


def test_conformance_kit_in_the_robotwin_interpreter():
    env = {**os.environ, "ROBOTWIN_ASSETS_ROOT": str(SHARED)}
    proc = subprocess.run([PYTHON, "-m", "pytest", str(REPO / "tests" / "envs" / "robotwin_kit.py"), "-q", "-p",
                           "no:cacheprovider", "-W", "ignore::DeprecationWarning"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail


def test_pool_here_drives_robotwin_there():
    cfg = EnvConfig(name="robotwin", tasks=("handover_block",), cameras=("head", "left_wrist"), image_size=32,
                    num_envs=1, subprocess=True, python=PYTHON, max_episode_steps=2, step_timeout_s=120,
                    init_states=(11, 17))
    with EnvPool(cfg, seed=3) as pool:
        assert pool.embodiment.arms == "dual arms" and pool.single_action_space.shape == (14,)
        obs, infos = pool.reset()
        assert obs["images"].shape == (1, 2, 32, 32, 3) and obs["proprio"].shape == (1, 14)
        assert "block" in infos[0]["instruction"].lower()
        assert infos[0]["scene_seed"] in (11, 12, 17, 18)  # a listed training scene (or the next stable one)
        hold = np.repeat(obs["proprio"][:, None, :], 3, axis=1)  # hold the current joint targets
        res = pool.execute_chunk(hold)
        assert res.exec_mask.sum() == 2 and res.truncated.all() and not res.terminated.any()


def test_planner_expert_demos_through_the_robotwin_interpreter(tmp_path):
    """`rlsys demos` / SFT from this venv: RoboTwin's own scripted expert (play_once, planned with mplib
    on the CPU, RRT seeded with the scene seed) runs in RoboTwin's interpreter, its joint targets are
    replayed through the env there, and the successful episode comes back in the standard format.
    Seeds 0-3 all planned to success once plans started at the arm's joints (2 of 4 before)."""
    from rlsys.envs.demos import expert_demos, load_demos
    from rlsys.envs.lerobot import episode_rows
    from rlsys.envs.robotwin import STEP_LIMITS

    cfg = EnvConfig(name="robotwin", tasks=("stack_blocks_two",), cameras=("head",), image_size=32,
                    num_envs=1, subprocess=True, python=PYTHON)
    report = expert_demos(cfg, tmp_path / "ds", 1, seed_base=1)
    assert report["stack_blocks_two"]["kept"] == 1 and report["stack_blocks_two"]["attempts"] <= 3, report
    ds = load_demos(tmp_path / "ds")
    assert ds.images.shape[1:] == (1, 32, 32, 3) and ds.actions.shape[1] == 14 and ds.states.shape[1] == 14
    assert 100 < len(ds.actions) <= STEP_LIMITS["stack_blocks_two"]
    assert ds.info["rlsys"]["env"] == "robotwin" and "block" in ds.instructions[0].lower()
    row = episode_rows(tmp_path / "ds")[0]
    assert 1 <= row["seed"] <= report["stack_blocks_two"]["attempts"]  # the scene seed it was recorded on


def test_bad_configs_fail_before_any_simulator_starts(tmp_path):
    base = dict(name="robotwin", cameras=("head",), subprocess=True, python=PYTHON)
    with pytest.raises(ConfigError, match="unknown RoboTwin task 'stack_block_two'.*stack_blocks_two"):
        EnvConfig(tasks=("stack_block_two",), **base)
    with pytest.raises(ConfigError, match="cannot run with the assets.*020_hammer"):
        EnvConfig(tasks=("beat_block_hammer",), **base)
    with pytest.raises(ConfigError, match="camera 'wrist'.*head, left_wrist, right_wrist"):
        EnvConfig(tasks=("stack_blocks_two",), **{**base, "cameras": ("wrist",)})
    with pytest.raises(ConfigError, match="python.*setup_robotwin"):
        EnvConfig(tasks=("stack_blocks_two",), **{**base, "python": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="subprocess"):
        EnvConfig(tasks=("stack_blocks_two",), **{**base, "subprocess": False})
    if "robotwin" not in sys.modules:
        with pytest.raises(ConfigError, match="setup_robotwin"):  # RoboTwin is not importable here
            EnvConfig(tasks=("stack_blocks_two",), **{**base, "python": "", "subprocess": False})


def test_expert_with_no_planned_targets_says_so():
    """A plan that failed before its first frame leaves nothing to replay: a clear error, no IndexError."""
    from rlsys.envs.robotwin import RoboTwinExpert

    with pytest.raises(RuntimeError, match="no joint targets"):
        RoboTwinExpert([], planned=False).act({})
    ex = RoboTwinExpert([np.zeros(14), np.ones(14)], planned=True)
    assert [float(ex.act({})[0]) for _ in range(3)] == [0.0, 1.0, 1.0]  # holds the last target
