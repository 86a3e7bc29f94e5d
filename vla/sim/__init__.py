"""Simulation: the MuJoCo tabletop suite, the LIBERO adapter, scripted experts and evaluation."""

import os

# Headless by default: render offscreen through EGL unless the user chose a backend (glfw, osmesa).
# This must happen before mujoco is first imported, here and in every env worker process.
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

TABLETOP_ENV_ID = "vla/Tabletop-v0"
LIBERO_ENV_ID = "vla/Libero-v0"  # every LIBERO suite: `gym.make(LIBERO_ENV_ID, suite="libero_spatial", ...)`

if TABLETOP_ENV_ID not in gym.registry:
    gym.register(id=TABLETOP_ENV_ID, entry_point="vla.sim.tabletop_env:TabletopEnv")
if LIBERO_ENV_ID not in gym.registry:  # the entry point imports LIBERO only when an env is made
    gym.register(id=LIBERO_ENV_ID, entry_point="vla.sim.libero_env:LiberoEnv")
