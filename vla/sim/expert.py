"""Scripted experts for every tabletop task, from privileged simulator state.

A small state machine per skill family picks a Cartesian goal for the pinch
point; the commanded target moves toward it under a speed and acceleration
ramp, inverse kinematics turns it into joint targets, and a final joint-space
limiter keeps every command inside the velocity and acceleration limits of
`conf/robot/<arm>.yaml` (with a safety factor). The expert is closed loop: if
the object slips out of the gripper it goes back and grasps again. Speeds,
heights and grasp offsets are randomized per episode so demos differ.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from vla.limits import RobotLimits, load_robot_limits
from vla.sim import scene
from vla.sim.kinematics import PinchIK, site_yaw, top_down_rotation
from vla.sim.tasks import SceneView, Task, get_task

OPEN, CLOSED = 1.0, 0.0
LIMIT_FACTOR = 0.5  # the expert uses at most half of each joint's velocity and acceleration limit


@dataclass
class _Style:
    """Per-episode randomization."""

    speed: float  # m/s cruise speed of the pinch target
    accel: float  # m/s^2
    hover: float  # m above the object before descending
    carry: float  # m transport height
    grasp_offset: float  # m along the object's free axis
    close_steps: int


class ScriptedExpert:
    """Implements the `ChunkPolicy` protocol with privileged state; `chunk_size` actions per call (all executed)."""

    privileged = True

    def __init__(self, robot: str | RobotLimits = "panda", control_hz: int = 10, chunk_size: int = 1):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.limits = robot if isinstance(robot, RobotLimits) else load_robot_limits(robot)
        self.dt = 1.0 / control_hz
        self.chunk_size = chunk_size
        self.ik = PinchIK(scene.build_model(self.limits, image_size=16), self.limits)
        self.model = self.ik.model
        self._object_qpos = {o: self.model.joint(o).qposadr[0] for o in scene.OBJECT_NAMES}
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.style = _Style(
            speed=self.rng.uniform(0.2, 0.28),
            accel=self.rng.uniform(0.6, 0.9),
            hover=self.rng.uniform(0.07, 0.1),
            carry=self.rng.uniform(0.14, 0.18),
            grasp_offset=self.rng.uniform(-0.004, 0.004),
            close_steps=int(self.rng.integers(4, 6)),
        )
        self.phase = "approach"
        self.phase_steps = 0
        self.task: Task | None = None
        self.target_pos: np.ndarray | None = None  # the ramped pinch target
        self.target_vel = np.zeros(3)
        self.yaw = 0.0
        self.last_q: np.ndarray | None = None
        self.last_dq = np.zeros(self.limits.num_joints)
        self.in_hand_offset = np.zeros(3)
        self.gripper = OPEN
        self._extrapolating = False

    # ---------------------------------------------------------------- scene
    def _view(self, qpos: np.ndarray) -> SceneView:
        positions, up_z = {}, {}
        for name, adr in self._object_qpos.items():
            positions[name] = qpos[adr : adr + 3].copy()
            up_z[name] = 1.0
        return SceneView(positions=positions, up_z=up_z)

    def _object_yaw(self, qpos: np.ndarray, name: str) -> float:
        w, x, y, z = qpos[self._object_qpos[name] + 3 : self._object_qpos[name] + 7]
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def _grasp_yaw(self, qpos: np.ndarray, view: SceneView, name: str, current_yaw: float) -> float:
        """A jaw direction that fits the object's shape, clears the neighbours and turns the wrist least."""
        obj = scene.OBJECTS_BY_NAME[name]
        if obj.shape == "box":
            # Jaws close across a face: across the bar's short side, either face of a cube.
            step = np.pi if obj.size[0] != obj.size[1] else np.pi / 2
            base = self._object_yaw(qpos, name) + (np.pi / 2 if obj.size[0] > obj.size[1] else 0.0)
            candidates = [base + np.pi / 2 + k * step for k in range(int(round(2 * np.pi / step)))]
        else:
            candidates = list(np.linspace(-np.pi, np.pi, 24, endpoint=False))
        here = view.positions[name][:2]
        neighbours = [p[:2] - here for n, p in view.positions.items() if n != name]

        def cost(yaw: float) -> float:
            jaw = np.array([np.sin(yaw), -np.cos(yaw)])
            # Clearance of the open fingers: neighbours close to the jaw axis are in the way.
            blocked = sum(max(0.0, 0.12 - np.linalg.norm(d)) * abs(np.dot(d, jaw)) / (np.linalg.norm(d) + 1e-9)
                          for d in neighbours)
            turn = abs(np.angle(np.exp(1j * (yaw - current_yaw))))
            return 10.0 * blocked + 0.05 * turn

        best = min(candidates, key=cost)
        return current_yaw + float(np.angle(np.exp(1j * (best - current_yaw))))

    # ---------------------------------------------------------------- control
    def predict_chunk(self, obs: dict) -> tuple[np.ndarray, int]:
        qpos = np.asarray(obs["privileged"], dtype=np.float64)
        if self.task is None or self.task.name != obs["task_name"]:
            self.task = get_task(obs["task_name"])
        self.ik.set_qpos(qpos)
        pinch, pinch_mat = self.ik.site_pose()
        if self.target_pos is None:
            self.target_pos, self.yaw = pinch.copy(), site_yaw(pinch_mat)
            self.last_q = qpos[self.ik.qpos_idx].copy()
        view = self._view(qpos)
        actions = [self._plan_step(qpos, view, pinch)]
        # Receding horizon: the rest of the chunk is extrapolated (the arm is assumed to track the plan, and the
        # checks that react to the object pause), then the plan rewinds so each call advances it by one step.
        committed = copy.deepcopy({k: v for k, v in vars(self).items() if k not in ("ik", "model", "limits")})
        self._extrapolating = True
        for _ in range(self.chunk_size - 1):
            actions.append(self._plan_step(qpos, view, self.target_pos.copy()))
        vars(self).update(committed)
        return np.array(actions, dtype=np.float32), self.chunk_size

    def _plan_step(self, qpos: np.ndarray, view: SceneView, pinch: np.ndarray) -> np.ndarray:
        goal, speed = self._goal(qpos, view, pinch)
        self._ramp_toward(goal, speed)
        q = self._limit(self.ik.solve(self.target_pos, top_down_rotation(self.yaw)))
        return np.append(q, self.gripper)

    def _ramp_toward(self, goal: np.ndarray, speed: float) -> None:
        """Move the target toward `goal`: bounded speed, bounded acceleration, slowing down to stop on it."""
        offset = goal - self.target_pos
        distance = np.linalg.norm(offset)
        stop_speed = np.sqrt(2 * self.style.accel * distance)
        desired = offset / (distance + 1e-9) * min(speed, stop_speed, distance / self.dt)
        dv = desired - self.target_vel
        max_dv = self.style.accel * self.dt
        if np.linalg.norm(dv) > max_dv:
            dv *= max_dv / np.linalg.norm(dv)
        self.target_vel = self.target_vel + dv
        self.target_pos = self.target_pos + self.target_vel * self.dt

    def _limit(self, q: np.ndarray) -> np.ndarray:
        """Keep the command's joint velocity and acceleration under LIMIT_FACTOR of the arm's limits."""
        v_max = LIMIT_FACTOR * self.limits.velocity
        a_max = LIMIT_FACTOR * self.limits.acceleration
        dq = (q - self.last_q) / self.dt
        dq = np.clip(dq, self.last_dq - a_max * self.dt, self.last_dq + a_max * self.dt)
        dq = np.clip(dq, -v_max, v_max)
        q = np.clip(self.last_q + dq * self.dt, self.limits.position_lower, self.limits.position_upper)
        self.last_dq = (q - self.last_q) / self.dt
        self.last_q = q
        return q

    def _go(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    def _goal(self, qpos: np.ndarray, view: SceneView, pinch: np.ndarray) -> tuple[np.ndarray, float]:
        self.phase_steps += 1
        if self.task.family == "push":
            return self._push_goal(view, pinch)
        return self._pick_place_goal(qpos, view, pinch)

    def _reached(self, pinch: np.ndarray, goal: np.ndarray, tol: float) -> bool:
        return np.linalg.norm(self.target_pos - goal) < 1e-3 and np.linalg.norm(pinch - goal) < tol

    def _pick_place_goal(self, qpos: np.ndarray, view: SceneView, pinch: np.ndarray) -> tuple[np.ndarray, float]:
        style, task = self.style, self.task
        obj = scene.OBJECTS_BY_NAME[task.obj]
        obj_pos = view.positions[task.obj]
        # Close on the pads' centre line: a ball squeezed below its equator pops up between the fingers.
        grasp_z = obj_pos[2] + 0.005 if obj.shape == "sphere" else max(obj_pos[2] - 0.2 * obj.half_height, 0.012)
        above_obj = np.array([obj_pos[0], obj_pos[1], obj_pos[2] + obj.half_height + style.hover])

        if self.phase == "approach":
            self.gripper = OPEN
            if self.phase_steps == 1:
                self.yaw = self._grasp_yaw(qpos, view, task.obj, self.yaw)
            jaw_normal = np.array([np.cos(self.yaw), np.sin(self.yaw), 0.0])  # along the fingers' width
            goal = above_obj + style.grasp_offset * jaw_normal
            if self._reached(pinch, goal, 0.01):
                self._go("descend")
            return goal, style.speed
        if self.phase == "descend":
            goal = np.array([*self.target_pos[:2], grasp_z])
            if np.linalg.norm(obj_pos[:2] - pinch[:2]) > 0.03 and not self._extrapolating:  # it moved: aim again
                self._go("approach")
            elif self._reached(pinch, goal, 0.006):
                self._go("close")
            return goal, 0.6 * style.speed
        if self.phase == "close":
            self.gripper = CLOSED
            if self.phase_steps >= style.close_steps:
                self.in_hand_offset = obj_pos - pinch
                self._go("lift")
            return self.target_pos.copy(), style.speed
        slipped = np.linalg.norm(obj_pos - pinch - self.in_hand_offset) > 0.03 and not self._extrapolating
        if self.phase in ("lift", "transport", "lower") and slipped:
            self._go("retry")
        if self.phase == "lift":
            goal = np.array([*self.target_pos[:2], style.carry])
            if self._reached(pinch, goal, 0.015):
                self._go("transport")
            return goal, style.speed
        place_xy, place_z = self._place_target(view, obj)
        if self.phase == "transport":
            goal = np.array([*(place_xy - self.in_hand_offset[:2]), style.carry])
            if self._reached(pinch, goal, 0.01):
                self._go("lower")
            return goal, style.speed
        if self.phase == "lower":
            goal = np.array([*(place_xy - self.in_hand_offset[:2]), place_z - self.in_hand_offset[2]])
            if self._reached(pinch, goal, 0.006):
                self._go("release")
            return goal, 0.5 * style.speed
        if self.phase == "release":
            self.gripper = OPEN
            if self.phase_steps >= 3:
                self._go("retreat")
            return self.target_pos.copy(), style.speed
        if self.phase == "retry":
            self.gripper = OPEN
            goal = np.array([*self.target_pos[:2], style.carry])
            if self._reached(pinch, goal, 0.02):
                self._go("approach")
            return goal, style.speed
        # retreat: straight up, then wait
        return np.array([*self.target_pos[:2], style.carry]), style.speed

    def _place_target(self, view: SceneView, obj: scene.ObjectSpec) -> tuple[np.ndarray, float]:
        """Where the object's centre should be released (xy, z)."""
        task = self.task
        if task.family == "pick_place_bin":
            return scene.BIN_CENTER, scene.BIN_WALL_HEIGHT + obj.half_height + 0.03
        if task.family == "pick_place_plate":
            return scene.PLATE_CENTER, 2 * scene.PLATE_HALF_HEIGHT + obj.half_height + 0.008
        base = view.positions[task.target]
        base_top = base[2] + scene.OBJECTS_BY_NAME[task.target].half_height
        return base[:2], base_top + obj.half_height + 0.008

    def _push_goal(self, view: SceneView, pinch: np.ndarray) -> tuple[np.ndarray, float]:
        style = self.style
        obj = scene.OBJECTS_BY_NAME[self.task.obj]
        obj_xy = view.positions[self.task.obj][:2]
        to_pad = scene.PAD_CENTER - obj_xy
        direction = to_pad / (np.linalg.norm(to_pad) + 1e-9)
        behind = obj_xy - direction * (obj.radius + 0.035)
        push_z = 0.02
        self.gripper = CLOSED
        if self.phase == "approach":
            if self.phase_steps == 1:
                # Fingers side by side across the push direction make a wide, steady pusher.
                yaw = np.arctan2(direction[1], direction[0])
                self.yaw = self.yaw + float(np.angle(np.exp(1j * (yaw - self.yaw))))
            goal = np.array([*behind, push_z + 0.08])
            if self._reached(pinch, goal, 0.01):
                self._go("descend")
            return goal, style.speed
        if self.phase == "descend":
            goal = np.array([*behind, push_z])
            if self._reached(pinch, goal, 0.008):
                self._go("push")
            return goal, 0.6 * style.speed
        if self.phase == "push":
            # Steer the pusher so the object's centre goes to the pad's centre.
            goal = np.array([*(scene.PAD_CENTER - direction * (obj.grasp_width / 2 + 0.012)), push_z])
            lateral = np.cross(np.append(direction, 0), np.append(pinch[:2] - behind, 0))[2]
            if abs(lateral) > 0.03 and not self._extrapolating:
                self._go("approach")
            return goal, 0.5 * style.speed
        return self.target_pos.copy(), style.speed
