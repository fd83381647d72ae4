"""Flow-matching VLA policy: backbones, DiT action expert, value and noise heads."""
