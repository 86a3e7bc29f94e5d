"""Watchdog: braking within the acceleration limits, every fault held within one control period, latch and reset."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vla.limits import load_robot_limits
from vla.robot_bridge.scheduler import ChunkScheduler, SchedulerConfig
from vla.robot_bridge.watchdog import (
    Fault,
    FaultKind,
    ResetRefused,
    Watchdog,
    WatchdogConfig,
    braking_trajectory,
)

LIMITS = load_robot_limits("panda")
A_MAX = LIMITS.acceleration
PERIOD = 0.01  # 100 Hz control loop
CONFIG = WatchdogConfig(command_hz=100.0, joint_state_timeout_s=0.05, camera_timeout_s=0.2, heartbeat_timeout_s=0.5,
                        cameras=("front", "wrist"))
START = np.append(LIMITS.home, 1.0)  # (8,) joints + open gripper
VELOCITY = np.array([0.3, -0.2, 0.25, 0.3, -0.4, 0.5, 0.6, 0.0])  # rad/s of the rig's policy (gripper still)
CAMERA_HZ, HEARTBEAT_HZ = 30, 10


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("key, value", [
    ("command_hz", 0.0), ("joint_state_timeout_s", -0.1), ("camera_timeout_s", math.inf),
    ("heartbeat_timeout_s", "1"), ("cameras", ("front", "front")), ("cameras", ("",)),
])
def test_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        WatchdogConfig(**{key: value})


def test_config_accepts_a_list_of_cameras():
    assert WatchdogConfig(cameras=["front"]).cameras == ("front",)


# ---------------------------------------------------------------------- braking
@settings(max_examples=200, deadline=None)
@given(
    velocity=arrays(np.float64, 7, elements=st.floats(-3.0, 3.0)),
    dt=st.sampled_from([0.001, 0.004, 0.01, 0.02]),
)
def test_braking_reaches_rest_within_v_over_a_without_exceeding_the_acceleration_limit(velocity, dt):
    trajectory = braking_trajectory(START, velocity, A_MAX, dt)
    positions = np.vstack([START, trajectory])
    speeds = np.vstack([velocity, np.diff(positions[:, :7], axis=0) / dt])  # commanded joint velocity per period
    accelerations = np.abs(np.diff(speeds, axis=0)) / dt
    assert np.all(accelerations <= A_MAX * (1 + 1e-9) + 1e-6)
    np.testing.assert_allclose(speeds[-1], 0.0, atol=1e-9)
    moving = np.flatnonzero(np.any(np.abs(speeds[1:]) > 1e-9, axis=1))
    moving_time = 0.0 if len(moving) == 0 else (moving[-1] + 1) * dt
    assert moving_time <= np.max(np.abs(velocity) / A_MAX) + 1e-9  # at rest within v / a
    assert len(trajectory) <= math.ceil(np.max(np.abs(velocity) / (A_MAX * dt)))  # last row: the hold, reached
    assert np.all(positions[:, 7] == START[7])  # the gripper holds
    travel = trajectory[-1, :7] - START[:7] if len(trajectory) else np.zeros(7)
    assert np.all(travel * velocity >= 0)  # no joint reverses
    assert np.all(np.abs(travel) <= velocity**2 / (2 * A_MAX) + 1e-12)  # stops within the continuous distance


def test_braking_from_rest_is_empty():
    assert braking_trajectory(START, np.zeros(7), A_MAX, PERIOD).shape == (0, 8)


# ---------------------------------------------------------------------- the rig
class RampPolicy:
    """Chunks along START + VELOCITY * t from the request time; `failure` breaks every later call."""

    privileged = False

    def __init__(self):
        self.failure = None  # None, "raise" or "nan"
        self.requests = []  # observation time of each call

    def reset(self, seed=None):
        pass

    def predict_chunk(self, obs):
        self.requests.append(obs["now"])
        if self.failure == "raise":
            raise RuntimeError("policy crashed")
        times = obs["now"] + np.arange(1, 11) / 10
        actions = START + VELOCITY * times[:, None]
        if self.failure == "nan":
            actions[4, 2] = np.nan
        return actions, 10


class Rig:
    """A 100 Hz control loop: inputs feed the watchdog, the scheduler proposes, the watchdog decides."""

    def __init__(self, inline_latency_s=0.1):
        self.now = 0.0
        self.policy = RampPolicy()
        # A deadline (0.3 s) below the executable time left at each request (0.4 s): a hung inference is caught
        # while the arm still moves, not after the chunk ran out.
        self.scheduler = ChunkScheduler(self.policy, lambda: {"now": self.now},
                                        SchedulerConfig(inference_deadline_s=0.3), inline_latency_s=inline_latency_s)
        self.watchdog = Watchdog(CONFIG, LIMITS, now=0.0)
        self.silent = set()  # streams that stopped: "joint_state", "heartbeat", or a camera name
        self.last = {}  # stream -> time (stamp) of its last delivery
        self.times, self.targets, self.commands = [], [], []

    def tick(self):
        i = len(self.times)
        self.now = now = i * PERIOD
        self._deliver("joint_state", now, self.watchdog.joint_state)
        for camera in CONFIG.cameras:
            stamp = math.floor(now * CAMERA_HZ + 1e-9) / CAMERA_HZ
            if self.last.get(camera) != stamp:
                self._deliver(camera, stamp, lambda t, camera=camera: self.watchdog.camera_frame(camera, t))
        if i % (100 // HEARTBEAT_HZ) == 0:
            self._deliver("heartbeat", now, self.watchdog.heartbeat)
        target = self.scheduler.next_command(now, START)
        for fault in self.scheduler.pop_faults():
            self.watchdog.report(fault)
        command = self.watchdog.step(now, target)
        self.times.append(now)
        self.targets.append(target)
        self.commands.append(command)
        return command

    def _deliver(self, stream, time, feed):
        if stream not in self.silent:
            feed(time)
            self.last[stream] = time

    def run(self, seconds):
        for _ in range(round(seconds / PERIOD)):
            self.tick()


# Fault-injection table: at t = 1 s, while the arm moves, each row breaks one thing; `detectable` is the earliest
# time the fault can be known. The hold must start on the first tick at or after it, within one control period.
def silence(stream, timeout):
    def inject(rig):
        rig.silent.add(stream)
        return lambda: rig.last[stream] + timeout

    return inject


def press_estop(rig):
    rig.watchdog.estop(True, 0.995)  # between the ticks at 0.99 and 1.0
    return lambda: 0.995


def hang_policy(rig):
    rig.scheduler.inline_latency_s = 100.0  # every later inference runs for 100 s
    return lambda: rig.policy.requests[-1] + rig.scheduler.config.inference_deadline_s


def break_policy(failure):
    def inject(rig):
        rig.policy.failure = failure
        return lambda: rig.policy.requests[-1] + rig.scheduler.inline_latency_s  # when its result is due

    return inject


FAULT_TABLE = [
    ("joint_state_stale", silence("joint_state", CONFIG.joint_state_timeout_s), FaultKind.JOINT_STATE_STALE),
    ("camera_stale-front", silence("front", CONFIG.camera_timeout_s), FaultKind.CAMERA_STALE),
    ("camera_stale-wrist", silence("wrist", CONFIG.camera_timeout_s), FaultKind.CAMERA_STALE),
    ("heartbeat_missing", silence("heartbeat", CONFIG.heartbeat_timeout_s), FaultKind.HEARTBEAT_MISSING),
    ("estop", press_estop, FaultKind.ESTOP),
    ("inference_deadline", hang_policy, FaultKind.INFERENCE_DEADLINE),
    ("policy_exception", break_policy("raise"), FaultKind.POLICY_ERROR),
    ("policy_nan", break_policy("nan"), FaultKind.POLICY_ERROR),
]


def test_healthy_loop_passes_every_target_through():
    rig = Rig()
    rig.run(3.0)
    assert rig.watchdog.fault is None
    np.testing.assert_array_equal(rig.commands, rig.targets)
    assert not np.allclose(rig.commands[-1], rig.commands[0])  # it moved


@pytest.mark.parametrize("inject, kind", [row[1:] for row in FAULT_TABLE], ids=[row[0] for row in FAULT_TABLE])
def test_each_fault_reaches_the_hold_within_one_control_period(inject, kind):
    rig = Rig()
    rig.run(1.0)
    detectable = inject(rig)
    k = tick_until_fault(rig)
    fault = rig.watchdog.fault
    assert fault.kind == kind, fault
    latency_periods = (rig.times[k] - detectable()) / PERIOD
    assert -1e-6 <= latency_periods <= 1 + 1e-6, f"hold began {latency_periods:.2f} control periods late"
    np.testing.assert_array_equal(rig.commands[:k], rig.targets[:k])  # no false alarm before
    # Tick k already commands the first braking step from the last command and its velocity, then it brakes to
    # rest and holds: the whole braking trajectory, then the same position.
    rig.run(0.3)
    velocity = (rig.commands[k - 1][:7] - rig.commands[k - 2][:7]) / PERIOD
    assert np.any(velocity != 0)
    brake = braking_trajectory(rig.commands[k - 1], velocity, A_MAX, PERIOD)
    held = np.array(rig.commands[k:])
    np.testing.assert_allclose(held[: len(brake)], brake, atol=1e-12)
    np.testing.assert_array_equal(held[len(brake):], np.broadcast_to(brake[-1], held[len(brake):].shape))
    assert not np.allclose(rig.targets[k], held[0])


def tick_until_fault(rig):
    """Ticks until a command is a hold; returns that tick's index (for the e-stop: the first tick after the press)."""
    while True:
        rig.tick()
        if rig.watchdog.fault is not None:
            return len(rig.times) - 1
        assert rig.now < 3.0, "no fault detected"


# ---------------------------------------------------------------------- latch and reset
def rest_after(rig, inject):
    inject(rig)
    tick_until_fault(rig)
    rig.run(0.3)  # long enough to brake from the rig's speeds
    assert rig.watchdog.at_rest


def test_estop_latches_and_reset_refuses_while_pressed():
    rig = Rig()
    rig.run(1.0)
    rest_after(rig, lambda rig: rig.watchdog.estop(True, rig.now))
    with pytest.raises(ResetRefused, match="estop"):
        rig.watchdog.reset(rig.now)
    rig.watchdog.estop(False, rig.now)
    rig.run(0.1)
    assert rig.watchdog.fault.kind == FaultKind.ESTOP  # releasing the e-stop does not clear the latch
    assert np.all(np.array(rig.commands[-10:]) == rig.commands[-1])  # still holding
    rig.watchdog.reset(rig.now)
    assert rig.watchdog.fault is None


def test_reset_refuses_while_a_stream_is_stale_and_accepts_once_it_is_back():
    rig = Rig()
    rig.run(1.0)
    rest_after(rig, lambda rig: rig.silent.add("joint_state"))
    assert rig.watchdog.fault.kind == FaultKind.JOINT_STATE_STALE
    with pytest.raises(ResetRefused, match="joint_state_stale"):
        rig.watchdog.reset(rig.now)
    rig.silent.clear()
    rig.run(0.05)
    assert rig.watchdog.fault.kind == FaultKind.JOINT_STATE_STALE  # fresh data again, still latched
    rig.watchdog.reset(rig.now)
    assert rig.watchdog.fault is None


def test_reset_refuses_while_braking():
    rig = Rig()
    rig.run(1.0)
    rig.watchdog.estop(True, rig.now)
    rig.watchdog.estop(False, rig.now)
    rig.tick()
    with pytest.raises(ResetRefused, match="still braking"):
        rig.watchdog.reset(rig.now)


def test_reset_causes_no_motion_and_the_scheduler_restarts_from_the_hold():
    rig = Rig(inline_latency_s=0.2)
    rig.run(1.0)
    rest_after(rig, break_policy("raise"))
    hold = rig.watchdog.position
    rig.watchdog.reset(rig.now)
    np.testing.assert_array_equal(rig.watchdog.position, hold)
    assert rig.watchdog.at_rest
    rig.policy.failure = None
    rig.scheduler.reset(hold=hold)
    k = len(rig.commands)
    rig.run(0.5)
    assert rig.watchdog.fault is None
    # The new chunk is 0.2 s in flight: two policy steps of the very same hold, then motion resumes.
    np.testing.assert_array_equal(rig.commands[k: k + 21], np.broadcast_to(hold, (21, 8)))
    assert not np.allclose(rig.commands[-1], hold)


def test_first_fault_is_kept():
    rig = Rig()
    rig.run(1.0)
    first = Fault(FaultKind.POLICY_ERROR, "first", rig.now)
    rig.watchdog.report(first)
    rig.watchdog.estop(True, rig.now)
    rig.tick()
    assert rig.watchdog.fault == first


def test_non_finite_target_latches_a_policy_error_and_holds():
    watchdog = Watchdog(CONFIG, LIMITS, now=0.0)
    for camera in CONFIG.cameras:
        watchdog.camera_frame(camera, 0.0)
    watchdog.step(0.0, START)
    bad = START.copy()
    bad[3] = np.nan
    np.testing.assert_array_equal(watchdog.step(0.01, bad), START)
    assert watchdog.fault.kind == FaultKind.POLICY_ERROR and "non-finite" in watchdog.fault.message


def test_inputs_are_checked():
    watchdog = Watchdog(CONFIG, LIMITS, now=0.0)
    with pytest.raises(ValueError, match="unknown camera 'side'"):
        watchdog.camera_frame("side", 0.0)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        watchdog.step(0.0, np.zeros(7))


def test_silent_streams_go_stale_one_timeout_after_construction():
    watchdog = Watchdog(CONFIG, LIMITS, now=5.0)
    assert watchdog.causes(5.05) == []
    kinds = [cause.kind for cause in watchdog.causes(5.06)]
    assert kinds == [FaultKind.JOINT_STATE_STALE]
