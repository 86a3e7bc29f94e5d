"""Robot limits from `conf/robot/<arm>.yaml`, the one place they live.

Plain numpy + yaml so that the sim, the scripted experts and the robot bridge's
safety filter can all read the same file without pulling in torch or mujoco.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

_PER_JOINT_KEYS = ("position_lower", "position_upper", "velocity", "acceleration", "jerk", "effort", "home")
_SCALAR_KEYS = ("gripper_lower", "gripper_upper")


class LimitsError(ValueError):
    """A limits file is missing, malformed or inconsistent; the message names the file and key."""


@dataclass(frozen=True)
class RobotLimits:
    """Per-joint limits of one arm (arrays have one entry per joint, in `joint_names` order)."""

    name: str
    joint_names: tuple[str, ...]
    position_lower: np.ndarray  # rad
    position_upper: np.ndarray  # rad
    velocity: np.ndarray  # rad/s
    acceleration: np.ndarray  # rad/s^2
    jerk: np.ndarray  # rad/s^3
    effort: np.ndarray  # Nm
    home: np.ndarray  # rad
    gripper_lower: float  # normalized opening
    gripper_upper: float

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)


def robot_config_path(robot: str) -> Path:
    return CONF_DIR / "robot" / f"{robot}.yaml"


def load_robot_limits(robot_or_path: str | Path) -> RobotLimits:
    """Load and validate limits for an arm name (`panda`) or a YAML path."""
    path = Path(robot_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = robot_config_path(str(robot_or_path))
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "robot").glob("*.yaml"))
        raise LimitsError(f"robot limits file {path} not found (known robots: {known})")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise LimitsError(f"{path}: expected a mapping of limit keys, got {type(raw).__name__}")

    def require(key: str):
        if key not in raw:
            raise LimitsError(f"{path}: missing key '{key}'")
        return raw[key]

    joint_names = require("joint_names")
    if not isinstance(joint_names, list) or not joint_names or len(set(joint_names)) != len(joint_names):
        raise LimitsError(f"{path}: 'joint_names' must be a non-empty list of unique names")
    n = len(joint_names)

    arrays = {}
    for key in _PER_JOINT_KEYS:
        try:
            value = np.asarray(require(key), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise LimitsError(f"{path}: '{key}' must be a list of {n} numbers ({err})") from None
        if value.shape != (n,) or not np.all(np.isfinite(value)):
            raise LimitsError(f"{path}: '{key}' must be {n} finite numbers, got {raw[key]!r}")
        arrays[key] = value
    for key in ("velocity", "acceleration", "jerk", "effort"):
        if np.any(arrays[key] <= 0):
            raise LimitsError(f"{path}: '{key}' must be positive for every joint, got {raw[key]!r}")
    if np.any(arrays["position_lower"] >= arrays["position_upper"]):
        raise LimitsError(f"{path}: 'position_lower' must be below 'position_upper' for every joint")
    if np.any(arrays["home"] < arrays["position_lower"]) or np.any(arrays["home"] > arrays["position_upper"]):
        raise LimitsError(f"{path}: 'home' must lie inside the position limits")

    scalars = {}
    for key in _SCALAR_KEYS:
        value = require(key)
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise LimitsError(f"{path}: '{key}' must be a finite number, got {value!r}")
        scalars[key] = float(value)
    if scalars["gripper_lower"] >= scalars["gripper_upper"]:
        raise LimitsError(f"{path}: 'gripper_lower' must be below 'gripper_upper'")

    for array in arrays.values():
        array.setflags(write=False)
    return RobotLimits(name=str(raw.get("name", path.stem)), joint_names=tuple(joint_names), **arrays, **scalars)
