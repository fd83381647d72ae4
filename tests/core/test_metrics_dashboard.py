"""The Grafana dashboard queries only metric names the code emits, and a run exports them."""

import json
import re
import urllib.request
from pathlib import Path

from rlsys import metrics as M

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "rlsys_dashboard.json"


def dashboard_metrics() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    names = set()
    for panel in dash["panels"]:
        for t in panel["targets"]:
            names |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\b(rlsys_[a-z0-9_]+)", t["expr"])}
    return names


def test_dashboard_queries_only_emitted_metric_names():
    emitted = {M.prometheus_name(k) for k in M.ALL}
    used = dashboard_metrics()
    assert used and used <= emitted, used - emitted
    dash = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "run"}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])


def test_metrics_reach_rays_prometheus_endpoint(tmp_path):
    import ray

    port = 18499
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", _metrics_export_port=port,
             log_to_driver=False)
    try:
        logger = M.MetricsLogger(tmp_path)
        row = {k: 1.5 for k in M.ALL} | {M.INFER_LATENCY_HIST: [0.01, 0.03, 0.2]}
        text = ""
        import time

        deadline = time.time() + 60
        while time.time() < deadline:
            logger.log(1, row)  # gauges are exported periodically
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                text = ""
            if all(name in text for name in dashboard_metrics()):
                break
            time.sleep(2)
        missing = [n for n in dashboard_metrics() if n not in text]
        assert not missing, missing
        logger.close()
    finally:
        ray.shutdown()
