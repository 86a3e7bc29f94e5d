"""Tabletop sim throughput against raw `mujoco.mj_step` on the same model, in the same run.

Measures, each as the median of `--repeats` timed blocks:
- raw physics: physics steps/s of `mj_step` on the env's own model (the anchor);
- env steps/s without rendering, and as physics steps/s, so the ratio to the anchor is the env's overhead;
- env steps/s with both cameras rendered;
- recording frames/s through `vla-record`'s writer (expert actions, rendering, LeRobotDataset v3 writing).
Writes results JSON + a Markdown table (default: benchmarks/results/sim_throughput.{json,md}).

    python benchmarks/sim_throughput.py [--steps 200] [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from vla.data.record import record_expert  # noqa: E402
from vla.sim.report import machine_info  # noqa: E402
from vla.sim.tabletop_env import TabletopEnv  # noqa: E402
from vla.sim.tasks import get_task  # noqa: E402


def median_rate(run, count: int, repeats: int) -> float:
    """Median over `repeats` blocks of `count` items per second."""
    rates = []
    for _ in range(repeats):
        tic = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - tic))
    return statistics.median(rates)


def env_rate(env: TabletopEnv, steps: int, repeats: int) -> float:
    env.reset(seed=0)
    hold = np.append(env.limits.home, 1.0).astype(np.float32)

    def run():
        for _ in range(steps):
            env.step(hold)

    return median_rate(run, steps, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="env steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record-episodes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    blind = TabletopEnv(render_images=False)
    substeps = blind.n_substeps
    model, data = blind.model, mujoco.MjData(blind.model)
    mujoco.mj_resetData(model, data)
    data.qpos[:7] = blind.limits.home
    data.ctrl[:7] = blind.limits.home

    def raw():
        for _ in range(args.steps * substeps):
            mujoco.mj_step(model, data)

    raw_physics = median_rate(raw, args.steps * substeps, args.repeats)
    env_no_render = env_rate(blind, args.steps, args.repeats)
    seeing = TabletopEnv()
    env_render = env_rate(seeing, max(20, args.steps // 4), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        task = get_task("put_red_cube_in_bin")
        tic = time.perf_counter()
        record_expert([task], args.record_episodes, Path(tmp) / "demos", {"image_size": 128})
        elapsed = time.perf_counter() - tic
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        frames = LeRobotDataset("local/demos", root=Path(tmp) / "demos").num_frames
    record_fps = frames / elapsed

    results = {
        "machine": machine_info(),
        "control_hz": round(1 / blind.control_dt),
        "physics_substeps_per_env_step": substeps,
        "raw_mj_step_per_s": raw_physics,
        "env_steps_per_s_no_render": env_no_render,
        "env_physics_steps_per_s_no_render": env_no_render * substeps,
        "env_overhead_ratio_no_render": raw_physics / (env_no_render * substeps),
        "env_steps_per_s_render": env_render,
        "render_cost_ratio": env_no_render / env_render,
        "record_frames_per_s": record_fps,
        "record_frames": frames,
        "cameras": list(seeing.cameras),
        "image_size": seeing.image_size,
        "repeats": args.repeats,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim_throughput.json").write_text(json.dumps(results, indent=2))
    rows = [
        ("raw `mj_step` (anchor)", f"{raw_physics:,.0f} physics steps/s", "1.00"),
        ("env step, no rendering",
         f"{env_no_render:,.1f} env steps/s = {env_no_render * substeps:,.0f} physics steps/s",
         f"{results['env_overhead_ratio_no_render']:.2f}x slower than raw"),
        (f"env step, {len(seeing.cameras)} cameras at {seeing.image_size}px", f"{env_render:,.1f} env steps/s",
         f"{results['render_cost_ratio']:.1f}x slower than no rendering"),
        ("recording (expert + render + LeRobotDataset v3)", f"{record_fps:,.1f} frames/s", f"{frames} frames"),
    ]
    table = ["| measurement | median rate | ratio |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    machine = results["machine"]
    md = "\n".join([
        "# Sim throughput", "",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, Python {machine['python']}; "
        f"control at {results['control_hz']} Hz = {substeps} physics steps per env step; "
        f"medians of {args.repeats} blocks.", "", *table, "",
    ])
    (args.out / "sim_throughput.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
