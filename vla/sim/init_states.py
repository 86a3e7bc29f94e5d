"""Initial states: seeded sampling, and the fixed evaluation set stored in the repo.

Like LIBERO's `.init` files, the evaluation set is generated once from seeds
(`python -m vla.sim.init_states`) and stored as `init_states/tabletop.npz`: per
task, an array of shape (50, 7 + 7 * num_objects) holding the arm's joint
positions and each object's (x, y, z, qw, qx, qy, qz). Evaluation loads these
exact states instead of re-sampling, so every policy meets the same scenes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vla.limits import RobotLimits, load_robot_limits
from vla.sim import scene
from vla.sim.tasks import TASKS, SceneView, Task

INIT_STATES_FILE = Path(__file__).resolve().parent / "init_states" / "tabletop.npz"
NUM_INIT_STATES = 50
BASE_SEED = 20261123  # the evaluation set's seed; task i uses BASE_SEED + i

_MIN_OBJECT_DISTANCE = 0.09  # m between object centres, so open fingers fit between neighbours
_CORRIDOR_CLEARANCE = 0.075  # m around a pushed object's path that other objects keep clear of
_ARM_NOISE = 0.05  # rad, uniform, around the home pose


_MIN_PUSH_START_X = 0.33  # m; closer to the base the folded arm cannot get its fingers down behind an object
_MAX_PUSH_START_Y = 0.15  # m; further out the fingers come down on the bin's or the plate's rim


def _push_corridor_clear(task: Task, positions: dict[str, np.ndarray]) -> bool:
    """The push starts within reach, and no other object is near the segment from behind the pushed
    object to the pad's far side."""
    start = positions[task.obj]
    direction = scene.PAD_CENTER - start
    direction /= np.linalg.norm(direction)
    a, b = start - 0.08 * direction, scene.PAD_CENTER + scene.PAD_HALF * direction
    if a[0] < _MIN_PUSH_START_X or abs(a[1]) > _MAX_PUSH_START_Y:
        return False
    for name, xy in positions.items():
        if name == task.obj:
            continue
        t = np.clip(np.dot(xy - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
        if np.linalg.norm(xy - (a + t * (b - a))) < _CORRIDOR_CLEARANCE:
            return False
    return True


def _sample_object_positions(task: Task, rng: np.random.Generator) -> dict[str, np.ndarray]:
    for _ in range(1000):
        positions: dict[str, np.ndarray] = {}
        for name in scene.OBJECT_NAMES:
            for _ in range(200):
                xy = rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)
                if all(np.linalg.norm(xy - other) >= _MIN_OBJECT_DISTANCE for other in positions.values()):
                    positions[name] = xy
                    break
        if len(positions) == len(scene.OBJECT_NAMES) and (
            task.family != "push" or _push_corridor_clear(task, positions)
        ):
            return positions
    raise RuntimeError(f"could not place the objects for task '{task.name}' after 1000 tries")


def sample_init_state(task: Task, limits: RobotLimits, rng: np.random.Generator) -> np.ndarray:
    """Arm near home, every object upright at a random free spot with a random yaw."""
    arm = limits.home + rng.uniform(-_ARM_NOISE, _ARM_NOISE, size=limits.num_joints)
    arm = np.clip(arm, limits.position_lower, limits.position_upper)
    parts = [arm]
    for name, xy in _sample_object_positions(task, rng).items():
        yaw = rng.uniform(-np.pi, np.pi)
        z = scene.OBJECTS_BY_NAME[name].half_height + 0.001
        parts.append(np.array([xy[0], xy[1], z, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]))
    return np.concatenate(parts)


def free_spot(view: SceneView, obj: str, rng: np.random.Generator) -> np.ndarray:
    """A spawn-area spot at least the minimum distance from every other object (for the move perturbation)."""
    others = [p[:2] for name, p in view.positions.items() if name != obj]
    for _ in range(500):
        xy = rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)
        if all(np.linalg.norm(xy - o) >= _MIN_OBJECT_DISTANCE for o in others):
            return xy
    return rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)


def generate_init_states(robot: str = "panda", num: int = NUM_INIT_STATES) -> dict[str, np.ndarray]:
    limits = load_robot_limits(robot)
    states = {}
    for i, task in enumerate(TASKS.values()):
        rng = np.random.default_rng(BASE_SEED + i)
        states[task.name] = np.stack([sample_init_state(task, limits, rng) for _ in range(num)])
    return states


def load_init_states(task: str, path: Path = INIT_STATES_FILE) -> np.ndarray:
    """The stored evaluation states of one task, shape (50, 7 + 7 * num_objects)."""
    if not path.is_file():
        raise FileNotFoundError(f"init-state file {path} not found; regenerate it with `python -m vla.sim.init_states`")
    with np.load(path) as stored:
        if task not in stored:
            raise KeyError(f"init-state file {path} has no states for task '{task}'; regenerate it")
        return stored[task]


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the fixed evaluation initial states.")
    parser.add_argument("--out", type=Path, default=INIT_STATES_FILE)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **generate_init_states())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
