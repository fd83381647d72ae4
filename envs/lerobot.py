"""LeRobotDataset folders: rlsys writes the current layout (v3.0) and reads v3.0 and v2.1 (v2.0), its own
and ones other tools recorded.

v3.0, as rlsys writes it::

    DIR/meta/info.json                               codebase_version "v3.0", features, fps, counts, paths
    DIR/meta/stats.json                              {feature: {min, max, mean, std, count}} over all frames
    DIR/meta/tasks.parquet                           task_index, indexed by the task string ("task")
    DIR/meta/episodes/chunk-000/file-000.parquet     one row per episode: episode_index, tasks, length,
                                                     data/chunk_index, data/file_index, dataset_from_index,
                                                     dataset_to_index, stats/<feature>/<stat>, extras (seed)
    DIR/data/chunk-000/file-NNN.parquet              the frames (images as PNG inside the parquet)

Each episode goes to its own data file, written under a temporary name and renamed; the metadata is
then rewritten (each file renamed into place, ``info.json`` last: its ``total_episodes`` is the commit
record, and rows past it are ignored on reading). A collection that dies part way leaves a dataset of
the episodes it finished, never a half-written episode.

v2.1 (what rlsys wrote before, and what much of the Hub still holds): ``meta/episodes.jsonl``,
``meta/tasks.jsonl``, one ``data/chunk-XXX/episode_NNNNNN.parquet`` per episode. Camera features stored
as videos (``dtype: video``) are decoded with PyAV (the ``video`` extra) in both versions.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from rlsys.fileio import replace_text, replace_write

V30 = "v3.0"
READABLE_VERSIONS = ("v2.0", "v2.1", "v3.0")
CHUNK_SIZE = 1000  # files per chunk folder
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INDEX_FEATURES = {name: {"dtype": dtype, "shape": [1], "names": None} for name, dtype in (
    ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
    ("task_index", "int64"))}
CAMERA_DTYPES = ("image", "video")


def _write_json(path: Path, obj: Any) -> None:
    replace_text(path, json.dumps(obj, indent=2))


QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's q01 ... q99 (pi0.5 normalises with q01 / q99)


def feature_stats(x: np.ndarray) -> dict[str, Any]:
    """min/max/mean/std/count and the quantiles q01 ... q99 over the first axis of a [T, D] array."""
    x = np.asarray(x, np.float64)
    out = {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
           "std": x.std(0).tolist(), "count": [int(x.shape[0])]}
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = np.quantile(x, q, axis=0).tolist()
    return out


def image_stats(frames: np.ndarray) -> dict[str, Any]:
    """Per-channel statistics of [T, H, W, 3] uint8 frames in [0, 1], shaped [3, 1, 1] as LeRobot keeps them
    (every 4th frame: the statistics only feed normalisation)."""
    x = frames[::4].astype(np.float64) / 255.0
    flat = x.reshape(-1, 3)
    stats: dict[str, Any] = {k: [[[float(v)]] for v in vals] for k, vals in (
        ("min", flat.min(0)), ("max", flat.max(0)), ("mean", flat.mean(0)), ("std", flat.std(0)))}
    return {**stats, "count": [int(frames.shape[0])]}


def merge_stats(per_episode: list[dict[str, Any]]) -> dict[str, Any]:
    """Dataset statistics from per-episode ones (count-weighted mean; pooled variance)."""
    out: dict[str, Any] = {}
    for name in per_episode[0] if per_episode else ():
        parts = [s[name] for s in per_episode]
        n = np.array([p["count"][0] for p in parts], np.float64)
        mean = np.array([p["mean"] for p in parts], np.float64)
        var = np.array([p["std"] for p in parts], np.float64) ** 2
        shape = (-1,) + (1,) * (mean.ndim - 1)
        w = (n / n.sum()).reshape(shape)
        m = (w * mean).sum(0)
        v = (w * (var + (mean - m) ** 2)).sum(0)
        out[name] = {"min": np.min([p["min"] for p in parts], 0).tolist(),
                     "max": np.max([p["max"] for p in parts], 0).tolist(),
                     "mean": m.tolist(), "std": np.sqrt(v).tolist(), "count": [int(n.sum())]}
        for q in (k for k in parts[0] if k.startswith("q") and all(k in p for p in parts)):
            # count-weighted mean of the episodes' quantiles (as LeRobot aggregates them): approximate
            out[name][q] = (w * np.array([p[q] for p in parts], np.float64)).sum(0).tolist()
    return out


class LeRobotWriter:
    """Write a v3.0 dataset one episode at a time (see the module docstring for the layout).

    ``features``: the non-index features, LeRobot style ({name: {dtype, shape, names}}); ``extra_info``
    goes into ``info.json`` beside LeRobot's keys (rlsys keeps its env, cameras and embodiment there).
    """

    def __init__(self, root: str | os.PathLike, fps: float, features: dict[str, Any], robot_type: str | None = None,
                 extra_info: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        if (self.root / "meta" / "info.json").exists():
            raise FileExistsError(f"{self.root} already holds a dataset; choose a new --out folder")
        self.fps, self.robot_type, self.extra_info = fps, robot_type, extra_info or {}
        self.features = {**features, **INDEX_FEATURES}
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.stats: list[dict[str, Any]] = []
        self.frames = 0

    def add_episode(self, columns: dict[str, Any], task: str, stats: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> None:
        """``columns``: the episode's feature columns (arrow arrays or arrays, one entry per frame; the
        index columns are filled in here); ``stats``: its per-feature statistics; ``extra``: more
        columns for its row in the episodes table (e.g. the reset seed)."""
        table = pa.table(columns)
        t, ep = table.num_rows, len(self.episodes)
        if t == 0:
            raise ValueError("LeRobotWriter.add_episode: an episode needs at least one frame")
        missing = sorted(set(self.features) - set(INDEX_FEATURES) - set(table.column_names))
        if missing:
            raise ValueError(f"LeRobotWriter.add_episode: columns {missing} are declared features but missing")
        task_index = self.tasks.setdefault(task, len(self.tasks))
        index_cols = {
            "timestamp": pa.array(np.arange(t, dtype=np.float32) / np.float32(self.fps)),
            "frame_index": pa.array(np.arange(t, dtype=np.int64)),
            "episode_index": pa.array(np.full(t, ep, np.int64)),
            "index": pa.array(np.arange(self.frames, self.frames + t, dtype=np.int64)),
            "task_index": pa.array(np.full(t, task_index, np.int64)),
        }
        for name, values in index_cols.items():
            if name in table.column_names:
                table = table.set_column(table.schema.get_field_index(name), name, values)
            else:
                table = table.append_column(name, values)
        chunk, file = divmod(ep, CHUNK_SIZE)
        replace_write(self.root / DATA_PATH.format(chunk_index=chunk, file_index=file),
                       lambda p: pq.write_table(table, p))
        self.episodes.append({"episode_index": ep, "tasks": [task], "length": t, "data/chunk_index": chunk,
                              "data/file_index": file, "dataset_from_index": self.frames,
                              "dataset_to_index": self.frames + t, **(extra or {})})
        self.stats.append(stats)
        self.frames += t
        self._write_meta()

    def _write_meta(self) -> None:
        import pandas as pd

        meta = self.root / "meta"
        rows = []
        for row, stats in zip(self.episodes, self.stats):
            flat = {f"stats/{name}/{k}": v for name, s in stats.items() for k, v in s.items()}
            rows.append({**row, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, **flat})
        names = list(dict.fromkeys(k for r in rows for k in r))  # rows may differ in their extras
        episodes = pa.table({k: [r.get(k) for r in rows] for k in names})
        replace_write(self.root / EPISODES_PATH.format(chunk_index=0, file_index=0),
                       lambda p: pq.write_table(episodes, p))
        tasks = pd.DataFrame({"task_index": list(self.tasks.values())},
                             index=pd.Index(list(self.tasks), name="task"))
        replace_write(meta / "tasks.parquet", lambda p: tasks.to_parquet(p))
        _write_json(meta / "stats.json", merge_stats(self.stats))
        n = len(self.episodes)
        _write_json(meta / "info.json", {
            "codebase_version": V30,
            "robot_type": self.robot_type,
            "total_episodes": n,
            "total_frames": self.frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNK_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": int(self.fps) if float(self.fps).is_integer() else self.fps,
            "splits": {"train": f"0:{n}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": self.features,
            **self.extra_info,
        })


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class FeatureMap:
    """Which dataset features are the policy's inputs: one image (or video) feature per camera, in the
    env's camera order, the state and the action."""

    cameras: tuple[str, ...]
    state: str = "observation.state"
    action: str = "action"

    @classmethod
    def default(cls, cameras: tuple[str, ...]) -> FeatureMap:
        return cls(tuple(f"observation.images.{c}" for c in cameras))


def read_info(root: str | os.PathLike) -> dict[str, Any]:
    """``meta/info.json`` of a dataset folder, with its version checked."""
    path = Path(root) / "meta" / "info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root}: not a LeRobot dataset folder (missing meta/info.json); make one with "
                                "`rlsys demos --env tabletop --out DIR`, or download a LeRobot dataset there")
    info = json.loads(path.read_text())
    version = info.get("codebase_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path}: codebase_version {version!r} is not a LeRobotDataset version rlsys reads; "
                         f"readable: {', '.join(READABLE_VERSIONS)}")
    for key in ("features", "fps", "data_path"):
        if key not in info:
            raise ValueError(f"{path}: no {key!r}; a LeRobotDataset {version} info.json has one")
    return info


def check_feature_map(info: dict[str, Any], fmap: FeatureMap, root: str | os.PathLike,
                      state_dim: int | None = None, action_dim: int | None = None) -> None:
    """Every mapped key is a feature of the dataset, of the right kind (and width, where given)."""
    feats = info["features"]
    listing = ", ".join(f"{k} ({v.get('dtype')} {list(v.get('shape', []))})" for k, v in feats.items()
                        if k not in INDEX_FEATURES)
    hint = (f"; the dataset's features: {listing}. Map them with sft.image_keys=[...] (one per env camera, "
            "in order), sft.state_key and sft.action_key")
    for key in fmap.cameras:
        if key not in feats:
            raise ValueError(f"{root}: camera feature {key!r} is not in the dataset{hint}")
        if feats[key].get("dtype") not in CAMERA_DTYPES:
            raise ValueError(f"{root}: {key!r} is a {feats[key].get('dtype')} feature, not an image or video{hint}")
    for what, key, dim in (("state", fmap.state, state_dim), ("action", fmap.action, action_dim)):
        if key not in feats:
            raise ValueError(f"{root}: {what} feature {key!r} is not in the dataset{hint}")
        ft = feats[key]
        if ft.get("dtype") in CAMERA_DTYPES + ("string",) or len(ft.get("shape", [])) != 1:
            raise ValueError(f"{root}: {what} feature {key!r} is {ft.get('dtype')} {ft.get('shape')}; "
                             f"expected a 1-D numeric vector{hint}")
        if dim is not None and ft["shape"][0] != dim:
            raise ValueError(f"{root}: {what} feature {key!r} has {ft['shape'][0]} dims; the env's embodiment "
                             f"has {dim}{hint}")


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the dataset's metadata names it (an incomplete download?)")
    return pq.read_table(path)


def episode_rows(root: str | os.PathLike, info: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The episodes metadata, one dict per episode in episode order (v3.0: with its stats/ columns)."""
    root = Path(root)
    info = info or read_info(root)
    if info["codebase_version"] == V30:
        files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise FileNotFoundError(f"{root}/meta/episodes: no episode metadata (chunk-XXX/file-YYY.parquet); "
                                    "a LeRobotDataset v3.0 folder has it")
        rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    else:
        path = root / "meta" / "episodes.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; a LeRobotDataset {info['codebase_version']} folder has it")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["episode_index"])
    # info.json is written last: rows past its count belong to an episode whose write was cut short
    return rows[: info["total_episodes"]] if "total_episodes" in info else rows


def read_tasks(root: str | os.PathLike, info: dict[str, Any]) -> dict[int, str]:
    """task_index -> task string."""
    root = Path(root)
    if info["codebase_version"] == V30:
        import pandas as pd

        path = root / "meta" / "tasks.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; a LeRobotDataset v3.0 folder has it")
        df = pd.read_parquet(path)
        names = df["task"] if "task" in df.columns else df.index  # LeRobot keeps the task string as the index
        return {int(i): str(t) for i, t in zip(df["task_index"], names)}
    path = root / "meta" / "tasks.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a LeRobotDataset {info['codebase_version']} folder has it")
    return {int(r["task_index"]): r["task"] for r in map(json.loads, path.read_text().splitlines()) if r}


def _decode_image(cell: Any, root: Path, key: str) -> np.ndarray:
    data = cell.get("bytes") if isinstance(cell, dict) else None
    if data is None:
        rel = cell.get("path") if isinstance(cell, dict) else None
        if not rel or not (root / rel).is_file():
            raise ValueError(f"{root}: an image of {key!r} has neither bytes nor a readable path ({rel!r})")
        data = (root / rel).read_bytes()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _video_frames(path: Path, start: float, timestamps: np.ndarray) -> list[np.ndarray]:
    """The frames of ``path`` shown at ``start + timestamps`` (nearest frame), decoded with PyAV."""
    try:
        import av
    except ImportError as e:
        raise ImportError(f"{path}: the dataset stores cameras as videos; decoding them needs PyAV "
                          "(pip install 'rlsys[video]')") from e
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the dataset's metadata names it (an incomplete download?)")
    want = start + np.asarray(timestamps, np.float64)
    frames: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if t < want[0] - 1e-3 - 0.5 / max(float(stream.average_rate or 30), 1.0):
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(t)
            if t >= want[-1] - 1e-4:
                break
    if not frames:
        raise ValueError(f"{path}: no frames between {want[0]:.3f} s and {want[-1]:.3f} s")
    got = np.asarray(times)
    pick = np.abs(got[None, :] - want[:, None]).argmin(1)
    off = np.abs(got[pick] - want)
    if off.max() > 1.0:  # a frame more than a second off: the metadata and the video disagree
        raise ValueError(f"{path}: the video has no frame within 1 s of {want[off.argmax()]:.3f} s")
    return [frames[i] for i in pick]


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == hw:
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))


def _camera_frames(root: Path, info: dict[str, Any], row: dict[str, Any], cols: dict[str, Any],
                   key: str) -> list[np.ndarray]:
    """One camera's frames of one episode: decoded from the parquet (image) or its video file."""
    if info["features"][key]["dtype"] == "image":
        return [_decode_image(c, root, key) for c in cols[key]]
    e = int(row["episode_index"])
    if info["codebase_version"] == V30:  # one video file holds many episodes, from from_timestamp on
        path = root / info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                                file_index=row[f"videos/{key}/file_index"])
        start = float(row[f"videos/{key}/from_timestamp"])
    else:
        path = root / info["video_path"].format(episode_chunk=e // info.get("chunks_size", CHUNK_SIZE),
                                                video_key=key, episode_index=e)
        start = 0.0
    n = len(cols["frame_index"]) if "frame_index" in cols else len(next(iter(cols.values())))
    stamps = np.asarray(cols["timestamp"], np.float64) if "timestamp" in cols else np.arange(n) / info["fps"]
    return _video_frames(path, start, stamps - stamps[0])


@dataclass
class Episode:
    index: int
    task: str
    images: np.ndarray  # [T, C, S, S, 3] uint8
    states: np.ndarray  # [T, P] float32
    actions: np.ndarray  # [T, A] float32
    row: dict[str, Any]  # its row of the episodes metadata (extras such as the reset seed included)


def read_episodes(root: str | os.PathLike, fmap: FeatureMap, image_size: int | None = None,
                  max_per_task: int = 0) -> Iterator[Episode]:
    """The episodes of a v3.0 / v2.1 dataset through ``fmap``, images resized to ``image_size`` square
    (None: every camera to the first one's size). ``max_per_task`` > 0: at most that many episodes of
    each task, the first ones."""
    root = Path(root)
    info = read_info(root)
    check_feature_map(info, fmap, root)
    tasks = read_tasks(root, info)
    v30 = info["codebase_version"] == V30
    per_task: dict[str, int] = {}
    cached: tuple[Path, pa.Table] | None = None
    for row in episode_rows(root, info):
        e = int(row["episode_index"])
        if v30:
            path = root / info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                   file_index=row["data/file_index"])
        else:
            path = root / info["data_path"].format(episode_chunk=e // info.get("chunks_size", CHUNK_SIZE),
                                                   episode_index=e)
        task = (row.get("tasks") or [None])[0]
        if max_per_task and per_task.get(task, 0) >= max_per_task:
            continue
        if cached is None or cached[0] != path:
            cached = (path, _read_table(path))
        table = cached[1]
        if v30:
            ep_col = table.column("episode_index").to_numpy()
            table = table.filter(pa.array(ep_col == e))
        cols = table.to_pydict()
        n = len(cols[fmap.action])
        if n == 0:
            raise ValueError(f"{path}: episode {e} has no frames")
        if task is None:
            task = tasks[int(cols["task_index"][0])]
        per_task[task] = per_task.get(task, 0) + 1
        cams: list[np.ndarray] = []
        for key in fmap.cameras:
            frames = _camera_frames(root, info, row, cols, key)
            hw = (image_size, image_size) if image_size else cams[0].shape[1:3] if cams else frames[0].shape[:2]
            cams.append(np.stack([_resize(f, hw) for f in frames]))
        yield Episode(index=e, task=task, images=np.stack(cams, axis=1),
                      states=np.asarray(cols[fmap.state], np.float32).reshape(n, -1),
                      actions=np.asarray(cols[fmap.action], np.float32).reshape(n, -1), row=row)
