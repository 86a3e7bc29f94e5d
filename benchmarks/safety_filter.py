"""Safety filter: cost per command and per chunk against `np.clip` in the same run, and 10^6 commands through it
counted by an independent checker.

Measures (median and p99 of individually timed calls, Panda limits from conf/robot/panda.yaml):
- `SafetyFilter.filter` on a smooth walk (a policy's usual commands, rarely clamped) and on commands that trip
  the bounds every step, against `np.clip` of the same command to the position limits (the anchor: a naive
  filter) - the ratio is the price of the other invariants;
- `SafetyFilter.check_chunk` on a 16-step chunk, against `np.clip` of the chunk;
- the filter with the Panda's workspace box through MuJoCo forward kinematics, against one FK call.
Then runs --commands random commands (a random walk with wild outliers, huge values, NaN/inf, stale stamps,
wrong names, stale and NaN states, e-stops and watchdog holds, clock jitter across 1 kHz..10 Hz) through the filter
and counts limit violations with a checker written here from the limits alone (must be 0).
Writes results JSON + a Markdown table (default: benchmarks/results/safety_filter.{json,md}).

    python benchmarks/safety_filter.py [--commands 1000000] [--timed 20000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from vla.limits import RobotLimits, SafetyConfig, load_robot_limits, load_safety_config
from vla.robot_bridge.safety import FK, SafetyFilter, Stamped, mujoco_fk
from vla.sim.report import machine_info


def percentiles_us(nanoseconds: list[int]) -> dict:
    values = np.array(nanoseconds) / 1e3
    return {"median_us": float(np.median(values)), "p99_us": float(np.percentile(values, 99))}


def time_filter(filt: SafetyFilter, commands: np.ndarray, period: float) -> dict:
    """Time each `filter` call on `commands` sent `period` apart from an arm that tracks them."""
    names, start = filt.names, commands[0]
    times, now = [], 0.0
    filt.filter(Stamped(start, names, now), Stamped(start, names, now), now)
    for values in commands:
        now += period
        last = filt.last_command
        command, state = Stamped(values, names, now), Stamped(last, names, now)
        tic = time.perf_counter_ns()
        filt.filter(command, state, now)
        times.append(time.perf_counter_ns() - tic)
    return percentiles_us(times)


def time_calls(call, count: int) -> dict:
    times = []
    for _ in range(count):
        tic = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - tic)
    return percentiles_us(times)


def measure_cost(limits: RobotLimits, config: SafetyConfig, timed: int, rng: np.random.Generator) -> dict:
    period = 0.01  # 100 Hz
    home = np.append(limits.home, 1.0)
    # Smooth: a slow sine sweep (0.2 rad, 0.5 Hz), well inside every limit. Tripping: +-0.3 rad jumps every step.
    t = np.arange(timed) * period
    smooth = home + 0.2 * np.outer(np.sin(2 * np.pi * 0.5 * t), np.append(np.ones(7), 0.0))
    tripping = home + rng.uniform(-0.3, 0.3, size=(timed, 8))
    lower, upper = limits.position_lower, limits.position_upper
    command = tripping[0, :7]
    results = {
        "clip_anchor": time_calls(lambda: np.clip(command, lower, upper), timed),
        "filter_smooth": time_filter(SafetyFilter(limits, config), smooth, period),
        "filter_tripping": time_filter(SafetyFilter(limits, config), tripping, period),
    }

    filt = SafetyFilter(limits, config)
    dt = 0.1
    chunk = home + np.outer(np.arange(1, 17) * 0.01, np.append(np.ones(7), 0.0))
    stamped, state = Stamped(chunk, filt.names, 0.0), Stamped(home, filt.names, 0.0)
    assert filt.check_chunk(stamped, dt, state, 0.0).ok
    low, high = np.append(filt.soft_lower, limits.gripper_lower), np.append(filt.soft_upper, limits.gripper_upper)
    results["chunk_clip_anchor"] = time_calls(lambda: np.clip(chunk, low, high), timed)
    results["chunk_check"] = time_calls(lambda: filt.check_chunk(stamped, dt, state, 0.0), timed)

    fk = mujoco_fk(limits)
    boxed = load_safety_config("panda", limits)
    results["fk_anchor"] = time_calls(lambda: fk(limits.home), timed // 4)
    results["filter_smooth_workspace"] = time_filter(SafetyFilter(limits, boxed, fk), smooth[: timed // 4], period)
    return results


def stress(limits: RobotLimits, config: SafetyConfig, count: int, rng: np.random.Generator,
           fk: FK | None = None, center: np.ndarray | None = None) -> dict:
    """Push `count` random commands, a random walk drifting toward `center` (default: home), through the filter;
    return what was sent and what was asked."""
    filt = SafetyFilter(limits, config, fk)
    names, n = filt.names, limits.num_joints
    home = np.append(limits.home, 1.0)
    center = home if center is None else center
    hard_low = np.append(limits.position_lower, limits.gripper_lower) - 0.5
    hard_high = np.append(limits.position_upper, limits.gripper_upper) + 0.5
    walk_scale = np.append(limits.velocity, 1.0)

    sent = np.full((count, n + 1), np.nan)
    measured_log = np.full((count, n + 1), np.nan)
    times = np.full(count, np.nan)
    published = np.zeros(count, bool)
    held = np.zeros(count, bool)
    bad_input = np.zeros(count, bool)
    target, now, period = home.copy(), 0.0, 0.01
    block = 1000
    for begin in range(0, count, block):
        size = min(block, count - begin)
        period = float(rng.choice([0.001, 0.002, 0.01, 0.1]))  # 1 kHz .. 10 Hz, changing every block
        gaps = period * rng.uniform(0.5, 1.5, size)
        gaps[rng.random(size) < 0.002] = 1.0  # pauses
        gaps[rng.random(size) < 0.005] = 0.0  # bursts: too soon
        roughness = float(rng.choice([0.05, 0.5]))  # a smooth walk or one that trips the bounds every step
        steps = rng.normal(0.0, roughness, (size, n + 1)) * walk_scale * period
        kind = rng.random(size)
        wild = rng.uniform(hard_low, hard_high, (size, n + 1))
        noise = rng.uniform(-0.02, 0.02, (size, n + 1))
        for i in range(size):
            k = begin + i
            now += gaps[i]
            target = np.clip(target + steps[i] - 0.002 * (target - center), hard_low, hard_high)
            values, names_in, stamp, state_stamp = target, names, now, now
            last = filt.last_command if filt.last_command is not None else home
            measured = last + noise[i]  # the arm follows within 2 cm-rad
            r = kind[i]
            if r < 0.01:
                values = wild[i]  # an outlier anywhere in (and beyond) the limits
            elif r < 0.011:
                values = wild[i] * 1e9
            elif r < 0.012:
                values = target.copy()
                values[int(r * 1e6) % (n + 1)] = (math.nan, math.inf, -math.inf)[int(r * 1e7) % 3]
            elif r < 0.013:
                stamp = now - 10.0
            elif r < 0.014:
                names_in = names[::-1]
            elif r < 0.015:
                measured = np.full(n + 1, math.nan)
            elif r < 0.016:
                state_stamp = now - 10.0
            elif r < 0.01602:
                filt.estop()
            elif filt.estopped and r < 0.03:  # released after ~70 steps
                filt.reset_estop(now)
            bad_input[k] = not (np.isfinite(values).all() and np.isfinite(measured).all())
            if 0.9998 <= r:
                result = filt.hold(now)
            else:
                result = filt.filter(Stamped(values, names_in, stamp), Stamped(measured, names, state_stamp), now)
            if result.publish:
                sent[k], times[k], published[k], held[k] = result.command, now, True, result.held
                measured_log[k] = measured
    if filt.estopped:
        filt.reset_estop(now)
    return {"sent": sent[published], "times": times[published], "held": held[published],
            "measured": measured_log[published], "diagnostics": filt.diagnostics(),
            "bad_input_published_moving": int(np.sum(bad_input & published & ~held))}


def check_workspace(config: SafetyConfig, fk: FK, run: dict) -> tuple[int, np.ndarray]:
    """Published commands whose end effector (by `fk`) is outside the workspace box, and which steps end within
    1 mm of its walls."""
    positions = np.array([fk(q) for q in run["sent"][:, :7]])
    room = np.minimum(positions - config.workspace_lower, config.workspace_upper - positions).min(axis=1)
    return int(np.sum(room < -1e-9)), room <= 1e-3


def check(limits: RobotLimits, config: SafetyConfig, run: dict, at_wall: np.ndarray | None = None) -> dict:
    """Count violations of the limits in what was sent, from the limits alone (not the filter's code).

    Invariant 5 lets acceleration and jerk yield where a higher bound stops the arm: `at_wall` marks the steps
    that reach the workspace box (the step after one is exempt too, as it starts from an abrupt stop)."""
    q, t, held = run["sent"][:, :7], run["times"], run["held"]
    gripper = run["sent"][:, 7]
    lower = limits.position_lower + config.position_margin
    upper = limits.position_upper - config.position_margin
    dt_min, dt_max = 1.0 / config.max_rate_hz, config.dt_max
    violations = {
        "non_finite": int(np.sum(~np.isfinite(run["sent"]).all(axis=1))),
        "outside_soft_limits": int(np.sum((q < lower) | (q > upper))),
        "gripper_out_of_range": int(np.sum((gripper < limits.gripper_lower) | (gripper > limits.gripper_upper))),
        "publish_faster_than_max_rate": int(np.sum(np.diff(t) < dt_min - 1e-9)),
        "nonfinite_input_moved_the_arm": run["bad_input_published_moving"],
    }
    dt = np.clip(np.diff(t), dt_min, dt_max)[:, None]
    step = np.diff(q, axis=0)
    violations["velocity"] = int(np.sum(np.abs(step) > limits.velocity * dt * (1 + 1e-9) + 1e-12))
    violations["hold_moved"] = int(np.sum(held[1:] & np.any(step != 0, axis=1)))
    moving = ~held
    deviation = np.abs(q - run["measured"][:, :7])[moving]
    violations["distance_from_measured"] = int(np.sum(deviation > config.max_deviation + 1e-9))

    # Acceleration and jerk between consecutive steps that are not holds; a hold (and the start) is at rest.
    velocity = np.vstack([np.zeros(7), step / dt])
    velocity[held] = 0.0
    acceleration = np.vstack([np.zeros(7), np.diff(velocity, axis=0) / dt])
    acceleration[held] = 0.0
    jerk = np.diff(acceleration, axis=0) / dt
    after_motion = moving[1:, None].copy()  # the step itself is not a hold
    after_motion[:2] = False  # the first publish starts from the measured position, which is not logged
    ulp = 4 * np.spacing(4.0)
    accel_bad = (np.abs(acceleration[1:]) > limits.acceleration * (1 + 1e-6) + 4 * ulp / dt**2) & after_motion
    jerk_bad = (np.abs(jerk) > limits.jerk * (1 + 1e-6) + 8 * ulp / dt**3) & after_motion
    if at_wall is not None:
        wall = (at_wall[1:] | at_wall[:-1])[:, None]
        exempt = {"acceleration_at_workspace_wall": int(np.sum(accel_bad & wall)),
                  "jerk_at_workspace_wall": int(np.sum(jerk_bad & wall))}
        accel_bad, jerk_bad = accel_bad & ~wall, jerk_bad & ~wall
    else:
        exempt = {}
    violations["acceleration"] = int(np.sum(accel_bad))
    # Invariant 5 lets the jerk bound yield within braking distance of a soft limit only (no jerk look-ahead there).
    speed = np.abs(velocity[1:])
    room = np.minimum(q[:-1] - lower, upper - q[:-1])
    near_limit = room <= speed**2 / (2 * limits.acceleration) + speed * dt + 1e-9
    violations["jerk_away_from_position_limits"] = int(np.sum(jerk_bad & ~near_limit))
    exempt["jerk_within_braking_distance"] = int(np.sum(jerk_bad & near_limit))
    return {"violations": violations, "exempt": exempt, "jerk_checked_steps": int(np.sum(after_motion))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=1_000_000, help="commands in the stress run")
    parser.add_argument("--timed", type=int, default=20_000, help="individually timed calls per measurement")
    parser.add_argument("--workspace-commands", type=int, default=20_000, help="commands in the workspace stress run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    limits = load_robot_limits("panda")
    config = dataclasses.replace(load_safety_config("panda", limits), workspace_lower=None, workspace_upper=None)
    load_before = os.getloadavg()
    cost = measure_cost(limits, config, args.timed, rng)
    tic = time.perf_counter()
    run = stress(limits, config, args.commands, rng)
    stress_seconds = time.perf_counter() - tic
    checked = check(limits, config, run)
    fk, boxed = mujoco_fk(limits), load_safety_config("panda", limits)
    # Drift toward a pose that reaches through the table top, so that the box is met often.
    through_table = np.append(limits.home + np.array([0.0, 1.2, 0.0, 0.6, 0.0, 0.0, 0.0]), 1.0)
    boxed_run = stress(limits, boxed, args.workspace_commands, rng, fk, through_table)
    outside_box, at_wall = check_workspace(boxed, fk, boxed_run)
    boxed_checked = check(limits, boxed, boxed_run, at_wall)
    boxed_checked["violations"]["end_effector_outside_workspace"] = outside_box

    anchor, chunk_anchor, fk_anchor = (cost[k]["median_us"] for k in ("clip_anchor", "chunk_clip_anchor", "fk_anchor"))
    results = {
        "machine": machine_info(),
        "load_average_1min": [load_before[0], os.getloadavg()[0]],
        "cost": cost,
        "ratios_to_anchor": {
            "filter_smooth": cost["filter_smooth"]["median_us"] / anchor,
            "filter_tripping": cost["filter_tripping"]["median_us"] / anchor,
            "chunk_check": cost["chunk_check"]["median_us"] / chunk_anchor,
            "filter_smooth_workspace": cost["filter_smooth_workspace"]["median_us"] / fk_anchor,
        },
        "stress": {"commands": args.commands, "published": len(run["times"]), "held": int(run["held"].sum()),
                   "seconds": stress_seconds, "us_per_command": stress_seconds / args.commands * 1e6,
                   "diagnostics": run["diagnostics"], **checked},
        "workspace_stress": {"commands": args.workspace_commands, "published": len(boxed_run["times"]),
                             "diagnostics": boxed_run["diagnostics"], **boxed_checked},
        "timed_calls": args.timed,
        "seed": args.seed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "safety_filter.json").write_text(json.dumps(results, indent=2))

    def row(label: str, key: str, ratio: str) -> str:
        c = cost[key]
        return f"| {label} | {c['median_us']:.1f} | {c['p99_us']:.1f} | {ratio} |"

    ratios = results["ratios_to_anchor"]
    stress_result, boxed_result = results["stress"], results["workspace_stress"]
    total = sum(stress_result["violations"].values())
    boxed_total = sum(boxed_result["violations"].values())
    machine = results["machine"]
    md = "\n".join([
        "# Safety filter", "",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, Python {machine['python']}; 1-min load "
        f"average {load_before[0]:.1f} before the run (the machine is shared). Each call timed alone; "
        f"{args.timed} calls per row (workspace rows: {args.timed // 4}).", "",
        "| measurement | median µs | p99 µs | ratio to anchor |", "|---|---|---|---|",
        row("`np.clip` of one command to the position limits (anchor)", "clip_anchor", "1.00"),
        row("`filter`, smooth walk at 100 Hz (rarely clamped)", "filter_smooth", f"{ratios['filter_smooth']:.1f}x"),
        row("`filter`, commands tripping the bounds every step", "filter_tripping",
            f"{ratios['filter_tripping']:.1f}x"),
        row("`np.clip` of a 16-step chunk (anchor)", "chunk_clip_anchor", "1.00"),
        row("`check_chunk`, 16 steps", "chunk_check", f"{ratios['chunk_check']:.1f}x"),
        row("MuJoCo forward kinematics, one call (anchor)", "fk_anchor", "1.00"),
        row("`filter` with the workspace box (MuJoCo FK), smooth walk", "filter_smooth_workspace",
            f"{ratios['filter_smooth_workspace']:.1f}x"), "",
        f"Stress run: {args.commands:,} commands in {stress_seconds:.0f} s "
        f"({stress_result['us_per_command']:.1f} µs each, input generation included); "
        f"{stress_result['published']:,} published, {stress_result['held']:,} of them holds. "
        f"Independent checker: **{total} violations**.", "",
        "| check | violations |", "|---|---|",
        *[f"| {name.replace('_', ' ')} | {value} |" for name, value in stress_result["violations"].items()],
        *[f"| {name.replace('_', ' ')} (allowed by invariant 5) | {value} |"
          for name, value in stress_result["exempt"].items()], "",
        "Interventions counted by the filter: " + ", ".join(
            f"{k} {v:,}" for k, v in stress_result["diagnostics"].items() if v and k != "published") + ".", "",
        f"With the workspace box (MuJoCo FK): {args.workspace_commands:,} commands, {boxed_result['published']:,} "
        f"published, {boxed_result['diagnostics']['workspace_clamped']:,} steps shortened at the box; "
        f"**{boxed_total} violations** (end effector outside the box: "
        f"{boxed_result['violations']['end_effector_outside_workspace']}; the same checks as above otherwise). "
        "Allowed by invariant 5 (the box outranks acceleration and jerk: it stops the arm at once): "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in boxed_result["exempt"].items()) + ".", "",
    ])
    (args.out / "safety_filter.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
