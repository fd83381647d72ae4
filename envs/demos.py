"""Demonstrations: rlsys writes them as LeRobotDataset v3.0 folders (``rlsys.envs.lerobot``) and reads
v3.0 and v2.1 ones, its own or recorded by other tools (through a feature map).

Columns of the frames rlsys writes::

    observation.images.<camera>  struct<bytes: binary (PNG), path: string>  (LeRobot's "image" dtype)
    observation.state            list<float32> [P]
    action                       list<float32> [A]
    next.reward, next.done, next.success, and LeRobot's timestamp / frame_index / episode_index / index /
    task_index

``info.json`` also holds an ``rlsys`` block (env, cameras, image size, embodiment) and each episode's
metadata row its reset ``seed``.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from rlsys.envs.api import Embodiment
from rlsys.envs.lerobot import (
    FeatureMap,
    LeRobotWriter,
    check_feature_map,
    episode_rows,
    feature_stats,
    image_stats,
    read_episodes,
    read_info,
)

# episode-metadata columns LeRobot defines; any other column of a row is an extra (the reset seed)
_EPISODE_KEYS = ("episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index")


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class DemoWriter:
    """Append episodes to a new v3.0 dataset; each one is on disk, metadata included, when
    ``add_episode`` returns (``close()`` only matters for a dataset left empty)."""

    def __init__(self, root: str | os.PathLike, env_name: str, embodiment: Embodiment,
                 cameras: tuple[str, ...], image_size: int) -> None:
        s = image_size
        features: dict[str, Any] = {
            f"observation.images.{cam}": {"dtype": "image", "shape": [s, s, 3], "names": ["height", "width", "channel"]}
            for cam in cameras
        }
        features["observation.state"] = {"dtype": "float32", "shape": [embodiment.proprio_dim], "names": None}
        features["action"] = {"dtype": "float32", "shape": [embodiment.action_dim],
                              "names": list(embodiment.action_names)}
        for name, dtype in (("next.reward", "float32"), ("next.done", "bool"), ("next.success", "bool")):
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        rl = {"env": env_name, "cameras": list(cameras), "image_size": s, "embodiment": asdict(embodiment)}
        self.writer = LeRobotWriter(root, embodiment.control_hz, features, embodiment.robot, {"rlsys": rl})
        self.cameras = cameras

    def add_episode(self, images: np.ndarray, states: np.ndarray, actions: np.ndarray,
                    rewards: np.ndarray, success: np.ndarray, instruction: str, seed: int | None = None) -> None:
        """images [T, C, S, S, 3] uint8, states [T, P], actions [T, A], rewards/success [T]; ``seed``: the
        env reset seed the episode started from (kept in its metadata row: a training-state list)."""
        t = len(actions)
        cols: dict[str, Any] = {
            f"observation.images.{cam}": [{"bytes": _png(images[i, c]), "path": None} for i in range(t)]
            for c, cam in enumerate(self.cameras)
        }
        cols["observation.state"] = pa.array(list(states.astype(np.float32)), pa.list_(pa.float32()))
        cols["action"] = pa.array(list(actions.astype(np.float32)), pa.list_(pa.float32()))
        cols["next.reward"] = rewards.astype(np.float32)
        cols["next.done"] = np.arange(t) == t - 1
        cols["next.success"] = success.astype(bool)
        stats = {"observation.state": feature_stats(states), "action": feature_stats(actions),
                 **{f"observation.images.{cam}": image_stats(images[:, c]) for c, cam in enumerate(self.cameras)}}
        self.writer.add_episode(cols, instruction, stats, {} if seed is None else {"seed": int(seed)})

    def add_table(self, table: pa.Table, row: dict[str, Any]) -> None:
        """Append an episode read from another dataset of this layout (``merge_demos``) with its metadata
        row (statistics and extras kept); episode, frame-counter and task columns are renumbered."""
        stats: dict[str, dict[str, Any]] = {}
        for k, v in row.items():
            if k.startswith("stats/"):
                name, stat = k[len("stats/"):].rsplit("/", 1)
                stats.setdefault(name, {})[stat] = v
        extra = {k: v for k, v in row.items() if k not in _EPISODE_KEYS and "/" not in k}
        self.writer.add_episode({n: table.column(n) for n in table.column_names}, row["tasks"][0], stats, extra)

    def close(self) -> None:
        if not self.writer.episodes:
            self.writer._write_meta()


@dataclass
class DemoSet:
    """All frames of a demo folder in memory (small datasets: the tiny-policy regime).

    images [F, C, S, S, 3] uint8, states [F, P], actions [F, A] float32,
    episode_index / frame_index [F] int64, instructions [F] (str), episode_starts [E] int64.
    """

    images: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    instructions: list[str]
    episode_starts: np.ndarray
    episode_lengths: np.ndarray
    info: dict[str, Any]
    embodiment: Embodiment

    def action_chunks(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Per frame, the next ``horizon`` actions within its episode ([F, H, A]) and a [F, H]
        mask that is False past the episode end (those entries repeat the last action)."""
        f = len(self.actions)
        offs = np.arange(horizon)
        end = (self.episode_starts + self.episode_lengths)[self.episode_index]
        idx = np.arange(f)[:, None] + offs[None]
        mask = idx < end[:, None]
        idx = np.minimum(idx, end[:, None] - 1)
        return self.actions[idx], mask


def _embodiment(info: dict[str, Any]) -> Embodiment:
    """The embodiment recorded in a dataset's ``meta/info.json``."""
    e = dict(info["rlsys"]["embodiment"])
    e["action_names"] = tuple(e["action_names"])
    return Embodiment(**e)


def load_demos(root: str | os.PathLike, features: FeatureMap | None = None, embodiment: Embodiment | None = None,
               image_size: int | None = None, max_per_task: int = 0) -> DemoSet:
    """A LeRobotDataset folder (v3.0 or v2.1) in memory. rlsys's own folders need no arguments; another
    tool's need the ``features`` map and the ``embodiment`` of the env it is for (whose state and action
    widths the mapped features must have). ``image_size``: resize the camera frames to it;
    ``max_per_task``: at most that many episodes of each task (0: all)."""
    info = read_info(root)
    rl = info.get("rlsys")
    if embodiment is None:
        if rl is None:
            raise ValueError(f"{root}: a dataset rlsys did not record; loading it needs the env's embodiment")
        embodiment = _embodiment(info)
    fmap = features or (FeatureMap.default(tuple(rl["cameras"])) if rl else None)
    if fmap is None:
        raise ValueError(f"{root}: a dataset rlsys did not record; loading it needs a feature map")
    check_feature_map(info, fmap, root, embodiment.proprio_dim, embodiment.action_dim)
    episodes = list(read_episodes(root, fmap, image_size, max_per_task))
    if not episodes:
        raise ValueError(f"{root}: the dataset holds no episodes")
    lengths = np.array([len(e.actions) for e in episodes], np.int64)
    return DemoSet(
        images=np.concatenate([e.images for e in episodes]), states=np.concatenate([e.states for e in episodes]),
        actions=np.concatenate([e.actions for e in episodes]),
        episode_index=np.repeat(np.arange(len(episodes), dtype=np.int64), lengths),
        frame_index=np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]),
        instructions=[e.task for e in episodes for _ in range(len(e.actions))],
        episode_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        episode_lengths=lengths, info=info, embodiment=embodiment,
    )


DEMO_SEED_BASE = 1_000_000  # demo episodes use seeds DEMO_SEED_BASE + k; evaluation uses others


def collect_expert_demos(env: Any, out: str | os.PathLike, episodes_per_task: int, env_name: str,
                         seed_base: int = DEMO_SEED_BASE, progress: Any = None, seed_step: int = 1) -> dict[str, Any]:
    """Roll out ``env.expert()`` (privileged scripted expert) and keep successful episodes.

    Writes ``episodes_per_task`` successful episodes per task; returns per-task attempt counts.
    Attempts reset with seeds ``seed_base, seed_base + seed_step, ...`` (parallel workers interleave).
    """
    if not hasattr(env, "expert"):
        raise ValueError(f"{type(env).__name__} has no scripted expert; demos need one")
    writer = DemoWriter(out, env_name, env.embodiment, env.cameras, env.observation_space["images"].shape[1])
    report: dict[str, Any] = {}
    seed = seed_base
    for task in env.task_names:
        kept = attempts = 0
        while kept < episodes_per_task:
            if attempts >= 3 * episodes_per_task + 10:
                raise RuntimeError(f"expert keeps failing on {task}: {kept}/{attempts} successful")
            obs, info = env.reset(seed=seed, options={"task": task})
            episode_seed, seed = seed, seed + seed_step
            attempts += 1
            expert = env.expert()
            if getattr(expert, "planned", True) is False:  # a planning expert (RoboTwin) that already failed
                continue
            frames: dict[str, list[Any]] = {"images": [], "states": [], "actions": [], "rewards": [],
                                            "success": []}
            for _ in range(env.max_episode_steps):
                action = expert.act(env.privileged_state())
                frames["images"].append(obs["images"])
                frames["states"].append(obs["proprio"])
                frames["actions"].append(action)
                obs, reward, terminated, truncated, step_info = env.step(action)
                frames["rewards"].append(reward)
                frames["success"].append(step_info["success"])
                if terminated or truncated:
                    break
            if not frames["success"][-1]:
                continue
            writer.add_episode(*(np.asarray(frames[k]) for k in ("images", "states", "actions", "rewards",
                                                                  "success")), instruction=info["instruction"],
                               seed=episode_seed)
            kept += 1
            if progress is not None:
                progress()
        report[task] = {"kept": kept, "attempts": attempts, "expert_success": kept / attempts}
    writer.close()
    (Path(out) / "meta" / "expert_report.json").write_text(json.dumps(report, indent=2))
    return report


def merge_demos(parts: list[str | os.PathLike], out: str | os.PathLike) -> None:
    """Concatenate demo folders of one env, camera set and image size into a new folder ``out``, in
    order; episodes, frame counters and tasks are renumbered, ``meta/expert_report.json`` is summed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    infos = [read_info(p) for p in parts]
    rl = infos[0]["rlsys"]
    for p, info in zip(parts, infos):
        if info["rlsys"] != rl:
            raise ValueError(f"merge_demos: {p} holds env {info['rlsys']['env']!r} / cameras "
                             f"{info['rlsys']['cameras']} / {info['rlsys']['image_size']} px; {parts[0]} holds "
                             f"{rl['env']!r} / {rl['cameras']} / {rl['image_size']} px")
    writer = DemoWriter(out, rl["env"], _embodiment(infos[0]), tuple(rl["cameras"]), rl["image_size"])
    report: dict[str, Any] = {}
    for p, info in zip(parts, infos):
        for row in episode_rows(p, info):
            table = pq.read_table(Path(p) / info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                                     file_index=row["data/file_index"]))
            e = row["episode_index"]
            writer.add_table(table.filter(pc.equal(table.column("episode_index"), e)), row)
        part_report = Path(p) / "meta" / "expert_report.json"
        for task, r in (json.loads(part_report.read_text()) if part_report.is_file() else {}).items():
            total = report.setdefault(task, {"kept": 0, "attempts": 0})
            total["kept"] += r["kept"]
            total["attempts"] += r["attempts"]
    writer.close()
    for r in report.values():
        r["expert_success"] = r["kept"] / max(r["attempts"], 1)
    (Path(out) / "meta" / "expert_report.json").write_text(json.dumps(report, indent=2))


def expert_demos(env_cfg: Any, out: str | os.PathLike, episodes_per_task: int,
                 seed_base: int = DEMO_SEED_BASE, workers: int = 1) -> dict[str, Any]:
    """``rlsys demos`` / the SFT stage: ``collect_expert_demos`` on one env of ``env_cfg`` with a
    progress bar. A simulator that lives in its own interpreter (``env.python``, e.g. RoboTwin's venv)
    runs the whole collection there, since the scripted expert needs the simulator in-process; its
    progress shows on this terminal and the demos come back on disk. ``workers`` > 1 splits the
    episodes over that many such processes at once (worker w on seeds ``seed_base + w + k *
    workers``) and merges their folders into ``out``."""
    if workers < 1:
        raise ValueError(f"demo workers: got {workers}; allowed: >= 1")
    if (Path(out) / "meta" / "info.json").exists():  # before any simulator starts
        raise FileExistsError(f"{out} already holds a dataset; choose a new --out folder")
    if workers > 1:
        return _expert_demos_sharded(env_cfg, out, episodes_per_task, seed_base, workers)
    if env_cfg.python:
        return _expert_demos_there(env_cfg, out, episodes_per_task, seed_base)
    return _collect_here(env_cfg, out, episodes_per_task, seed_base)


def _collect_here(env_cfg: Any, out: str | os.PathLike, episodes_per_task: int, seed_base: int,
                  seed_step: int = 1, label: str = "") -> dict[str, Any]:
    from rlsys.envs.pool import make_single_env
    from rlsys.progress import Progress

    env = make_single_env(env_cfg)
    try:
        with Progress(f"expert demos {env_cfg.name}{label}", total=episodes_per_task * len(env.task_names)) as bar:
            return collect_expert_demos(env, out, episodes_per_task, env_cfg.name, seed_base, progress=bar.advance,
                                        seed_step=seed_step)
    finally:
        env.close()


def _expert_demos_sharded(env_cfg: Any, out: str | os.PathLike, episodes_per_task: int, seed_base: int,
                          workers: int) -> dict[str, Any]:
    import shutil
    import tempfile

    shares = [int(n) for n in np.diff(np.linspace(0, episodes_per_task, workers + 1).round()) if n > 0]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(out).name}-workers-", dir=Path(out).parent) as tmp:
        parts = [Path(tmp) / f"worker{w}" for w in range(len(shares))]
        procs = [_start_expert_demos(env_cfg, part, n, seed_base + w, len(shares), f" [worker {w}]")
                 for w, (part, n) in enumerate(zip(parts, shares))]
        codes = [p.wait() for p in procs]
        if any(codes) or not all((p / "meta" / "expert_report.json").is_file() for p in parts):
            raise RuntimeError(f"expert demos for env {env_cfg.name!r}: worker exit codes {codes}; "
                               f"the errors are printed above")
        try:
            merge_demos(parts, out)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    return json.loads((Path(out) / "meta" / "expert_report.json").read_text())


def _start_expert_demos(env_cfg: Any, out: str | os.PathLike, episodes_per_task: int, seed_base: int,
                        seed_step: int = 1, label: str = "") -> Any:
    """A process collecting demos in the simulator's interpreter (``env.python``, else this one),
    in-process there (a config for that interpreter: built and checked on the other side)."""
    import subprocess
    import sys

    from rlsys.configtools import to_dict

    env = {**to_dict(env_cfg), "python": "", "subprocess": False}
    spec = {"env": env, "out": str(out), "episodes_per_task": episodes_per_task, "seed_base": seed_base,
            "seed_step": seed_step, "label": label}
    code = "import sys; from rlsys.envs.demos import _expert_demos_here; _expert_demos_here(sys.argv[1])"
    return subprocess.Popen([env_cfg.python or sys.executable, "-c", code, json.dumps(spec)])


def _expert_demos_there(env_cfg: Any, out: str | os.PathLike, episodes_per_task: int,
                        seed_base: int) -> dict[str, Any]:
    code = _start_expert_demos(env_cfg, out, episodes_per_task, seed_base).wait()
    report = Path(out) / "meta" / "expert_report.json"
    if code != 0 or not report.is_file():
        raise RuntimeError(f"expert demos for env {env_cfg.name!r} in {env_cfg.python} failed "
                           f"(exit {code}); its error is printed above")
    return json.loads(report.read_text())


def _expert_demos_here(text: str) -> None:
    """Child side of ``_start_expert_demos``."""
    from rlsys.config import EnvConfig
    from rlsys.configtools import from_dict

    spec = json.loads(text)
    _collect_here(from_dict(EnvConfig, spec["env"]), spec["out"], spec["episodes_per_task"], spec["seed_base"],
                  spec["seed_step"], spec["label"])
