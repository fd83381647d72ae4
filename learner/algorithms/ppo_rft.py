"""PPO + RFT's imitation: PPO's update with ``imitation.coef`` x the imitation loss added to every
policy step, then ``imitation.steps`` imitation-only steps (settings: ``ppo`` and ``imitation``).
The measured best setting on the tabletop few-shot start and on LIBERO-Spatial (docs/experiments.md)."""

from __future__ import annotations

from rlsys.learner.algorithms import Loss, Minibatch
from rlsys.learner.algorithms.ppo import PPO
from rlsys.types import Segment


class PPORFT(PPO):
    imitates = True

    def observe(self, segments: list[Segment], iteration: int) -> None:
        assert self.imitation is not None
        self.imitation.observe(segments, iteration)

    def loss(self, mb: Minibatch) -> Loss:
        out = super().loss(mb)
        coef = self.cfg.imitation.coef
        if coef and self.imitation is not None and self.imitation.ready:
            sil = self.imitation.loss()
            out.actor = out.actor + coef * sil
            out.metrics["sil_loss"] = sil.item()
        return out

    def after_epochs(self) -> dict[str, float]:
        assert self.imitation is not None
        return self.imitation.steps()
