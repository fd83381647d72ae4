"""Policy weights as plain numpy dicts: what the learner publishes (``ray.put`` once per version),
inference workers load, and the driver checkpoints. Both sides import this one module.

A broadcast carries what trains: ``split_state`` cuts a state into the entries an optimizer updates
and the rest (frozen parts, normalisation buffers), which the learner puts in the object store once
and each worker loads once."""

from __future__ import annotations

import numpy as np
import torch


def state_to_numpy(module: torch.nn.Module, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """The tensors of ``module.state_dict()`` (those in ``names``, where given) as CPU numpy copies
    (float dtypes kept)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items() if names is None or k in names}


def split_state(module: torch.nn.Module, trained: set[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """-> (the entries in ``trained``, every other entry)."""
    full = state_to_numpy(module)
    return ({k: v for k, v in full.items() if k in trained}, {k: v for k, v in full.items() if k not in trained})


def load_numpy_state(module: torch.nn.Module, state: dict[str, np.ndarray], partial: bool = False) -> None:
    """Load a ``state_to_numpy`` dict: every entry (strict), or with ``partial`` a subset of them.
    Arrays from Ray's object store are read-only: copied."""
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    if not partial:
        module.load_state_dict(tensors)
        return
    unknown = set(tensors) - set(module.state_dict())
    if unknown:
        raise KeyError(f"weights for entries the policy does not have: {sorted(unknown)[:5]}")
    module.load_state_dict(tensors, strict=False)
