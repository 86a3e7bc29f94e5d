"""Scripted pick-and-place expert for LIBERO, from privileged object poses (`info["privileged"]`).

It drives LIBERO's own OSC_POSE controller with 7-D delta commands, the action space the policy learns: a
proportional step toward a Cartesian goal for the end effector (orientation held as it starts, top down),
through approach, descend, close, lift, carry, lower and release. Objects wider than the open fingers
(LIBERO's bowls) are taken by the rim: the fingers straddle the wall on the side across which they close.
Heights come from the bounding boxes of the object and the target, so one script serves every `On`/`In`
goal of libero_spatial and libero_object. Hover and carry heights and the gain are randomized per episode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla.sim.libero_env import PRIVILEGED

EXPERT_SUITES = ("libero_spatial", "libero_object")
OPEN, CLOSE = -1.0, 1.0
FINGER_SPAN = 0.07  # m between the open fingers, less a margin: wider objects are grasped by the rim
POSITION_SCALE = 0.05  # m per unit of a position command (robosuite's OSC_POSE output_max)


def check_expert_suite(suite: str) -> None:
    if suite not in EXPERT_SUITES:
        raise ValueError(f"policy=expert: the scripted LIBERO expert covers {', '.join(EXPERT_SUITES)} "
                         f"(pick-and-place goals), not {suite}")


@dataclass
class _Style:
    hover: float  # m above the object's top before descending
    clearance: float  # m the carried object's bottom stays above the target's top
    gain: float  # command units per m of position error


class LiberoExpert:
    """`ChunkPolicy` with privileged state: one 7-D delta end-effector action per call."""

    privileged = True
    chunk_size = 1

    def __init__(self) -> None:
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.style = _Style(hover=rng.uniform(0.06, 0.09), clearance=rng.uniform(0.05, 0.08),
                            gain=rng.uniform(14.0, 18.0))
        self.phase, self.phase_steps = "approach", 0
        self.grasp_offset: np.ndarray | None = None  # from the object's centre to the grasp point
        self.gripper = OPEN

    def _go(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    def predict_chunk(self, obs: dict) -> tuple[np.ndarray, int]:
        p = {key: np.asarray(obs["privileged"][span], dtype=np.float64) for key, span in PRIVILEGED.items()}
        if np.isnan(p["object_pos"]).any():
            raise ValueError(f"policy=expert: task '{obs['task_name']}' has no pick-and-place goal")
        goal = self._goal(p)
        step = np.clip(self.style.gain * (goal - p["eef_pos"]), -1.0, 1.0)
        self.phase_steps += 1
        return np.array([[*step, 0.0, 0.0, 0.0, self.gripper]], dtype=np.float32), 1

    def _goal(self, p: dict[str, np.ndarray]) -> np.ndarray:
        eef, low, high = p["eef_pos"], p["object_low"], p["object_high"]
        centre = np.array([*(low[:2] + high[:2]) / 2, low[2]])
        if self.grasp_offset is None:
            width_y = high[1] - low[1]
            height = high[2] - low[2]
            # The fingers close along the world's y axis in LIBERO's start pose: straddle the wall nearer the robot.
            rim = max(0.0, width_y / 2 - 0.012) if width_y > FINGER_SPAN else 0.0
            # Fingertips reach about 3 cm below the grip point: closer to the bottom they hit the floor first.
            grasp_z = height - 0.015 if rim else max(min(height / 2, height - 0.035), 0.03)
            self.grasp_offset = np.array([0.0, -rim, grasp_z])
        grasp = centre + self.grasp_offset
        close = lambda a, b, tol: np.linalg.norm(a - b) < tol  # noqa: E731
        if self.phase in ("approach", "descend", "close"):  # fixed once the object moves with the hand
            self.carry_z = max(high[2], p["target_high"][2]) + self.style.hover + 0.05
        carry_z = self.carry_z

        if self.phase == "approach":
            goal = np.array([*grasp[:2], high[2] + self.style.hover])
            if close(eef[:2], goal[:2], 0.008) and abs(eef[2] - goal[2]) < 0.03:
                self._go("descend")
            return goal
        if self.phase == "descend":
            if close(eef, grasp, 0.012) or self.phase_steps > 30:
                self._go("close")
            return grasp
        if self.phase == "close":
            self.gripper = CLOSE
            if self.phase_steps >= 12:
                self.held_at = eef - centre  # where the object sits in the hand
                self._go("lift")
            return grasp
        if self.phase in ("lift", "carry", "lower") and np.linalg.norm(eef - centre - self.held_at) > 0.05:
            self.gripper = OPEN  # it slipped: open, rise and try again
            self._go("retry")
        target = np.array([*(p["target_low"][:2] + p["target_high"][:2]) / 2, p["target_high"][2]])
        if self.phase == "lift":
            goal = np.array([*eef[:2], carry_z])
            if abs(eef[2] - carry_z) < 0.02:
                self._go("carry")
            return goal
        place = target + self.held_at + np.array([0.0, 0.0, self.style.clearance])
        if self.phase == "carry":
            goal = np.array([*place[:2], carry_z])
            if close(eef[:2], goal[:2], 0.01):
                self._go("lower")
            return goal
        if self.phase == "lower":
            if abs(eef[2] - place[2]) < 0.01 or self.phase_steps > 40:
                self._go("release")
            return place
        if self.phase == "release":
            self.gripper = OPEN
            if self.phase_steps >= 8:
                self._go("retreat")
            return place
        if self.phase == "retry":
            goal = np.array([*eef[:2], carry_z])
            if abs(eef[2] - carry_z) < 0.03:
                self.grasp_offset = None
                self._go("approach")
            return goal
        return np.array([*eef[:2], carry_z])  # retreat: up, then wait for the success check
