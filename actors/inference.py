"""``InferenceEngine``: a policy copy that turns observation batches into ``ActionChunk``s.

Plain class; ``rlsys.actors.system.InferenceActor`` (and ``CollocatedActor``) wrap it with cross-request batching.
"""

from __future__ import annotations

import numpy as np
import torch

from rlsys.config import TrainConfig
from rlsys.flow import build_sampler
from rlsys.policy.flow_policy import FlowPolicy
from rlsys.types import ActionChunk, Observation
from rlsys.weights import load_numpy_state


class InferenceEngine:
    def __init__(self, cfg: TrainConfig, policy: FlowPolicy | None = None, seed: int = 0,
                 device: str = "cpu") -> None:
        self.policy = policy if policy is not None else FlowPolicy(cfg.policy).to(device)
        self.sampler = build_sampler(cfg.sampler)
        self.generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on any device
        self.version = -1
        self.denoiser = None
        if cfg.rollout.cuda_graphs and self.policy.device.type == "cuda":
            from rlsys.policy.cuda_graph import CudaGraphDenoiser

            self.denoiser = CudaGraphDenoiser(self.policy, self.sampler, cfg.rollout.max_batch)

    def set_weights(self, state: dict[str, np.ndarray], version: int, partial: bool = False) -> None:
        """``partial``: ``state`` holds the trained entries only (the rest is loaded already)."""
        load_numpy_state(self.policy, state, partial)
        self.version = int(version)

    def infer(self, obs: Observation) -> ActionChunk:
        was = self.policy.training
        self.policy.eval()
        chunk = self.policy.sample(obs, self.sampler, self.generator, self.version, self.denoiser)
        self.policy.train(was)
        return chunk

    @torch.no_grad()
    def values(self, obs: Observation) -> np.ndarray:
        return self.policy.value(obs).float().cpu().numpy()
