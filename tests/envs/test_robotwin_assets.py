"""RoboTwin asset check (no simulator needed): upstream fingerprints, runnable vs blocked tasks."""

import shutil

import pytest
from kit import ROBOTWIN_ASSETS as SHARED

from rlsys.envs import robotwin_assets as ra

pytestmark = pytest.mark.skipif(not (SHARED / "assets").is_dir(), reason=f"no RoboTwin assets at {SHARED}")


def test_offline_set_runs_the_box_tasks_only():
    r = ra.check(SHARED)
    assert r["urdf"] == "offline"
    assert r["runnable_tasks"] == list(ra.BOX_TASKS)
    assert set(r["blocked_tasks"]) == set(ra.OBJECT_TASKS)
    assert r["files"]["assets/embodiments/aloha-agilex/urdf/arx5_description_isaac.urdf"] == "ok"
    assert r["files"]["assets/embodiments/aloha-agilex/config.yml"] == "mismatch"  # known: a 3-byte difference
    assert any("huggingface.co" in line for line in ra.report_lines(r))


def test_missing_embodiment_mesh_blocks_everything(tmp_path):
    root = tmp_path / "rt"
    shutil.copytree(SHARED / "assets", root / "assets", symlinks=True)
    (root / ra.EMB / "urdf/aloha_maniskill_sim/meshes/link3.STL").unlink()
    r = ra.check(root)
    assert r["runnable_tasks"] == [] and r["urdf"] is None
    assert "stack_blocks_two" in r["blocked_tasks"]
