"""Recording sessions: run a source (the scripted expert, or a person at the keyboard) in the
tabletop env and write every kept episode to a LeRobotDataset v3 through `EpisodeWriter`.

Episode seeds are derived from the session seed, the task and the attempt number
(never the evaluation seeds), so a resumed session skips exactly the episodes
that are already in the dataset. Ctrl-C discards only the episode in progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vla.data.episode_writer import EpisodeWriter
from vla.protocol import split_chunk
from vla.sim.expert import ScriptedExpert
from vla.sim.tabletop_env import ACTION_DIM, STATE_DIM, TabletopEnv
from vla.sim.tasks import TASKS, Task

RECORD_SEED_OFFSET = 1_000_000_000  # keeps demo seeds far from the evaluation seeds (0..49)
_ATTEMPTS_PER_TASK = 10_000


def episode_seed(session_seed: int, task: Task, attempt: int) -> int:
    task_index = list(TASKS).index(task.name)
    return RECORD_SEED_OFFSET + session_seed * 1_000_000 + task_index * _ATTEMPTS_PER_TASK + attempt


@dataclass
class RecordSummary:
    recorded: dict[str, int]  # task -> episodes kept in this session
    attempts: dict[str, int]
    total_episodes: int  # in the dataset


def run_expert_episode(env: TabletopEnv, expert: ScriptedExpert, writer: EpisodeWriter, task: Task, seed: int) -> bool:
    """One expert episode, every frame buffered in the writer; returns success."""
    obs, info = env.reset(seed=seed, options={"task": task.name})
    expert.reset(seed)
    done = False
    while not done:
        actions, _ = split_chunk(expert.predict_chunk({**obs, "privileged": info["privileged"],
                                                      "task_name": info["task_name"]}), ACTION_DIM)
        action = actions[0]
        writer.add_frame({**obs, "action": action})
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return bool(info["success"])


def record_expert(tasks: list[Task], episodes: int, root: Path, env_kwargs: dict, *, session_seed: int = 0,
                  resume: bool = False, keep_failed: bool = False, max_attempts_factor: int = 3) -> RecordSummary:
    """Record `episodes` successful expert episodes per task (failed ones only if `keep_failed`)."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    env = TabletopEnv(task=tasks[0].name, **env_kwargs)
    expert = ScriptedExpert(env.limits, round(1.0 / env.control_dt))
    recorded, attempts = {}, {}
    try:
        with EpisodeWriter(root=root, fps=round(1.0 / env.control_dt), camera_names=list(env.cameras),
                           image_size=env.image_size, state_dim=STATE_DIM, action_dim=ACTION_DIM,
                           robot_type=env.limits.name, resume=resume) as writer:
            existing = writer.recorded_episodes()  # seed -> success
            progress = tqdm(total=episodes * len(tasks), desc="record expert", unit="ep")
            for task in tasks:
                seeds = [episode_seed(session_seed, task, a) for a in range(episodes * max_attempts_factor)]
                kept = sum(1 for s in seeds if s in existing and (existing[s] or keep_failed))
                progress.update(min(kept, episodes))
                recorded[task.name] = attempts[task.name] = 0
                for seed in seeds:
                    if kept >= episodes:
                        break
                    if seed in existing:
                        continue
                    attempts[task.name] += 1
                    success = run_expert_episode(env, expert, writer, task, seed)
                    if success or keep_failed:
                        writer.save_episode(seed=seed, success=success)
                        kept += 1
                        recorded[task.name] += 1
                        progress.update(1)
                    else:
                        writer.discard_episode()
                if kept < episodes:
                    print(f"warning: task '{task.name}' kept {kept}/{episodes} episodes after "
                          f"{len(seeds)} attempts (max_attempts_factor={max_attempts_factor})")
            progress.close()
            total = writer.num_episodes
    finally:
        env.close()
    return RecordSummary(recorded=recorded, attempts=attempts, total_episodes=total)
