"""Imports point one way: the core (contracts, config, registry, flow math, policy, metrics,
checkpoints, weights) never imports the application layer (CLI, drivers, report) or the Ray layer;
the learner never imports the actors. Checked on the source, function-local imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = ("rlsys.cli", "rlsys.train", "rlsys.sft", "rlsys.evaluation", "rlsys.report", "rlsys.__main__")
CORE = ["rlsys/types.py", "rlsys/config.py", "rlsys/configtools.py", "rlsys/registry.py", "rlsys/flow.py",
        "rlsys/metrics.py", "rlsys/weights.py", "rlsys/checkpoint.py", "rlsys/prompt.py", "rlsys/augment.py",
        "rlsys/progress.py", *sorted(str(p.relative_to(REPO)) for p in (REPO / "rlsys" / "policy").glob("*.py"))]
LEARNER = sorted(str(p.relative_to(REPO)) for p in (REPO / "learner").rglob("*.py"))


def imported(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("path", CORE)
def test_core_does_not_import_the_application_or_ray_layers(path):
    bad = {m for m in imported(path) if m.startswith((*APP, "rlsys.actors", "rlsys.learner"))}
    # Ray only as an optional metrics sink (ray.util.metrics, imported where Ray is running)
    bad |= {m for m in imported(path) if m.startswith("ray") and path != "rlsys/metrics.py"}
    assert not bad, f"{path} imports {sorted(bad)}"


@pytest.mark.parametrize("path", LEARNER)
def test_learner_does_not_import_actors_or_the_application(path):
    bad = {m for m in imported(path) if m.startswith((*APP, "rlsys.actors", "ray"))}
    assert not bad, f"{path} imports {sorted(bad)}"


def test_no_defaulted_getattr_reads_of_config():
    """Settings are read as typed fields, never with a fallback default."""
    for path in [*CORE, *LEARNER, "rlsys/train.py", "actors/system.py"]:
        for node in ast.walk(ast.parse((REPO / path).read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) == 3:
                target = ast.unparse(node.args[0])
                assert "cfg" not in target and "algo" not in target, f"{path}: {ast.unparse(node)}"
