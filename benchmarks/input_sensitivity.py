"""Which inputs a checkpoint's chunk depends on: the cameras or the arm's state.

On expert paths the arm's pose already points where it is going, so a behaviour-cloned policy can predict its
chunks from the state and ignore the cameras (the copycat shortcut), then in closed loop head for an average spot.
This measures it directly. The expert drives each of the first `--scenes` fixed initial states of a task for
`--steps` steps; at that observation the policy predicts a chunk (fixed noise), and again with the images of the
next scene, and again with the state of the next scene. Reported, as the mean absolute joint difference (rad) of
the chunk's last target: how much the images move it, how much the state moves its offset from the state, and how
much the expert's own targets differ between scenes (what the images should explain). For a checkpoint with an
environment-state probe (`object_token`), also how far its estimate of the objects' positions is from the truth
(cm, mean over the objects). Writes benchmarks/results/input_sensitivity.{json,md}.

    python benchmarks/input_sensitivity.py --checkpoint checkpoints/tabletop [--task put_red_cube_in_bin]
        [--scenes 8] [--steps 0 20 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vla.policy.policy import IMAGE_PREFIX, STATE_KEY, VLAPolicy
from vla.sim.expert import ScriptedExpert
from vla.sim.init_states import load_init_states
from vla.sim.report import machine_info
from vla.sim.tabletop_env import TabletopEnv


def expert_observations(env: TabletopEnv, task: str, scenes: int,
                        steps: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The observation after `steps` expert steps in each scene, the expert's chunk-end joint targets there, and
    the objects' positions (ENV_STATE_NAMES order)."""
    expert = ScriptedExpert(env.limits, round(1.0 / env.control_dt))
    observations, targets, positions = [], [], []
    for scene in range(scenes):
        obs, info = env.reset(seed=scene, options={"task": task, "init_state": load_init_states(task)[scene]})
        expert.reset(scene)
        for _ in range(steps):
            action = expert.predict_chunk({**obs, "privileged": info["privileged"], "task_name": task})[0][0]
            obs, _, _, _, info = env.step(action)
        chunk = expert.predict_chunk({**obs, "privileged": info["privileged"], "task_name": task})[0]
        observations.append(obs)
        targets.append(chunk[-1][:7])
        positions.append(env.object_positions())
    return observations, np.array(targets), np.array(positions)


def localization_cm(policy: VLAPolicy, observations: list[dict], positions: np.ndarray) -> float | None:
    """Mean distance (cm) between the probe's object positions and the true ones; None without a probe."""
    if not policy.cfg.env_state_dim:
        return None
    error = policy.predict_env_state(observations) - positions  # (n, 3 * objects)
    return float(100 * np.linalg.norm(error.reshape(len(observations), -1, 3), axis=-1).mean())


def sensitivity(policy: VLAPolicy, observations: list[dict], expert_targets: np.ndarray) -> dict:
    def target(obs: dict) -> np.ndarray:
        return policy.predict_chunk(obs)[0][-1, :7]

    n = len(observations)
    state = np.array([o[STATE_KEY][:7] for o in observations])
    own = np.array([target(o) for o in observations])
    other = [observations[(i + 1) % n] for i in range(n)]
    images_swapped = np.array([target({**o, **{k: v for k, v in p.items() if k.startswith(IMAGE_PREFIX)}})
                               for o, p in zip(observations, other, strict=True)])
    state_swapped = np.array([target({**o, STATE_KEY: p[STATE_KEY]}) - p[STATE_KEY][:7]
                              for o, p in zip(observations, other, strict=True)])
    expert_offsets = expert_targets - state
    return {"images_effect_rad": float(np.abs(own - images_swapped).mean()),
            "state_effect_rad": float(np.abs((own - state) - state_swapped).mean()),
            "expert_spread_rad": float(np.abs(expert_targets - expert_targets.mean(0)).mean()),
            "error_rad": float(np.abs(own - expert_targets).mean()),
            "offset_correlation": float(np.corrcoef((own - state).ravel(), expert_offsets.ravel())[0, 1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", nargs="+", default=["checkpoints/tabletop"])
    parser.add_argument("--task", default="put_red_cube_in_bin")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 20, 40], help="expert steps before predicting")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.scenes < 2:
        parser.error(f"--scenes must be at least 2 (images and states are swapped between scenes), got {args.scenes}")
    torch.set_num_threads(1)

    env = TabletopEnv(task=args.task)
    scenes = {steps: expert_observations(env, args.task, args.scenes, steps) for steps in args.steps}
    env.close()
    rows = []
    for checkpoint in args.checkpoint:
        policy = VLAPolicy.from_pretrained(checkpoint)
        policy.cfg.sampler.fixed_noise = True  # the swaps, not the sampling noise, move the chunk
        for steps, (observations, targets, positions) in scenes.items():
            rows.append({"checkpoint": checkpoint, "steps": steps, **sensitivity(policy, observations, targets),
                         "localization_cm": localization_cm(policy, observations, positions)})
            print(rows[-1])

    machine = {**machine_info(), "torch_threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "input_sensitivity.json").write_text(json.dumps(
        {"task": args.task, "scenes": args.scenes, "machine": machine, "rows": rows}, indent=2))
    lines = [f"# Input sensitivity on {args.task}", "",
             f"The chunk's last joint target (mean absolute difference, rad) over the first {args.scenes} fixed "
             "initial states, after the expert drove the given number of steps: with the next scene's images, and "
             "(its offset from the state) with the next scene's state; the expert's spread between scenes is what "
             f"the images should explain. Machine: {machine['platform']}, {machine['cpu_count']} cores.", "",
             "| checkpoint | expert steps | images moved it | state moved it | expert spread | error vs expert "
             "| offset corr. | object positions off by |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['checkpoint']} | {r['steps']} | {r['images_effect_rad']:.3f} | {r['state_effect_rad']:.3f} | "
              f"{r['expert_spread_rad']:.3f} | {r['error_rad']:.3f} | {r['offset_correlation']:.2f} | "
              + ("-" if r["localization_cm"] is None else f"{r['localization_cm']:.1f} cm") + " |" for r in rows]
    (out / "input_sensitivity.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'input_sensitivity.md'}")


if __name__ == "__main__":
    main()
