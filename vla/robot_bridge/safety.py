"""The safety filter: the last word on every command the robot bridge sends to the arm.

ROS-free and numpy-only (mujoco is imported inside `mujoco_fk` alone). A command or state is an 8-vector: the
joint positions (rad) in `joint_names` order, then the gripper opening (0 closed .. 1 open), named by
`SafetyFilter.names`. Limits come from `conf/robot/<arm>.yaml` (`vla.limits`); the soft position limits are the
hard ones shrunk by `safety.position_margin`. Velocity, acceleration and jerk are finite differences of the
commands sent, over dt = time since the previous publish clamped to [dt_min, dt_max], dt_min = 1 / max_rate_hz; the
first command starts at rest from the measured position, dt_min before it (the rate is not known yet).
"Hold" re-sends the last command sent: the reference stops at once (a smooth stop is the watchdog's job).

Invariants, each checked by `tests/test_safety.py::test_invNN_*`:
 1. Every emitted value is finite; non-finite input (command, state or clock) is rejected and the arm holds.
    Python's min/max clamps let NaN through (lerobot's clamp has this bug), so finiteness is checked explicitly,
    on the input and once more on the output.
 2. Joint names and order match the config exactly; missing, extra or duplicate names are rejected (hold).
 3. Every output lies inside the soft position limits, hence inside the hard limits.
 4. Each step from the last command sent is at most velocity × dt, and the output is within `max_deviation` of
    the measured position wherever 3 and the velocity bound let it get there.
 5. Acceleration and jerk bounds hold where configured (`enforce_acceleration`, `enforce_jerk`) on every step but
    a hold, unless a higher bound below leaves no room. Braking distance keeps room for the acceleration bound at
    the soft limits, and a look-ahead keeps room for the jerk bound at the velocity limit, so while neither the
    workspace nor the distance from the measured position intervenes only the jerk bound can yield, and only
    within braking distance of a soft limit (the Panda's jerk bound can bind only above jerk / 2 acceleration =
    250 Hz). The workspace box has no braking distance: the arm stops at its wall at once.
 6. A command already inside all limits (those of 3, 4, 5 and 9 for this state and dt) passes unchanged;
    filtering the output again from the same state returns it unchanged; clamping never reverses the direction
    of motion: per joint the output is the allowed point nearest the command, so whenever standing still is
    allowed it moves only the way the command asks.
 7. A stale command or stale state holds; resuming needs a fresh command (issued after the hold). So do all
    holds: after any hold only a command stamped later moves the arm.
 8. E-stop overrides everything and latches until `reset_estop`; the reset itself sends nothing, so it moves
    nothing, and resuming needs a command issued after it.
 9. The end-effector stays inside the workspace box where configured, by the injected forward kinematics `fk`
    (`mujoco_fk` gives the tabletop scene's); an arm that starts outside may only move so that it gets no farther
    from the box. The gripper command stays in its range.
 10. Emitted trajectories have strictly increasing time_from_start > 0 (`trajectory_points`); chunks older than
    the latency budget are dropped (`check_chunk`).
 11. An invalid config refuses to start, naming the key (`vla.limits.LimitsError`).
 12. Output is a pure function of config, state, input and the injected `now` (no clock is read here), so a
    recorded session replays exactly; publishes are at least dt_min apart (to within 1 ns of clock rounding):
    a command sooner than that is not published and the arm keeps the last one.

Where bounds conflict the higher one wins, and each joint takes the allowed value nearest its command: soft limits
> velocity > workspace (it shortens the whole step along its direction) > distance from the measured position >
braking distance > acceleration > jerk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vla.limits import LimitsError, RobotLimits, SafetyConfig, load_robot_limits, load_safety_config

FK = Callable[[np.ndarray], np.ndarray]  # joint positions (n,) -> end-effector position (3,), m

# Intervention kinds, as counted in `SafetyFilter.diagnostics()`.
BOUND_KINDS = ("position_clamped", "velocity_limited", "deviation_limited", "braking_limited", "accel_limited",
               "jerk_limited")
KINDS = (*BOUND_KINDS, "workspace_clamped", "gripper_clamped", "nonfinite_rejected", "shape_rejected",
         "names_rejected", "stale_hold", "estop_hold", "hold_requested", "rate_skipped", "chunk_rejected")

_CLOCK_SLACK = 1e-9  # s: float rounding of clock stamps (1e-11 s after a day in seconds)
_WORKSPACE_BISECTIONS = 10  # the step toward a workspace wall is found to 1/1024 of its length


@dataclass(frozen=True, slots=True)
class Stamped:
    """Joint values with their names and the time they were measured or issued (s, the caller's clock)."""

    values: np.ndarray  # (8,) a command or state; (T, 8) a chunk
    names: Sequence[str]
    stamp: float


class FilterResult(NamedTuple):
    """What `SafetyFilter.filter` decided for one command."""

    command: np.ndarray | None  # (8,) read-only; None only while nothing has ever been sent
    publish: bool  # False: send nothing now (too soon after the last publish, or nothing to hold yet)
    held: bool  # the command is the last one sent, again
    interventions: tuple[str, ...]  # kinds (KINDS); empty when the command passed unchanged


class ChunkVerdict(NamedTuple):
    """Whether a chunk may be queued, and why not."""

    ok: bool
    reasons: tuple[str, ...]  # why the chunk was rejected; empty when ok


class SafetyFilter:
    """Stands between the policy and the arm: `filter` each command, `check_chunk` each chunk before queueing.

    Stateful only through what was sent (last command, its velocity and acceleration, when), the e-stop latch
    and the counters; time comes in as `now`. `fk` is needed when the config sets a workspace box.
    """

    def __init__(self, limits: RobotLimits, config: SafetyConfig, fk: FK | None = None):
        config.check_against(limits)
        self.workspace = config.workspace_lower is not None
        if self.workspace and fk is None:
            raise LimitsError("'safety.workspace_lower' is set, so the safety filter needs forward kinematics (fk)")
        self.limits, self.config, self.fk = limits, config, fk
        self.names = (*limits.joint_names, config.gripper_name)
        self.soft_lower = limits.position_lower + config.position_margin
        self.soft_upper = limits.position_upper - config.position_margin
        self.soft_lower.setflags(write=False)
        self.soft_upper.setflags(write=False)
        n = self._n = limits.num_joints
        # Per-joint limits repeated for the two sides of each joint's interval (upward, then downward).
        self._velocity2 = np.tile(limits.velocity, 2)
        self._accel2 = np.tile(limits.acceleration, 2)
        self._two_accel2 = 2.0 * self._accel2
        self._jerk2 = np.tile(limits.jerk, 2)
        self._kinds = BOUND_KINDS[:3] + (BOUND_KINDS[3:5] if config.enforce_acceleration else ()) + (
            BOUND_KINDS[5:] * 2 if config.enforce_jerk else ())
        self._bounds = np.empty((len(self._kinds), 2 * n))  # one row per bound of `_kinds`, see `_limit`
        self._bounds[1] = self._velocity2
        self._room = np.empty(2 * n)
        self._zeros = np.zeros(n + 1)
        # The lowest and highest command allowed: joints set per call, the gripper range fixed.
        self._lowest = np.append(self.soft_lower, limits.gripper_lower)
        self._highest = np.append(self.soft_upper, limits.gripper_upper)

        self._last: np.ndarray | None = None  # (n + 1,) read-only: the last command sent
        self._toward_v = np.zeros(2 * n)  # its velocity and acceleration, toward each side as in `_limit`;
        self._toward_a = np.zeros(2 * n)  # zero until the first publish and after a hold
        self._t = -math.inf  # when it was sent
        self._excess = 0.0  # how far its end effector was outside the workspace box, m
        self._fresh_after = -math.inf  # only commands issued later may move the arm
        self._estop = False
        self._counts = dict.fromkeys(KINDS, 0)
        self._published = 0

    @classmethod
    def from_config(cls, robot: str | Path = "panda", fk: FK | None = None) -> SafetyFilter:
        """The filter for an arm name (`panda`) or limits YAML path, limits and `safety:` settings from it."""
        limits = load_robot_limits(robot)
        return cls(limits, load_safety_config(robot, limits), fk)

    @property
    def last_command(self) -> np.ndarray | None:
        return self._last

    @property
    def estopped(self) -> bool:
        return self._estop

    def filter(self, command: Stamped, state: Stamped, now: float) -> FilterResult:
        """What to send at `now` for `command`, given the measured `state` (see the module's invariants)."""
        if not math.isfinite(now):
            self._counts["nonfinite_rejected"] += 1  # no time to stamp a publish with: send nothing
            return FilterResult(self._last, False, True, ("nonfinite_rejected",))
        if self._estop:
            return self._hold(now, "estop_hold")
        if now - self._t < self.config.dt_min - _CLOCK_SLACK:
            self._counts["rate_skipped"] += 1
            return FilterResult(self._last, False, False, ("rate_skipped",))
        measured = self._parse(state, self.config.state_timeout, now, -math.inf)
        if isinstance(measured, str):
            return self._hold(now, measured)
        target = self._parse(command, self.config.command_timeout, now, self._fresh_after)
        if isinstance(target, str):
            return self._hold(now, target)
        return self._limit(target, measured, now)

    def hold(self, now: float) -> FilterResult:
        """Re-send the last command (the watchdog's request); resuming needs a fresh command."""
        if not math.isfinite(now):
            raise ValueError(f"hold needs a finite time, got {now!r}")
        return self._hold(now, "estop_hold" if self._estop else "hold_requested")

    def estop(self) -> None:
        """Latch the e-stop: every call holds until `reset_estop`."""
        self._estop = True

    def reset_estop(self, now: float) -> None:
        """Release the e-stop. Sends nothing; the arm moves again on the first command issued after `now`."""
        if not math.isfinite(now):
            raise ValueError(f"reset_estop needs a finite time, got {now!r}")
        self._estop = False
        self._fresh_after = max(self._fresh_after, now)

    def diagnostics(self) -> dict[str, int]:
        """Interventions counted by kind, plus `published` and `estop_latched` (0/1): for diagnostic_msgs."""
        return {**self._counts, "published": self._published, "estop_latched": int(self._estop)}

    def check_chunk(self, chunk: Stamped, dt: float, state: Stamped, now: float) -> ChunkVerdict:
        """Whether a chunk (T, 8) of commands `dt` apart may be queued: well-formed, recent, starting near the
        measured position, and inside the position, velocity and (where enforced) acceleration limits."""
        cfg, lim, n = self.config, self.limits, self._n
        reasons = []
        try:
            names = tuple(chunk.names)
        except TypeError:
            names = None
        if names != self.names:
            reasons.append(f"chunk names {chunk.names!r} are not {list(self.names)}")
        try:
            values = np.asarray(chunk.values, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.empty(0)
        if values.ndim != 2 or values.shape[1] != n + 1 or len(values) == 0:
            reasons.append(f"chunk shape {values.shape} is not (T >= 1, {n + 1})")
        elif not np.isfinite(values).all():
            reasons.append("chunk has non-finite values")
        if not (math.isfinite(dt) and cfg.dt_min <= dt <= cfg.dt_max):
            reasons.append(f"chunk dt {dt!r} s is outside [dt_min {cfg.dt_min}, dt_max {cfg.dt_max}]")
        if not abs(now - chunk.stamp) <= cfg.latency_budget:
            reasons.append(f"chunk is {now - chunk.stamp:.3f} s old, latency budget {cfg.latency_budget} s")
        if reasons:
            return self._verdict(reasons)

        joints = values[:, :n]
        measured = self._parse(state, cfg.state_timeout, now, -math.inf)
        if isinstance(measured, str):
            reasons.append(f"no valid joint state to start from ({measured})")
        else:
            jump = np.abs(joints[0] - measured[:n])
            if np.any(jump > cfg.max_deviation):
                j = int(np.argmax(jump))
                reasons.append(f"first step moves {self.names[j]} {jump[j]:.3f} rad from the measured position "
                               f"(max_deviation {cfg.max_deviation})")
        outside = np.maximum(self.soft_lower - joints, joints - self.soft_upper)
        if np.any(outside > 0):
            k, j = np.unravel_index(int(np.argmax(outside)), outside.shape)
            reasons.append(f"step {k} puts {self.names[j]} {outside[k, j]:.3f} rad outside its soft limits")
        velocity = np.diff(joints, axis=0) / dt
        excess = np.abs(velocity) / lim.velocity
        if np.any(excess > 1):
            k, j = np.unravel_index(int(np.argmax(excess)), excess.shape)
            reasons.append(f"step {k + 1} moves {self.names[j]} at {abs(velocity[k, j]):.3f} rad/s, "
                           f"limit {lim.velocity[j]}")
        if cfg.enforce_acceleration:
            acceleration = np.diff(velocity, axis=0) / dt
            excess = np.abs(acceleration) / lim.acceleration
            if np.any(excess > 1):
                k, j = np.unravel_index(int(np.argmax(excess)), excess.shape)
                reasons.append(f"step {k + 2} accelerates {self.names[j]} at {abs(acceleration[k, j]):.1f} rad/s^2, "
                               f"limit {lim.acceleration[j]}")
        return self._verdict(reasons)

    def _verdict(self, reasons: list[str]) -> ChunkVerdict:
        if reasons:
            self._counts["chunk_rejected"] += 1
        return ChunkVerdict(not reasons, tuple(reasons))

    def _parse(self, sample: Stamped, timeout: float, now: float, fresh_after: float) -> np.ndarray | str:
        """The values of a valid, fresh sample, or the kind of its rejection."""
        try:
            if sample.names is not self.names and tuple(sample.names) != self.names:
                return "names_rejected"
        except TypeError:
            return "names_rejected"
        try:
            values = np.asarray(sample.values, dtype=np.float64)
            stamp = float(sample.stamp)
        except (TypeError, ValueError):
            return "shape_rejected"
        if values.shape != (self._n + 1,):
            return "shape_rejected"
        # x * 0 is NaN exactly when x is NaN or infinite: one dot product checks every value.
        if not (np.dot(values, self._zeros) == 0.0 and math.isfinite(stamp)):
            return "nonfinite_rejected"
        if not abs(now - stamp) <= timeout or stamp <= fresh_after:
            return "stale_hold"
        return values

    def _hold(self, now: float, kind: str) -> FilterResult:
        self._counts[kind] += 1
        self._fresh_after = max(self._fresh_after, now)
        if self._last is None or now - self._t < self.config.dt_min - _CLOCK_SLACK:
            return FilterResult(self._last, False, True, (kind,))
        self._toward_v.fill(0.0)  # the reference stops
        self._toward_a.fill(0.0)
        self._t = now
        self._published += 1
        return FilterResult(self._last, True, True, (kind,))

    def _limit(self, target: np.ndarray, measured: np.ndarray, now: float) -> FilterResult:
        cfg, n = self.config, self._n
        toward_v, toward_a = self._toward_v, self._toward_a  # zero at the start
        if self._last is None:  # nothing sent yet: start at rest from the measured position
            q1 = np.minimum(np.maximum(measured[:n], self.soft_lower), self.soft_upper)
            dt = cfg.dt_min
            excess = self._workspace_excess(q1) if self.workspace else 0.0
        else:
            q1, excess = self._last[:n], self._excess
            dt = min(max(now - self._t, cfg.dt_min), cfg.dt_max)

        # Every bound caps the velocity toward each side of each joint: b[k, :n] upward, b[k, n:] downward (rad/s).
        # toward_v and toward_a are the last velocity and acceleration signed the same way.
        b, room = self._bounds, self._room
        np.subtract(self.soft_upper, q1, out=room[:n])  # >= 0: q1 is always inside the soft limits
        np.subtract(q1, self.soft_lower, out=room[n:])
        np.divide(room, dt, out=b[0])  # soft limits; b[1] holds the velocity limits
        deviation = b[2]
        np.subtract(measured[:n], q1, out=deviation[:n])
        np.negative(deviation[:n], out=deviation[n:])
        deviation += cfg.max_deviation
        deviation /= dt
        k = 3
        if cfg.enforce_acceleration:
            # Braking distance: moving at v toward a soft limit D away, v dt + v^2 / 2a <= D keeps room to stop
            # at the acceleration limit whatever dt comes next; solved for v in a form free of cancellation.
            a_dt = self._accel2 * dt
            two_a_room = self._two_accel2 * room
            np.divide(two_a_room, np.sqrt(a_dt * a_dt + two_a_room) + a_dt, out=b[3])
            np.add(toward_v, a_dt, out=b[4])
            k = 5
        if cfg.enforce_jerk:
            # Look-ahead: accelerating at a toward the velocity limit V, v + a|a| / 2j <= V keeps room to stop
            # accelerating at the jerk limit. With a = u / dt for a velocity change u: u + u^2 / (2 j dt^2) <= V - v.
            j_dt2 = self._jerk2 * (dt * dt)
            two_room = 2.0 * np.maximum(self._velocity2 - toward_v, 0.0)
            np.add(toward_v, two_room / (1.0 + np.sqrt(1.0 + two_room / j_dt2)), out=b[k])
            np.add(toward_v + toward_a * dt, j_dt2, out=b[k + 1])

        # Clamp in absolute positions, so that a command inside the bounds comes out bit for bit unchanged, and
        # to the soft limits again, as q1 + room / dt * dt can round past them.
        lowest, highest = self._lowest, self._highest
        limit = b.min(axis=0)
        np.maximum(q1 - limit[n:] * dt, self.soft_lower, out=lowest[:n])
        np.minimum(q1 + limit[:n] * dt, self.soft_upper, out=highest[:n])
        if (lowest > highest).any():  # the bounds conflict: narrow them one by one, higher ones first
            limit = _narrow(b, n)
            np.maximum(q1 - limit[n:] * dt, self.soft_lower, out=lowest[:n])
            np.minimum(q1 + limit[:n] * dt, self.soft_upper, out=highest[:n])
        out = np.minimum(np.maximum(target, lowest), highest)  # NaN cannot reach here: _parse rejected it
        interventions = ()
        if (out != target).any():
            interventions = self._interventions(target, q1, dt)
        if self.workspace:
            out[:n], excess, clamped = self._inside_workspace(q1, out[:n], excess)
            if clamped:
                interventions += ("workspace_clamped",)
        if np.dot(out, self._zeros) != 0.0:  # never expected; checked because an emitted NaN is unrecoverable
            return self._hold(now, "nonfinite_rejected")
        for kind in interventions:
            self._counts[kind] += 1

        out.setflags(write=False)
        velocity = (out[:n] - q1) / dt
        acceleration = (velocity - toward_v[:n]) / dt
        toward_v[:n] = velocity
        np.negative(velocity, out=toward_v[n:])
        toward_a[:n] = acceleration
        np.negative(acceleration, out=toward_a[n:])
        self._last, self._t, self._excess = out, now, excess
        self._published += 1
        return FilterResult(out, True, False, interventions)

    def _interventions(self, target: np.ndarray, q1: np.ndarray, dt: float) -> tuple[str, ...]:
        """The kinds of the bounds the command broke (each once), in order of precedence."""
        n = self._n
        wanted = (target[:n] - q1) / dt
        broken = (np.concatenate((wanted, -wanted)) > self._bounds).any(axis=1).tolist()
        kinds = tuple(dict.fromkeys(kind for kind, hit in zip(self._kinds, broken, strict=True) if hit))
        if not self.limits.gripper_lower <= target[n] <= self.limits.gripper_upper:
            kinds += ("gripper_clamped",)
        return kinds

    def _workspace_excess(self, q: np.ndarray) -> float:
        """How far the end effector at joint positions q lies outside the workspace box, m (NaN if fk fails)."""
        position = np.asarray(self.fk(q), dtype=np.float64)
        gap = np.maximum(np.maximum(self.config.workspace_lower - position, position - self.config.workspace_upper),
                         0.0)
        return float(np.sqrt(gap @ gap))

    def _inside_workspace(self, q1: np.ndarray, q: np.ndarray, excess1: float) -> tuple[np.ndarray, float, bool]:
        """The farthest point along the step q1 -> q that stays in the box, or gets no farther from it than q1.

        Returns (joint positions, their excess, whether the step was shortened)."""
        excess = self._workspace_excess(q)
        if excess <= excess1:  # NaN from a failing fk compares False: never accepted
            return q, excess, False
        inside, outside, best = 0.0, 1.0, (q1, excess1)
        for _ in range(_WORKSPACE_BISECTIONS):
            middle = 0.5 * (inside + outside)
            candidate = np.minimum(np.maximum(q1 + middle * (q - q1), self.soft_lower), self.soft_upper)
            excess = self._workspace_excess(candidate)
            if excess <= excess1:
                inside, best = middle, (candidate, excess)
            else:
                outside = middle
        return best[0], best[1], True


def _narrow(bounds: np.ndarray, n: int) -> np.ndarray:
    """Intersect the bounds in order; where one would leave nothing, keep the point nearest to it instead."""
    upward, downward = bounds[0, :n], bounds[0, n:]
    for bound in bounds[1:]:
        low = np.minimum(np.maximum(-bound[n:], -downward), upward)
        upward = np.minimum(np.maximum(bound[:n], low), upward)
        downward = -low
    return np.concatenate((upward, downward))


def trajectory_points(positions: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Trajectory points for filtered commands (T, D) sent `dt` apart: (positions, time_from_start (T,)).

    Raises ValueError unless every value is finite and time_from_start is strictly increasing from above 0."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or len(positions) == 0:
        raise ValueError(f"trajectory positions must have shape (T >= 1, D), got {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError("trajectory positions must be finite")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"trajectory dt must be a finite number > 0, got {dt!r}")
    time_from_start = dt * np.arange(1, len(positions) + 1)
    if not (np.isfinite(time_from_start).all() and time_from_start[0] > 0 and np.all(np.diff(time_from_start) > 0)):
        raise ValueError(f"dt {dt!r} s gives no strictly increasing time_from_start over {len(positions)} points")
    return positions, time_from_start


def mujoco_fk(limits: RobotLimits, site: str = "pinch") -> FK:
    """Forward kinematics of the tabletop scene's `site` (the gripper's pinch point) through MuJoCo.

    mujoco is imported here, not at module level, so the filter itself stays numpy-only."""
    import mujoco

    from vla.sim.scene import build_model

    model = build_model(limits, 16)
    data = mujoco.MjData(model)
    site_id = model.site(site).id
    qpos_index = np.array([model.joint(name).qposadr[0] for name in limits.joint_names])

    def fk(q: np.ndarray) -> np.ndarray:
        data.qpos[qpos_index] = q
        mujoco.mj_kinematics(model, data)
        return data.site_xpos[site_id].copy()

    return fk
