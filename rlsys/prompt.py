"""Prompts, tokenizers, and env obs -> ``Observation``.

The tiny model reads the embodiment prompt (Qwen-VLA template) through a tokenizer that needs no
download: lower-cased words are hashed (CRC32) into a fixed vocabulary (id 0 is padding), and long
prompts keep their end (the instruction). A pretrained pi0 / pi0.5 reads its own prompt format through
its own ``tokenizer.json`` (``policy.pretrained``); a random-weight one hashes the same text.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np

from rlsys.config import PolicyConfig
from rlsys.envs.api import Embodiment
from rlsys.policy.spec import tokenizer_file
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


class PromptTokenizer:
    """text -> token ids: the model's own ``tokenizer.json`` (``policy.tokenizer``, or the pretrained
    folder's), else hashed words (``vocab_size``; below a transformers model's image token id, see
    rlsys.policy.spec)."""

    def __init__(self, cfg: PolicyConfig) -> None:
        self.vocab_size = cfg.vocab_size
        self.hf: Any = None
        path = tokenizer_file(cfg)
        if path is not None:
            from tokenizers import Tokenizer  # installed with transformers (the vla extra)

            self.hf = Tokenizer.from_file(str(path))

    def ids(self, text: str, special: bool = True) -> list[int]:
        """``special``: the tokenizer's own begin-of-sequence token where it adds one."""
        if self.hf is not None:
            return list(self.hf.encode(text, add_special_tokens=special).ids)
        return [zlib.crc32(w.encode()) % (self.vocab_size - 1) + 1 for w in _WORD.findall(text.lower())]


def model_prompt(cfg: PolicyConfig, embodiment: Embodiment, instruction: str) -> str:
    """The text a model was trained to read: the tiny and vlm_dit models the embodiment prompt; pi0 the
    task and a newline; pi0.5 "Task: ..." (its model appends the discretised state and "Action: ")."""
    if cfg.model == "pi0":
        return instruction.strip() + "\n"
    if cfg.model == "pi05":
        return "Task: " + instruction.strip().replace("_", " ").replace("\n", " ")
    return embodiment_prompt(embodiment, cfg.action_horizon, instruction)


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
        self.tokenizer = PromptTokenizer(cfg) if cfg.model != "tiny" else None
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def tokens(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        if instruction not in self._cache:
            text = model_prompt(self.cfg, self.embodiment, instruction)
            if self.tokenizer is None or self.tokenizer.hf is None:  # hashed words: the end is kept
                self._cache[instruction] = tokenize(text, self.cfg.vocab_size, self.cfg.max_tokens)
            else:  # a transformers model: the start of the prompt is kept (its BOS, the task)
                ids = self.tokenizer.ids(text)[: self.cfg.max_tokens]
                tokens = np.zeros(self.cfg.max_tokens, np.int64)
                tokens[: len(ids)] = ids
                mask = np.zeros(self.cfg.max_tokens, bool)
                mask[: len(ids)] = True
                self._cache[instruction] = tokens, mask
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
