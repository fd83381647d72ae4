"""CUDA-graph replay of the denoising chain, for inference workers on a GPU.

Eager PyTorch launches every small kernel of the backbone and of each denoising step from Python;
for the default policy that costs about 40 ms per chunk on an H100 whatever the batch size
(``benchmarks/results/policy_speed_cuda.json``), which makes a GPU inference worker slower than a
CPU core below a batch of ~64. ``CudaGraphDenoiser`` captures ``FlowPolicy.denoise`` once per
batch-size bucket (powers of two up to ``max_batch``) and replays it: one launch per chunk.

Inputs are copied into the bucket's static buffers; rows past the real batch repeat row 0 and are
dropped from the outputs. The weights are read in place, so ``load_state_dict`` (weight broadcast)
and optimizer steps (collocated learner) reach the graphs; if a parameter is re-allocated instead,
the graphs are captured again. Batches above the largest bucket and other samplers run eagerly.
A policy whose ``denoise`` cannot be captured (a plug-in backbone that syncs with the host, say)
runs eagerly from then on, with one warning naming the error.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from rlsys.flow import Sampler

# inputs whose batch axis is not the first; "grid" (the time grid) has none
_BATCH_AXIS = {"noise": 1, "grid": None}


def _fill(dst: torch.Tensor, src: torch.Tensor, axis: int | None) -> None:
    """Copy ``src`` into the front of ``dst`` along ``axis``; pad the rest with ``src``'s first row."""
    if axis is None:
        dst.copy_(src)
        return
    b, n = src.shape[axis], dst.shape[axis]
    dst.narrow(axis, 0, b).copy_(src)
    if n > b:
        dst.narrow(axis, b, n - b).copy_(src.narrow(axis, 0, 1).expand_as(dst.narrow(axis, b, n - b)))


class CudaGraphDenoiser:
    """A drop-in ``denoiser`` for ``FlowPolicy.sample`` (same inputs and outputs as ``denoise``)."""

    def __init__(self, policy: Any, sampler: Sampler, max_batch: int) -> None:
        if policy.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the policy on a CUDA device, not {policy.device}")
        self.policy, self.sampler = policy, sampler
        self.buckets = [1]
        while self.buckets[-1] < max_batch:
            self.buckets.append(2 * self.buckets[-1])
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
        self._ptrs: list[int] = []
        self.captures = self.replays = self.eager_calls = 0
        self.failed: str | None = None  # why capture failed (then every call runs eagerly)

    def _weights_moved(self) -> bool:
        ptrs = [t.data_ptr() for t in (*self.policy.parameters(), *self.policy.buffers())]
        moved = ptrs != self._ptrs
        self._ptrs = ptrs
        return moved

    @torch.no_grad()
    def _capture(self, bucket: int, inputs: dict[str, torch.Tensor]) -> None:
        static_in = {}
        for k, v in inputs.items():
            axis = _BATCH_AXIS.get(k, 0)
            shape = list(v.shape)
            if axis is not None:
                shape[axis] = bucket
            static_in[k] = torch.empty(shape, dtype=v.dtype, device=v.device)
            _fill(static_in[k], v, axis)
        dev = self.policy.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up off the capture: library handles, algorithm choice
            for _ in range(2):
                self.policy.denoise(static_in, self.sampler)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.policy.denoise(static_in, self.sampler)
        self.graphs[bucket] = (graph, static_in, static_out)
        self.captures += 1

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor], sampler: Sampler) -> dict[str, torch.Tensor]:
        b = inputs["x0"].shape[0]
        bucket = next((n for n in self.buckets if n >= b), None)
        if bucket is None or sampler != self.sampler or self.failed:
            self.eager_calls += 1
            return self.policy.denoise(inputs, sampler)
        if self._weights_moved():
            self.graphs.clear()
        if bucket not in self.graphs:
            try:
                self._capture(bucket, inputs)
            except Exception as e:  # e.g. a host sync inside denoise (not capturable)
                self.failed = f"{type(e).__name__}: {e}"
                self.graphs.clear()
                torch.cuda.synchronize(self.policy.device)
                warnings.warn(f"CUDA-graph capture of the denoising chain failed, inference runs eagerly: "
                              f"{self.failed}", RuntimeWarning, stacklevel=2)
                self.eager_calls += 1
                return self.policy.denoise(inputs, sampler)
        graph, static_in, static_out = self.graphs[bucket]
        for k, v in inputs.items():
            _fill(static_in[k], v, _BATCH_AXIS.get(k, 0))
        graph.replay()
        self.replays += 1
        return {k: v[:b].clone() for k, v in static_out.items()}
