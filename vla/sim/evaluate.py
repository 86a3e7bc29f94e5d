"""Evaluation runner: any `ChunkPolicy` over the fixed initial states of chosen tasks, on the tabletop suite or
a LIBERO suite (an `EvalSuite` says which env, which stored states and what goes into the report's protocol).

Environments run in parallel processes through gymnasium's vector API with
autoreset disabled; each slot takes the next (task, initial state) from a queue
and has its own policy instance. Finished episodes are appended to
`episodes.jsonl` as they end, so a crash loses none of them.
"""

from __future__ import annotations

import json
import os
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
from vla.sim import LIBERO_ENV_ID, TABLETOP_ENV_ID
from vla.sim.init_states import INIT_STATES_FILE, NUM_INIT_STATES, load_init_states
from vla.sim.report import percentiles_ms, run_metadata, summarize, write_report
from vla.sim.tabletop_env import ACTION_DIM


@dataclass(frozen=True)
class EvalSuite:
    """What the runner needs to know about a family of envs."""

    name: str  # the report's `env`
    env_id: str
    action_dim: int
    num_init_states: int  # stored per task
    init_states: Callable[[str], np.ndarray]  # task name -> (num_init_states, ...) states for reset's `init_state`
    hold_action: Callable[[np.ndarray], np.ndarray]  # observation.state -> an action that keeps an idle env still
    protocol: dict  # the suite's own protocol fields, reported beside every number


def tabletop_suite(env_kwargs: dict) -> EvalSuite:
    return EvalSuite(
        name="tabletop", env_id=TABLETOP_ENV_ID, action_dim=ACTION_DIM, num_init_states=NUM_INIT_STATES,
        init_states=load_init_states, hold_action=lambda state: state,  # actions are absolute joint targets
        protocol={
            "init_states": str(INIT_STATES_FILE.name),
            "instruction_mode": env_kwargs.get("instruction_mode", "canonical"),
            "control_hz": env_kwargs.get("control_hz", 10),
            "image_size": env_kwargs.get("image_size", 128),
            "perturbation": asdict(env_kwargs["perturbation"]) if env_kwargs.get("perturbation") else None,
        })


def libero_suite(env_kwargs: dict) -> EvalSuite:
    """`env_kwargs` are `LiberoEnv`'s; the report names the package files the initial states come from."""
    from vla.sim import libero_env

    suite = env_kwargs.get("suite", "libero_spatial")
    return EvalSuite(
        name=suite, env_id=LIBERO_ENV_ID, action_dim=libero_env.ACTION_DIM, num_init_states=50,
        init_states=lambda task: libero_env.load_libero_init_states(suite, task),
        hold_action=lambda state: libero_env.NOOP_ACTION,
        protocol={
            "init_states": f"hf-libero libero/libero/init_files/{suite}/<task>.pruned_init (task order 0)",
            "num_wait_steps": env_kwargs.get("num_wait_steps", libero_env.NUM_WAIT_STEPS),
            "control_hz": libero_env.CONTROL_HZ,
            "image_size": env_kwargs.get("image_size", 128),
            "cameras": list(env_kwargs.get("cameras", ("agentview", "wrist"))),
            "image_orientation": "rotated 180 degrees from robosuite's frames, as in the LeRobot LIBERO datasets",
            "action": "7-D delta end effector (OSC_POSE), gripper -1 open / +1 close",
            "reset": "hard reset, then the stored initial state, then the no-op wait steps",
            "rendering": f"offscreen, MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}; {libero_env.RENDERING}",
        })


@dataclass
class EvalSettings:
    tasks: list  # tabletop `Task`s or `LiberoTask`s: each has a `name` and `max_steps`
    episodes: int = NUM_INIT_STATES  # per task, taken in order from the stored initial states
    num_envs: int = 2
    seed: int = 0
    videos_per_task: int = 1
    env_kwargs: dict = field(default_factory=dict)
    suite: EvalSuite | None = None  # None: the tabletop suite
    policy_threads: int = 1  # torch intra-op threads for a learned policy, which runs in this process

    def __post_init__(self):
        if self.suite is None:
            self.suite = tabletop_suite(self.env_kwargs)
        if not 1 <= self.episodes <= self.suite.num_init_states:
            raise ValueError(f"episodes must be within 1..{self.suite.num_init_states} (the stored initial states "
                             f"per task), got {self.episodes}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {self.num_envs}")
        if self.policy_threads < 1:
            raise ValueError(f"policy_threads must be at least 1, got {self.policy_threads}")
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
        return gym.make(settings.suite.env_id, task=settings.tasks[0].name, **settings.env_kwargs)

    kwargs = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}
    if num_envs == 1:
        return gym.vector.SyncVectorEnv([make], **kwargs)
    # No shared memory: it stores the `task` text as fixed-size blanks; pickled observations keep it.
    return gym.vector.AsyncVectorEnv([make] * num_envs, context="spawn", shared_memory=False, **kwargs)


def _set_torch_threads(threads: int) -> int:
    """Set torch's intra-op threads; returns the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def _slot_obs(obs: dict, info: dict, i: int) -> dict:
    one = {key: value[i] for key, value in obs.items()}
    one["privileged"] = info["privileged"][i]
    one["task_name"] = info["task_name"][i]
    return one


def replan_interval(policy: ChunkPolicy) -> dict | int | str:
    """How often the policy is asked again: its execution settings, or a fixed chunk length."""
    execution = getattr(getattr(policy, "cfg", None), "execution", None)
    if execution is not None:
        return asdict(execution)
    return getattr(policy, "chunk_size", "whole chunk")


def evaluate(make_policy: Callable[[], ChunkPolicy], settings: EvalSettings, out_dir: Path,
             policy_name: str = "policy") -> dict:
    """Run every (task, initial state) episode and write report.json, report.md, success.png and videos."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "videos").mkdir(exist_ok=True)
    queue = deque((task.name, i) for task in settings.tasks for i in range(settings.episodes))
    suite = settings.suite
    init_states = {task.name: suite.init_states(task.name) for task in settings.tasks}
    num_envs = min(settings.num_envs, len(queue))
    envs = _make_vector_env(settings, num_envs)
    slots = [_Slot(policy=make_policy()) for _ in range(num_envs)]
    privileged = bool(getattr(slots[0].policy, "privileged", False))
    # The env processes need the other cores: extra intra-op threads here mostly spin waiting for them (chunks 10x
    # slower on 2 busy cores). Restored afterwards: a training process evaluates too.
    threads_before = None if privileged else _set_torch_threads(settings.policy_threads)
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

    cameras = [key.removeprefix("observation.images.") for key in envs.single_observation_space.keys()
               if key.startswith("observation.images.")]
    try:
        start_episodes(np.ones(num_envs, dtype=bool))
        progress = tqdm(total=len(queue) + num_envs, desc=f"eval {policy_name}", unit="ep")
        while any(slot.active for slot in slots):
            actions = np.stack([suite.hold_action(slot.obs["observation.state"])  # what idle slots step
                                for slot in slots]).astype(np.float32)
            for i, slot in enumerate(slots):
                if not slot.active:
                    continue
                record_frame(slot)
                if not slot.actions:
                    policy_obs = slot.obs if privileged else {k: v for k, v in slot.obs.items()
                                                              if k not in ("privileged", "task_name")}
                    tic = time.perf_counter()
                    chunk, n_execute = split_chunk(slot.policy.predict_chunk(policy_obs), suite.action_dim)
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
                              "grasp_lost": int(info["grasp_lost"][i]) if "grasp_lost" in info else None,
                              "instruction": str(obs["task"][i])}
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
        if threads_before is not None:
            _set_torch_threads(threads_before)

    report = {
        "policy": policy_name,
        "env": suite.name,
        **summarize(episodes, [t.name for t in settings.tasks]),
        "latency_ms": percentiles_ms(latencies),
        "actions_per_inference": float(np.mean(executed)) if executed else 0.0,
        "protocol": {
            **suite.protocol,
            "episodes_per_task": settings.episodes,
            "seed": settings.seed,
            "episode_seeds": "seed + initial-state index (the policy's and the env's)",
            "max_steps": {t.name: settings.env_kwargs.get("max_steps") or t.max_steps for t in settings.tasks},
            "replan_interval": replan_interval(slots[0].policy),
            "num_envs": num_envs,
            "policy_threads": None if privileged else settings.policy_threads,
            "parallelism": "one process per env (gymnasium AsyncVectorEnv)" if num_envs > 1 else "one process",
        },
        "wall_time_s": time.perf_counter() - start,
        "run": run_metadata(),
    }
    write_report(report, out_dir)
    return report
