"""The calibration buffer: unlabeled observations from scripted-expert rollouts in the tabletop env.

Episodes start from initial states sampled from a seed (never the stored evaluation states, so calibration does not
see the states the success evaluation runs on) and cycle over the tasks; every `stride`-th step's observation is
kept, `per_episode` of them per episode.
"""

from __future__ import annotations

from typing import Any

from vla.sim.tasks import Task


def collect_observations(count: int, tasks: list[Task], env_kwargs: dict[str, Any], seed: int = 0,
                         stride: int = 6, per_episode: int = 6) -> list[dict[str, Any]]:
    """`count` policy observations (images, state, task: no privileged fields)."""
    from vla.sim.expert import ScriptedExpert
    from vla.sim.tabletop_env import TabletopEnv

    if count < 1 or stride < 1 or per_episode < 1:
        raise ValueError(f"collect_observations: count, stride and per_episode must be >= 1, got {count}, {stride}, "
                         f"{per_episode}")
    env = TabletopEnv(task=tasks[0].name, **env_kwargs)
    expert = ScriptedExpert(env_kwargs.get("robot", "panda"), env_kwargs.get("control_hz", 10))
    buffer: list[dict[str, Any]] = []
    try:
        episode = 0
        while len(buffer) < count:
            obs, info = env.reset(seed=seed + episode, options={"task": tasks[episode % len(tasks)].name})
            expert.reset(seed + episode)
            for step in range(stride * per_episode):
                if step % stride == 0:
                    buffer.append({k: v for k, v in obs.items() if k.startswith("observation.") or k == "task"})
                    if len(buffer) == count:
                        break
                actions, _ = expert.predict_chunk({**obs, "privileged": info["privileged"],
                                                   "task_name": info["task_name"]})
                obs, _, terminated, truncated, info = env.step(actions[0])
                if terminated or truncated:
                    break
            episode += 1
    finally:
        env.close()
    return buffer
