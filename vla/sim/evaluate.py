"""Evaluation runner: any `ChunkPolicy` over the fixed initial states of chosen tasks.

Environments run in parallel processes through gymnasium's vector API with
autoreset disabled; each slot takes the next (task, initial state) from a queue
and has its own policy instance. Finished episodes are appended to
`episodes.jsonl` as they end, so a crash loses none of them.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import imageio
import numpy as np
from tqdm import tqdm

from vla.protocol import ChunkPolicy, split_chunk
from vla.sim import TABLETOP_ENV_ID
from vla.sim.init_states import INIT_STATES_FILE, NUM_INIT_STATES, load_init_states
from vla.sim.report import percentiles_ms, run_metadata, summarize, write_report
from vla.sim.tabletop_env import ACTION_DIM
from vla.sim.tasks import Task


@dataclass
class EvalSettings:
    tasks: list[Task]
    episodes: int = NUM_INIT_STATES  # per task, taken in order from the stored initial states
    num_envs: int = 2
    seed: int = 0
    videos_per_task: int = 1
    env_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 1 <= self.episodes <= NUM_INIT_STATES:
            raise ValueError(f"episodes must be within 1..{NUM_INIT_STATES} (the stored initial states per task), "
                             f"got {self.episodes}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {self.num_envs}")
        if self.videos_per_task < 0:
            raise ValueError(f"videos_per_task must be >= 0, got {self.videos_per_task}")


@dataclass
class _Slot:
    policy: ChunkPolicy
    task: str = ""
    index: int = -1
    actions: deque = field(default_factory=deque)
    frames: list | None = None
    active: bool = False
    obs: dict = field(default_factory=dict)  # this slot's latest observation (+ privileged fields)


def _make_vector_env(settings: EvalSettings, num_envs: int) -> gym.vector.VectorEnv:
    def make():
        return gym.make(TABLETOP_ENV_ID, task=settings.tasks[0].name, **settings.env_kwargs)

    kwargs = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}
    if num_envs == 1:
        return gym.vector.SyncVectorEnv([make], **kwargs)
    # No shared memory: it stores the `task` text as fixed-size blanks; pickled observations keep it.
    return gym.vector.AsyncVectorEnv([make] * num_envs, context="spawn", shared_memory=False, **kwargs)


def _slot_obs(obs: dict, info: dict, i: int) -> dict:
    one = {key: value[i] for key, value in obs.items()}
    one["privileged"] = info["privileged"][i]
    one["task_name"] = info["task_name"][i]
    return one


def evaluate(make_policy: Callable[[], ChunkPolicy], settings: EvalSettings, out_dir: Path,
             policy_name: str = "policy") -> dict:
    """Run every (task, initial state) episode and write report.json, report.md, success.png and videos."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "videos").mkdir(exist_ok=True)
    queue = deque((task.name, i) for task in settings.tasks for i in range(settings.episodes))
    init_states = {task.name: load_init_states(task.name) for task in settings.tasks}
    num_envs = min(settings.num_envs, len(queue))
    envs = _make_vector_env(settings, num_envs)
    slots = [_Slot(policy=make_policy()) for _ in range(num_envs)]
    privileged = bool(getattr(slots[0].policy, "privileged", False))
    episodes_file = (out_dir / "episodes.jsonl").open("w")
    episodes: list[dict] = []
    latencies: list[float] = []
    executed: list[int] = []
    start = time.perf_counter()

    def start_episodes(mask: np.ndarray):
        queued, seeds = [], []
        for i, slot in enumerate(slots):
            if not mask[i]:
                queued.append(None)
                seeds.append(None)
                continue
            slot.task, slot.index = queue.popleft()
            slot.actions.clear()
            slot.active = True
            slot.frames = [] if slot.index < settings.videos_per_task else None
            seed = settings.seed + slot.index
            slot.policy.reset(seed)
            queued.append({"task": slot.task, "init_state": init_states[slot.task][slot.index]})
            seeds.append(seed)
        envs.set_attr("queued_reset_options", queued)
        obs, info = envs.reset(seed=seeds, options={"reset_mask": mask})
        for i in np.flatnonzero(mask):
            slots[i].obs = _slot_obs(obs, info, i)

    def record_frame(slot: _Slot):
        if slot.frames is not None:
            slot.frames.append(np.concatenate([slot.obs[f"observation.images.{c}"] for c in cameras], axis=1))

    cameras = settings.env_kwargs.get("cameras", ("front", "wrist"))
    try:
        start_episodes(np.ones(num_envs, dtype=bool))
        progress = tqdm(total=len(queue) + num_envs, desc=f"eval {policy_name}", unit="ep")
        while any(slot.active for slot in slots):
            actions = np.stack([slot.obs["observation.state"] for slot in slots]).astype(np.float32)  # idle: hold
            for i, slot in enumerate(slots):
                if not slot.active:
                    continue
                record_frame(slot)
                if not slot.actions:
                    policy_obs = slot.obs if privileged else {k: v for k, v in slot.obs.items()
                                                              if k not in ("privileged", "task_name")}
                    tic = time.perf_counter()
                    chunk, n_execute = split_chunk(slot.policy.predict_chunk(policy_obs), ACTION_DIM)
                    latencies.append(time.perf_counter() - tic)
                    executed.append(n_execute)
                    slot.actions.extend(chunk[:n_execute])
                actions[i] = slot.actions.popleft()
            obs, _, terminated, truncated, info = envs.step(actions)
            finished = np.zeros(num_envs, dtype=bool)
            for i, slot in enumerate(slots):
                slot.obs = _slot_obs(obs, info, i)
                if slot.active and (terminated[i] or truncated[i]):
                    record_frame(slot)
                    record = {"task": slot.task, "init_index": slot.index, "seed": settings.seed + slot.index,
                              "success": bool(info["success"][i]), "steps": int(info["steps"][i]),
                              "grasp_lost": int(info["grasp_lost"][i]), "instruction": str(obs["task"][i])}
                    episodes.append(record)
                    episodes_file.write(json.dumps(record) + "\n")
                    episodes_file.flush()
                    if slot.frames:
                        name = f"{slot.task}_{slot.index:02d}_{'success' if record['success'] else 'fail'}.mp4"
                        imageio.mimsave(out_dir / "videos" / name, slot.frames, fps=envs.metadata.get("render_fps", 10))
                    slot.active = False
                    progress.update(1)
                    finished[i] = finished.sum() < len(queue)
            if finished.any():
                start_episodes(finished)
        progress.close()
    finally:
        episodes_file.close()
        envs.close()

    env_kwargs = settings.env_kwargs
    report = {
        "policy": policy_name,
        "env": "tabletop",
        **summarize(episodes, [t.name for t in settings.tasks]),
        "latency_ms": percentiles_ms(latencies),
        "actions_per_inference": float(np.mean(executed)) if executed else 0.0,
        "protocol": {
            "init_states": str(INIT_STATES_FILE.name),
            "episodes_per_task": settings.episodes,
            "seed": settings.seed,
            "instruction_mode": env_kwargs.get("instruction_mode", "canonical"),
            "control_hz": env_kwargs.get("control_hz", 10),
            "image_size": env_kwargs.get("image_size", 128),
            "max_steps": {t.name: t.max_steps for t in settings.tasks},
            "perturbation": asdict(env_kwargs["perturbation"]) if env_kwargs.get("perturbation") else None,
            "num_envs": num_envs,
        },
        "wall_time_s": time.perf_counter() - start,
        "run": run_metadata(),
    }
    write_report(report, out_dir)
    return report
