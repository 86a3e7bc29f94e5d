"""Recording sessions: run a source (a scripted expert, or a person at the keyboard) in the tabletop env or a
LIBERO suite and write every kept episode to a LeRobotDataset v3 through `EpisodeWriter`.

Episode seeds are derived from the session seed, the task and the attempt number
(never the evaluation seeds), so a resumed session skips exactly the episodes
that are already in the dataset. Ctrl-C discards only the episode in progress.
LIBERO episodes start from the placement LIBERO samples for the seed, not from the
suite's stored initial states (those are the evaluation's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
from tqdm import tqdm

from vla.data.episode_writer import ENV_STATE_KEY, EpisodeWriter
from vla.protocol import ChunkPolicy, split_chunk
from vla.sim.expert import ScriptedExpert
from vla.sim.tabletop_env import ACTION_DIM, ENV_STATE_NAMES, STATE_DIM, TabletopEnv
from vla.sim.tasks import TASKS, Task

RECORD_SEED_OFFSET = 1_000_000_000  # keeps demo seeds far from the evaluation seeds (0..49)
_ATTEMPTS_PER_TASK = 10_000


def episode_seed(session_seed: int, task: Task, attempt: int, task_names: tuple[str, ...] = tuple(TASKS)) -> int:
    """`task_names`: the suite's task order (the tabletop's by default)."""
    task_index = task_names.index(task.name)
    return RECORD_SEED_OFFSET + session_seed * 1_000_000 + task_index * _ATTEMPTS_PER_TASK + attempt


@dataclass
class RecordSummary:
    recorded: dict[str, int]  # task -> episodes kept in this session
    attempts: dict[str, int]
    total_episodes: int  # in the dataset


@dataclass
class ExpertSession:
    """An env with its scripted expert, and how their episodes are laid out in a dataset."""

    env: gym.Env
    expert: ChunkPolicy
    task_names: tuple[str, ...]  # the suite's task order, for `episode_seed`
    writer_layout: dict[str, Any]  # `EpisodeWriter` keywords: fps, camera_names, image_size, dims, names, robot_type
    reset_options: dict[str, Any] = field(default_factory=dict)  # besides the task
    max_seed: int | None = None  # the largest episode seed the env takes
    env_state: Callable[[], Any] | None = None  # the privileged observation.environment_state now, if recorded


def tabletop_session(tasks: list[Task], env_kwargs: dict) -> ExpertSession:
    env = TabletopEnv(task=tasks[0].name, **env_kwargs)
    fps = round(1.0 / env.control_dt)
    return ExpertSession(env, ScriptedExpert(env.limits, fps), tuple(TASKS), {
        "fps": fps, "camera_names": list(env.cameras), "image_size": env.image_size, "state_dim": STATE_DIM,
        "action_dim": ACTION_DIM, "robot_type": env.limits.name, "env_state_names": ENV_STATE_NAMES},
        env_state=env.object_positions)


def libero_session(tasks: list, env_kwargs: dict) -> ExpertSession:
    """`tasks`: `LiberoTask`s of the suite that `env_kwargs` (`LiberoEnv`'s) name."""
    from vla.sim import libero_env
    from vla.sim.libero_expert import LiberoExpert, check_expert_suite

    check_expert_suite(env_kwargs["suite"])
    env = libero_env.LiberoEnv(task=tasks[0].name, **env_kwargs)
    return ExpertSession(env, LiberoExpert(), tuple(libero_env.suite_tasks(env.suite)), {
        "fps": libero_env.CONTROL_HZ, "camera_names": list(env.cameras), "image_size": env.image_size,
        "state_dim": libero_env.STATE_DIM, "action_dim": libero_env.ACTION_DIM,
        "state_names": libero_env.STATE_NAMES, "action_names": libero_env.ACTION_NAMES, "robot_type": "panda"},
        reset_options={"sample_init": True}, max_seed=2**32 - 1)  # LIBERO seeds numpy's global RNG


def run_expert_episode(session: ExpertSession, writer: EpisodeWriter, task_name: str, seed: int) -> bool:
    """One expert episode, every frame buffered in the writer; returns success."""
    env, expert = session.env, session.expert
    obs, info = env.reset(seed=seed, options={"task": task_name, **session.reset_options})
    expert.reset(seed)
    done = False
    while not done:
        actions, _ = split_chunk(expert.predict_chunk({**obs, "privileged": info["privileged"],
                                                      "task_name": info["task_name"]}),
                                 session.writer_layout["action_dim"])
        action = actions[0]
        privileged = {ENV_STATE_KEY: session.env_state()} if session.env_state else {}
        writer.add_frame({**obs, "action": action, **privileged})
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return bool(info["success"])


def record_expert(tasks: list, episodes: int, root: Path, env_kwargs: dict, *, session_seed: int = 0,
                  resume: bool = False, keep_failed: bool = False, max_attempts_factor: int = 3) -> RecordSummary:
    """Record `episodes` successful expert episodes per task (failed ones only if `keep_failed`).

    `tasks` and `env_kwargs`: tabletop `Task`s and `TabletopEnv` keywords, or `LiberoTask`s and `LiberoEnv`
    keywords (they name a `suite`).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    session = (libero_session if "suite" in env_kwargs else tabletop_session)(tasks, env_kwargs)
    task_seeds = {task.name: [episode_seed(session_seed, task, a, session.task_names)
                              for a in range(episodes * max_attempts_factor)] for task in tasks}
    recorded, attempts = {}, {}
    try:
        largest = max(seed for seeds in task_seeds.values() for seed in seeds)
        if session.max_seed is not None and largest > session.max_seed:
            raise ValueError(f"seed: session seed {session_seed} gives episode seeds up to {largest}, beyond this "
                             f"env's {session.max_seed}; choose a smaller seed")
        with EpisodeWriter(root=root, resume=resume, **session.writer_layout) as writer:
            existing = writer.recorded_episodes()  # seed -> success
            progress = tqdm(total=episodes * len(tasks), desc="record expert", unit="ep")
            for task in tasks:
                seeds = task_seeds[task.name]
                kept = sum(1 for s in seeds if s in existing and (existing[s] or keep_failed))
                progress.update(min(kept, episodes))
                recorded[task.name] = attempts[task.name] = 0
                for seed in seeds:
                    if kept >= episodes:
                        break
                    if seed in existing:
                        continue
                    attempts[task.name] += 1
                    success = run_expert_episode(session, writer, task.name, seed)
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
        session.env.close()
    return RecordSummary(recorded=recorded, attempts=attempts, total_episodes=total)
