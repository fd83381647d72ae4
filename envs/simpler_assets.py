"""SimplerEnv (ManiSkill3 Bridge digital twins) assets: check, stage, and labelled stand-ins.

ManiSkill reads ``$MS_ASSET_DIR/data/...``. The four Bridge tasks need the WidowX250S robot
(``data/robots/widowx``) and the ``bridge_v2_real2sim`` data (``data/tasks/bridge_v2_real2sim_dataset``).

- :func:`check` compares a folder with the official fingerprints: sha256 for the files listed in
  ``envs/data/simpler_sha256.txt`` (the upstream files as staged offline), git blob ids for the
  three large files that could not be staged offline (``MISSING_BLOBS``).
- :func:`stage` links a given offline folder file by file, or runs ManiSkill's own downloader.
- :func:`make_stand_ins` builds clearly-labelled replacements for the three missing files in a
  folder of *your own* (never the shared one): a flat table stage (a box whose top is at
  ``TABLE_TOP_Z``) for both stage meshes, and the eggplant's collision mesh as its visual
  (``textured.obj``, which ManiSkill prefers over the missing ``textured.dae``). They are listed in
  ``STAND_INS.json``; every result produced on them says so (``asset_status``) and is never a
  SimplerEnv number.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rlsys.envs.assets import sha256_file

BRIDGE = "data/tasks/bridge_v2_real2sim_dataset"
MISSING_BLOBS = {  # path -> git blob id in simpler-env/ManiSkill2_real2sim (see the shared SOURCES.md)
    f"{BRIDGE}/stages/bridge_table_1_v1.glb": "0eb8c869fc5503c834e20efc45fe2dedb5a599ce",
    f"{BRIDGE}/stages/bridge_table_1_v2.glb": "893b8a2f17f4b8acd1aa496433f8708d4b3cdb3b",
    f"{BRIDGE}/custom/models/eggplant/textured.dae": "ad841cda35d5bfab937b82609547816290e18d1a",
}
STAND_INS_FILE = "STAND_INS.json"
# Table top of the stand-in stage, derived from the scene: the tasks spawn every object just above
# the table (``xyz_configs`` in mani_skill's put_on_in_scene.py) and let it settle; the lowest
# spawn minus that object's half height (model DB bbox) is the plate, 0.869532 - 0.003.
TABLE_TOP_Z = 0.8665
# mani_skill base_env.py loads the stage with this pose: q = 90 deg about x, at -scene_offset.
STAGE_OFFSET = (2.0634, 2.8313, 0.0)


def manifest() -> dict[str, str]:
    """Official sha256 of every staged file, by path under the asset dir."""
    text = (Path(__file__).parent / "data" / "simpler_sha256.txt").read_text()
    return {path: digest for digest, path in (line.split() for line in text.splitlines() if line.strip())}


def _git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check(root: str | os.PathLike) -> dict[str, Any]:
    """Per required file: ``ok`` / ``mismatch`` / ``missing`` / ``stand-in``; plus a summary."""
    root = Path(root)
    stand_ins = stand_in_files(root)
    rows: dict[str, str] = {}
    for rel, digest in manifest().items():
        p = root / rel
        rows[rel] = "missing" if not p.is_file() else ("ok" if sha256_file(p) == digest else "mismatch")
    for rel, blob in MISSING_BLOBS.items():
        p = root / rel
        if p.is_file():
            rows[rel] = "ok" if _git_blob(p) == blob else ("stand-in" if rel in stand_ins else "mismatch")
        else:
            rows[rel] = "stand-in" if rel in stand_ins else "missing"
    counts = {s: sum(1 for v in rows.values() if v == s) for s in ("ok", "mismatch", "missing", "stand-in")}
    status = "official" if counts["ok"] == len(rows) else ("stand-in" if counts["missing"] == counts["mismatch"]
                                                            == 0 else "incomplete")
    return {"root": str(root), "status": status, "counts": counts, "files": rows}


def stand_in_files(root: Path) -> dict[str, str]:
    marker = Path(root) / STAND_INS_FILE
    return json.loads(marker.read_text())["files"] if marker.is_file() else {}


def stage(dest: str | os.PathLike, source: str | os.PathLike | None = None) -> None:
    """Link every file of an offline asset folder into ``dest`` (or download with ManiSkill)."""
    dest = Path(dest)
    if source is None:
        env = {**os.environ, "MS_ASSET_DIR": str(dest), "MS_SKIP_ASSET_DOWNLOAD_PROMPT": "1"}
        for uid in ("widowx250s", "bridge_v2_real2sim"):
            r = subprocess.run([sys.executable, "-m", "mani_skill.utils.download_asset", uid, "-y"], env=env)
            if r.returncode:
                raise RuntimeError(f"ManiSkill's downloader failed for {uid!r} (no internet?). Offline, pass "
                                   f"--from a staged folder (e.g. ../shared/assets/simpler).")
        return
    source = Path(source).resolve()
    if not (source / "data").is_dir():
        raise FileNotFoundError(f"{source} is not an MS_ASSET_DIR (no data/ folder)")
    for src in (source / "data").rglob("*"):
        if src.is_file():
            dst = dest / src.relative_to(source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(src)


def make_stand_ins(root: str | os.PathLike) -> dict[str, str]:
    """Build the labelled stand-ins for whichever of the three missing files are absent."""
    import numpy as np
    import trimesh

    root = Path(root)
    made = stand_in_files(root)
    for rel in (f"{BRIDGE}/stages/bridge_table_1_v1.glb", f"{BRIDGE}/stages/bridge_table_1_v2.glb"):
        p = root / rel
        if p.exists():
            continue
        # a 3 m x 3 m x 5 cm slab; in the glb's y-up frame (world = Rx(90) * local + offset)
        ox, oy, _ = STAGE_OFFSET
        box = trimesh.creation.box(extents=(3.0, 0.05, 3.0))
        box.apply_translation((-ox, TABLE_TOP_Z - 0.025, oy))
        box.visual.face_colors = np.array([150, 120, 90, 255], np.uint8)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene(box)))
        made[rel] = f"STAND-IN: flat table slab, top at z={TABLE_TOP_Z} m (derived from the task spawn heights)"
    egg = root / f"{BRIDGE}/custom/models/eggplant"
    if not (egg / "textured.dae").exists() and not (egg / "textured.obj").exists():
        collision = egg / "collision.obj"
        if not collision.exists():
            raise FileNotFoundError(f"{collision} is missing: stage the assets first")
        shutil.copyfile(collision.resolve(), egg / "textured.obj")
        made[f"{BRIDGE}/custom/models/eggplant/textured.dae"] = (
            "STAND-IN: textured.obj = the eggplant's collision mesh (ManiSkill loads textured.obj first)")
    (root / STAND_INS_FILE).write_text(json.dumps({"note": "Stand-ins, not the official assets: results on "
                                                          "them are not SimplerEnv numbers.", "files": made},
                                                  indent=2))
    return made


def report_lines(result: dict[str, Any]) -> list[str]:
    bad = {k: v for k, v in result["files"].items() if v != "ok"}
    lines = [f"SimplerEnv assets in {result['root']}: {result['status']} ({result['counts']})"]
    lines += [f"  {v:9s} {k}" for k, v in sorted(bad.items())]
    if result["status"] == "incomplete":
        lines.append("  get them: rlsys assets simpler --dir DIR (ManiSkill's downloader, needs internet) or "
                     "--from OFFLINE_DIR; offline tests may add --stand-ins (labelled, not SimplerEnv numbers)")
    return lines
