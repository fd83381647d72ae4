"""PPO / GRPO math, the learner and the training loop spine (``rlsys.learner``)."""
