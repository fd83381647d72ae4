#!/usr/bin/env bash
# Make SAPIEN (SimplerEnv through ManiSkill3, RoboTwin) render on a CPU-only Debian 12 machine.
#
# Debian 12's own Mesa (22.3) lavapipe is too old for SAPIEN 3 ("failed to find a rendering
# device"); Mesa 25's lavapipe from bookworm-backports works. This script leaves the system's Mesa
# alone: it installs only Debian's Vulkan loader (libvulkan1, from bookworm main, when missing),
# fetches mesa-vulkan-drivers from bookworm-backports through a private apt state, unpacks it
# into DEST and writes an ICD file pointing at that copy of lavapipe.
#
#   scripts/setup_vulkan.sh [DEST]        # default DEST: ~/.cache/rlsys/vulkan
#   export VK_ICD_FILENAMES=DEST/lvp_icd.json   (rlsys sets it itself when DEST is the default)
set -euo pipefail
DEST="${1:-$HOME/.cache/rlsys/vulkan}"
if ! command -v apt-get >/dev/null || ! grep -q bookworm /etc/os-release 2>/dev/null; then
  echo "setup_vulkan: not Debian 12; skipped. SimplerEnv/RoboTwin need a Vulkan device for SAPIEN:"
  echo "  a GPU driver, or Mesa >= 25 lavapipe (mesa-vulkan-drivers) from your distribution."
  exit 0
fi
ARCH="$(dpkg --print-architecture)"
TRIPLET="$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
  echo "setup_vulkan: installing the Vulkan loader (libvulkan1, bookworm main)"
  $SUDO apt-get -qq update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -qq install -y --no-install-recommends libvulkan1 >/dev/null
fi

if [ -f "$DEST/lvp_icd.json" ] && [ -f "$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["ICD"]["library_path"])' "$DEST/lvp_icd.json")" ]; then
  echo "setup_vulkan: already set up in $DEST"
  echo "export VK_ICD_FILENAMES=$DEST/lvp_icd.json"
  exit 0
fi

APT="$DEST/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$DEST/root"
echo "deb http://deb.debian.org/debian bookworm-backports main" > "$APT/sources.list"
OPTS=(-o "APT::Sandbox::User=$(id -un)" -o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=/nonexistent"
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "APT::Get::List-Cleanup=0")
apt-get -qq "${OPTS[@]}" update
(cd "$APT" && apt-get -qq "${OPTS[@]}" download "mesa-vulkan-drivers:$ARCH")
dpkg-deb -x "$APT"/mesa-vulkan-drivers_*.deb "$DEST/root"
LIB="$(find "$DEST/root" -name libvulkan_lvp.so | head -1)"
[ -n "$LIB" ] || { echo "setup_vulkan: libvulkan_lvp.so not found in the package" >&2; exit 1; }
VERSION="$(dpkg-deb -f "$APT"/mesa-vulkan-drivers_*.deb Version)"
cat > "$DEST/lvp_icd.json" <<JSON
{"file_format_version": "1.0.0", "ICD": {"library_path": "$LIB", "api_version": "1.3.0"}}
JSON
echo "setup_vulkan: Mesa lavapipe $VERSION in $DEST ($TRIPLET)"
echo "export VK_ICD_FILENAMES=$DEST/lvp_icd.json"
