"""Watchdog: any sign that the loop is blind, late or told to stop brings the arm to a safe hold.

Time is injected (every call takes `now`, in seconds on the caller's monotonic clock), so the same code runs on
the robot and in deterministic tests. The control loop, once per command period:

    target = scheduler.next_command(now, measured_state)
    for fault in scheduler.pop_faults():     # policy errors and inference deadline overruns
        watchdog.report(fault)
    command = watchdog.step(now, target)      # the target, or the braking / hold command once faulted

and message callbacks feed `joint_state`, `camera_frame`, `heartbeat` and `estop` as messages arrive.

The watchdog detects stale joint states, stale camera frames (per camera), a missing heartbeat and a pressed e-stop
itself, at the first `step` after the condition becomes true; policy errors and inference deadline overruns are
detected by the scheduler in the same tick and arrive through `report`. Either way the command of that very tick is
already the first braking step: a fault reaches the hold within one control period of becoming detectable.

A fault is latched (kind, message, time): the watchdog keeps braking, then holds the rest position, until an
explicit `reset(now)`, which refuses while a cause persists (e-stop pressed, a stream still stale) or the arm is
still braking. Reset changes no command: the hold position stays; restart the scheduler from it
(`scheduler.reset(hold=watchdog.position)`) so the next chunk starts where the arm is.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from vla.limits import RobotLimits


class FaultKind(enum.StrEnum):
    JOINT_STATE_STALE = "joint_state_stale"
    CAMERA_STALE = "camera_stale"
    HEARTBEAT_MISSING = "heartbeat_missing"
    ESTOP = "estop"
    INFERENCE_DEADLINE = "inference_deadline"
    POLICY_ERROR = "policy_error"  # an exception, a malformed chunk or non-finite actions


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    message: str
    time: float  # s, when it was detected (for the e-stop: when the press arrived)


class ResetRefused(RuntimeError):
    """`Watchdog.reset` was called while a cause of the fault persists; the message lists them."""


@dataclass(frozen=True)
class WatchdogConfig:
    command_hz: float = 100.0  # control loop rate: the braking trajectory's time step is 1 / command_hz
    joint_state_timeout_s: float = 0.05
    camera_timeout_s: float = 0.2  # per camera, against the frame's capture stamp
    heartbeat_timeout_s: float = 0.5
    cameras: tuple[str, ...] = ("front", "wrist")  # cameras whose frames must stay fresh

    def __post_init__(self) -> None:
        for key in ("command_hz", "joint_state_timeout_s", "camera_timeout_s", "heartbeat_timeout_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"WatchdogConfig.{key} must be a positive finite number, got {value!r}")
        cameras = (self.cameras,) if isinstance(self.cameras, str) else tuple(self.cameras)
        if not all(isinstance(name, str) and name for name in cameras) or len(set(cameras)) != len(cameras):
            raise ValueError(f"WatchdogConfig.cameras must be unique non-empty camera names, got {self.cameras!r}")
        object.__setattr__(self, "cameras", cameras)  # hydra hands lists; keep the frozen config hashable


def brake_step(
    position: np.ndarray, velocity: np.ndarray, acceleration: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """One command period of the fastest stop the acceleration limits allow.

    position: (n + 1,) joint targets + gripper; velocity, acceleration: (n,) per joint.
    Per joint v' = sign(v) * max(|v| - a * dt, 0) and q' = q + v' * dt; the gripper holds.
    Returns the next (position (n + 1,), velocity (n,)).
    """
    speed = np.maximum(np.abs(velocity) - acceleration * dt, 0.0)
    speed[speed < 1e-9] = 0.0  # round-off would otherwise leave a ~1e-16 rad/s tail that costs one more period
    velocity = np.sign(velocity) * speed
    position = position.copy()
    position[: len(velocity)] += velocity * dt
    return position, velocity


def braking_trajectory(
    position: np.ndarray, velocity: np.ndarray, acceleration: np.ndarray, dt: float
) -> np.ndarray:
    """Commands (K, n + 1), one per period of `dt`, that bring the arm from (position, velocity) to rest.

    K = max over joints of ceil(|v| / (a * dt)): rest is reached within |v| / a, rounded up to a period; the
    last row is the hold position. K = 0 (an empty (0, n + 1) array) when already at rest.
    """
    commands = []
    while np.any(velocity != 0):
        position, velocity = brake_step(position, velocity, acceleration, dt)
        commands.append(position)
    return np.array(commands).reshape(len(commands), len(position))


class Watchdog:
    """Monitors the bridge's inputs with injected time and turns any fault into a latched safe hold."""

    def __init__(self, config: WatchdogConfig, limits: RobotLimits, now: float):
        """`now` starts every timeout: a stream that never delivers goes stale one timeout after construction."""
        self.config = config
        self.dt = 1.0 / config.command_hz
        self._acceleration = np.asarray(limits.acceleration, dtype=np.float64)
        self._num_joints = limits.num_joints
        self._last_joint_state = now
        self._last_heartbeat = now
        self._last_frame = dict.fromkeys(config.cameras, now)
        self._estop_pressed = False
        self._fault: Fault | None = None
        self._position: np.ndarray | None = None  # (n + 1,) the last command sent
        self._velocity = np.zeros(self._num_joints)  # (n,) rad/s of the commanded joint targets

    # ------------------------------------------------------------------ inputs
    def joint_state(self, now: float) -> None:
        """A joint state message arrived."""
        self._last_joint_state = now

    def camera_frame(self, camera: str, stamp: float) -> None:
        """A frame from `camera` arrived; `stamp` is its capture time (the receive time if the driver sets none)."""
        if camera not in self._last_frame:
            raise ValueError(f"unknown camera {camera!r}; WatchdogConfig.cameras is {self.config.cameras}")
        self._last_frame[camera] = max(self._last_frame[camera], stamp)

    def heartbeat(self, now: float) -> None:
        self._last_heartbeat = now

    def estop(self, pressed: bool, now: float) -> None:
        """The e-stop topic's latest value; a press latches at once, a release does not clear the fault."""
        self._estop_pressed = pressed
        if pressed:
            self._latch(Fault(FaultKind.ESTOP, "e-stop pressed", now))

    def report(self, fault: Fault) -> None:
        """A fault detected elsewhere (the scheduler's policy errors and deadline overruns)."""
        self._latch(fault)

    # ------------------------------------------------------------------ state
    @property
    def fault(self) -> Fault | None:
        """The latched fault, None while healthy."""
        return self._fault

    @property
    def position(self) -> np.ndarray | None:
        """(n + 1,) the last command sent (the hold position once at rest); None before the first step."""
        return None if self._position is None else self._position.copy()

    @property
    def at_rest(self) -> bool:
        """The commanded joint velocity is zero."""
        return not np.any(self._velocity)

    def causes(self, now: float) -> list[Fault]:
        """The fault conditions true at `now`, each as a Fault stamped `now` (empty when all inputs are healthy)."""
        causes = []
        if self._estop_pressed:
            causes.append(Fault(FaultKind.ESTOP, "e-stop pressed", now))
        age = now - self._last_joint_state
        if age > self.config.joint_state_timeout_s:
            causes.append(Fault(FaultKind.JOINT_STATE_STALE, f"no joint state for {age:.3f} s "
                                f"(joint_state_timeout_s={self.config.joint_state_timeout_s})", now))
        for camera, stamp in self._last_frame.items():
            age = now - stamp
            if age > self.config.camera_timeout_s:
                causes.append(Fault(FaultKind.CAMERA_STALE, f"camera {camera!r}: newest frame is {age:.3f} s old "
                                    f"(camera_timeout_s={self.config.camera_timeout_s})", now))
        age = now - self._last_heartbeat
        if age > self.config.heartbeat_timeout_s:
            causes.append(Fault(FaultKind.HEARTBEAT_MISSING, f"no heartbeat for {age:.3f} s "
                                f"(heartbeat_timeout_s={self.config.heartbeat_timeout_s})", now))
        return causes

    # ------------------------------------------------------------------ control
    def step(self, now: float, target: np.ndarray) -> np.ndarray:
        """The command (n + 1,) to send this period: `target` while healthy, else the next braking / hold command."""
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (self._num_joints + 1,):
            raise ValueError(f"target must have shape ({self._num_joints + 1},) (joints + gripper), got {target.shape}")
        if self._position is None:
            self._position = target.copy()  # nothing commanded yet: the first target is where we start (or hold)
        if self._fault is None:
            causes = self.causes(now)
            if causes:
                self._latch(causes[0])
            elif not np.all(np.isfinite(target)):
                self._latch(Fault(FaultKind.POLICY_ERROR, f"non-finite command target {target.tolist()}", now))
        if self._fault is not None:
            self._position, self._velocity = brake_step(self._position, self._velocity, self._acceleration, self.dt)
        else:
            self._velocity = (target[: self._num_joints] - self._position[: self._num_joints]) / self.dt
            self._position = target.copy()
        return self._position.copy()

    def reset(self, now: float) -> None:
        """Clear the latched fault; raises ResetRefused while a cause persists or the arm is still braking.

        Sends nothing and changes no command: the hold position stays the last command.
        """
        if self._fault is None:
            return
        reasons = [f"{cause.kind}: {cause.message}" for cause in self.causes(now)]
        if not self.at_rest:
            reasons.append("still braking")
        if reasons:
            raise ResetRefused(f"cannot clear fault {self._fault.kind} ({self._fault.message}): " + "; ".join(reasons))
        self._fault = None

    def _latch(self, fault: Fault) -> None:
        if self._fault is None:  # the first fault is the one to explain; later ones are its consequences
            self._fault = fault
