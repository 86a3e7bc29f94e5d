"""Chunk scheduler: interpolation, n_execute, inference delay, seam blending, worker thread, fault reporting."""

import logging
import math
import re
import threading
import time

import numpy as np
import pytest

from vla.robot_bridge.scheduler import ChunkScheduler, SchedulerConfig
from vla.robot_bridge.watchdog import FaultKind

POLICY_HZ, COMMAND_HZ = 10, 100
TICKS = COMMAND_HZ // POLICY_HZ  # command ticks per policy step
DT = 1 / COMMAND_HZ
HOME = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.785, 1.0])
SLOPE = np.linspace(0.01, 0.04, 8)  # rad per policy step: a ramp every chunk agrees on
POISON = 1e3  # value of every action past n_execute: it must never reach a command


def ramp(step):
    """The agreed trajectory's waypoint (8,) at policy step `step`."""
    return HOME + SLOPE * step


class FakePolicy:
    """Returns chunk `make(call_index, request_step)`; records the request step and kwargs of every call."""

    privileged = False

    def __init__(self, make):
        self.make = make
        self.calls = []  # (request step, kwargs)

    def reset(self, seed=None):
        pass

    def predict_chunk(self, obs):
        step = round(obs["now"] * POLICY_HZ)
        self.calls.append((step, {}))
        return self.make(len(self.calls) - 1, step)


class PrefixPolicy(FakePolicy):
    """Accepts `prefix=`; `make` gets it as a third argument."""

    def predict_chunk(self, obs, prefix=None):
        step = round(obs["now"] * POLICY_HZ)
        self.calls.append((step, {"prefix": prefix}))
        return self.make(len(self.calls) - 1, step, prefix)


def ramp_chunk(length=10, n_execute=None):
    """A chunk of the agreed ramp for the request step; rows past n_execute are poison."""

    def make(call, step, prefix=None):
        actions = np.stack([ramp(step + i + 1) for i in range(length)])
        n = length if n_execute is None else n_execute(call) if callable(n_execute) else n_execute
        actions[n:] = POISON
        return actions, n

    return make


def id_chunk(length=10, n_execute=10):
    """Every value of action i of call c is 1000 * (c + 1) + i: a waypoint names its chunk and index."""

    def make(call, step, prefix=None):
        return np.full((length, 8), 1000.0 * (call + 1)) + np.arange(length)[:, None], n_execute

    return make


def decode(waypoint):
    """(chunk, action index) of a waypoint made by `id_chunk`."""
    value = waypoint[0]
    assert np.all(waypoint == value) and value == round(value), "waypoint is a blend, not one chunk's action"
    return int(value // 1000) - 1, int(value % 1000)


class Clock:
    """Drives a scheduler tick by tick with injected time; the observation carries the tick time."""

    def __init__(self):
        self.now = 0.0

    def observation(self):
        return {"now": self.now}


def make(policy, clock, inline_latency_s=0.0, **config):
    config = {"policy_hz": POLICY_HZ, "command_hz": COMMAND_HZ, **config}
    return ChunkScheduler(policy, clock.observation, SchedulerConfig(**config), inline_latency_s=inline_latency_s)


def run(scheduler, clock, ticks, state=HOME, start=0):
    """Commands (ticks, 8) for ticks start..start + ticks - 1, checking no fault was raised."""
    commands = []
    for i in range(start, start + ticks):
        clock.now = i * DT
        commands.append(scheduler.next_command(clock.now, state))
        assert scheduler.pop_faults() == []
    return np.array(commands)


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("key, value", [
    ("policy_hz", 0), ("command_hz", -1.0), ("command_hz", 5.0), ("inference_deadline_s", math.nan),
    ("expected_latency_s", -0.1), ("ensemble_decay", -1.0), ("action_dim", 0), ("blend_steps", 0),
    ("blend_steps", 1.5), ("blend", "average"),
])
def test_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        SchedulerConfig(**{key: value})


def test_measured_state_shape_is_checked():
    clock = Clock()
    with make(FakePolicy(ramp_chunk()), clock) as scheduler, pytest.raises(ValueError, match="measured_state"):
        scheduler.next_command(0.0, np.zeros(7))


# ---------------------------------------------------------------------- interpolation
def test_interpolation_hits_waypoints_at_policy_instants_and_is_linear_between():
    clock = Clock()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (20, 8))
    policy = FakePolicy(lambda call, step: (actions, 20))
    with make(policy, clock, blend="crossfade", blend_steps=2) as scheduler:
        commands = run(scheduler, clock, 20 * TICKS)
    assert policy.calls[0][0] == 0  # requested at step 0: actions[i] is the waypoint of step i + 1
    # The seam from the initial hold is crossfaded over blend_steps=2 waypoints, then the chunk is hit exactly.
    assert np.allclose(commands[0], HOME)
    for i, w in enumerate([1 / 3, 2 / 3]):
        assert np.allclose(commands[(i + 1) * TICKS], (1 - w) * HOME + w * actions[i])
    for i in range(2, 18):
        np.testing.assert_allclose(commands[(i + 1) * TICKS], actions[i], atol=1e-12)
    for p in range(19):  # linear in joint space between consecutive policy instants
        a, b = commands[p * TICKS], commands[(p + 1) * TICKS]
        expected = a + np.arange(TICKS + 1)[:, None] / TICKS * (b - a)
        np.testing.assert_allclose(commands[p * TICKS:(p + 1) * TICKS + 1], expected, atol=1e-9)


# ---------------------------------------------------------------------- n_execute
@pytest.mark.parametrize("blend", ["crossfade", "temporal_ensemble", "inpaint"])
@pytest.mark.parametrize("latency", [0.0, 0.1, 0.25])
def test_actions_past_n_execute_never_reach_a_command(blend, latency):
    clock = Clock()
    cycle = [5, 8, 6, 12]
    make_chunk = ramp_chunk(length=12, n_execute=lambda call: cycle[call % len(cycle)])
    policy = PrefixPolicy(make_chunk) if blend == "inpaint" else FakePolicy(make_chunk)
    with make(policy, clock, inline_latency_s=latency, blend=blend) as scheduler:
        commands = run(scheduler, clock, 400)
    assert len(policy.calls) >= 8
    assert np.all(np.abs(commands) < 10), "an action past n_execute was commanded"
    if latency == 0.25:  # d = 3: a 5-action chunk leaves 2 executable steps, too few to cover the next inference
        assert scheduler.stats.starved_steps > 0


@pytest.mark.parametrize("latency, d", [(0.0, 0), (0.1, 1), (0.25, 3)])
def test_each_chunk_executes_a_contiguous_run_ending_within_n_execute(latency, d):
    # A policy that takes `prefix` but ignores it makes every seam a hard switch, so each waypoint names exactly
    # one chunk's action (decode) and we can count what each chunk executed.
    clock = Clock()
    policy = PrefixPolicy(id_chunk(length=12, n_execute=8))
    with make(policy, clock, inline_latency_s=latency, blend="inpaint", blend_steps=1) as scheduler:
        commands = run(scheduler, clock, 600)
    executed = {}
    for waypoint in commands[TICKS * (d + 1)::TICKS]:
        chunk, index = decode(waypoint)
        executed.setdefault(chunk, []).append(index)
    assert len(executed) >= 5
    for chunk, indices in list(executed.items())[:-1]:  # the last one may still be running
        assert indices == list(range(indices[0], indices[-1] + 1)), f"chunk {chunk} skipped or repeated actions"
        assert indices[0] == d, f"chunk {chunk} started at action {indices[0]}, expected d={d}"
        assert indices[-1] < 8, f"chunk {chunk} ran action {indices[-1]} past n_execute=8"
        # Requested with d + blend_steps executable actions left: the next one takes over blend_steps early.
        assert len(indices) == 8 - d - 1
    assert scheduler.stats.starved_steps == 0


# ---------------------------------------------------------------------- inference delay
@pytest.mark.parametrize("latency, d", [(0.0, 0), (0.05, 1), (0.1, 1), (0.25, 3), (0.3, 3)])
def test_first_d_actions_are_skipped(latency, d):
    clock = Clock()
    policy = FakePolicy(id_chunk(length=10, n_execute=10))
    # temporal_ensemble takes over from the initial hold at once, so the waypoints are pure chunk actions
    with make(policy, clock, inline_latency_s=latency, blend="temporal_ensemble") as scheduler:
        commands = run(scheduler, clock, (d + 3) * TICKS + 1)
    assert np.allclose(commands[: d * TICKS + 1], HOME), "must hold while the first chunk is in flight"
    assert decode(commands[(d + 1) * TICKS]) == (0, d)
    assert decode(commands[(d + 2) * TICKS]) == (0, d + 1)
    assert scheduler.stats.latency_s == pytest.approx(latency)


def test_a_stalled_control_loop_skips_by_the_latency_it_measured():
    clock = Clock()
    policy = FakePolicy(id_chunk(length=10, n_execute=10))
    with make(policy, clock, inline_latency_s=0.1, blend="temporal_ensemble") as scheduler:
        run(scheduler, clock, 5)
        (stalled,) = run(scheduler, clock, 1, start=37)  # 0.32 s without a tick: picked up at 0.37 s, d = 4
        assert scheduler.stats.latency_s == pytest.approx(0.37)
        (after,) = run(scheduler, clock, 1, start=50)
    assert np.allclose(stalled, HOME) and decode(after) == (0, 4)


def test_next_chunk_is_requested_early_enough_for_the_measured_latency():
    clock = Clock()
    policy = FakePolicy(ramp_chunk(length=16, n_execute=10))
    with make(policy, clock, inline_latency_s=0.25, expected_latency_s=0.0, blend="crossfade") as scheduler:
        commands = run(scheduler, clock, 800)
    requests = [step for step, _ in policy.calls]
    # After the first measurement (d = 3) every request leaves d + blend_steps = 5 executable actions: with the
    # chunk starting at action 3, that is 2 steps after it took over, every 5 steps.
    assert np.all(np.diff(requests[2:]) == 5)
    assert scheduler.stats.starved_steps == 0
    # Every chunk agrees on the ramp, so any blend of them is the ramp itself: the weights sum to 1.
    for p in range(6, 79):  # from the hold, the first chunk is crossfaded into waypoints 4 and 5
        np.testing.assert_allclose(commands[p * TICKS], ramp(p), atol=1e-9)


def test_chunk_that_arrives_past_its_n_execute_is_dropped():
    clock = Clock()
    policy = FakePolicy(ramp_chunk(length=10, n_execute=3))
    with make(policy, clock, inline_latency_s=0.35) as scheduler:  # d = 4 > n_execute
        commands = run(scheduler, clock, 200)
    assert scheduler.stats.chunks_stale >= 4
    assert np.allclose(commands, HOME)


# ---------------------------------------------------------------------- seams
def seam_commands(blend, offset, blend_steps=2, ensemble_decay=0.01):
    """Two chunks: the ramp, then the ramp shifted by `offset`; returns (commands, scheduler, policy)."""
    clock = Clock()

    def chunk(call, step, prefix=None):
        actions, n = ramp_chunk(length=12, n_execute=10)(call, step)
        if call > 0 and blend == "inpaint":  # an inpainting policy reproduces the prefix and continues from it
            actions[: len(prefix)] = prefix
        elif call > 0:
            actions[:n] += offset
        return actions, n

    policy = PrefixPolicy(chunk)
    with make(policy, clock, blend=blend, blend_steps=blend_steps, ensemble_decay=ensemble_decay) as scheduler:
        commands = run(scheduler, clock, 12 * TICKS, state=ramp(0))
    return commands, scheduler, policy


@pytest.mark.parametrize("blend, max_waypoint_step", [
    ("crossfade", 0.1 / 3),  # the offset arrives in blend_steps + 1 = 3 equal parts
    ("temporal_ensemble", 0.1 / (1 + math.exp(-0.01))),  # the older chunk's ACT weight, when it drops out
    ("inpaint", 0.0),  # the new chunk continues the prefix it was given
])
def test_each_blend_keeps_the_seam_continuous(blend, max_waypoint_step):
    offset = 0.1
    commands, _, _ = seam_commands(blend, offset)
    steps = np.abs(np.diff(commands, axis=0)) - SLOPE / TICKS  # beyond the ramp's own motion per tick
    assert steps.max() <= max_waypoint_step / TICKS + 1e-6  # chunks are float32; a hard switch steps offset / TICKS
    np.testing.assert_allclose(commands[11 * TICKS], ramp(11) + (0 if blend == "inpaint" else offset), atol=1e-6)


@pytest.mark.parametrize("blend", ["crossfade", "temporal_ensemble"])
def test_blend_weights_sum_to_one(blend):
    # Constant chunks A then B: every waypoint must be alpha * A + beta * B with alpha + beta = 1.
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (2, 8)).astype(np.float32).astype(np.float64)  # exact after the policy's float32
    clock = Clock()
    policy = FakePolicy(lambda call, step: (np.tile(a if call == 0 else b, (20, 1)), 10))
    with make(policy, clock, blend=blend, blend_steps=3, ensemble_decay=0.5) as scheduler:
        commands = run(scheduler, clock, 14 * TICKS, state=a)
    weights = []
    for waypoint in commands[::TICKS]:
        (alpha, beta), *_ = np.linalg.lstsq(np.stack([a, b], axis=1), waypoint, rcond=None)
        assert np.allclose(alpha * a + beta * b, waypoint, atol=1e-12)
        assert alpha + beta == pytest.approx(1.0, abs=1e-12) and -1e-12 <= beta <= 1 + 1e-12
        weights.append(beta)
    # B is requested at step 7 (3 executable actions left) and blended into waypoints 8, 9, 10.
    w = math.exp(-0.5) / (1 + math.exp(-0.5))
    expected = [1 / 4, 2 / 4, 3 / 4] if blend == "crossfade" else [w, w, w]
    np.testing.assert_allclose(weights, [0] * 8 + expected + [1] * 3, atol=1e-12)


def test_inpaint_passes_the_waypoints_the_current_plan_still_commands():
    commands, _, policy = seam_commands("inpaint", offset=0.1)
    step, kwargs = policy.calls[1]
    prefix = kwargs["prefix"]
    assert prefix.shape == (2, 8)  # requested with blend_steps = 2 executable actions left (measured d = 0)
    np.testing.assert_allclose(prefix, [ramp(step + 1), ramp(step + 2)], rtol=1e-6)  # float32
    # From the hold: d_est = ceil(expected_latency_s 0.1 s * 10 Hz) = 1 waypoint of the hold.
    np.testing.assert_allclose(policy.calls[0][1]["prefix"], [ramp(0)])


def test_inpaint_without_a_prefix_parameter_falls_back_to_crossfade_with_a_warning(caplog):
    clock = Clock()
    with caplog.at_level(logging.WARNING), make(FakePolicy(ramp_chunk()), clock, blend="inpaint") as scheduler:
        assert scheduler.blend == "crossfade"
    assert "falls back to crossfade" in caplog.text


# ---------------------------------------------------------------------- reset
def test_reset_holds_the_given_position_until_a_chunk_arrives_then_moves_off_it_continuously():
    clock = Clock()
    hold = ramp(0) + 0.05
    # A policy that plans from where the arm holds: action i is `hold` + (i + 1) ramp steps.
    policy = FakePolicy(lambda call, step: (hold + SLOPE * np.arange(1, 13)[:, None], 10))
    with make(policy, clock, inline_latency_s=0.2) as scheduler:
        run(scheduler, clock, 100)
        scheduler.reset(hold=hold)
        calls = len(policy.calls)
        commands = run(scheduler, clock, 60, start=100, state=np.zeros(8))  # the measured state is not used
    assert len(policy.calls) == calls + 1  # requested anew at once
    assert np.all(commands[: 2 * TICKS + 1] == hold)  # 0.2 s in flight: d = 2 steps of hold
    assert np.abs(np.diff(commands, axis=0)).max() < 3 * SLOPE.max() / TICKS


# ---------------------------------------------------------------------- faults
def test_raising_policy_is_reported_and_not_retried():
    clock = Clock()

    def boom(call, step):
        raise RuntimeError("boom")

    policy = FakePolicy(boom)
    with make(policy, clock, inline_latency_s=0.1) as scheduler:
        faults = []
        for i in range(30):
            clock.now = i * DT
            command = scheduler.next_command(clock.now, HOME)
            faults += [(i, fault) for fault in scheduler.pop_faults()]
            assert np.allclose(command, HOME)
    assert [(i, f.kind) for i, f in faults] == [(10, FaultKind.POLICY_ERROR)]  # due at 0.1 s = tick 10
    assert "RuntimeError: boom" in faults[0][1].message and faults[0][1].time == pytest.approx(0.1)
    assert len(policy.calls) == 1


@pytest.mark.parametrize("bad, match", [
    (lambda: np.full((4, 8), np.nan), r"non-finite actions in rows \[0, 1, 2, 3\]"),
    (lambda: np.zeros((4, 7)), r"shape \(T, 8\)"),
    (lambda: (np.zeros((4, 8)), 9), "n_execute=9"),
], ids=["nan", "wrong_shape", "bad_n_execute"])
def test_malformed_chunks_are_reported(bad, match):
    clock = Clock()
    with make(FakePolicy(lambda call, step: bad()), clock) as scheduler:
        scheduler.next_command(0.0, HOME)
        (fault,) = scheduler.pop_faults()
    assert fault.kind == FaultKind.POLICY_ERROR
    assert fault.message.startswith("predict_chunk failed: ValueError")
    assert re.search(match, fault.message)


def test_inline_slow_policy_is_reported_at_the_deadline_and_its_late_chunk_dropped():
    clock = Clock()
    policy = FakePolicy(ramp_chunk())
    with make(policy, clock, inline_latency_s=0.8, inference_deadline_s=0.5) as scheduler:
        ticks = {}
        for i in range(120):
            clock.now = i * DT
            scheduler.next_command(clock.now, HOME)
            for fault in scheduler.pop_faults():
                ticks[i] = fault
        assert list(ticks) == [51]  # the first tick past request time (0) + deadline
        assert ticks[51].kind == FaultKind.INFERENCE_DEADLINE and "0.510 s" in ticks[51].message
        assert scheduler.stats.chunks_received == 0 and len(policy.calls) == 1


def test_reset_while_the_policy_hangs_reports_the_deadline_again():
    clock = Clock()
    with make(FakePolicy(ramp_chunk()), clock, inline_latency_s=10.0, inference_deadline_s=0.5) as scheduler:
        run_until = 60
        for i in range(run_until):
            scheduler.next_command(i * DT, HOME)
        assert [f.kind for f in scheduler.pop_faults()] == [FaultKind.INFERENCE_DEADLINE]
        scheduler.reset(hold=HOME)
        scheduler.next_command(run_until * DT, HOME)
        assert [f.kind for f in scheduler.pop_faults()] == [FaultKind.INFERENCE_DEADLINE]


# ---------------------------------------------------------------------- worker thread (real time)
def real_time_loop(scheduler, duration_s, on_tick=None):
    """Runs next_command at COMMAND_HZ on the wall clock; returns (tick times, call durations, faults)."""
    start = time.monotonic()
    times, durations, faults = [], [], []
    for i in range(int(duration_s * COMMAND_HZ)):
        time.sleep(max(start + i * DT - time.monotonic(), 0.0))
        now = time.monotonic()
        scheduler.next_command(now, HOME)
        durations.append(time.monotonic() - now)
        times.append(now)
        faults += scheduler.pop_faults()
        if on_tick is not None and on_tick(faults):
            break
    return np.array(times), np.array(durations), faults


class SleepyPolicy:
    """Sleeps `delay_s` per chunk (or until `release` is set) and records each inference's wall interval."""

    privileged = False

    def __init__(self, delay_s, release=None):
        self.delay_s, self.release = delay_s, release
        self.intervals = []

    def reset(self, seed=None):
        pass

    def predict_chunk(self, obs):
        start = time.monotonic()
        if self.release is None:
            time.sleep(self.delay_s)
        else:
            self.release.wait(self.delay_s)
        self.intervals.append((start, time.monotonic()))
        return np.tile(HOME, (10, 1)), 3


def test_worker_thread_inference_overlaps_execution():
    policy = SleepyPolicy(0.12)  # n_execute=3: the next chunk is requested as soon as one takes over
    scheduler = ChunkScheduler(policy, dict, SchedulerConfig(policy_hz=POLICY_HZ, command_hz=COMMAND_HZ))
    with scheduler:
        times, durations, faults = real_time_loop(scheduler, 1.2)
    assert faults == []
    assert len(policy.intervals) >= 4 and scheduler.stats.chunks_received >= 4
    # The control loop kept ticking while the policy was busy, and no tick waited for it.
    busy = sum(np.sum((times > a) & (times < b)) for a, b in policy.intervals)
    assert busy >= 0.5 * len(policy.intervals) * 0.12 * COMMAND_HZ
    assert durations.max() < 0.05, f"next_command blocked for {durations.max():.3f} s"
    assert scheduler.stats.latency_s >= 0.12


def test_worker_thread_exception_is_reported():
    def boom(obs):
        raise RuntimeError("worker boom")

    policy = SleepyPolicy(0.0)
    policy.predict_chunk = boom
    with ChunkScheduler(policy, dict, SchedulerConfig()) as scheduler:
        _, _, faults = real_time_loop(scheduler, 2.0, on_tick=bool)
    assert [f.kind for f in faults] == [FaultKind.POLICY_ERROR] and "worker boom" in faults[0].message


def test_worker_thread_slow_policy_is_reported_without_blocking():
    release = threading.Event()
    policy = SleepyPolicy(5.0, release)
    with ChunkScheduler(policy, dict, SchedulerConfig(inference_deadline_s=0.1)) as scheduler:
        times, durations, faults = real_time_loop(scheduler, 2.0, on_tick=bool)
        release.set()
        assert [f.kind for f in faults] == [FaultKind.INFERENCE_DEADLINE]
        assert 0.1 < times[-1] - times[0] < 0.25  # reported on the first tick or so past the deadline
        assert durations.max() < 0.05
        real_time_loop(scheduler, 0.1)
        assert scheduler.stats.chunks_received == 0  # the late chunk is dropped
