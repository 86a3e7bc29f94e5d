"""Simulation: the MuJoCo tabletop suite, scripted experts and evaluation."""

import gymnasium as gym

TABLETOP_ENV_ID = "vla/Tabletop-v0"

if TABLETOP_ENV_ID not in gym.registry:
    gym.register(id=TABLETOP_ENV_ID, entry_point="vla.sim.tabletop_env:TabletopEnv")
