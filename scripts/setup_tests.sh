#!/usr/bin/env bash
# What the tests need beyond the base install: every simulator stack. The README's test command and
# .ci/run both call this script, then run pytest in .venv.
#   - scripts/setup_vulkan.sh: a Vulkan device for SAPIEN (SimplerEnv, RoboTwin) on a CPU machine
#   - scripts/setup_robotwin.sh: RoboTwin 2.0's runtime in its own venv (.venv-robotwin)
#   - .venv with rlsys[dev,libero,simpler,vla,video,trackers] (pytest, ruff, mypy, LIBERO with its assets, ManiSkill3,
#     transformers for the pretrained-VLA models, PyAV for video datasets, W&B and MLflow)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_vulkan.sh
scripts/setup_robotwin.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev,libero,simpler,vla,video,trackers]"
echo "setup_tests: ready (. .venv/bin/activate)"
