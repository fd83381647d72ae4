"""``WeightEMA``: an exponential moving average of the policy's weights, one step per learner update.

Rollouts always use the trained (online) weights: PPO's ratio is taken against the policy that
acted. The average is what the periodic evaluation runs and what the checkpoint's
``model.safetensors`` holds (so ``rlsys eval``, ``rlsys serve`` and the comparison benchmarks use
it), with the online weights beside it for ``--resume``. Flow and diffusion policies are commonly
deployed with averaged weights (Diffusion Policy evaluates an EMA of its weights); here the point
is to steady a run's end point, whose in-run evaluations moved by up to 12 points between
neighbouring evaluations.

Until there are ``1 / (1 - decay)`` updates the average is the plain mean of every update's
weights so far (decay ``n / (n + 1)`` at the n-th update after the first), then the EMA: the start
(the SFT weights) is not averaged in, and early updates are not overweighted.
"""

from __future__ import annotations

import numpy as np
import torch


class WeightEMA:
    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"WeightEMA: decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0  # learner updates averaged so far
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    def current_decay(self) -> float:
        """The weight the average keeps at the next update."""
        return min(self.decay, self.updates / (self.updates + 1))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        d = self.current_decay()
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
        self.updates += 1

    def numpy_state(self, module: torch.nn.Module) -> dict[str, np.ndarray]:
        """The module's full state dict (numpy) with the averaged tensors in place of its own."""
        return {k: self.shadow.get(k, v).detach().cpu().numpy().copy() for k, v in module.state_dict().items()}

    def load_numpy_state(self, state: dict[str, np.ndarray], updates: int) -> None:
        for k in self.shadow:
            if k not in state:
                raise ValueError(f"WeightEMA: the saved average has no tensor {k!r}")
            self.shadow[k].copy_(torch.from_numpy(np.array(state[k])))
        self.updates = int(updates)
