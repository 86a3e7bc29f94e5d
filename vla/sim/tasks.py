"""Tasks: what to do in the shared tabletop scene, and how success is judged.

Every task uses the same scene with all five objects, so the instruction, not
the scene, decides what to do. Each task has three training instructions and
one held-out paraphrase that only evaluation uses. Success predicates are pure
functions of a `SceneView` (object poses + which object the gripper holds), so
they are checked every step by the env and tested on hand-built states.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from vla.sim import scene

FAMILIES = ("pick_place_bin", "pick_place_plate", "stack", "push")

# Per-family phrasings; the last one is held out for evaluation.
_TEMPLATES = {
    "pick_place_bin": (
        "put the {obj} in the bin",
        "place the {obj} into the grey bin",
        "drop the {obj} into the container",
        "move the {obj} into the box",
    ),
    "pick_place_plate": (
        "put the {obj} on the plate",
        "place the {obj} onto the white plate",
        "set the {obj} down on the plate",
        "move the {obj} onto the dish",
    ),
    "stack": (
        "stack the {obj} on the {target}",
        "put the {obj} on top of the {target}",
        "place the {obj} onto the {target}",
        "set the {obj} on the {target}",
    ),
    "push": (
        "push the {obj} to the blue square",
        "slide the {obj} onto the blue pad",
        "shove the {obj} into the blue target area",
        "push the {obj} onto the blue marker",
    ),
}

INSTRUCTION_MODES = ("canonical", "train", "held_out")


@dataclass(frozen=True)
class Task:
    name: str
    family: str
    obj: str  # the object to move
    target: str  # "bin" | "plate" | "pad" | the name of another object
    max_steps: int  # control steps at the policy rate

    @property
    def instructions(self) -> tuple[str, ...]:
        words = {"obj": self.obj.replace("_", " "), "target": self.target.replace("_", " ")}
        return tuple(t.format(**words) for t in _TEMPLATES[self.family])

    @property
    def train_instructions(self) -> tuple[str, ...]:
        return self.instructions[:-1]

    @property
    def held_out_instruction(self) -> str:
        return self.instructions[-1]

    def instruction(self, mode: str, rng: np.random.Generator | None = None) -> str:
        """`canonical`: the first phrasing; `train`: a random training phrasing; `held_out`: the held-out one."""
        if mode == "canonical":
            return self.instructions[0]
        if mode == "train":
            rng = rng or np.random.default_rng()
            return self.train_instructions[rng.integers(len(self.train_instructions))]
        if mode == "held_out":
            return self.held_out_instruction
        raise ValueError(f"instruction mode '{mode}' is not one of {INSTRUCTION_MODES}")


_ALL = (
    Task("put_red_cube_in_bin", "pick_place_bin", "red_cube", "bin", 150),
    Task("put_blue_cylinder_in_bin", "pick_place_bin", "blue_cylinder", "bin", 150),
    Task("put_purple_ball_in_bin", "pick_place_bin", "purple_ball", "bin", 150),
    Task("put_green_cube_on_plate", "pick_place_plate", "green_cube", "plate", 150),
    Task("put_yellow_bar_on_plate", "pick_place_plate", "yellow_bar", "plate", 150),
    Task("stack_red_cube_on_green_cube", "stack", "red_cube", "green_cube", 150),
    Task("stack_green_cube_on_red_cube", "stack", "green_cube", "red_cube", 150),
    Task("stack_blue_cylinder_on_green_cube", "stack", "blue_cylinder", "green_cube", 150),
    Task("push_red_cube_to_pad", "push", "red_cube", "pad", 120),
    Task("push_yellow_bar_to_pad", "push", "yellow_bar", "pad", 120),
)
TASKS: dict[str, Task] = {t.name: t for t in _ALL}


def get_task(name: str) -> Task:
    if name in TASKS:
        return TASKS[name]
    close = difflib.get_close_matches(name, TASKS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise KeyError(f"unknown task '{name}'.{hint} Known tasks: {', '.join(TASKS)}")


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[Task]:
    """`all`, a family name, one task, a comma-separated string or a list of task names."""
    if isinstance(spec, str):
        if spec == "all":
            return list(TASKS.values())
        if spec in FAMILIES:
            return [t for t in TASKS.values() if t.family == spec]
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    if not spec:
        raise KeyError(f"tasks: expected 'all', a family ({', '.join(FAMILIES)}) or task names, got nothing")
    return [get_task(name) for name in spec]


@dataclass(frozen=True)
class SceneView:
    """What success depends on: object positions (world, m), z-axis tilt, and the held object."""

    positions: dict[str, np.ndarray]
    up_z: dict[str, float]  # z component of each object's local z axis (1 = upright)
    grasped: str | None = None


_REST_TOL = 0.012  # m, how far off its resting height an object may be and still count as resting


def _resting_on_table(view: SceneView, name: str) -> bool:
    return abs(view.positions[name][2] - scene.OBJECTS_BY_NAME[name].half_height) < _REST_TOL


def is_success(task: Task, view: SceneView) -> bool:
    """The task's goal holds and, for tasks that carry the object, the robot has let go of it."""
    if view.grasped == task.obj and task.family != "push":
        return False
    pos = view.positions[task.obj]
    obj = scene.OBJECTS_BY_NAME[task.obj]
    if task.family == "pick_place_bin":
        inside = np.all(np.abs(pos[:2] - scene.BIN_CENTER) < scene.BIN_INNER_HALF)
        return bool(inside and pos[2] < scene.BIN_WALL_HEIGHT)
    if task.family == "pick_place_plate":
        on_plate_height = 2 * scene.PLATE_HALF_HEIGHT + obj.half_height
        near = np.linalg.norm(pos[:2] - scene.PLATE_CENTER) < scene.PLATE_RADIUS - 0.01
        return bool(near and abs(pos[2] - on_plate_height) < _REST_TOL)
    if task.family == "stack":
        base = view.positions[task.target]
        base_obj = scene.OBJECTS_BY_NAME[task.target]
        stacked_height = base[2] + base_obj.half_height + obj.half_height
        aligned = np.linalg.norm(pos[:2] - base[:2]) < 0.02
        return bool(aligned and abs(pos[2] - stacked_height) < _REST_TOL and _resting_on_table(view, task.target))
    if task.family == "push":
        inside = np.all(np.abs(pos[:2] - scene.PAD_CENTER) < scene.PAD_HALF)
        return bool(inside and _resting_on_table(view, task.obj))
    raise ValueError(f"task '{task.name}' has unknown family '{task.family}'")
