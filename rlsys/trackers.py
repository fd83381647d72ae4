"""Experiment trackers beside the run's JSONL and TensorBoard: Weights & Biases and MLflow.

Each is optional (``pip install -e ".[trackers]"``), named in ``tracking.trackers`` and sent the same
metric names as every other sink (``rlsys.metrics``). A tracker is a small class registered in
``rlsys.registry.TRACKERS`` (third-party ones through the ``rlsys.trackers`` entry points) with
``__init__(run_dir, cfg, settings)``, ``log(step, scalars)`` and ``close()``. Its run id is kept in
``RUN_DIR/tracking.json``, so a resumed run continues the same tracker run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rlsys.fileio import replace_text

# the package each built-in tracker imports (config-time check: a named tracker must be installed)
PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}


def _ids_path(run_dir: Path) -> Path:
    return run_dir / "tracking.json"


def stored_id(run_dir: Path, name: str) -> str | None:
    path = _ids_path(run_dir)
    return json.loads(path.read_text()).get(name) if path.is_file() else None


def store_id(run_dir: Path, name: str, run_id: str) -> None:
    path = _ids_path(run_dir)
    ids = json.loads(path.read_text()) if path.is_file() else {}
    ids[name] = run_id
    replace_text(path, json.dumps(ids, indent=2))


def flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"ppo.clip": "0.2", ...}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class WandbTracker:
    """Weights & Biases; ``tracking.wandb_mode=offline`` (the default) needs no network or account:
    the run is written under ``RUN_DIR/wandb`` and ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads
    it later."""

    def __init__(self, run_dir: Path, cfg: dict[str, Any], settings: Any) -> None:
        import wandb

        run_id = stored_id(run_dir, "wandb")
        self.run = wandb.init(project=settings.project, name=run_dir.name, dir=str(run_dir), mode=settings.wandb_mode,
                              config=cfg, id=run_id, resume="allow" if run_id else None,
                              settings=wandb.Settings(silent=True, console="off"))
        store_id(run_dir, "wandb", self.run.id)
        self.where = f"W&B {settings.wandb_mode} run {self.run.id} ({run_dir / 'wandb'})"

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() can return before W&B's service has flushed the run's record file to disk (seen
        # on a loaded machine: only the file header); teardown waits for the service to close it.
        wandb.teardown()


class MLflowTracker:
    """MLflow, through a client on ``tracking.mlflow_uri`` (empty: a SQLite store beside the run
    directories, ``sqlite:///RUN_DIR/../mlflow.db``; view it with ``mlflow ui --backend-store-uri ...``).
    The experiment is ``tracking.project``, the run is named after the run directory."""

    def __init__(self, run_dir: Path, cfg: dict[str, Any], settings: Any) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = settings.mlflow_uri or f"sqlite:///{run_dir.resolve().parent / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        run_id = stored_id(run_dir, "mlflow")
        if run_id is None:
            exp = self.client.get_experiment_by_name(settings.project)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(settings.project)
            run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
            params = [Param(k, v[:6000]) for k, v in flat_params(cfg).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[i: i + 100])
            store_id(run_dir, "mlflow", run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.where = f"MLflow run {run_id} ({self.uri})"

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
