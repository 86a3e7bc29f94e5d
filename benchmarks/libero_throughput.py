"""LIBERO env throughput: the adapter with and without rendering, against LIBERO's own default rendering.

Measures env steps/s (median of `--repeats` timed blocks of `--steps` no-op steps) on one task per suite:
- no rendering (physics, OSC controller and LIBERO's predicates only);
- the adapter's rendering (two cameras, no shadows, reflections or multisampling, buffer sized to the images);
- the anchor, in the same run: LIBERO's OffScreenRenderEnv as LeRobot and openpi create it (robosuite's
  640x480 4x-multisampled buffer, shadows and reflections on), at the same image size.
Writes benchmarks/results/libero_throughput.{json,md}.

    python benchmarks/libero_throughput.py [--suites libero_spatial libero_object] [--image-size 128]
        [--note "what else the machine was running"]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

from vla.sim import LIBERO_ENV_ID  # noqa: E402
from vla.sim.libero_env import CAMERAS, NOOP_ACTION, SUITES, suite_tasks  # noqa: E402
from vla.sim.report import machine_info, package_versions  # noqa: E402


def median_rate(step, steps: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(steps):
            step(NOOP_ACTION)
        rates.append(steps / (time.perf_counter() - tic))
    return statistics.median(rates)


def adapter_rate(suite: str, image_size: int, render: bool, steps: int, repeats: int) -> float:
    env = gym.make(LIBERO_ENV_ID, suite=suite, image_size=image_size, render_images=render).unwrapped
    env.reset(seed=0)
    try:
        return median_rate(env.step, steps, repeats)
    finally:
        env.close()


def libero_default_rate(suite: str, image_size: int, steps: int, repeats: int) -> float:
    from libero.libero.envs import OffScreenRenderEnv

    task = next(iter(suite_tasks(suite).values()))
    env = OffScreenRenderEnv(bddl_file_name=task.bddl_file, camera_names=list(CAMERAS.values()),
                             camera_heights=image_size, camera_widths=image_size, ignore_done=True)
    env.reset()
    try:
        return median_rate(env.step, steps, repeats)
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suites", nargs="+", default=["libero_spatial", "libero_object"], choices=SUITES)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--note", default="", help="conditions of the run for the report, e.g. other jobs running")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    rows = []
    for suite in args.suites:
        row = {"suite": suite,
               "no_render": adapter_rate(suite, args.image_size, False, args.steps, args.repeats),
               "render": adapter_rate(suite, args.image_size, True, args.steps, args.repeats),
               "libero_default_render": libero_default_rate(suite, args.image_size, args.steps, args.repeats)}
        row["render_speedup"] = row["render"] / row["libero_default_render"]
        rows.append(row)
        print(row, flush=True)
    result = {"image_size": args.image_size, "cameras": list(CAMERAS), "steps": args.steps, "repeats": args.repeats,
              "mujoco_gl": os.environ["MUJOCO_GL"], "machine": machine_info(), "packages": package_versions(),
              "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]}, "note": args.note,
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "libero_throughput.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = [f"# LIBERO env throughput ({args.image_size} px, cameras {', '.join(CAMERAS)}, "
             f"MUJOCO_GL={result['mujoco_gl']})", "",
             f"Machine: {m['platform']}, {m['cpu_count']} CPUs; 1-min load average {load_before:.1f} before, "
             f"{result['load_average_1m']['after']:.1f} after the run{f' ({args.note})' if args.note else ''}. "
             f"Median of {args.repeats} blocks of {args.steps} steps.",
             "", "| suite | no rendering (steps/s) | adapter rendering | LIBERO default rendering (anchor) | ratio |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['suite']} | {r['no_render']:.1f} | {r['render']:.1f} | {r['libero_default_render']:.1f} "
              f"| {r['render_speedup']:.2f}x |" for r in rows]
    (args.out / "libero_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
