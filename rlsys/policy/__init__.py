"""Flow-matching VLA policy: the policy models (rlsys's tiny one, pi0 / pi0.5 from transformers), the flow
policy around them (denoising loop, recompute, SFT loss), value and noise heads."""
