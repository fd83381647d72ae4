"""The demo format (LeRobotDataset layout), parallel expert workers, demos from another interpreter."""

import json
import sys

import numpy as np
import pytest

from rlsys.config import EnvConfig


def test_parallel_demo_workers_merge_into_one_dataset(tmp_path, demo_dir):
    import pyarrow.parquet as pq

    from rlsys.envs.demos import DEMO_SEED_BASE, collect_expert_demos, expert_demos, load_demos
    from rlsys.envs.lerobot import episode_rows, read_tasks
    from rlsys.envs.tabletop.env import TabletopEnv

    cfg = EnvConfig(name="tabletop", tasks=("lift", "push_left"), image_size=64)
    report = expert_demos(cfg, tmp_path / "par", 3, workers=2)  # two expert processes, seeds interleaved
    assert {t: r["kept"] for t, r in report.items()} == {"lift": 3, "push_left": 3}
    info = json.loads((tmp_path / "par" / "meta" / "info.json").read_text())
    ds = load_demos(tmp_path / "par")
    assert info["total_episodes"] == 6 and len(ds.actions) == info["total_frames"]
    assert sorted(set(ds.episode_index.tolist())) == list(range(6))
    tasks = read_tasks(tmp_path / "par", info)
    assert sorted(tasks.values()) == sorted(set(ds.instructions))  # one entry per instruction, renumbered
    rows = episode_rows(tmp_path / "par")
    for e, row in enumerate(rows):
        table = pq.read_table(tmp_path / "par" / "data" / "chunk-000" / f"file-{e:03d}.parquet").to_pydict()
        first = int(ds.episode_starts[e])
        assert set(table["episode_index"]) == {e} and tasks[table["task_index"][0]] == ds.instructions[first]
        assert table["index"] == list(range(first, first + len(table["index"])))  # frame counter, renumbered
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (first, first + len(table["index"]))
    seeds = [r["seed"] for r in rows]  # each episode keeps the reset seed it was recorded on
    assert len(set(seeds)) == 6 and seeds[0] == DEMO_SEED_BASE and {s % 2 for s in seeds} == {0, 1}
    episodes = [ds.actions[ds.episode_index == e] for e in range(6)]
    env = TabletopEnv(tasks=("lift",), image_size=64)  # worker 0's first episode is the one seed_base gives
    collect_expert_demos(env, tmp_path / "one", 1, "tabletop", DEMO_SEED_BASE)
    env.close()
    np.testing.assert_array_equal(load_demos(tmp_path / "one").actions, episodes[0])
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        expert_demos(cfg, demo_dir, 1, workers=2)
    with pytest.raises(ValueError, match="demo workers: got 0; allowed: >= 1"):
        expert_demos(cfg, tmp_path / "none", 1, workers=0)


def test_demo_format_is_lerobot_v30_layout(demo_dir):
    """The layout LeRobot's v3.0 reader expects, checked file by file against its documented spec."""
    import pandas as pd
    import pyarrow.parquet as pq

    from rlsys.envs.demos import load_demos

    info = json.loads((demo_dir / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 4
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["features"]["observation.images.agentview"]["dtype"] == "image"
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert info["features"][name]["shape"] == [1]
    table = pq.read_table(demo_dir / "data" / "chunk-000" / "file-000.parquet")
    assert set(info["features"]) == set(table.column_names)
    tasks = pd.read_parquet(demo_dir / "meta" / "tasks.parquet")  # the task string is the index, as LeRobot keeps it
    assert tasks.index.name == "task" and list(tasks["task_index"]) == list(range(info["total_tasks"]))
    assert any("pick up" in t for t in tasks.index) and any("left edge" in t for t in tasks.index)
    episodes = pd.read_parquet(demo_dir / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    assert list(episodes["episode_index"]) == [0, 1, 2, 3]
    assert list(episodes["dataset_to_index"] - episodes["dataset_from_index"]) == list(episodes["length"])
    assert episodes["dataset_to_index"].iloc[-1] == info["total_frames"]
    stats = json.loads((demo_dir / "meta" / "stats.json").read_text())
    ds = load_demos(demo_dir)
    np.testing.assert_allclose(stats["action"]["mean"], ds.actions.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], ds.actions.std(0), atol=1e-5)  # pooled over episodes
    assert stats["observation.state"]["count"] == [info["total_frames"]]
    assert np.all(np.asarray(stats["action"]["q01"]) <= np.asarray(stats["action"]["q99"]))  # pi0.5's bounds
    assert np.asarray(stats["action"]["q50"]).shape == (7,) and isinstance(info["fps"], int)
    assert np.asarray(stats["observation.images.wrist"]["mean"]).shape == (3, 1, 1)
    assert ds.images.shape[1:] == (2, 64, 64, 3) and ds.images.dtype == np.uint8
    assert len(ds.actions) == info["total_frames"]
    chunks, valid = ds.action_chunks(5)
    last = ds.episode_starts[0] + ds.episode_lengths[0] - 1
    assert valid[last].tolist() == [True, False, False, False, False]
    np.testing.assert_array_equal(chunks[last, 1], ds.actions[last])


def test_demos_in_the_simulators_own_interpreter_match_in_process(demo_dir, tmp_path, capsys):
    """env.python (RoboTwin's venv): `rlsys demos` runs the expert in that interpreter; here the
    interpreter is this one, so the episodes must be the in-process fixture's, action for action."""
    from rlsys.cli import main
    from rlsys.envs.demos import load_demos

    out = tmp_path / "ds"
    main(["demos", "--out", str(out), "--episodes", "2", "--set", "env.tasks=[lift,push_left]",
          "--set", "env.subprocess=true", "--set", f"env.python={sys.executable}"])
    assert "wrote 4 episodes" in capsys.readouterr().out
    report = json.loads((out / "meta" / "expert_report.json").read_text())
    assert {t: r["kept"] for t, r in report.items()} == {"lift": 2, "push_left": 2}
    here, there = load_demos(demo_dir), load_demos(out)
    np.testing.assert_array_equal(there.actions, here.actions)
    np.testing.assert_array_equal(there.images, here.images)
    assert there.instructions == here.instructions
