"""The bridge's control tick, independent of the transport (DDS here, rclpy on a robot).

Every command takes one path: chunk scheduler (policy actions at the command
rate) -> watchdog (faults become a braking hold) -> safety filter (the last
word). Transports feed messages in through `on_*` and publish what `tick`
returns when `publish` is set; nothing else reaches the command topic.

`LimitAudit` re-checks every command actually sent against the limits file,
with code independent of the filter, for reports and tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vla.limits import RobotLimits, load_robot_limits
from vla.protocol import ChunkPolicy
from vla.robot_bridge.safety import FilterResult, SafetyFilter, Stamped, mujoco_fk
from vla.robot_bridge.scheduler import ChunkScheduler, SchedulerConfig
from vla.robot_bridge.watchdog import Watchdog, WatchdogConfig

STATE_TOLERANCE = 0.05  # rad (and gripper opening) beyond the hard limits that sensor noise may still report


@dataclass
class LimitAudit:
    """Counts sent commands that break the hard limits: non-finite values, position, gripper range, velocity."""

    limits: RobotLimits
    tolerance: float = 1e-9
    commands: int = 0
    violations: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: {"nonfinite": 0, "position": 0, "gripper": 0,
                                                           "velocity": 0})
    _last: np.ndarray | None = None
    _last_t: float = -math.inf

    def check(self, command: np.ndarray, now: float) -> None:
        self.commands += 1
        n = self.limits.num_joints
        broken = []
        if not np.all(np.isfinite(command)):
            broken.append("nonfinite")
        else:
            q = command[:n]
            if np.any(q < self.limits.position_lower - self.tolerance) or np.any(
                    q > self.limits.position_upper + self.tolerance):
                broken.append("position")
            gripper_low, gripper_high = self.limits.gripper_lower, self.limits.gripper_upper
            if not gripper_low - self.tolerance <= command[n] <= gripper_high + self.tolerance:
                broken.append("gripper")
            if self._last is not None and now > self._last_t:
                speed = np.abs(q - self._last[:n]) / (now - self._last_t)
                if np.any(speed > self.limits.velocity * (1 + 1e-6)):
                    broken.append("velocity")
        for kind in broken:
            self.kinds[kind] += 1
        self.violations += bool(broken)
        self._last, self._last_t = np.array(command, dtype=np.float64), now


class BridgeCore:
    """Holds the newest observation, and turns each control tick into at most one filtered command."""

    def __init__(self, policy: ChunkPolicy, limits: RobotLimits, safety: SafetyFilter, scheduler: SchedulerConfig,
                 watchdog: WatchdogConfig, now: float, inline_latency_s: float | None = None):
        """`inline_latency_s`: run inference inline with this simulated latency (deterministic tests), not in a
        worker thread."""
        self.limits = limits
        self.safety = safety
        self.names = safety.names
        self.policy = policy
        self.privileged = bool(getattr(policy, "privileged", False))
        self.scheduler_config = scheduler
        self.watchdog = Watchdog(watchdog, limits, now)
        self.audit = LimitAudit(limits)
        self.cameras = tuple(watchdog.cameras)
        self._state: np.ndarray | None = None
        self._state_stamp = -math.inf
        self._images: dict[str, np.ndarray] = {}
        self._instruction: str | None = None
        self._sim_state: tuple[np.ndarray, str] | None = None
        self._scheduler: ChunkScheduler | None = None
        self.implausible_states = 0
        self._inline_latency_s = inline_latency_s

    @classmethod
    def from_config(cls, policy: ChunkPolicy, robot: str, command_hz: float, policy_hz: float, blend: str,
                    now: float, joint_state_timeout: float = 0.05, camera_timeout: float = 0.2) -> BridgeCore:
        """The core for an arm of `conf/robot/`, with the workspace box checked through the arm's MuJoCo model."""
        limits = load_robot_limits(robot)
        safety = SafetyFilter.from_config(robot, fk=mujoco_fk(limits))
        return cls(policy, limits, safety, SchedulerConfig(policy_hz=policy_hz, command_hz=command_hz, blend=blend),
                   WatchdogConfig(command_hz=command_hz, joint_state_timeout_s=joint_state_timeout,
                                  camera_timeout_s=camera_timeout), now)

    # ------------------------------------------------------------------ inputs
    def on_joint_state(self, positions: np.ndarray, stamp: float, now: float) -> None:
        """A measured state outside what the arm can physically report (non-finite, or beyond the hard limits by
        more than STATE_TOLERANCE) is dropped as if it never arrived: a glitching encoder must not pull the command,
        and if only glitches arrive the stream goes stale and the watchdog brakes to a hold."""
        positions = np.asarray(positions, dtype=np.float64)
        if not self._plausible(positions):
            self.implausible_states += 1
            return
        self._state, self._state_stamp = positions, stamp
        self.watchdog.joint_state(now)
        self.watchdog.heartbeat(now)  # the arm's driver is alive

    def _plausible(self, positions: np.ndarray) -> bool:
        n, lim = self.limits.num_joints, self.limits
        if positions.shape != (n + 1,) or not np.all(np.isfinite(positions)):
            return False
        joints_ok = np.all(positions[:n] >= lim.position_lower - STATE_TOLERANCE) and np.all(
            positions[:n] <= lim.position_upper + STATE_TOLERANCE)
        return bool(joints_ok and lim.gripper_lower - STATE_TOLERANCE <= positions[n] <= lim.gripper_upper
                    + STATE_TOLERANCE)

    def on_image(self, camera: str, image: np.ndarray, stamp: float) -> None:
        self._images[camera] = image
        self.watchdog.camera_frame(camera, stamp)

    def on_instruction(self, text: str) -> None:
        self._instruction = text

    def on_estop(self, pressed: bool, now: float) -> None:
        self.watchdog.estop(pressed, now)
        if pressed:
            self.safety.estop()

    def on_sim_state(self, qpos: np.ndarray, task_name: str) -> None:
        """Simulation only: the full simulator state that privileged scripted experts plan from."""
        self._sim_state = (qpos, task_name)

    # ------------------------------------------------------------------ control
    @property
    def ready(self) -> bool:
        """A joint state, a frame from every camera, an instruction (and, for experts, the sim state) arrived."""
        have_sim = self._sim_state is not None or not self.privileged
        return (self._state is not None and self._instruction is not None and have_sim
                and all(c in self._images for c in self.cameras))

    def _observation(self) -> dict:
        obs = {f"observation.images.{c}": self._images[c] for c in self.cameras}
        obs["observation.state"] = self._state.astype(np.float32)
        obs["task"] = self._instruction
        if self.privileged:
            obs["privileged"], obs["task_name"] = self._sim_state
        return obs

    def tick(self, now: float) -> FilterResult | None:
        """The command to publish at `now` (when `publish` is set), or None before the first observation."""
        if not self.ready:
            return None
        if self._scheduler is None:
            self.policy.reset()
            self._scheduler = ChunkScheduler(self.policy, self._observation, self.scheduler_config,
                                             inline_latency_s=self._inline_latency_s)
            self._scheduler.reset(hold=self._state)
        target = self._scheduler.next_command(now, self._state)
        for fault in self._scheduler.pop_faults():
            self.watchdog.report(fault)
        command = self.watchdog.step(now, target)
        result = self.safety.filter(Stamped(command, self.names, now),
                                    Stamped(self._state, self.names, self._state_stamp), now)
        if result.publish and result.command is not None:
            self.audit.check(result.command, now)
        return result

    def reset(self, now: float) -> None:
        """Clear a latched fault and e-stop (refused while a cause persists); the reset moves nothing."""
        self.watchdog.reset(now)
        self.safety.reset_estop(now)
        if self._scheduler is not None:
            self._scheduler.reset(hold=self.watchdog.position)

    def diagnostics(self) -> dict:
        fault = self.watchdog.fault
        stats = self._scheduler.stats if self._scheduler is not None else None
        return {
            **self.safety.diagnostics(),
            "fault": fault.kind.value if fault else "none",
            "fault_message": fault.message if fault else "",
            "limit_violations": self.audit.violations,
            "implausible_states": self.implausible_states,
            "chunks_received": stats.chunks_received if stats else 0,
            "starved_steps": stats.starved_steps if stats else 0,
        }

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()


