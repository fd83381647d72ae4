"""rlsys: distributed RL post-training (PPO / GRPO) for flow-matching VLA policies on Ray."""

__version__ = "0.1.0"
