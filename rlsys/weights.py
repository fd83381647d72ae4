"""Policy weights as plain numpy dicts: what the learner publishes (``ray.put`` once per version),
inference workers load, and the driver checkpoints. Both sides import this one module."""

from __future__ import annotations

import numpy as np
import torch


def state_to_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """Every tensor of ``module.state_dict()`` as a CPU numpy copy (float dtypes kept)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_numpy_state(module: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load a ``state_to_numpy`` dict (strict). Arrays from Ray's object store are read-only: copied."""
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
