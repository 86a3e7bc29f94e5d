#!/usr/bin/env bash
# The test command: set up the environment if needed, then run the default (fast) test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}"
.venv/bin/ruff check vla tests benchmarks
.venv/bin/python -m pytest -m "not slow and not gpu" "$@"
