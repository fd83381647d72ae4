#!/usr/bin/env bash
# RoboTwin 2.0 runtime in its own virtualenv (it cannot share rlsys's main one: it needs
# numpy 1.26.4 and mplib 0.2.1, while mani-skill pins mplib 0.1.1). The env pool starts RoboTwin
# simulators with this interpreter (env option python: VENV/bin/python, one process per simulator).
#
#   scripts/setup_robotwin.sh [VENV]      # default VENV: .venv-robotwin in the repo
# Uses the measured working set: rlinf-robotwin-runtime 0.1.3 (--no-deps: its CUDA torch 2.8 and
# sapien 3.0.0b1 pins do not work here), sapien 3.0.3, mplib 0.2.1, numpy 1.26.4, our torch pin
# (which needs setuptools >= 77.0.3; < 81 keeps pkg_resources for the runtime).
# pyarrow < 26: 26 needs numpy 2, and the demo writer (rlsys demos with env.python) runs here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-robotwin}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0" "sapien==3.0.3" "mplib==0.2.1" "numpy==1.26.4" "trimesh==4.4.3" \
  "transforms3d==0.4.2" toppra "open3d-cpu==0.18.0" gymnasium opencv-python-headless yourdfpy pyyaml scipy \
  imageio "setuptools>=77.0.3,<81" huggingface_hub safetensors "pyarrow<26" pillow rich "pytest>=8" "pytest-timeout>=2.3"
"$VENV/bin/pip" install -q --no-deps "rlinf-robotwin-runtime==0.1.3"
"$VENV/bin/pip" install -q --no-deps -e .   # rlsys itself: the simulator server side of the env pool
# RoboTwin 2.0's documented mplib 0.2.1 edit: a screw (straight-line) motion must not abort on contact,
# else every approach to a block ends in "screw plan failed" (the grasp itself touches the block).
PLANNER="$("$VENV/bin/python" -c 'import mplib, os; print(os.path.join(os.path.dirname(mplib.__file__), "planner.py"))')"
sed -i -E 's/(if np\.linalg\.norm\(delta_twist\) < 1e-4 )(or collide )(or not within_joint_limit:)/\1\3/' "$PLANNER"
if grep -q "or collide or not within_joint_limit" "$PLANNER"; then
  echo "setup_robotwin: could not apply the mplib screw-plan edit to $PLANNER" >&2; exit 1
fi
echo "setup_robotwin: $VENV/bin/python ready"
