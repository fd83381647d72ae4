"""SimplerEnv Bridge tasks through the real ManiSkill3 / SAPIEN (CPU, lavapipe Vulkan): asset
check, conformance kit on the four tasks, conventions, bad input. Needs the ``simpler`` extra and
``scripts/setup_vulkan.sh`` (both run by .ci/run). The offline asset set lacks three large files:
these tests build labelled stand-ins in a temporary copy (``rlsys assets simpler --stand-ins``)."""

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("mani_skill") is None:  # not imported here: it reads MS_ASSET_DIR on import
    pytest.skip('needs pip install -e ".[simpler]"', allow_module_level=True)

from rlsys.config import ConfigError, EnvConfig
from rlsys.envs import simpler_assets
from rlsys.envs.api import run_expert_episode
from rlsys.envs.conformance import EnvConformance
from rlsys.envs.pool import make_single_env

SHARED = Path(os.environ.get("RLSYS_SIMPLER_ASSETS",
                             Path(__file__).resolve().parents[3] / "shared" / "assets" / "simpler"))
if not (SHARED / "data").is_dir():
    pytest.skip(f"offline SimplerEnv assets not found at {SHARED} (set RLSYS_SIMPLER_ASSETS)",
                allow_module_level=True)
ASSETS = Path(tempfile.mkdtemp(prefix="rlsys-simpler-assets-"))
simpler_assets.stage(ASSETS, SHARED)
simpler_assets.make_stand_ins(ASSETS)
os.environ["MS_ASSET_DIR"] = str(ASSETS)  # subprocess simulators inherit it


def test_asset_check_reports_official_missing_and_stand_in(tmp_path):
    result = simpler_assets.check(ASSETS)
    assert result["status"] == "stand-in"
    assert result["counts"] == {"ok": 69, "mismatch": 0, "missing": 0, "stand-in": 3}
    bare = tmp_path / "bare"
    simpler_assets.stage(bare, SHARED)
    result = simpler_assets.check(bare)
    assert result["status"] == "incomplete" and result["counts"]["missing"] == 3
    assert any("bridge_table_1_v1.glb" in line for line in simpler_assets.report_lines(result))
    # a corrupted file is a mismatch, never silently accepted
    victim = next(p for p in (bare / "data/robots/widowx").glob("*.urdf"))
    victim.unlink()
    victim.write_text("<robot/>")
    assert simpler_assets.check(bare)["files"][str(victim.relative_to(bare))] == "mismatch"
    assert not list(SHARED.rglob(simpler_assets.STAND_INS_FILE))  # the shared folder is never written


def _conformance(task: str) -> type:
    class Kit(EnvConformance):
        config = EnvConfig(name="simpler_bridge", tasks=(task,), cameras=("3rd_view",), image_size=64)
        short_limit = 3

        def solve(self, env):  # the scripted expert from privileged state (episode 1)
            return run_expert_episode(env, options={"init_state": 1})[0]

    Kit.__name__ = f"TestSimpler_{task}"
    return Kit


TestCarrot = _conformance("carrot_on_plate")
TestSpoon = _conformance("spoon_on_towel")
TestStack = _conformance("stack_cube")
TestEggplant = _conformance("eggplant_in_basket")


def test_conventions_and_protocol():
    env = make_single_env(EnvConfig(name="simpler_bridge", tasks=("carrot_on_plate",), cameras=("3rd_view",),
                                    image_size=64))
    try:
        assert env.num_init_states() == 24  # SimplerEnv's visual-matching grid for this task
        assert env.max_episode_steps == 60
        obs, info = env.reset(seed=0, options={"init_state": 5})
        assert info["instruction"] == "put carrot on plate" and info["asset_status"] == "stand-in"
        assert info["init_state"] == 5 and "is_src_obj_grasped" in info
        for _ in range(6):
            obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0], np.float32))
        closed = obs["proprio"][6]
        for _ in range(6):
            obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32))
        assert obs["proprio"][6] > closed + 0.01  # +1 opens the WidowX gripper (Bridge convention)
    finally:
        env.close()


def test_bad_input():
    with pytest.raises(ConfigError, match="carrot_on_plate"):
        make_single_env(EnvConfig(name="simpler_bridge", tasks=("carrot",), cameras=("3rd_view",)))
    with pytest.raises(ConfigError, match="Allowed: 3rd_view"):
        make_single_env(EnvConfig(name="simpler_bridge", cameras=("wrist",)))


def test_tiny_eval_records_the_asset_status(tmp_path):
    """`rlsys eval --env simpler_bridge`: a per-task table that says which assets ran, and a video."""
    import json

    from rlsys.checkpoint import save_policy
    from rlsys.cli import main
    from rlsys.config import PolicyConfig
    from rlsys.envs.simpler import EMBODIMENT
    from rlsys.policy.flow_policy import FlowPolicy

    ck = tmp_path / "ck"
    env_cfg = EnvConfig(name="simpler_bridge", tasks=("carrot_on_plate",), cameras=("3rd_view",), image_size=64)
    save_policy(ck, FlowPolicy(PolicyConfig(num_cameras=1)), env_cfg, EMBODIMENT, meta={"stage": "test"})
    main(["eval", "--ckpt", str(ck), "--trials", "2", "--out", str(tmp_path / "ev"),
          "--set", "env.max_episode_steps=3", "--set", "env.num_envs=2"])
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert res["env"] == "simpler_bridge" and res["asset_status"] == "stand-in"
    assert res["tasks"]["carrot_on_plate"]["episodes"] == 2
    assert "assets: **stand-in**" in (tmp_path / "ev" / "eval.md").read_text()
    assert list((tmp_path / "ev" / "videos").glob("*.gif"))


def test_training_init_states_hold_out_the_evaluation_ids():
    env = make_single_env(EnvConfig(name="simpler_bridge", tasks=("carrot_on_plate",), cameras=("3rd_view",),
                                    image_size=64, init_states=(0, 3)))
    try:
        assert [env.reset(seed=s)[1]["init_state"] for s in (4, 5)] == [0, 3]  # seeded: the listed ids
        assert env.reset(seed=4, options={"init_state": 1})[1]["init_state"] == 1  # evaluation: as asked
    finally:
        env.close()


def test_random_placement_stays_on_the_grids_area_and_apart():
    from rlsys.envs.simpler import PLACEMENT_MARGIN_M, PLACEMENT_YAW, random_placement

    env = make_single_env(EnvConfig(name="simpler_bridge", tasks=("carrot_on_plate",), cameras=("3rd_view",),
                                    image_size=32))
    try:
        env.reset(options={"init_state": 0})
        u = env._sims["carrot_on_plate"].unwrapped
        grid_xyz, grid_quat = u.xyz_configs.numpy(), u.quat_configs.numpy()
    finally:
        env.close()
    rng = np.random.default_rng(0)
    lo, hi = grid_xyz[..., :2].reshape(-1, 2).min(0), grid_xyz[..., :2].reshape(-1, 2).max(0)
    for _ in range(200):
        xyz, quat = random_placement(grid_xyz, grid_quat, 0, rng)
        assert np.all(xyz[:, :2] >= lo - PLACEMENT_MARGIN_M - 1e-9)
        assert np.all(xyz[:, :2] <= hi + PLACEMENT_MARGIN_M + 1e-9)
        assert np.linalg.norm(xyz[0, :2] - xyz[1, :2]) >= 0.15 - 2 * PLACEMENT_MARGIN_M - 1e-9  # grid corners: 15 cm
        np.testing.assert_allclose(xyz[:, 2], grid_xyz[0, :, 2])
        np.testing.assert_allclose(np.linalg.norm(quat, axis=1), 1.0, atol=1e-9)
        # the source turned about the vertical only, by at most PLACEMENT_YAW from one grid orientation
        angle = min(2 * np.arccos(min(1.0, abs(float(quat[0] @ g[0])))) for g in grid_quat)
        assert angle <= PLACEMENT_YAW + 1e-6
        assert any(np.allclose(quat[1], g[1]) for g in grid_quat)  # the target keeps its grid orientation


def test_random_training_placements_are_seeded_off_the_grid_and_solvable():
    env = make_single_env(EnvConfig(name="simpler_bridge", tasks=("carrot_on_plate",), cameras=("3rd_view",),
                                    image_size=32, placement="random"))
    try:
        _, info = env.reset(seed=7)
        u = env._sims["carrot_on_plate"].unwrapped
        grid = u.xyz_configs.numpy()[:, 0, :2]

        def carrot() -> np.ndarray:
            return np.asarray(u.objs[u.source_obj_name].pose.p)[0]

        a = carrot()
        assert info["init_state"] == -1 and np.abs(grid - a[:2]).sum(1).min() > 1e-3  # off the grid
        env.reset(seed=8)
        assert np.abs(carrot() - a).max() > 1e-3
        env.reset(seed=7)
        np.testing.assert_allclose(carrot(), a, atol=1e-5)  # the seed decides the placement
        assert u.xyz_configs.shape[0] == 12  # the task's grid is back after a random reset
        _, info = env.reset(seed=7, options={"init_state": 5})  # evaluation: the official grid episode
        assert info["init_state"] == 5 and np.abs(grid - carrot()[:2]).sum(1).min() < 0.02
        assert run_expert_episode(env, seed=3)[0]  # the scripted expert solves an off-grid placement
    finally:
        env.close()


def test_random_placement_needs_an_empty_init_state_list():
    with pytest.raises(ConfigError, match=r"env.placement: 'random' places training resets off the grid"):
        from rlsys.config import load_config

        load_config("simpler_carrot_ppo", ["env.init_states=[0,3]"])
