#!/usr/bin/env bash
# The main job on the embedded default: evaluate the shipped policy (checkpoints/tabletop) on every tabletop task,
# 5 fixed initial states each; report.json, report.md, success.png and videos land in outputs/main/eval.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}"
rm -rf outputs/main
.venv/bin/vla-eval policy=checkpoints/tabletop env=tabletop tasks=all episodes=5 out=outputs/main/eval
