"""Simulation: the MuJoCo tabletop suite, scripted experts and evaluation."""

import os

# Headless by default: render offscreen through EGL unless the user chose a backend (glfw, osmesa).
# This must happen before mujoco is first imported, here and in every env worker process.
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

TABLETOP_ENV_ID = "vla/Tabletop-v0"

if TABLETOP_ENV_ID not in gym.registry:
    gym.register(id=TABLETOP_ENV_ID, entry_point="vla.sim.tabletop_env:TabletopEnv")
