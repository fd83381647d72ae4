"""Embodiment prompt (Qwen-VLA template), offline tokenizer, and env obs -> ``Observation``.

The tokenizer needs no download: lower-cased words are hashed (CRC32) into a fixed vocabulary
(id 0 is padding). Long prompts keep their end (the instruction).
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from rlsys.config import PolicyConfig
from rlsys.envs.api import Embodiment
from rlsys.types import ContractError, Observation

TEMPLATE = (
    "The robot is {robot} with {arms}. The control frequency is {hz:g} Hz. "
    "Please predict the next {horizon} control actions to execute the following task: {instruction}."
)
_WORD = re.compile(r"[a-z0-9]+")


def embodiment_prompt(embodiment: Embodiment, horizon: int, instruction: str) -> str:
    return TEMPLATE.format(robot=embodiment.robot, arms=embodiment.arms, hz=embodiment.control_hz,
                           horizon=horizon, instruction=instruction)


def tokenize(text: str, vocab_size: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (tokens [L] int64, mask [L] bool), hashed words, left-truncated, right-padded."""
    ids = [zlib.crc32(w.encode()) % (vocab_size - 1) + 1 for w in _WORD.findall(text.lower())]
    ids = ids[-max_tokens:]
    tokens = np.zeros(max_tokens, np.int64)
    tokens[: len(ids)] = ids
    return tokens, tokens > 0


class ObservationBuilder:
    """Turns a batched env observation + instructions into the policy's ``Observation``."""

    def __init__(self, cfg: PolicyConfig, embodiment: Embodiment) -> None:
        if embodiment.action_dim > cfg.action_channels:
            raise ContractError(
                f"embodiment has {embodiment.action_dim} action channels but policy.action_channels "
                f"is {cfg.action_channels}; raise policy.action_channels"
            )
        if embodiment.proprio_dim > cfg.proprio_dim:
            raise ContractError(
                f"embodiment proprio has {embodiment.proprio_dim} dims but policy.proprio_dim is "
                f"{cfg.proprio_dim}; raise policy.proprio_dim"
            )
        self.cfg, self.embodiment = cfg, embodiment
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def tokens(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        if instruction not in self._cache:
            text = embodiment_prompt(self.embodiment, self.cfg.action_horizon, instruction)
            self._cache[instruction] = tokenize(text, self.cfg.vocab_size, self.cfg.max_tokens)
        return self._cache[instruction]

    def __call__(self, images: np.ndarray, proprio: np.ndarray, instructions: list[str]) -> Observation:
        b = images.shape[0]
        expected = (self.cfg.num_cameras, self.cfg.image_size, self.cfg.image_size, 3)
        if images.shape[1:] != expected:
            raise ContractError(f"images: policy expects [B, {', '.join(map(str, expected))}], got {images.shape}")
        if len(instructions) != b:
            raise ContractError(f"instructions: expected {b}, got {len(instructions)}")
        pad = np.zeros((b, self.cfg.proprio_dim), np.float32)
        pad[:, : proprio.shape[1]] = proprio
        toks = [self.tokens(s) for s in instructions]
        return Observation(
            images=np.ascontiguousarray(images, dtype=np.uint8),
            proprio=pad,
            tokens=np.stack([t for t, _ in toks]),
            token_mask=np.stack([m for _, m in toks]),
            action_dim=np.full(b, self.embodiment.action_dim, np.int64),
        )
