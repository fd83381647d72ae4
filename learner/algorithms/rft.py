"""RFT (rejection-sampling fine-tuning, expert iteration): the policy's successful episodes (and the
SFT demos) enter the imitation memory; each update is ``imitation.steps`` flow-matching steps on it.
No likelihood ratio, no critic, no advantage (settings: ``imitation``)."""

from __future__ import annotations

from rlsys.learner.algorithms import Algorithm
from rlsys.types import Segment


class RFT(Algorithm):
    uses_critic = False
    policy_gradient = False
    imitates = True

    def observe(self, segments: list[Segment], iteration: int) -> None:
        assert self.imitation is not None
        self.imitation.observe(segments, iteration)

    def after_epochs(self) -> dict[str, float]:
        assert self.imitation is not None
        return self.imitation.steps()
