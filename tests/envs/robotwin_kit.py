"""RoboTwin checks that run inside RoboTwin's own interpreter (its venv from scripts/setup_robotwin.sh);
tests/test_robotwin.py starts them with that interpreter. The file name keeps the main venv's pytest
from collecting it (RoboTwin is not importable there).

    .venv-robotwin/bin/python -m pytest tests/envs/robotwin_kit.py -q
"""

import numpy as np
import pytest

from rlsys.config import EnvConfig
from rlsys.envs.conformance import EnvConformance
from rlsys.envs.pool import make_single_env
from rlsys.envs.robotwin import STEP_LIMITS
from rlsys.envs.robotwin_assets import BOX_TASKS


class TestStackBlocksTwo(EnvConformance):
    """The full conformance kit on one box task (each RoboTwin reset rebuilds the scene: ~1-2 s)."""

    config = EnvConfig(name="robotwin", tasks=("stack_blocks_two",), cameras=("head",), image_size=32)
    short_limit = 3
    chunk_len = 3


@pytest.fixture(scope="module")
def env():
    e = make_single_env(EnvConfig(name="robotwin", tasks=BOX_TASKS, cameras=("head", "left_wrist", "right_wrist"),
                                  image_size=32))
    yield e
    e.close()


@pytest.mark.parametrize("task", BOX_TASKS)
def test_every_box_task_resets_and_steps(env, task):
    obs, info = env.reset(seed=0, options={"task": task})
    assert info["task"] == task and info["scene_seed"] >= 0 and info["asset_status"] in ("upstream", "offline-urdf")
    assert env.observation_space.contains(obs)
    assert obs["images"].shape == (3, 32, 32, 3) and obs["images"].std() > 1.0  # a rendered scene, not a blank
    grippers = obs["proprio"][[6, 13]]
    assert ((grippers >= -0.05) & (grippers <= 1.05)).all(), grippers  # 0 closed .. 1 open
    start = obs["proprio"].copy()
    target = start.copy()
    target[0] += 0.3  # left arm joint 1
    for _ in range(2):
        obs, reward, terminated, truncated, info = env.step(target)
    assert abs(obs["proprio"][0] - target[0]) < 0.05, "a joint target is reached within one action"
    np.testing.assert_allclose(obs["proprio"][7:], start[7:], atol=1e-3, err_msg="the other arm does not move")
    assert reward == 0.0 and not terminated and not truncated


def test_every_box_task_starts_at_the_home_pose_with_the_planner_ready(env):
    """Reading a task's instruction placeholders must not move the robot: the packaged
    stack_blocks_three and blocks_ranking_size replay their whole expert inside get_info()."""
    homes = {}
    for task in BOX_TASKS:
        obs, _ = env.reset(seed=0, options={"task": task})
        assert env._sim.plan_success is True, task
        homes[task] = obs["proprio"]
    first = homes[BOX_TASKS[0]]
    for task, proprio in homes.items():
        np.testing.assert_allclose(proprio, first, atol=1e-3, err_msg=f"{task} starts away from the home pose")


def test_planner_starts_each_path_where_the_arm_is(env):
    """mplib 0.2.1 padded an arm's 6 joint values into the first entries of the model's joint vector,
    which for aloha-agilex are not the arm's: paths began at stale joints, not at the arm's."""
    from rlsys.envs.robotwin import pad_at_move_group

    obs, _ = env.reset(seed=0, options={"task": "stack_blocks_two"})
    target = obs["proprio"].copy()
    target[[0, 1, 7, 8]] += [-0.3, 0.2, 0.3, 0.2]  # both arms away from the home pose
    for _ in range(2):
        obs, *_ = env.step(target)
    robot = env._sim.robot
    for arm, joints in (("left", slice(0, 6)), ("right", slice(7, 13))):
        model = getattr(robot, f"{arm}_planner").planner
        padded = pad_at_move_group(model, np.arange(6.0))
        np.testing.assert_array_equal(padded[model.move_group_joint_indices], np.arange(6.0))
        goal = np.array(getattr(robot, f"get_{arm}_ee_pose")(), np.float64)
        goal[2] += 0.03
        result = getattr(robot, f"{arm}_plan_path")(goal.tolist())
        assert result["status"] == "Success", (arm, result["status"])
        np.testing.assert_allclose(result["position"][0], obs["proprio"][joints], atol=0.02,
                                   err_msg=f"the {arm} arm's path does not start at its joints")


def test_an_expert_that_raises_is_a_failed_seed(env, monkeypatch):
    """RoboTwin's play_once raises when no grasp pose plans (its Action asserts on None). Its own demo
    collection counts such a seed as failed; so does the wrapper, and it rebuilds the scene as usual."""
    env.reset(seed=0, options={"task": "stack_blocks_two"})

    def no_grasp_pose() -> None:
        raise AssertionError("target_pose cannot be None for move action.")

    monkeypatch.setattr(env._sim, "play_once", no_grasp_pose)
    ex = env.expert()
    assert ex.planned is False and ex.targets == [] and ex.failure.startswith("AssertionError: target_pose")
    assert env._sim.play_once is not no_grasp_pose and env._sim.plan_success is True  # a fresh scene


def test_conventions(env):
    assert env.embodiment.arms == "dual arms" and env.embodiment.action_dim == 14
    assert STEP_LIMITS == {"stack_blocks_two": 800, "stack_blocks_three": 1200, "handover_block": 800,
                           "blocks_ranking_rgb": 1200, "blocks_ranking_size": 1200}  # _eval_step_limit.yml
    _, a = env.reset(seed=5, options={"task": "stack_blocks_two"})
    _, b = env.reset(seed=5, options={"task": "stack_blocks_two", "instruction_type": "unseen"})
    assert a["instruction"] != b["instruction"]  # RoboTwin's seen / unseen instruction splits
    assert "block" in a["instruction"].lower()


def test_demo_format_round_trips_here(tmp_path):
    """With env.python the expert's demos are written in this interpreter: the demo format (pyarrow,
    PNG) must work with RoboTwin's numpy 1.26 (pyarrow 26 needs numpy 2: setup_robotwin.sh pins < 26)."""
    from rlsys.envs.demos import DemoWriter, load_demos
    from rlsys.envs.robotwin import EMBODIMENT

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 1, 32, 32, 3), dtype=np.uint8)
    states, actions = rng.normal(size=(4, 14)).astype(np.float32), rng.normal(size=(4, 14)).astype(np.float32)
    w = DemoWriter(tmp_path / "ds", "robotwin", EMBODIMENT, ("head",), 32)
    w.add_episode(images, states, actions, np.zeros(4), np.array([0, 0, 0, 1], bool), instruction="stack them")
    w.close()
    ds = load_demos(tmp_path / "ds")
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.actions, actions)
    assert ds.instructions == ["stack them"] * 4 and ds.info["rlsys"]["env"] == "robotwin"
