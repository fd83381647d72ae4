"""Experiment trackers: W&B (offline, no network) and MLflow (a local SQLite store) get the run's metric
rows under the same names as metrics.jsonl; a resumed run continues the same tracker run; a tracker
that fails is dropped without stopping the run; bad tracker configs fail when the config is built."""

import json

import pytest

from rlsys import metrics as M
from rlsys.config import ConfigError, TrackingConfig

ROWS = [{M.SUCCESS_RATE: 0.25 * i, M.ENV_STEPS: 100 * i, M.POLICY_LOSS: 1.0 - 0.1 * i, "note": "x"}
        for i in range(1, 4)]


def _log(run_dir, tracking, rows, start=1):
    logger = M.MetricsLogger(run_dir, tracking, {"ppo": {"clip": 0.2}, "env": {"tasks": ["lift"]}})
    for i, row in enumerate(rows, start):
        logger.log(i, row)
    logger.close()


def test_mlflow_gets_every_row_and_a_resume_continues_the_run(tmp_path):
    pytest.importorskip("mlflow", reason="the trackers extra is part of the test install")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "runs" / "tabletop-ppo-1"
    run_dir.mkdir(parents=True)
    tracking = TrackingConfig(trackers=("mlflow",), project="rlsys-test")
    _log(run_dir, tracking, ROWS[:2])
    _log(run_dir, tracking, ROWS[2:], start=3)  # a resumed run: same tracking.json, same MLflow run
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.run_name == "tabletop-ppo-1" and run.info.status == "FINISHED"
    assert run.data.params["ppo.clip"] == "0.2" and run.data.params["env.tasks"] == '["lift"]'
    history = client.get_metric_history(run_id, M.SUCCESS_RATE)  # the metric name, unchanged
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert "note" not in run.data.metrics  # only numbers are metrics
    assert len(client.search_runs([client.get_experiment_by_name("rlsys-test").experiment_id])) == 1


def test_wandb_offline_writes_the_run_locally(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the trackers extra is part of the test install")
    monkeypatch.setenv("WANDB_API_KEY", "")  # offline: no account, no network
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _log(run_dir, TrackingConfig(trackers=("wandb",)), ROWS)
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    files = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1, list((run_dir / "wandb").iterdir())
    data = files[0].read_bytes()  # the offline record stream `wandb sync` uploads
    assert M.SUCCESS_RATE.encode() in data and M.POLICY_LOSS.encode() in data


def test_a_failing_tracker_is_dropped_and_the_run_goes_on(tmp_path, capsys):
    class Broken:
        where = "nowhere"

        def log(self, step, scalars):
            raise ConnectionError("server gone")

        def close(self):
            pass

    logger = M.MetricsLogger(tmp_path)
    logger.trackers = {"broken": Broken()}
    for i, row in enumerate(ROWS, 1):
        logger.log(i, row)
    logger.close()
    assert "tracker broken failed (ConnectionError: server gone); it is dropped" in capsys.readouterr().out
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_bad_tracker_configs_fail_when_the_config_is_built(monkeypatch):
    with pytest.raises(ConfigError, match="tracking.trackers: got 'tensorbord'; allowed: one of mlflow, wandb"):
        from rlsys.config import load_config

        load_config("tabletop_ppo", ["tracking.trackers=[tensorbord]"])
    with pytest.raises(ConfigError, match="each tracker once"):
        TrackingConfig(trackers=("mlflow", "mlflow"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"wandb needs `pip install wandb`"):
        TrackingConfig(trackers=("wandb",))
