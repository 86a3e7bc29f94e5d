#!/usr/bin/env bash
# The main job on the embedded default: record a few scripted demos into a LeRobotDataset v3,
# then evaluate the scripted expert on every task (report, videos, plot under outputs/main/).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
rm -rf outputs/main
.venv/bin/vla-record source=expert task=all episodes=2 root=outputs/main/demos
.venv/bin/vla-eval policy=expert env=tabletop tasks=all episodes=5 out=outputs/main/eval
