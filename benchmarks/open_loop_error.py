"""Open-loop error of a checkpoint on scripted-expert rollouts: where its chunk puts the pinch point, against where
the expert's own commands put it.

The expert drives each episode (so every observation is on the expert's path); every `--every` steps of its approach
and descent (the localization a grasp needs), the policy predicts a chunk from the same observation, and the error is
the distance between the pinch point of the chunk's action `--ahead` steps on and that of the expert's command at
that step, both through the arm's forward kinematics. Training seeds (the ones `vla-record seed=0` used) and
evaluation seeds (the fixed initial states) side by side tell underfitting (both high) from overfitting (only the
evaluation seeds high), in minutes instead of a closed-loop evaluation's hours. Writes
benchmarks/results/open_loop_error.{json,md}.

    python benchmarks/open_loop_error.py --checkpoint checkpoints/tabletop [--tasks put_red_cube_in_bin ...]
        [--episodes 3] [--ahead 8] [--every 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vla.data.record import episode_seed
from vla.policy.policy import VLAPolicy
from vla.sim.expert import ScriptedExpert
from vla.sim.report import machine_info
from vla.sim.tabletop_env import TabletopEnv
from vla.sim.tasks import get_task

LOCALIZING_PHASES = ("approach", "descend")


def pinch_point(expert: ScriptedExpert, env: TabletopEnv, joints: np.ndarray) -> np.ndarray:
    qpos = env.data.qpos.copy()
    qpos[env._arm_qpos] = joints
    expert.ik.set_qpos(qpos)
    return expert.ik.site_pose()[0].copy()


def episode_errors(policy: VLAPolicy, env: TabletopEnv, expert: ScriptedExpert, task: str, seed: int, ahead: int,
                   every: int) -> list[float]:
    obs, info = env.reset(seed=seed, options={"task": task})
    expert.reset(seed)
    policy.reset(seed)
    commands, chunks, done = [], {}, False
    while not done:
        action = expert.predict_chunk({**obs, "privileged": info["privileged"], "task_name": task})[0][0]
        if len(commands) % every == 0 and expert.phase in LOCALIZING_PHASES:
            chunks[len(commands)] = policy.predict_chunk(obs)[0]
        commands.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return [float(np.linalg.norm(pinch_point(expert, env, chunk[ahead][:7]) -
                                 pinch_point(expert, env, commands[t + ahead][:7])))
            for t, chunk in chunks.items() if t + ahead < len(commands)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/tabletop")
    parser.add_argument("--tasks", nargs="+", default=["put_red_cube_in_bin", "stack_red_cube_on_green_cube"])
    parser.add_argument("--episodes", type=int, default=3, help="per task and seed kind")
    parser.add_argument("--ahead", type=int, default=8, help="which action of the chunk (0 = the first)")
    parser.add_argument("--every", type=int, default=5, help="steps between the policy's predictions")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)

    policy = VLAPolicy.from_pretrained(args.checkpoint)
    if not 0 <= args.ahead < policy.cfg.head.chunk:
        parser.error(f"--ahead must be within 0..{policy.cfg.head.chunk - 1} (the chunk), got {args.ahead}")
    env = TabletopEnv(task=args.tasks[0])
    expert = ScriptedExpert(env.limits, round(1.0 / env.control_dt))
    rows = []
    for task in args.tasks:
        seeds = {"train": [episode_seed(0, get_task(task), a) for a in range(args.episodes)],
                 "eval": list(range(args.episodes))}
        for kind, kind_seeds in seeds.items():
            errors = [e for s in kind_seeds for e in episode_errors(policy, env, expert, task, s, args.ahead,
                                                                    args.every)]
            rows.append({"task": task, "seeds": kind, "predictions": len(errors),
                         "median_cm": 100 * float(np.median(errors)), "p90_cm": 100 * float(np.percentile(errors, 90))})
            print(rows[-1])
    env.close()

    machine = {**machine_info(), "torch_threads": torch.get_num_threads()}
    result = {"checkpoint": args.checkpoint, "ahead": args.ahead, "every": args.every, "episodes": args.episodes,
              "machine": machine, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_loop_error.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Open-loop pinch-point error: {args.checkpoint}", "",
             f"Action {args.ahead} of the chunk against the expert's command at that step, every {args.every} steps "
             f"of approach and descent, {args.episodes} episodes per task and seed kind. Machine: "
             f"{machine['platform']}, {machine['cpu_count']} cores, {machine['torch_threads']} torch thread.",
             "",
             "| task | seeds | predictions | median (cm) | p90 (cm) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['seeds']} | {r['predictions']} | {r['median_cm']:.1f} | {r['p90_cm']:.1f} |"
              for r in rows]
    (out / "open_loop_error.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'open_loop_error.md'}")


if __name__ == "__main__":
    main()
