"""LeRobotDataset folders other tools recorded: a v3.0 folder (video camera, several episodes per data
and video file) and a v2.1 folder, both written here to the published layout, not by rlsys's writer;
read through a feature map, used for SFT; bad folders and maps; a collection killed part way."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

FPS = 10
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


def _stamp(frames: np.ndarray, start: int) -> np.ndarray:
    """Mark each frame's global index in a 16 px corner block, so a misaligned video frame shows."""
    out = frames.copy()
    for i in range(len(out)):
        out[i, :16, :16] = (start + i) * 5 % 250
    return out


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _encode_video(path, frames: np.ndarray) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt, s.bit_rate = frames.shape[2], frames.shape[1], "yuv420p", 4_000_000
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _features(ds, front: str, wrist_dtype: str):
    s = ds.images.shape[2]
    return {
        "image": {"dtype": "image", "shape": [96, 96, 3], "names": ["height", "width", "channel"]},
        "wrist_image": {"dtype": wrist_dtype, "shape": [s, s, 3], "names": ["height", "width", "channel"]},
        "state": {"dtype": "float32", "shape": [ds.states.shape[1]], "names": None},
        "actions": {"dtype": "float32", "shape": [ds.actions.shape[1]], "names": None},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in (
            ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
            ("task_index", "int64"))},
    }


def _frames_table(ds, episodes, tasks, front_pngs):
    import pyarrow as pa

    idx = np.concatenate([np.arange(ds.episode_starts[e], ds.episode_starts[e] + ds.episode_lengths[e])
                          for e in episodes])
    return pa.table({
        "image": [{"bytes": front_pngs[i], "path": None} for i in idx],
        "state": pa.array(list(ds.states[idx]), pa.list_(pa.float32())),
        "actions": pa.array(list(ds.actions[idx]), pa.list_(pa.float32())),
        "timestamp": pa.array(ds.frame_index[idx].astype(np.float32) / FPS),
        "frame_index": pa.array(ds.frame_index[idx]),
        "episode_index": pa.array(ds.episode_index[idx]),
        "index": pa.array(idx.astype(np.int64)),
        "task_index": pa.array([tasks[ds.instructions[i]] for i in idx], pa.int64()),
    })


@pytest.fixture(scope="module")
def source(demo_dir):
    """The tabletop demos, with the wrist frames stamped and the front camera at 96 px."""
    from PIL import Image

    from rlsys.envs.demos import load_demos

    ds = load_demos(demo_dir)
    ds.images[:, 1] = _stamp(ds.images[:, 1], 0)
    front96 = [_png(np.asarray(Image.fromarray(img).resize((96, 96), Image.BILINEAR))) for img in ds.images[:, 0]]
    return ds, front96


def write_v30(root, ds, front96):
    """Episodes 0-1 in data file 0, 2-3 in data file 1; all wrist frames in one mp4 (from_timestamp per
    episode); the task table indexed by the task string; per the LeRobot v3.0 documentation."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = {t: i for i, t in enumerate(dict.fromkeys(ds.instructions))}
    rows, t0 = [], 0.0
    for file_index, eps in enumerate(([0, 1], [2, 3])):
        path = root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_frames_table(ds, eps, tasks, front96), path)
        for e in eps:
            a, n = int(ds.episode_starts[e]), int(ds.episode_lengths[e])
            rows.append({"episode_index": e, "tasks": [ds.instructions[a]], "length": n, "data/chunk_index": 0,
                         "data/file_index": file_index, "dataset_from_index": a, "dataset_to_index": a + n,
                         "videos/wrist_image/chunk_index": 0, "videos/wrist_image/file_index": 0,
                         "videos/wrist_image/from_timestamp": t0, "videos/wrist_image/to_timestamp": t0 + n / FPS})
            t0 += n / FPS
    _encode_video(root / V30_VIDEO_PATH.format(video_key="wrist_image", chunk_index=0, file_index=0), ds.images[:, 1])
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")).to_parquet(
        root / "meta" / "tasks.parquet")
    info = {"codebase_version": "v3.0", "robot_type": None, "total_episodes": 4, "total_frames": len(ds.actions),
            "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": FPS, "splits": {"train": "0:4"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": V30_VIDEO_PATH, "features": _features(ds, "image", "video")}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return root


def write_v21(root, ds, front96):
    """One parquet per episode, episodes/tasks as JSON lines, the wrist camera as images too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = {t: i for i, t in enumerate(dict.fromkeys(ds.instructions))}
    (root / "meta").mkdir(parents=True)
    with open(root / "meta" / "episodes.jsonl", "w") as f:
        for e in range(4):
            table = _frames_table(ds, [e], tasks, front96)
            a, n = int(ds.episode_starts[e]), int(ds.episode_lengths[e])
            table = table.append_column("wrist_image", pa.array(
                [{"bytes": _png(ds.images[i, 1]), "path": None} for i in range(a, a + n)]))
            path = root / "data" / "chunk-000" / f"episode_{e:06d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            f.write(json.dumps({"episode_index": e, "tasks": [ds.instructions[a]], "length": n}) + "\n")
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for t, i in tasks.items()))
    info = {"codebase_version": "v2.1", "robot_type": None, "total_episodes": 4, "total_frames": len(ds.actions),
            "total_tasks": len(tasks), "chunks_size": 1000, "fps": FPS, "splits": {"train": "0:4"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet", "video_path": None,
            "features": _features(ds, "image", "image")}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return root


FMAP = dict(cameras=("image", "wrist_image"), state="state", action="actions")


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_a_dataset_another_tool_recorded_reads_through_the_feature_map(tmp_path, source, version):
    from rlsys.envs.demos import load_demos
    from rlsys.envs.lerobot import FeatureMap
    from rlsys.envs.tabletop.env import EMBODIMENT

    ds, front96 = source
    root = (write_v30 if version == "v3.0" else write_v21)(tmp_path / "ds", ds, front96)
    got = load_demos(root, FeatureMap(**FMAP), EMBODIMENT, image_size=64)
    np.testing.assert_array_equal(got.actions, ds.actions)
    np.testing.assert_array_equal(got.states, ds.states)
    np.testing.assert_array_equal(got.episode_lengths, ds.episode_lengths)
    assert got.instructions == ds.instructions and got.images.shape == ds.images.shape
    front_err = np.abs(got.images[:, 0].astype(float) - ds.images[:, 0]).mean()
    assert front_err < 6, front_err  # 64 -> 96 -> 64 px: resampling error only
    wrist_err = np.abs(got.images[:, 1].astype(float) - ds.images[:, 1]).mean()
    assert wrist_err < (8 if version == "v3.0" else 1e-9), wrist_err  # v3.0: an mpeg4 video, lossy
    # every wrist frame is the one its episode's from_timestamp + timestamp names (the stamped block)
    stamps = got.images[:, 1, 4:12, 4:12].reshape(len(got.actions), -1).mean(1)
    np.testing.assert_allclose(stamps, np.arange(len(got.actions)) * 5 % 250, atol=3)
    capped = load_demos(root, FeatureMap(**FMAP), EMBODIMENT, image_size=64, max_per_task=1)
    assert len(capped.episode_lengths) == len(set(ds.instructions))  # the first episode of each task


def test_sft_trains_from_a_v30_folder_another_tool_recorded(tmp_path, source):
    """`rlsys sft` with a feature map: the dataset is read (frames resized to env.image_size), trained on,
    and named in the checkpoint's meta."""
    ds, front96 = source
    root = write_v30(tmp_path / "ds", ds, front96)
    out = tmp_path / "sft"
    res = subprocess.run(
        [sys.executable, "-m", "rlsys.cli", "sft", "--preset", "tabletop_sft", "--out", str(out),
         "--set", "env.tasks=[lift,push_left]", "--set", f"sft.demos={root}",
         "--set", "sft.image_keys=[image,wrist_image]", "--set", "sft.state_key=state",
         "--set", "sft.action_key=actions", "--set", "sft.steps=3", "--set", "sft.eval_episodes=0"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"{len(ds.episode_lengths)} episodes, {len(ds.actions)} frames from {root}" in res.stdout
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["demos"] == str(root) and meta["episodes"] == 4


def test_bad_folders_and_maps_name_what_is_wrong(tmp_path, source):
    from rlsys.envs.demos import load_demos
    from rlsys.envs.lerobot import FeatureMap
    from rlsys.envs.tabletop.env import EMBODIMENT

    ds, front96 = source
    root = write_v30(tmp_path / "ds", ds, front96)
    with pytest.raises(ValueError, match=r"camera feature 'observation.images.front' is not in the dataset.*"
                                         r"image \(image \[96, 96, 3\]\).*sft.image_keys"):
        load_demos(root, FeatureMap(("observation.images.front", "wrist_image"), "state", "actions"), EMBODIMENT)
    with pytest.raises(ValueError, match="'state' is a float32 feature, not an image or video"):
        load_demos(root, FeatureMap(("state", "wrist_image"), "state", "actions"), EMBODIMENT)
    with pytest.raises(ValueError, match=rf"action feature 'actions' has {ds.actions.shape[1]} dims; the env's "
                                         r"embodiment has 3"):
        load_demos(root, FeatureMap(**FMAP), EMBODIMENT.__class__(**{**EMBODIMENT.__dict__, "action_dim": 3}))
    with pytest.raises(ValueError, match="needs the env's embodiment"):
        load_demos(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(ValueError, match=r"codebase_version 'v1.6' .* readable: v2.0, v2.1, v3.0"):
        load_demos(root, FeatureMap(**FMAP), EMBODIMENT)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "data" / "chunk-000" / "file-001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="file-001.parquet: missing; the dataset's metadata names it"):
        load_demos(root, FeatureMap(**FMAP), EMBODIMENT)
    with pytest.raises(FileNotFoundError, match="missing meta/info.json"):
        load_demos(tmp_path / "nothing")


def test_train_refuses_a_map_that_does_not_fit_before_anything_starts(tmp_path, source):
    ds, front96 = source
    root = write_v30(tmp_path / "ds", ds, front96)
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run([sys.executable, "-m", "rlsys", "train", "--preset", "tabletop_ppo",
                          "--set", f"sft.demos={root}", "--set", "sft.image_keys=[front,wrist_image]",
                          "--set", "run_dir=runs"],
                         capture_output=True, text=True, timeout=120, cwd=work)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "sft.demos:" in out.stderr and "camera feature 'front' is not in the dataset" in out.stderr
    assert "wrist_image (video [64, 64, 3])" in out.stderr  # what the dataset has
    assert not any(work.iterdir()) and "Ray" not in out.stdout + out.stderr


def test_a_collection_killed_part_way_leaves_only_whole_episodes(tmp_path):
    """SIGKILL `rlsys demos` once its first episodes are on disk: what is there loads, and holds exactly
    the episodes the metadata counts (each episode's files are renamed into place, info.json last)."""
    from rlsys.envs.demos import load_demos

    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-m", "rlsys.cli", "demos", "--out", str(out), "--episodes", "40",
                             "--set", "env.tasks=[lift]"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = out / "meta" / "info.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (info.exists() and json.loads(info.read_text())["total_episodes"] >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n = json.loads(info.read_text())["total_episodes"]
    assert 3 <= n < 40
    ds = load_demos(out)
    assert len(ds.episode_lengths) == n and len(ds.actions) == json.loads(info.read_text())["total_frames"]
