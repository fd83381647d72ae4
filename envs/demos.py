"""Demonstrations in a LeRobotDataset (v2.1) compatible layout.

    DIR/meta/info.json            features, fps, counts, path templates (+ an "rlsys" block)
    DIR/meta/tasks.jsonl          {"task_index", "task"}  (task = the language instruction)
    DIR/meta/episodes.jsonl       {"episode_index", "tasks", "length"}
    DIR/meta/episodes_stats.jsonl per-episode min/max/mean/std/count of numeric features
    DIR/data/chunk-000/episode_000000.parquet
        observation.images.<camera>  struct<bytes: binary (PNG), path: string>  (HF Image feature)
        observation.state            list<float32> [P]
        action                       list<float32> [A]
        timestamp, frame_index, episode_index, index, task_index, next.reward, next.done, next.success

Images are stored inside the parquet files as PNG (LeRobot's "image" dtype), not as videos.
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
import pyarrow.parquet as pq
from PIL import Image

from rlsys.envs.api import Embodiment

CHUNK_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _stats(x: np.ndarray) -> dict[str, Any]:
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [int(x.shape[0])]}


class DemoWriter:
    """Append episodes, then ``close()`` writes the metadata."""

    def __init__(self, root: str | os.PathLike, env_name: str, embodiment: Embodiment,
                 cameras: tuple[str, ...], image_size: int) -> None:
        self.root = Path(root)
        if (self.root / "meta" / "info.json").exists():
            raise FileExistsError(f"{self.root} already holds a dataset; choose a new --out folder")
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self.env_name, self.embodiment, self.cameras, self.image_size = env_name, embodiment, cameras, image_size
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.stats: list[dict[str, Any]] = []
        self.frames = 0

    def add_episode(self, images: np.ndarray, states: np.ndarray, actions: np.ndarray,
                    rewards: np.ndarray, success: np.ndarray, instruction: str, seed: int | None = None) -> None:
        """images [T, C, S, S, 3] uint8, states [T, P], actions [T, A], rewards/success [T]; ``seed``: the
        env reset seed the episode started from (kept in ``meta/episodes.jsonl``: a training-state list)."""
        t = len(actions)
        cols: dict[str, Any] = {
            f"observation.images.{cam}": [{"bytes": _png(images[i, c]), "path": None} for i in range(t)]
            for c, cam in enumerate(self.cameras)
        }
        cols["observation.state"] = pa.array(list(states.astype(np.float32)), pa.list_(pa.float32()))
        cols["action"] = pa.array(list(actions.astype(np.float32)), pa.list_(pa.float32()))
        fps = self.embodiment.control_hz
        cols.update({
            "timestamp": np.arange(t, dtype=np.float32) / np.float32(fps),
            "frame_index": np.arange(t, dtype=np.int64),
            "episode_index": np.zeros(t, np.int64),  # episode, frame counter and task: set by _write
            "index": np.zeros(t, np.int64),
            "task_index": np.zeros(t, np.int64),
            "next.reward": rewards.astype(np.float32),
            "next.done": np.arange(t) == t - 1,
            "next.success": success.astype(bool),
        })
        self._write(pa.table(cols), instruction, {"observation.state": _stats(states), "action": _stats(actions)},
                    {} if seed is None else {"seed": int(seed)})

    def add_table(self, table: pa.Table, row: dict[str, Any], stats: dict[str, Any]) -> None:
        """Append an episode read from another dataset of the same layout (``merge_demos``), with its
        ``meta/episodes.jsonl`` row: episode, frame-counter and task columns are renumbered for this one."""
        extra = {k: v for k, v in row.items() if k not in ("episode_index", "tasks", "length")}
        self._write(table, row["tasks"][0], stats, extra)

    def _write(self, table: pa.Table, instruction: str, stats: dict[str, Any], extra: dict[str, Any]) -> None:
        t, ep = table.num_rows, len(self.episodes)
        task_index = self.tasks.setdefault(instruction, len(self.tasks))
        for name, values in (("episode_index", np.full(t, ep, np.int64)),
                             ("index", np.arange(self.frames, self.frames + t, dtype=np.int64)),
                             ("task_index", np.full(t, task_index, np.int64))):
            table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
        path = self.root / DATA_PATH.format(episode_chunk=ep // CHUNK_SIZE, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        self.episodes.append({"episode_index": ep, "tasks": [instruction], "length": t, **extra})
        self.stats.append({"episode_index": ep, "stats": stats})
        self.frames += t

    def close(self) -> None:
        s = self.image_size
        features: dict[str, Any] = {
            f"observation.images.{cam}": {"dtype": "image", "shape": [s, s, 3],
                                          "names": ["height", "width", "channel"]}
            for cam in self.cameras
        }
        features["observation.state"] = {"dtype": "float32", "shape": [self.embodiment.proprio_dim],
                                         "names": None}
        features["action"] = {"dtype": "float32", "shape": [self.embodiment.action_dim],
                              "names": list(self.embodiment.action_names)}
        for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                            ("index", "int64"), ("task_index", "int64"), ("next.reward", "float32"),
                            ("next.done", "bool"), ("next.success", "bool")):
            features[name] = {"dtype": dtype, "shape": [1], "names": None}
        info = {
            "codebase_version": "v2.1",
            "robot_type": self.embodiment.robot,
            "total_episodes": len(self.episodes),
            "total_frames": self.frames,
            "total_tasks": len(self.tasks),
            "total_videos": 0,
            "total_chunks": (len(self.episodes) - 1) // CHUNK_SIZE + 1 if self.episodes else 0,
            "chunks_size": CHUNK_SIZE,
            "fps": self.embodiment.control_hz,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": features,
            "rlsys": {"env": self.env_name, "cameras": list(self.cameras), "image_size": s,
                      "embodiment": asdict(self.embodiment)},
        }
        meta = self.root / "meta"
        (meta / "info.json").write_text(json.dumps(info, indent=2))
        _jsonl(meta / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in self.tasks.items()])
        _jsonl(meta / "episodes.jsonl", self.episodes)
        _jsonl(meta / "episodes_stats.jsonl", self.stats)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


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

    @property
    def embodiment(self) -> Embodiment:
        return _embodiment(self.info)

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


def load_demos(root: str | os.PathLike) -> DemoSet:
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{root}: not a demo folder (missing meta/info.json); "
                                "make one with `rlsys demos --env tabletop --out DIR`")
    info = json.loads(info_path.read_text())
    cams = info["rlsys"]["cameras"]
    episodes = [json.loads(line) for line in (root / "meta" / "episodes.jsonl").read_text().splitlines()]
    images, states, actions, ep_idx, fr_idx, instr = [], [], [], [], [], []
    for ep in episodes:
        e = ep["episode_index"]
        table = pq.read_table(root / info["data_path"].format(episode_chunk=e // info["chunks_size"],
                                                              episode_index=e)).to_pydict()
        n = len(table["action"])
        images.append(np.stack([
            np.stack([np.asarray(Image.open(io.BytesIO(table[f"observation.images.{c}"][i]["bytes"])))
                      for c in cams]) for i in range(n)
        ]))
        states.append(np.asarray(table["observation.state"], np.float32))
        actions.append(np.asarray(table["action"], np.float32))
        ep_idx.append(np.full(n, e, np.int64))
        fr_idx.append(np.arange(n, dtype=np.int64))
        instr += [ep["tasks"][0]] * n
    lengths = np.array([len(a) for a in actions], np.int64)
    return DemoSet(
        images=np.concatenate(images), states=np.concatenate(states), actions=np.concatenate(actions),
        episode_index=np.concatenate(ep_idx), frame_index=np.concatenate(fr_idx), instructions=instr,
        episode_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        episode_lengths=lengths, info=info,
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
    infos = [json.loads((Path(p) / "meta" / "info.json").read_text()) for p in parts]
    rl = infos[0]["rlsys"]
    for p, info in zip(parts, infos):
        if info["rlsys"] != rl:
            raise ValueError(f"merge_demos: {p} holds env {info['rlsys']['env']!r} / cameras "
                             f"{info['rlsys']['cameras']} / {info['rlsys']['image_size']} px; {parts[0]} holds "
                             f"{rl['env']!r} / {rl['cameras']} / {rl['image_size']} px")
    writer = DemoWriter(out, rl["env"], _embodiment(infos[0]), tuple(rl["cameras"]), rl["image_size"])
    report: dict[str, Any] = {}
    for p, info in zip(parts, infos):
        meta = Path(p) / "meta"
        stats = {r["episode_index"]: r["stats"] for r in map(json.loads, (meta / "episodes_stats.jsonl").open())}
        for ep in map(json.loads, (meta / "episodes.jsonl").open()):
            e = ep["episode_index"]
            table = pq.read_table(Path(p) / info["data_path"].format(episode_chunk=e // info["chunks_size"],
                                                                     episode_index=e))
            writer.add_table(table, ep, stats[e])
        part_report = meta / "expert_report.json"
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
