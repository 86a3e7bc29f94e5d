"""Environment: the tabletop suite as a gymnasium env.

Rates: physics steps at 500 Hz (dt = 2 ms); the policy acts at `control_hz`
(10 Hz by default, so one `step` runs 50 physics steps). Actions are absolute
joint-position targets for the 7 arm joints plus a gripper command (normalized
opening, 0 = closed, 1 = open), tracked by position actuators; like the real
arm's motion generator, each joint target moves at most its velocity limit times
the control period per step (`info["action_clipped"]` says when that bound or the
joint range changed an action). Observations use
LeRobot's names: `observation.images.<camera>` (uint8 HxWx3),
`observation.state` (float32: 7 joint positions + gripper opening) and `task`.

An episode ends (`terminated`) as soon as the task's success predicate holds;
it is truncated at the task's `max_steps`. `info` carries `success`,
`grasp_lost` (times the target object was dropped while the gripper was closed)
and `privileged` (the full `qpos`, for scripted experts only).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np

from vla.limits import RobotLimits, load_robot_limits
from vla.protocol import checked_action
from vla.sim import scene
from vla.sim.init_states import free_spot, sample_init_state
from vla.sim.tasks import INSTRUCTION_MODES, SceneView, Task, get_task, is_success

GRIPPER_CLOSED_BELOW = 0.5  # a gripper command under this means "close"
DROP_DISTANCE = 0.02  # m from the pinch point beyond which an object out of the fingers counts as dropped
STATE_DIM = 8
ACTION_DIM = 8
ENV_STATE_NAMES = tuple(f"{o}.{axis}" for o in scene.OBJECT_NAMES for axis in "xyz")


@dataclass(frozen=True)
class Perturbation:
    """Optional robustness test: at `step`, `move` teleports the target object to a new free spot;
    `drop` forces the gripper open for a few steps once the object is held (at or after `step`)."""

    kind: str = "none"  # none | move | drop
    step: int = 30

    def __post_init__(self):
        if self.kind not in ("none", "move", "drop"):
            raise ValueError(f"perturbation.kind must be one of none, move, drop; got '{self.kind}'")
        if self.step < 0:
            raise ValueError(f"perturbation.step must be >= 0, got {self.step}")


class TabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str = "put_red_cube_in_bin",
        robot: str = "panda",
        image_size: int = 128,
        cameras: tuple[str, ...] = ("front", "wrist"),
        control_hz: int = 10,
        instruction_mode: str = "canonical",
        render_images: bool = True,
        perturbation: Perturbation | dict | None = None,
        render_mode: str | None = "rgb_array",
    ):
        if instruction_mode not in INSTRUCTION_MODES:
            raise ValueError(f"instruction_mode must be one of {INSTRUCTION_MODES}, got '{instruction_mode}'")
        if not 1 <= control_hz <= 100:
            raise ValueError(f"control_hz must be within 1..100, got {control_hz}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.task: Task = get_task(task)
        self.limits: RobotLimits = load_robot_limits(robot)
        self.image_size = image_size
        self.cameras = tuple(cameras)
        self.instruction_mode = instruction_mode
        self.render_images = render_images
        self.render_mode = render_mode
        self.perturbation = Perturbation(**perturbation) if isinstance(perturbation, dict) else perturbation

        self.model = scene.build_model(self.limits, image_size)
        self.data = mujoco.MjData(self.model)
        for camera in self.cameras:
            if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
                raise ValueError(f"camera '{camera}' is not in the scene (known: front, wrist)")
        self.n_substeps = round(1.0 / (control_hz * self.model.opt.timestep))
        self.control_dt = self.n_substeps * self.model.opt.timestep
        self.metadata = {**self.metadata, "render_fps": control_hz}
        self._index_model()
        self._renderer: mujoco.Renderer | None = None
        # Options for the next reset, set per slot by a vector env through `set_attr`.
        self.queued_reset_options: dict | None = None

        n = self.limits.num_joints
        low = np.append(self.limits.position_lower, self.limits.gripper_lower).astype(np.float32)
        high = np.append(self.limits.position_upper, self.limits.gripper_upper).astype(np.float32)
        self.action_space = gym.spaces.Box(low, high, shape=(n + 1,), dtype=np.float32)
        spaces = {
            f"observation.images.{c}": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
            for c in self.cameras
        }
        # Joint ranges are hard limits in the model; the margin covers contact penetration.
        spaces["observation.state"] = gym.spaces.Box(low - 0.05, high + 0.05, (n + 1,), np.float32)
        charset = frozenset(gym.spaces.text.alphanumeric) | frozenset(" ,.'-")
        spaces["task"] = gym.spaces.Text(max_length=256, charset=charset)
        self.observation_space = gym.spaces.Dict(spaces)

    def _index_model(self) -> None:
        m = self.model
        self._arm_qpos = np.array([m.joint(j).qposadr[0] for j in self.limits.joint_names])
        self._driver_qpos = m.joint("right_driver_joint").qposadr[0]
        self._pinch_site = m.site("pinch").id
        self._object_qpos = {o: m.joint(o).qposadr[0] for o in scene.OBJECT_NAMES}
        self._object_geom = {m.geom(o).id: o for o in scene.OBJECT_NAMES}
        finger_bodies = {"left": ("left_pad", "left_silicone_pad", "left_follower"),
                         "right": ("right_pad", "right_silicone_pad", "right_follower")}
        self._finger_geoms = {
            side: {g for g in range(m.ngeom) if m.body(m.geom_bodyid[g]).name in bodies}
            for side, bodies in finger_bodies.items()
        }

    # ------------------------------------------------------------------ state
    def object_pose(self, name: str) -> np.ndarray:
        """(x, y, z, qw, qx, qy, qz) of a free object."""
        adr = self._object_qpos[name]
        return self.data.qpos[adr : adr + 7].copy()

    def object_positions(self) -> np.ndarray:
        """(x, y, z) of every object in `ENV_STATE_NAMES` order: recorded demos keep it as the privileged
        `observation.environment_state`, a training target (policies never get it as input; with object_token they
        estimate it from their cameras)."""
        return np.concatenate([self.object_pose(o)[:3] for o in scene.OBJECT_NAMES]).astype(np.float32)

    def grasped_object(self) -> str | None:
        """The object touched by both fingers' pads, if any."""
        touching = {"left": set(), "right": set()}
        for contact in self.data.contact[: self.data.ncon]:
            for geom, other in ((contact.geom1, contact.geom2), (contact.geom2, contact.geom1)):
                if other in self._object_geom:
                    for side, geoms in self._finger_geoms.items():
                        if geom in geoms:
                            touching[side].add(self._object_geom[other])
        both = touching["left"] & touching["right"]
        return next(iter(sorted(both)), None)

    def _update_held(self, meant_to_hold: bool) -> None:
        """Track the target object in hand; it is lost when it leaves the fingers while the policy holds on.

        Pad contacts flicker on round objects, so leaving the fingers also means moving off the pinch point.
        """
        if not self._held:
            self._held = self._holding_target()
            return
        away = np.linalg.norm(self.object_pose(self.task.obj)[:3] - self.data.site_xpos[self._pinch_site])
        if not meant_to_hold:
            self._held = False  # released on purpose
        elif away > DROP_DISTANCE and self.grasped_object() != self.task.obj:
            self._held = False
            self.grasp_lost += 1

    def _holding_target(self) -> bool:
        """Grasped and lifted: pushing with closed fingers touches an object with both pads too."""
        lifted = self.object_pose(self.task.obj)[2] > scene.OBJECTS_BY_NAME[self.task.obj].half_height + 0.01
        return lifted and self.grasped_object() == self.task.obj

    def scene_view(self) -> SceneView:
        positions, up_z = {}, {}
        for name in scene.OBJECT_NAMES:
            pose = self.object_pose(name)
            positions[name] = pose[:3]
            mat = np.zeros(9)
            mujoco.mju_quat2Mat(mat, pose[3:])
            up_z[name] = float(mat[8])
        return SceneView(positions=positions, up_z=up_z, grasped=self.grasped_object())

    def gripper_opening(self) -> float:
        closed_fraction = self.data.qpos[self._driver_qpos] / scene.GRIPPER_DRIVER_RANGE
        return float(np.clip(1.0 - closed_fraction, 0.0, 1.0))

    def robot_state(self) -> np.ndarray:
        return np.append(self.data.qpos[self._arm_qpos], self.gripper_opening()).astype(np.float32)

    # ------------------------------------------------------------------ init states
    def init_state_vector(self) -> np.ndarray:
        """Arm joints followed by each object's (x, y, z, qw, qx, qy, qz): what an init-state file stores."""
        return np.concatenate([self.data.qpos[self._arm_qpos]] + [self.object_pose(o) for o in scene.OBJECT_NAMES])

    def _apply_init_state(self, state: np.ndarray) -> None:
        expected = self.limits.num_joints + 7 * len(scene.OBJECT_NAMES)
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (expected,):
            raise ValueError(f"init_state must have shape ({expected},), got {state.shape}")
        mujoco.mj_resetData(self.model, self.data)
        n = self.limits.num_joints
        self.data.qpos[self._arm_qpos] = state[:n]
        for i, name in enumerate(scene.OBJECT_NAMES):
            adr = self._object_qpos[name]
            self.data.qpos[adr : adr + 7] = state[n + 7 * i : n + 7 * (i + 1)]
        self.data.ctrl[: n] = state[:n]
        self.data.ctrl[n] = 0.0  # gripper open
        mujoco.mj_forward(self.model, self.data)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Options: `task` (switch task), `init_state` (a stored initial state); else one is sampled from `seed`."""
        super().reset(seed=seed)
        # A vector env's masked reset passes `{}`; its per-slot options come through `queued_reset_options`.
        if not options and self.queued_reset_options is not None:
            options, self.queued_reset_options = self.queued_reset_options, None
        options = options or {}
        if "task" in options:
            self.task = get_task(options["task"])
        if options.get("init_state") is not None:
            state = options["init_state"]
        else:
            state = sample_init_state(self.task, self.limits, self.np_random)
        self._apply_init_state(state)
        # Let objects settle under gravity with the arm holding still.
        for _ in range(self.n_substeps):
            mujoco.mj_step(self.model, self.data)
        self.instruction = self.task.instruction(self.instruction_mode, self.np_random)
        self.steps = 0
        self.grasp_lost = 0
        self.success = False
        self._held = self._holding_target()
        self._gripper_override = 0
        self._dropped = False
        return self._observation(), self._info()

    def step(self, action):
        action = checked_action(action, ACTION_DIM)
        target = np.clip(action, self.action_space.low, self.action_space.high)
        n = self.limits.num_joints
        # Like the arm's own motion generator, the servo target moves at most velocity x period per step: an
        # arbitrary jump would demand unbounded torque from the (unclamped) servos and destabilize the sim.
        reach = self.limits.velocity * self.control_dt
        target[:n] = np.clip(target[:n], self.data.ctrl[:n] - reach, self.data.ctrl[:n] + reach)
        self.data.ctrl[:n] = target[:n]
        gripper = target[n] if self._gripper_override == 0 else 1.0
        self.data.ctrl[n] = scene.GRIPPER_CTRL_CLOSED * (1.0 - gripper)
        self._gripper_override = max(0, self._gripper_override - 1)
        for _ in range(self.n_substeps):
            mujoco.mj_step(self.model, self.data)
        self.steps += 1

        self._update_held(meant_to_hold=target[n] < GRIPPER_CLOSED_BELOW)
        self._maybe_perturb(self._held)

        self.success = is_success(self.task, self.scene_view())
        truncated = self.steps >= self.task.max_steps and not self.success
        info = self._info()
        info["action_clipped"] = bool(np.any(target != action))
        return self._observation(), 0.0 if not self.success else 1.0, self.success, truncated, info

    def _maybe_perturb(self, held: bool) -> None:
        p = self.perturbation
        if p is None or p.kind == "none" or self.steps < p.step:
            return
        if p.kind == "move" and self.steps == p.step:
            xy = free_spot(self.scene_view(), self.task.obj, self.np_random)
            adr = self._object_qpos[self.task.obj]
            self.data.qpos[adr : adr + 3] = [*xy, scene.OBJECTS_BY_NAME[self.task.obj].half_height + 0.002]
            self.data.qvel[self.model.joint(self.task.obj).dofadr[0] :][:6] = 0.0
            mujoco.mj_forward(self.model, self.data)
        elif p.kind == "drop" and held and not self._dropped:
            self._gripper_override = 5
            self._dropped = True

    def camera_images(self) -> dict[str, np.ndarray]:
        """Render every camera now, whatever `render_images` says (for processes that render at their own rate)."""
        return {camera: self._render_camera(camera, force=True) for camera in self.cameras}

    def _observation(self) -> dict:
        obs = {f"observation.images.{c}": self._render_camera(c) for c in self.cameras}
        obs["observation.state"] = self.robot_state()
        obs["task"] = self.instruction
        return obs

    def _info(self) -> dict:
        return {
            "success": self.success,
            "steps": self.steps,
            "grasp_lost": self.grasp_lost,
            "privileged": self.data.qpos.copy(),
            "task_name": self.task.name,
        }

    # ------------------------------------------------------------------ rendering
    def _render_camera(self, camera: str, size: int | None = None, force: bool = False) -> np.ndarray:
        size = size or self.image_size
        if not (self.render_images or force):
            return np.zeros((size, size, 3), np.uint8)
        if self._renderer is None or self._renderer.height != size:
            self.close_renderer()
            self._renderer = mujoco.Renderer(self.model, size, size)
            # Shadows and reflections cost most of the frame time on CPU and add little here.
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render().copy()

    def render(self) -> np.ndarray:
        """All cameras side by side, for videos."""
        return np.concatenate([self._render_camera(c) for c in self.cameras], axis=1)

    def close_renderer(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def close(self) -> None:
        self.close_renderer()
