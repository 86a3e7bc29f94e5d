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


def _read_robot_config(robot_or_path: str | Path) -> tuple[Path, dict]:
    path = Path(robot_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = robot_config_path(str(robot_or_path))
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "robot").glob("*.yaml"))
        raise LimitsError(f"robot limits file {path} not found (known robots: {known})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LimitsError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise LimitsError(f"{path}: expected a mapping of limit keys, got {type(raw).__name__}")
    return path, raw


def load_robot_limits(robot_or_path: str | Path) -> RobotLimits:
    """Load and validate limits for an arm name (`panda`) or a YAML path."""
    path, raw = _read_robot_config(robot_or_path)

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


@dataclass(frozen=True)
class SafetyConfig:
    """The robot bridge's safety filter settings: the `safety:` section of `conf/robot/<arm>.yaml`.

    Validated on creation; every error names the `safety.<key>` at fault.
    """

    position_margin: float  # rad kept free inside the hard position limits: the soft limits
    max_deviation: float  # rad, farthest a command may lead or trail the measured position, per joint
    max_rate_hz: float  # publish-rate ceiling; also sets dt_min = 1 / max_rate_hz
    dt_max: float  # s, longest step the velocity bound grants however long the gap
    command_timeout: float  # s, older commands are stale
    state_timeout: float  # s, older joint states are stale
    latency_budget: float  # s, older chunks are dropped
    enforce_acceleration: bool
    enforce_jerk: bool
    gripper_name: str  # name of the 8th command entry (the gripper opening)
    workspace_lower: np.ndarray | None  # (3,) m, end-effector box in the base frame; None: no box
    workspace_upper: np.ndarray | None

    def __post_init__(self) -> None:
        def number(key: str, minimum: float, inclusive: bool) -> None:
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
            if not ok or value < minimum or (value == minimum and not inclusive):
                relation = ">=" if inclusive else ">"
                raise LimitsError(f"'safety.{key}' must be a finite number {relation} {minimum}, got {value!r}")
            object.__setattr__(self, key, float(value))

        number("position_margin", 0.0, inclusive=True)
        for key in ("max_deviation", "max_rate_hz", "command_timeout", "state_timeout", "latency_budget"):
            number(key, 0.0, inclusive=False)
        number("dt_max", self.dt_min, inclusive=True)
        for key in ("enforce_acceleration", "enforce_jerk"):
            if not isinstance(getattr(self, key), bool):
                raise LimitsError(f"'safety.{key}' must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.gripper_name, str) or not self.gripper_name:
            raise LimitsError(f"'safety.gripper_name' must be a non-empty string, got {self.gripper_name!r}")
        if (self.workspace_lower is None) != (self.workspace_upper is None):
            raise LimitsError("'safety.workspace_lower' and 'safety.workspace_upper' must both be set or both null")
        if self.workspace_lower is not None:
            for key in ("workspace_lower", "workspace_upper"):
                try:
                    value = np.array(getattr(self, key), dtype=np.float64)
                except (TypeError, ValueError):
                    value = None
                if value is None or value.shape != (3,) or not np.all(np.isfinite(value)):
                    raise LimitsError(f"'safety.{key}' must be 3 finite numbers (x, y, z in m), "
                                      f"got {getattr(self, key)!r}")
                value.setflags(write=False)
                object.__setattr__(self, key, value)
            if np.any(self.workspace_lower >= self.workspace_upper):
                raise LimitsError("'safety.workspace_lower' must be below 'safety.workspace_upper' on every axis")

    @property
    def dt_min(self) -> float:
        """Shortest step, s: commands closer together than this are not published."""
        return 1.0 / self.max_rate_hz

    def check_against(self, limits: RobotLimits) -> None:
        """Checks that need the arm's limits: the soft limits leave room, names do not clash."""
        width = limits.position_upper - limits.position_lower
        if np.any(2 * self.position_margin >= width):
            joint = limits.joint_names[int(np.argmin(width))]
            raise LimitsError(f"'safety.position_margin' ({self.position_margin} rad) leaves no room "
                              f"between the position limits of {joint}")
        if self.gripper_name in limits.joint_names:
            raise LimitsError(f"'safety.gripper_name' {self.gripper_name!r} is also a joint name")


_SAFETY_KEYS = tuple(SafetyConfig.__dataclass_fields__)


def load_safety_config(robot_or_path: str | Path, limits: RobotLimits | None = None) -> SafetyConfig:
    """Load and validate the `safety:` section for an arm name (`panda`) or a YAML path."""
    path, raw = _read_robot_config(robot_or_path)
    section = raw.get("safety")
    if section is None:
        raise LimitsError(f"{path}: missing key 'safety'")
    if not isinstance(section, dict):
        raise LimitsError(f"{path}: 'safety' must be a mapping of keys, got {type(section).__name__}")
    for key in section:
        if key not in _SAFETY_KEYS:
            raise LimitsError(f"{path}: unknown key 'safety.{key}' (known: {', '.join(_SAFETY_KEYS)})")
    for key in _SAFETY_KEYS:
        if key not in section:
            raise LimitsError(f"{path}: missing key 'safety.{key}'")
    try:
        config = SafetyConfig(**section)
        config.check_against(limits if limits is not None else load_robot_limits(path))
    except LimitsError as err:
        if str(err).startswith(str(path)):
            raise
        raise LimitsError(f"{path}: {err}") from None
    return config
