"""RoboTwin 2.0 assets: which files are present, whether they match upstream, which tasks can run.

The asset root has RoboTwin's layout (``ROOT/assets/embodiments/...``, ``ROOT/assets/objects/...``).
Upstream sha256 and sizes (``envs/data/robotwin_upstream.tsv``) cover the aloha-agilex embodiment
and the objects of the tasks below; they come from the RoboTwin 2.0 dataset
(huggingface.co/datasets/TianxingChen/RoboTwin2.0), which is where the full set (every object,
textures for the "Hard" domain-randomised setting) is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlsys.envs.assets import sha256_file

EMB = "assets/embodiments/aloha-agilex"
BOX_TASKS = ("stack_blocks_two", "stack_blocks_three", "handover_block", "blocks_ranking_rgb", "blocks_ranking_size")
OBJECT_TASKS = {  # task -> object folders it loads
    "beat_block_hammer": ("020_hammer",), "click_bell": ("050_bell",), "place_empty_cup": ("021_cup", "019_coaster"),
    "adjust_bottle": ("001_bottle",), "lift_pot": ("060_kitchenpot",),
}
# what the runtime reads for the embodiment with planner_backend mplib (not the curobo/srdf files)
EMBODIMENT_FILES = ("config.yml", "collision_aloha_left.yml", "collision_aloha_right.yml", "curobo_left_tmp.yml",
                    "curobo_right_tmp.yml")
OFFLINE_URDF = f"{EMB}/urdf/arx5_description_isaac.offline_ci.urdf"  # 6 visual-only meshes dropped
UPSTREAM_URL = "https://huggingface.co/datasets/TianxingChen/RoboTwin2.0"


def upstream() -> dict[str, tuple[str, int]]:
    rows = (Path(__file__).parent / "data" / "robotwin_upstream.tsv").read_text().splitlines()
    return {p: (h, int(n)) for p, h, n in (r.split("\t") for r in rows if r.strip())}


def check(root: str | os.PathLike) -> dict[str, Any]:
    """Per upstream file ``ok`` / ``mismatch`` / ``missing``; runnable and blocked tasks."""
    root = Path(root)
    files: dict[str, str] = {}
    for rel, (digest, size) in upstream().items():
        p = root / rel
        if not p.is_file():
            files[rel] = "missing"
        else:
            files[rel] = "ok" if p.stat().st_size == size and sha256_file(p) == digest else "mismatch"
    present = {rel for rel, s in files.items() if s != "missing"}
    full_urdf = _urdf_complete(root / EMB / "urdf" / "arx5_description_isaac.urdf")
    urdf_ok = full_urdf or _urdf_complete(root / OFFLINE_URDF)
    emb_ok = urdf_ok and all((root / EMB / f).is_file() for f in EMBODIMENT_FILES)
    blocked: dict[str, list[str]] = {}
    runnable = list(BOX_TASKS) if emb_ok else []
    for task, objs in OBJECT_TASKS.items():
        need = [r for r in upstream() if any(r.startswith(f"assets/objects/{o}/") for o in objs)]
        missing = [r for r in need if r not in present]
        if emb_ok and not missing:
            runnable.append(task)
        else:
            blocked[task] = missing or ["embodiment files"]
    if not emb_ok:
        for t in BOX_TASKS:
            blocked[t] = ["aloha-agilex embodiment files (config.yml, collision/curobo yml, URDF + meshes)"]
    return {"root": str(root), "files": files, "urdf": "upstream" if full_urdf else ("offline" if urdf_ok else None),
            "runnable_tasks": runnable, "blocked_tasks": blocked,
            "counts": {s: sum(v == s for v in files.values()) for s in ("ok", "mismatch", "missing")}}


def _urdf_complete(urdf: Path) -> bool:
    """The URDF exists and every mesh it references (outside comments) is present."""
    import xml.etree.ElementTree as ET

    if not urdf.is_file():
        return False
    names = [m.get("filename", "") for m in ET.parse(urdf).iter("mesh")]
    return all((urdf.parent / n).is_file() for n in names if n and not n.startswith(("$(", "package://")))


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"RoboTwin assets in {result['root']}: {result['counts']} (upstream files checked), "
             f"URDF: {result['urdf'] or 'not usable'}",
             f"  runnable tasks: {', '.join(result['runnable_tasks']) or 'none'}"]
    for task, missing in result["blocked_tasks"].items():
        lines.append(f"  not runnable: {task} (missing {len(missing)} file(s), e.g. {missing[0]})")
    mism = [r for r, s in result["files"].items() if s == "mismatch"]
    if mism:
        lines.append(f"  differs from upstream: {', '.join(mism)}")
    lines.append(f"  full set (object tasks, 'Hard' textures / domain randomisation): {UPSTREAM_URL}")
    return lines
