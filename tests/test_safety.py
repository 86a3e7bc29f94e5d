"""The safety filter's invariants, one or more hypothesis properties each (test_invNN <-> invariant NN in the
docstring of vla/robot_bridge/safety.py), over random arms, configs, clocks, states and commands."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vla.limits import CONF_DIR, LimitsError, RobotLimits, SafetyConfig, load_robot_limits, load_safety_config
from vla.robot_bridge.safety import KINDS, FilterResult, SafetyFilter, Stamped, trajectory_points

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RTOL, ATOL = 1e-9, 1e-12


# --- random arms, configs and sessions ------------------------------------------------------------------------------

@st.composite
def arms(draw, wide: bool = False, acceleration: bool | None = None, jerk: bool | None = None,
         tracking: bool = False, agile: bool = False) -> tuple[RobotLimits, SafetyConfig]:
    """A random arm and safety config. `wide`: position limits far from where the sessions go (no braking);
    `tracking`: max_deviation large enough that an arm following its commands never meets it; `agile`: full
    acceleration and full speed are reached within 30 steps of dt_max, so short sessions meet every bound."""
    n = draw(st.integers(1, 7))
    joint = st.floats(-1.0, 1.0)
    unit = np.array(draw(st.lists(joint, min_size=n, max_size=n)))
    lower = np.full(n, -1e5) if wide else -1.0 + 2.0 * unit
    upper = np.full(n, 1e5) if wide else lower + np.array(draw(st.lists(st.floats(0.5, 5.0), min_size=n, max_size=n)))
    velocity = np.array(draw(st.lists(st.floats(0.1, 3.0), min_size=n, max_size=n)))
    accel = np.array(draw(st.lists(st.floats(1.0, 40.0), min_size=n, max_size=n)))
    jerk_limit = np.array(draw(st.lists(st.floats(1.0, 1e4), min_size=n, max_size=n)))
    max_rate_hz = draw(st.floats(10.0, 2000.0))
    dt_max = draw(st.floats(1.0, 50.0)) / max_rate_hz
    if agile:
        accel = velocity / dt_max / np.array(draw(st.lists(st.floats(0.5, 30.0), min_size=n, max_size=n)))
        jerk_limit = accel / dt_max / np.array(draw(st.lists(st.floats(0.5, 30.0), min_size=n, max_size=n)))
    gripper_lower = draw(st.floats(-1.0, 0.5))
    limits = RobotLimits(
        name="arm", joint_names=tuple(f"j{i}" for i in range(n)), position_lower=lower, position_upper=upper,
        velocity=velocity, acceleration=accel, jerk=jerk_limit, effort=np.ones(n), home=(lower + upper) / 2,
        gripper_lower=gripper_lower, gripper_upper=gripper_lower + draw(st.floats(0.1, 2.0)))
    deviation = draw(st.floats(1.2, 3.0)) * float(velocity.max()) * dt_max if tracking else draw(st.floats(0.01, 1.0))
    config = SafetyConfig(
        position_margin=draw(st.floats(0.0, 0.2)), max_deviation=deviation, max_rate_hz=max_rate_hz, dt_max=dt_max,
        command_timeout=draw(st.floats(0.05, 1.0)), state_timeout=draw(st.floats(0.05, 1.0)),
        latency_budget=draw(st.floats(0.05, 1.0)),
        enforce_acceleration=draw(st.booleans()) if acceleration is None else acceleration,
        enforce_jerk=draw(st.booleans()) if jerk is None else jerk,
        gripper_name="gripper", workspace_lower=None, workspace_upper=None)
    return limits, config


COMMANDS = ["walk"] * 8 + ["wild", "huge", "nonfinite", "names", "shape", "empty", "stale"]
STATES = ["track"] * 8 + ["random", "nonfinite", "names", "stale"]
step_strategy = st.fixed_dictionaries({
    "gap": st.one_of(st.floats(0.0, 1.5), st.sampled_from([0.0, 1.0, 40.0])),  # in units of dt_max
    "clock": st.sampled_from(["ok"] * 12 + ["nan", "inf", "back"]),
    "command": st.sampled_from(COMMANDS),
    "state": st.sampled_from(STATES),
    "unit": st.lists(st.floats(-1.0, 1.0), min_size=8, max_size=8),
    "event": st.sampled_from([None] * 16 + ["estop", "reset", "hold"]),
})
sessions = st.lists(step_strategy, min_size=1, max_size=30)


@dataclasses.dataclass
class Record:
    now: float
    command: Stamped
    state: Stamped
    before: np.ndarray | None  # the last command sent before this call
    result: FilterResult


def run(filt: SafetyFilter, steps: list[dict], commands=COMMANDS, states=STATES, events: bool = True,
        start: float = 1000.0) -> list[Record]:
    """Drive `filt` through a session from time `start`; kinds of command or state not in `commands`/`states`
    become walks / a measured position that tracks the last command sent (plus noise under max_deviation / 10)."""
    limits, config = filt.limits, filt.config
    n = limits.num_joints
    home = np.append(limits.home, (limits.gripper_lower + limits.gripper_upper) / 2)
    span = np.append(limits.position_upper - limits.position_lower, limits.gripper_upper - limits.gripper_lower)
    reach = np.append(3.0 * limits.velocity * config.dt_max, 0.5)
    now, records = start, []
    for step in steps:
        unit = np.array(step["unit"][: n + 1])
        last = filt.last_command if filt.last_command is not None else home
        now += step["gap"] * config.dt_max
        call_now = {"ok": now, "nan": math.nan, "inf": math.inf, "back": now - 3 * config.dt_max}[step["clock"]]
        kind = step["command"] if step["command"] in commands else "walk"
        values = {"walk": last + unit * reach, "wild": home + unit * span, "huge": unit * 1e300}.get(kind, last)
        if kind == "nonfinite":
            values = values.copy()
            values[int(abs(unit[0]) * n)] = [math.nan, math.inf, -math.inf][int(abs(unit[-1]) * 2.99)]
        names = {"names": filt.names[::-1] if n > 1 else ("other", "gripper")}.get(kind, filt.names)
        values = {"shape": values[:-1], "empty": np.array([])}.get(kind, values)
        stamp = now - 2 * config.command_timeout if kind == "stale" else now
        command = Stamped(values, names, stamp)

        state_kind = step["state"] if step["state"] in states else "track"
        measured = last + np.append(0.1 * config.max_deviation * unit[:n], 0.0)
        if state_kind == "random":
            measured = home + unit * span
        if state_kind == "nonfinite":
            measured = np.full(n + 1, math.nan)
        state = Stamped(measured, ("x",) if state_kind == "names" else filt.names,
                        now - 2 * config.state_timeout if state_kind == "stale" else now)

        event = step["event"] if events else None
        if event == "estop":
            filt.estop()
        elif event == "reset" and math.isfinite(call_now):
            filt.reset_estop(call_now)
        before = filt.last_command
        if event == "hold" and math.isfinite(call_now):
            result = filt.hold(call_now)
        else:
            result = filt.filter(command, state, call_now)
        records.append(Record(call_now, command, state, before, result))
    return records


def published(filt: SafetyFilter, records: list[Record]):
    """(record, q1, dt) for every published step, with q1 the joints the step starts from (the measured position,
    clamped into the soft limits, for the first) and dt as the filter defines it, computed here from scratch."""
    n, config = filt.limits.num_joints, filt.config
    last_time = None
    for record in records:
        if not record.result.publish:
            continue
        if record.before is None:
            q1 = np.clip(np.asarray(record.state.values, dtype=float)[:n], filt.soft_lower, filt.soft_upper)
            dt = config.dt_min
        else:
            q1 = record.before[:n]
            dt = min(max(record.now - last_time, config.dt_min), config.dt_max)
        last_time = record.now
        yield record, q1, dt


def fresh(arm) -> SafetyFilter:
    return SafetyFilter(*arm)


def end_time(records: list[Record]) -> float:
    """A time well after every call of a session."""
    return max([r.now for r in records if math.isfinite(r.now)] + [1000.0]) + 100.0


# --- 1. finite output; non-finite input holds ------------------------------------------------------------------------

@FAST
@given(arms(), sessions)
def test_inv01_output_is_finite_and_nonfinite_holds(arm, steps):
    filt = fresh(arm)
    records = run(filt, steps)
    for record in records:
        command = record.result.command
        if command is not None:
            assert np.isfinite(command).all()
        if not math.isfinite(record.now):
            assert not record.result.publish and record.result.interventions == ("nonfinite_rejected",)
        if record.result.interventions == ("nonfinite_rejected",):
            assert record.result.held and record.result.command is record.before
    diagnostics = filt.diagnostics()
    assert diagnostics["nonfinite_rejected"] == sum(r.result.interventions == ("nonfinite_rejected",) for r in records)


@FAST
@given(arms(), st.integers(0, 7), st.sampled_from([math.nan, math.inf, -math.inf]), st.booleans())
def test_inv01_nonfinite_command_or_state_is_rejected(arm, index, bad, in_state):
    filt = fresh(arm)
    n = filt.limits.num_joints
    good = np.append(filt.limits.home, filt.limits.gripper_lower)
    first = filt.filter(Stamped(good, filt.names, 0.0), Stamped(good, filt.names, 0.0), 0.0)
    corrupt = good.copy()
    corrupt[index % (n + 1)] = bad
    now = 2 * filt.config.dt_min
    command, state = (good, corrupt) if in_state else (corrupt, good)
    result = filt.filter(Stamped(command, filt.names, now), Stamped(state, filt.names, now), now)
    assert result.held and result.publish and result.interventions == ("nonfinite_rejected",)
    np.testing.assert_array_equal(result.command, first.command)


# --- 2. names ------------------------------------------------------------------------------------------------------

@FAST
@given(arms(), st.data(), st.booleans())
def test_inv02_wrong_joint_names_are_rejected(arm, data, in_state):
    filt = fresh(arm)
    good = np.append(filt.limits.home, filt.limits.gripper_lower)
    first = filt.filter(Stamped(good, filt.names, 0.0), Stamped(good, filt.names, 0.0), 0.0)
    pool = list(filt.names) + ["other", filt.names[0].upper()]
    names = data.draw(st.one_of(st.lists(st.sampled_from(pool), max_size=len(filt.names) + 2).map(tuple),
                                st.permutations(filt.names).map(tuple), st.just(None), st.just("j0")))
    assume(names != filt.names)
    values = good if names is None else np.resize(good, len(names))  # right length where possible
    now = 2 * filt.config.dt_min
    sample = Stamped(values, names, now)
    command, state = (Stamped(good, filt.names, now), sample) if in_state else (sample, Stamped(good, filt.names, now))
    result = filt.filter(command, state, now)
    assert result.held and result.interventions == ("names_rejected",)
    np.testing.assert_array_equal(result.command, first.command)


# --- 3. soft limits ------------------------------------------------------------------------------------------------

@FAST
@given(arms(), sessions)
def test_inv03_output_inside_soft_limits(arm, steps):
    filt = fresh(arm)
    limits, n = filt.limits, filt.limits.num_joints
    assert np.all(filt.soft_lower >= limits.position_lower) and np.all(filt.soft_upper <= limits.position_upper)
    for record in run(filt, steps):
        if record.result.command is not None:
            joints = record.result.command[:n]
            assert np.all(joints >= filt.soft_lower) and np.all(joints <= filt.soft_upper)


# --- 4. velocity x dt, and distance from the measured position -------------------------------------------------------

@FAST
@given(arms(), sessions)
def test_inv04_step_bounded_by_velocity_and_distance_from_measured(arm, steps):
    filt = fresh(arm)
    limits, config, n = filt.limits, filt.config, filt.limits.num_joints
    for record, q1, dt in published(filt, run(filt, steps)):
        joints = record.result.command[:n]
        step = np.abs(joints - q1)
        assert np.all(step <= limits.velocity * dt * (1 + RTOL) + ATOL)
        if record.result.held:
            continue
        measured = np.asarray(record.state.values, dtype=float)[:n]
        # Where the soft limits and the velocity bound keep the arm farther away, the output gets as near as they let.
        reachable_low = np.maximum(filt.soft_lower, q1 - limits.velocity * dt)
        reachable_high = np.minimum(filt.soft_upper, q1 + limits.velocity * dt)
        gap = np.maximum(np.maximum(reachable_low - measured, measured - reachable_high), 0.0)
        assert np.all(np.abs(joints - measured) <= np.maximum(config.max_deviation, gap) * (1 + RTOL) + 1e-9)


def test_inv04_dt_is_clamped_to_dt_min_and_dt_max(panda):
    config = dataclasses.replace(panda.config, enforce_acceleration=False, enforce_jerk=False)
    filt = SafetyFilter(panda.limits, config)
    n, velocity = filt.limits.num_joints, filt.limits.velocity
    start = np.append(filt.limits.home, 1.0)
    far = start + np.append(np.full(n, 1.0), 0.0)
    filt.filter(Stamped(start, filt.names, 0.0), Stamped(start, filt.names, 0.0), 0.0)
    # After a long pause a step is still only velocity x dt_max (or max_deviation from the arm, if nearer).
    paused = filt.filter(Stamped(far, filt.names, 10.0), Stamped(start, filt.names, 10.0), 10.0).command
    np.testing.assert_allclose(paused[:n] - start[:n], np.minimum(velocity * config.dt_max, config.max_deviation))
    # Right after a publish, only velocity x dt_min.
    now = 10.0 + config.dt_min
    quick = filt.filter(Stamped(far, filt.names, now), Stamped(paused, filt.names, now), now).command
    np.testing.assert_allclose(quick[:n] - paused[:n], velocity * config.dt_min)


# --- 5. acceleration and jerk ----------------------------------------------------------------------------------------

def derivatives(filt: SafetyFilter, records: list[Record]):
    """(acceleration, jerk) of every published step that is not a hold, as the filter defines them: finite
    differences over its dt; a hold (and the start) brings the reference to rest."""
    n = filt.limits.num_joints
    velocity = acceleration = np.zeros(n)
    for record, q1, dt in published(filt, records):
        if record.result.held:
            velocity = acceleration = np.zeros(n)
            continue
        new_velocity = (record.result.command[:n] - q1) / dt
        new_acceleration = (new_velocity - velocity) / dt
        yield record, new_acceleration, (new_acceleration - acceleration) / dt, dt
        velocity, acceleration = new_velocity, new_acceleration


@settings(max_examples=80, deadline=None)
@given(arms(acceleration=True, tracking=True), sessions)
def test_inv05_acceleration_bounded_while_arm_follows(arm, steps):
    filt = fresh(arm)
    limits = filt.limits
    # Any commands, holds and e-stops, but the arm follows: no random measured positions.
    records = run(filt, steps, states=["track", "nonfinite", "names", "stale"])
    for _, acceleration, _, dt in derivatives(filt, records):
        tolerance = 1e-6 * limits.acceleration + 8 * np.spacing(10.0) / dt**2
        assert np.all(np.abs(acceleration) <= limits.acceleration + tolerance)


@settings(max_examples=80, deadline=None)
@given(arms(wide=True, acceleration=True, jerk=True, tracking=True), sessions)
def test_inv05_jerk_bounded_away_from_position_limits(arm, steps):
    filt = fresh(arm)
    limits = filt.limits
    records = run(filt, steps, commands=["walk"], states=["track"], events=False)
    for record, acceleration, jerk, dt in derivatives(filt, records):
        ulp = np.spacing(np.abs(record.result.command).max() + 1.0)  # rounding of positions, amplified by 1/dt^k
        assert np.all(np.abs(acceleration) <= limits.acceleration * (1 + 1e-6) + 16 * ulp / dt**2)
        assert np.all(np.abs(jerk) <= limits.jerk * (1 + 1e-6) + 64 * ulp / dt**3)


def chase(filt: SafetyFilter, targets: list[np.ndarray], gaps: list[float]) -> list[Record]:
    """Command `targets` (joints) one per step, `gaps` x dt_max apart, from an arm that tracks perfectly."""
    start = np.append(filt.limits.home, filt.limits.gripper_lower)
    now, records = 0.0, []
    for target, gap in zip(targets, gaps, strict=True):
        now += gap * filt.config.dt_max
        last = filt.last_command if filt.last_command is not None else start
        command = Stamped(np.append(target, last[-1]), filt.names, now)
        state = Stamped(last, filt.names, now)
        before = filt.last_command
        records.append(Record(now, command, state, before, filt.filter(command, state, now)))
    return records


gap_lists = st.lists(st.floats(0.3, 1.5), min_size=40, max_size=90)


@settings(max_examples=60, deadline=None)
@given(arms(acceleration=True, jerk=False, tracking=True, agile=True), gap_lists, st.booleans())
def test_inv05_braking_distance_keeps_acceleration_bounded_at_the_soft_limits(arm, gaps, upward):
    filt = fresh(arm)
    limits = filt.limits
    beyond = limits.position_upper + 1.0 if upward else limits.position_lower - 1.0  # drive into a limit
    records = chase(filt, [beyond] * len(gaps), gaps)
    for _, acceleration, _, dt in derivatives(filt, records):
        assert np.all(np.abs(acceleration) <= limits.acceleration * (1 + 1e-6) + 16 * np.spacing(10.0) / dt**2)
    assert filt.diagnostics()["braking_limited"] > 0


@settings(max_examples=60, deadline=None)
@given(arms(wide=True, acceleration=True, jerk=True, tracking=True, agile=True), gap_lists, st.floats(0.2, 0.8))
def test_inv05_look_ahead_keeps_jerk_bounded_at_full_speed(arm, gaps, turn):
    filt = fresh(arm)
    limits = filt.limits
    far = limits.velocity * filt.config.dt_max * 1e3  # out of reach: the arm runs at full speed, then turns back
    targets = [far if k < turn * len(gaps) else -far for k in range(len(gaps))]
    records = chase(filt, targets, gaps)
    for record, acceleration, jerk, dt in derivatives(filt, records):
        ulp = np.spacing(np.abs(record.result.command).max() + 1.0)
        assert np.all(np.abs(acceleration) <= limits.acceleration * (1 + 1e-6) + 16 * ulp / dt**2)
        assert np.all(np.abs(jerk) <= limits.jerk * (1 + 1e-6) + 64 * ulp / dt**3)


def test_inv05_jerk_binds_at_high_rate(panda):
    """At 1 kHz the Panda's jerk limit is tighter than its acceleration limit: the filter ramps acceleration."""
    filt = panda
    n = filt.limits.num_joints
    start = np.append(filt.limits.home, 1.0)
    goal = start + np.append(np.full(n, 0.2), 0.0)
    accelerations, velocity, last = [np.zeros(n)], np.zeros(n), start[:n]
    for k in range(6):
        now = k * 0.001
        measured = filt.last_command if filt.last_command is not None else start
        result = filt.filter(Stamped(goal, filt.names, now), Stamped(measured, filt.names, now), now)
        new_velocity = (result.command[:n] - last) / 0.001
        accelerations.append((new_velocity - velocity) / 0.001)
        velocity, last = new_velocity, result.command[:n]
    jerks = np.diff(np.array(accelerations), axis=0) / 0.001
    assert np.all(np.abs(jerks) <= filt.limits.jerk * (1 + 1e-6))
    assert filt.diagnostics()["jerk_limited"] > 0


# --- 6. pass unchanged, idempotent, never reverses -------------------------------------------------------------------

def _session_then_probe(arm, steps, unit):
    """A filter after a session, and a valid fresh command and state at a valid later time."""
    filt = fresh(arm)
    now = end_time(run(filt, steps))  # after the whole session: nothing is too soon or held for freshness
    if filt.estopped:
        filt.reset_estop(now - 1.0)
    n = filt.limits.num_joints
    last = filt.last_command if filt.last_command is not None else np.append(filt.limits.home, 0.5)
    span = np.append(filt.limits.position_upper - filt.limits.position_lower, 1.0)
    command = Stamped(last + np.array(unit[: n + 1]) * span * 0.3, filt.names, now)
    state = Stamped(last + np.append(0.05 * filt.config.max_deviation * np.array(unit[:n]), 0.0), filt.names, now)
    return filt, command, state, now


unit8 = st.lists(st.floats(-1.0, 1.0), min_size=8, max_size=8)


@FAST
@given(arms(), sessions, unit8)
def test_inv06_filtering_twice_equals_once(arm, steps, unit):
    filt, command, state, now = _session_then_probe(arm, steps, unit)
    twin = copy.deepcopy(filt)
    once = filt.filter(command, state, now)
    assert once.publish and not once.held
    twice = twin.filter(Stamped(once.command, command.names, command.stamp), state, now)
    np.testing.assert_array_equal(twice.command, once.command)
    assert twice.interventions == ()  # the output is inside all limits, so it passes unchanged


def test_inv06_command_inside_limits_passes_unchanged(panda):
    filt = panda
    start = np.append(filt.limits.home, 1.0)
    filt.filter(Stamped(start, filt.names, 0.0), Stamped(start, filt.names, 0.0), 0.0)
    # A gentle move at 100 Hz from rest: 0.5 mrad is under velocity, acceleration and jerk limits at dt = 0.01.
    nudge = start + np.append(np.full(7, 5e-4), -0.5)
    result = filt.filter(Stamped(nudge, filt.names, 0.01), Stamped(start, filt.names, 0.01), 0.01)
    np.testing.assert_array_equal(result.command, nudge)
    assert result.interventions == ()


@FAST
@given(arms(), sessions, unit8, unit8)
def test_inv06_clamping_never_reverses_direction(arm, steps, unit, other):
    filt, command, state, now = _session_then_probe(arm, steps, unit)
    n = filt.limits.num_joints
    q1 = filt.last_command[:n] if filt.last_command is not None else np.clip(
        np.asarray(state.values)[:n], filt.soft_lower, filt.soft_upper)
    outputs = {}
    for name, values in (("command", command.values), ("other", command.values + np.array(other[: n + 1])),
                         ("still", np.append(q1, command.values[n]))):
        twin = copy.deepcopy(filt)
        outputs[name] = twin.filter(Stamped(values, command.names, command.stamp), state, now).command[:n]
    # Per joint, the output is monotone in the command: more command never gives less output.
    wanted = np.asarray(command.values)[:n]
    more = wanted + np.array(other[:n])
    assert np.all((outputs["other"] - outputs["command"]) * (more - wanted) >= 0)
    # When standing still is allowed, the output moves only the way the command asks.
    if np.array_equal(outputs["still"], q1):
        assert np.all((outputs["command"] - q1) * (wanted - q1) >= 0)


# --- 7. stale command or state holds; resuming needs a fresh command --------------------------------------------------

@FAST
@given(arms(), st.sampled_from(["command", "state"]), st.floats(1.01, 100.0), st.floats(0.0, 0.99))
def test_inv07_stale_holds_and_resuming_needs_fresh_command(arm, stale, age_factor, resume_age_factor):
    filt = fresh(arm)
    config = filt.config
    start = np.append(filt.limits.home, filt.limits.gripper_lower)
    first = filt.filter(Stamped(start, filt.names, 0.0), Stamped(start, filt.names, 0.0), 0.0)
    target = start + np.append(np.full(filt.limits.num_joints, 0.05), 0.0)
    now = 10.0
    timeout = config.command_timeout if stale == "command" else config.state_timeout
    old = now - age_factor * timeout
    command = Stamped(target, filt.names, old if stale == "command" else now - 1e-3)
    state = Stamped(start, filt.names, old if stale == "state" else now)
    held = filt.filter(command, state, now)
    assert held.held and held.interventions == ("stale_hold",)
    np.testing.assert_array_equal(held.command, first.command)
    # Fresh state again, and a command young enough, but issued before the hold: still held.
    later = now + config.dt_min
    assume(config.dt_min + 1e-3 < config.command_timeout)
    issued_before = Stamped(target, filt.names, now - resume_age_factor * min(config.command_timeout, 1e-3))
    again = filt.filter(issued_before, Stamped(start, filt.names, later), later)
    assert again.held and again.interventions == ("stale_hold",)
    # A command issued after the hold moves the arm.
    resume = later + config.dt_min
    resumed = filt.filter(Stamped(target, filt.names, resume), Stamped(start, filt.names, resume), resume)
    assert resumed.publish and not resumed.held


# --- 8. e-stop -------------------------------------------------------------------------------------------------------

@FAST
@given(arms(), sessions, sessions)
def test_inv08_estop_latches_until_reset_and_reset_moves_nothing(arm, before_steps, during_steps):
    filt = fresh(arm)
    start = end_time(run(filt, before_steps))
    stopped_at = filt.last_command
    filt.estop()
    during = [dict(step, event=None) for step in during_steps]  # no reset inside: it must stay latched
    records = run(filt, during, start=start)
    for record in records:
        result = record.result
        if math.isfinite(record.now):
            assert result.held and result.interventions == ("estop_hold",)
        assert result.command is stopped_at  # the very last command sent, whatever came in
    reset_time = end_time(records)
    assert filt.reset_estop(reset_time) is None
    assert filt.last_command is stopped_at and not filt.estopped
    assume(stopped_at is not None)
    # Commands issued before the reset do not resume; the reset itself sent nothing new.
    n = filt.limits.num_joints
    target = stopped_at + np.append(np.full(n, 0.01), 0.0)
    now = reset_time + filt.config.dt_max
    old = filt.filter(Stamped(target, filt.names, reset_time), Stamped(stopped_at, filt.names, now), now)
    assert old.held and old.command is stopped_at


def test_inv08_estop_overrides_hold_and_counts(panda):
    filt = panda
    start = np.append(filt.limits.home, 1.0)
    filt.filter(Stamped(start, filt.names, 0.0), Stamped(start, filt.names, 0.0), 0.0)
    filt.estop()
    assert filt.hold(1.0).interventions == ("estop_hold",)
    bad = Stamped(np.full(8, math.nan), filt.names, 2.0)
    assert filt.filter(bad, bad, 2.0).interventions == ("estop_hold",)
    assert filt.diagnostics()["estop_hold"] == 2 and filt.diagnostics()["estop_latched"] == 1


# --- 9. workspace and gripper -----------------------------------------------------------------------------------------

def planar_fk(q: np.ndarray) -> np.ndarray:
    """A 3-D arm of unit links whose joints alternate between two planes: nonlinear, coupled, cheap."""
    angles = np.cumsum(q)
    return np.array([np.cos(angles).sum(), np.sin(angles[::2]).sum(), 0.3 * np.sin(angles[1::2]).sum()])


@FAST
@given(arms(), sessions, st.floats(0.05, 2.0), st.booleans())
def test_inv09_end_effector_stays_in_workspace_and_gripper_in_range(arm, steps, size, start_outside):
    limits, config = arm
    home_position = planar_fk(limits.home)
    center = home_position + (np.array([size + 0.5, 0, 0]) if start_outside else 0.0)
    config = dataclasses.replace(config, workspace_lower=center - size, workspace_upper=center + size)
    filt = SafetyFilter(limits, config, fk=planar_fk)

    def excess(q):
        gap = np.maximum(np.maximum(config.workspace_lower - planar_fk(q), planar_fk(q) - config.workspace_upper), 0)
        return float(np.linalg.norm(gap))

    n, previous = limits.num_joints, None
    for record in run(filt, steps):
        command = record.result.command
        if command is None:
            continue
        assert limits.gripper_lower <= command[n] <= limits.gripper_upper
        if record.result.publish:
            now_excess = excess(command[:n])
            if previous is not None:  # never farther from the box; inside stays inside
                assert now_excess <= previous + 1e-12
            previous = now_excess


def test_inv09_mujoco_fk_matches_the_scene(panda_limits):
    pytest.importorskip("mujoco")
    from vla.robot_bridge.safety import mujoco_fk
    from vla.sim.kinematics import PinchIK
    from vla.sim.scene import build_model

    fk = mujoco_fk(panda_limits)
    ik = PinchIK(build_model(panda_limits, 16), panda_limits)
    qpos = ik.data.qpos.copy()
    qpos[ik.qpos_idx] = panda_limits.home
    ik.set_qpos(qpos)
    np.testing.assert_allclose(fk(panda_limits.home), ik.site_pose()[0], atol=1e-12)
    turned = panda_limits.home.copy()
    turned[0] += 0.5  # joint1 turns the arm about the vertical axis through the base
    a, b = fk(panda_limits.home), fk(turned)
    assert a[2] == pytest.approx(b[2]) and np.hypot(*a[:2]) == pytest.approx(np.hypot(*b[:2]))


def test_inv09_panda_workspace_clamps_a_dive_into_the_table(panda_limits):
    pytest.importorskip("mujoco")
    from vla.robot_bridge.safety import mujoco_fk

    fk = mujoco_fk(panda_limits)
    filt = SafetyFilter.from_config("panda", fk=fk)
    start = np.append(panda_limits.home, 1.0)
    filt.filter(Stamped(start, filt.names, 0.0), Stamped(start, filt.names, 0.0), 0.0)
    dive = start.copy()
    dive[1] += 1.2  # shoulder forward and down, through the table top
    now, last = 0.0, start
    for _ in range(40):
        now += 0.1
        last = filt.filter(Stamped(dive, filt.names, now), Stamped(last, filt.names, now), now).command
        assert fk(last[:7])[2] >= filt.config.workspace_lower[2]
    assert filt.diagnostics()["workspace_clamped"] > 0


# --- 10. trajectories and chunk age --------------------------------------------------------------------------------

@FAST
@given(st.integers(0, 64), st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-320, 0.1])),
       st.booleans())
def test_inv10_trajectory_time_from_start_strictly_increasing(length, dt, corrupt):
    positions = np.zeros((length, 8))
    if corrupt and length:
        positions[length // 2, 3] = math.nan
    valid = length > 0 and not corrupt and math.isfinite(dt) and dt > 0 and math.isfinite(dt * length)
    if not valid:
        with pytest.raises(ValueError):
            trajectory_points(positions, dt)
        return
    points, time_from_start = trajectory_points(positions, dt)
    assert points.shape == (length, 8) and time_from_start.shape == (length,)
    assert time_from_start[0] > 0 and np.all(np.diff(time_from_start) > 0) and np.isfinite(time_from_start).all()


@FAST
@given(arms(), st.floats(0.0, 3.0))
def test_inv10_chunks_older_than_latency_budget_are_dropped(arm, age_factor):
    filt = fresh(arm)
    config = filt.config
    start = np.append(filt.limits.home, filt.limits.gripper_lower)
    chunk = np.repeat(start[None], 16, axis=0)
    now = 100.0
    assume(abs(age_factor - 1.0) > 1e-9)  # at the boundary the age rounds either way
    stamp = now - age_factor * config.latency_budget
    verdict = filt.check_chunk(Stamped(chunk, filt.names, stamp), config.dt_max, Stamped(start, filt.names, now), now)
    assert verdict.ok == (age_factor <= 1.0)
    if not verdict.ok:
        assert any("latency budget" in reason for reason in verdict.reasons)
        assert filt.diagnostics()["chunk_rejected"] == 1


def test_chunk_with_big_first_step_jump_is_rejected_with_reason(panda):
    filt = panda
    start = np.append(filt.limits.home, 1.0)
    dt = 0.1
    chunk = start + np.outer(np.arange(1, 17) * 0.01, np.append(np.ones(7), 0.0))  # a gentle 0.1 rad/s drift
    state = Stamped(start, filt.names, 0.0)
    assert filt.check_chunk(Stamped(chunk, filt.names, 0.0), dt, state, 0.0).ok
    jumped = chunk.copy()
    jumped[:, 2] += 0.6  # the whole chunk starts 0.6 rad away on joint3
    verdict = filt.check_chunk(Stamped(jumped, filt.names, 0.0), dt, state, 0.0)
    assert not verdict.ok and len(verdict.reasons) == 1
    assert "first step moves joint3" in verdict.reasons[0] and "max_deviation" in verdict.reasons[0]
    fast = chunk.copy()
    fast[8:, 0] += 0.5  # a jump mid-chunk: too fast and too sharp
    reasons = filt.check_chunk(Stamped(fast, filt.names, 0.0), dt, state, 0.0).reasons
    assert any("joint1 at 5.100 rad/s" in r for r in reasons) and any("accelerates joint1" in r for r in reasons)
    bad = chunk.copy()
    bad[3, 4] = math.nan
    assert filt.check_chunk(Stamped(bad, filt.names, 0.0), dt, state, 0.0).reasons == ("chunk has non-finite values",)
    assert filt.diagnostics()["chunk_rejected"] == 3


# --- 11. invalid config refuses to start ----------------------------------------------------------------------------

PANDA_YAML = CONF_DIR / "robot" / "panda.yaml"
SAFETY_KEYS = list(yaml.safe_load(PANDA_YAML.read_text())["safety"])
INVALID = {"position_margin": [-0.1, 5.0, "x", None], "max_deviation": [0, -1, math.inf],
           "max_rate_hz": [0, "fast", True], "dt_max": [1e-5, -1.0, None], "command_timeout": [0, math.nan],
           "state_timeout": [-1, [1]], "latency_budget": [0.0, "1s"], "enforce_acceleration": ["yes", 1, None],
           "enforce_jerk": [0], "gripper_name": ["", 3, "joint1"],
           "workspace_lower": [[0, 0], "box", [1.0, 0.0, 0.0], None], "workspace_upper": [[0, 0, math.nan]]}


def write_config(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(PANDA_YAML.read_text())
    edit(raw)
    path = tmp_path / "arm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_inv11_every_key_is_validated():
    assert set(INVALID) == set(SAFETY_KEYS) == set(SafetyConfig.__dataclass_fields__)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SAFETY_KEYS), st.data())
def test_inv11_invalid_safety_config_names_file_and_key(tmp_path, key, data):
    value = data.draw(st.sampled_from(INVALID[key]))
    path = write_config(tmp_path, lambda raw: raw["safety"].__setitem__(key, value))
    with pytest.raises(LimitsError) as error:
        SafetyFilter.from_config(path, fk=lambda q: np.zeros(3))
    assert str(path) in str(error.value) and f"'safety.{key}'" in str(error.value)


@pytest.mark.parametrize("key", SAFETY_KEYS)
def test_inv11_missing_safety_key_names_it(tmp_path, key):
    path = write_config(tmp_path, lambda raw: raw["safety"].pop(key))
    with pytest.raises(LimitsError, match=re.escape(f"{path}: missing key 'safety.{key}'")):
        load_safety_config(path)


def test_inv11_missing_or_unknown_section_and_files(tmp_path):
    path = write_config(tmp_path, lambda raw: raw.pop("safety"))
    with pytest.raises(LimitsError, match="missing key 'safety'"):
        load_safety_config(path)
    path = write_config(tmp_path, lambda raw: raw["safety"].__setitem__("max_velocity", 1.0))
    with pytest.raises(LimitsError, match="unknown key 'safety.max_velocity'"):
        load_safety_config(path)
    path = write_config(tmp_path, lambda raw: raw.pop("jerk"))
    with pytest.raises(LimitsError, match=re.escape(f"{path}: missing key 'jerk'")):
        SafetyFilter.from_config(path, fk=planar_fk)
    with pytest.raises(LimitsError, match="not found"):
        SafetyFilter.from_config(tmp_path / "nowhere.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("safety: [unclosed")
    with pytest.raises(LimitsError, match=re.escape(str(broken))):
        load_safety_config(broken)


def test_inv11_workspace_without_fk_refuses_to_start(panda_limits):
    with pytest.raises(LimitsError, match="safety.workspace_lower"):
        SafetyFilter(panda_limits, load_safety_config("panda", panda_limits))


# --- 12. pure function of inputs and injected time; publish rate ----------------------------------------------------

@FAST
@given(arms(), sessions)
def test_inv12_replay_is_deterministic_and_reads_no_clock(arm, steps):
    def no_clock(*args):
        raise AssertionError("the safety filter read the wall clock")

    first, second = fresh(arm), fresh(arm)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "perf_counter_ns"):
            patch.setattr(time, name, no_clock)
        records = run(first, steps), run(second, steps)
    for a, b in zip(*records, strict=True):
        assert (a.result.publish, a.result.held, a.result.interventions) == (
            b.result.publish, b.result.held, b.result.interventions)
        np.testing.assert_array_equal(a.result.command, b.result.command)
    assert first.diagnostics() == second.diagnostics()


@FAST
@given(arms(), sessions)
def test_inv12_publish_rate_never_exceeds_max(arm, steps):
    filt = fresh(arm)
    records = run(filt, steps)
    times = [record.now for record in records if record.result.publish]
    assert np.all(np.diff(times) >= filt.config.dt_min - 1e-9)
    skipped = [record for record in records if record.result.interventions == ("rate_skipped",)]
    for record in skipped:
        assert not record.result.publish and record.result.command is record.before
    assert filt.diagnostics()["published"] == len(times)


# --- config and diagnostics -----------------------------------------------------------------------------------------

@pytest.fixture
def panda_limits() -> RobotLimits:
    return load_robot_limits("panda")


@pytest.fixture
def panda(panda_limits) -> SafetyFilter:
    """The Panda's filter without its workspace box (no mujoco needed)."""
    config = dataclasses.replace(load_safety_config("panda", panda_limits), workspace_lower=None,
                                 workspace_upper=None)
    return SafetyFilter(panda_limits, config)


def test_panda_safety_config_loads_and_diagnostics_list_every_kind(panda):
    assert panda.names == (*panda.limits.joint_names, "gripper")
    diagnostics = panda.diagnostics()
    assert set(KINDS) <= set(diagnostics) and diagnostics["published"] == 0
    assert panda.hold(0.0).publish is False  # nothing sent yet: nothing to hold
