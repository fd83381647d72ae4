"""Whole-file writes a crash cannot leave half done: the file is written beside its target and renamed
over it, so a reader sees the old file or the new one, never a part (whole folders:
``rlsys.checkpoint.atomic_dir_write``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def replace_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp_path)``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def replace_text(path: Path, text: str) -> None:
    replace_write(path, lambda p: p.write_text(text))
