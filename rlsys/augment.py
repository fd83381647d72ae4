"""Image augmentation shared by SFT and the learner's imitation steps."""

from __future__ import annotations

import numpy as np


def random_shift(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """DrQ-style augmentation: pad by edge replication and crop back at a random offset.
    images [B, C, S, S, 3] uint8 (one offset per sample and camera)."""
    b, c, s = images.shape[:3]
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty_like(images)
    offs = rng.integers(0, 2 * pad + 1, (b, c, 2))
    for i in range(b):
        for j in range(c):
            y, x = offs[i, j]
            out[i, j] = padded[i, j, y : y + s, x : x + s]
    return out
