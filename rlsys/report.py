"""``rlsys report RUN_DIR``: plots of a run (PNG) and a self-contained HTML page.

Panels: throughput (env steps/s, chunks/s, learner samples/s), success (rollout and ODE eval),
losses, PPO health (approx-KL, clip fraction, explained variance), staleness and batch sizes,
and per-phase time per iteration (collect / update / broadcast: where each iteration goes).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from rlsys import metrics as M

PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("throughput", [(M.ENV_STEPS_PER_S, "env steps/s"), (M.CHUNKS_PER_S, "chunks/s"),
                    (M.SAMPLES_PER_S, "learner samples/s")]),
    ("success", [(M.SUCCESS_RATE, "rollout success"), (M.EVAL_SUCCESS, "eval success (ODE)"),
                 (M.REWARD_PER_STEP, "reward per env step")]),
    ("losses", [(M.POLICY_LOSS, "policy loss"), (M.VALUE_LOSS, "value loss")]),
    ("PPO health", [(M.APPROX_KL, "approx KL"), (M.CLIP_FRACTION, "clip fraction"),
                    (M.EXPLAINED_VARIANCE, "explained variance")]),
    ("staleness + batches", [(M.STALENESS_MAX, "max staleness"), (M.STALE_REJECTED, "stale rejected"),
                             (M.INFER_BATCH_SIZE, "inference batch size")]),
    ("time per iteration (s)", [(M.COLLECT_S, "collect"), (M.UPDATE_S, "wait for the update"),
                                (M.LEARNER_S, "update (learner)"), (M.OVERLAP_S, "collect + update at once"),
                                (M.BROADCAST_S, "broadcast")]),
]


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this an rlsys run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Writes RUN_DIR/report.png and RUN_DIR/report.html; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = load_metrics(run_dir)
    start_eval = run_dir / "sft" / "eval" / "eval.json"
    start = json.loads(start_eval.read_text())["mean_success"] if start_eval.exists() else None
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for ax, (title, series) in zip(axes.flat, PANELS):
        for key, label in series:
            pts = [(r["iteration"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), "o-" if len(pts) < 30 else "-", ms=3, label=label)
        if title == "success" and start is not None:  # the SFT start this run measured, at iteration 0
            ax.plot([0], [start], "s", color="C1", label="SFT start (ODE)")
        ax.set(title=title, xlabel="iteration")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"rlsys run {run_dir.name}")
    fig.tight_layout()
    png = run_dir / "report.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)

    evals = sorted((run_dir / "eval").glob("iter_*/eval.md")) if (run_dir / "eval").exists() else []
    last = rows[-1] if rows else {}
    summary = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
                      for k, v in last.items() if isinstance(v, (int, float)))
    tables = "".join(f"<h3>{html.escape(p.parent.name)}</h3><pre>{html.escape(p.read_text())}</pre>"
                     for p in evals[-3:])
    img = base64.b64encode(png.read_bytes()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rlsys {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:2px 12px}} img{{max-width:100%}}</style></head>
<body><h1>rlsys run {html.escape(run_dir.name)}</h1><img src="data:image/png;base64,{img}">
<h2>Last iteration</h2><table>{summary}</table><h2>Evaluations (latest)</h2>{tables}</body></html>"""
    page_path = run_dir / "report.html"
    page_path.write_text(page)
    return png, page_path
