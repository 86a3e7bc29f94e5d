"""vla-record: expert demos round-trip through lerobot's LeRobotDataset, and a killed recorder resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from test_evaluate import REPO, run_cli

from vla.data.record import episode_seed
from vla.sim.tabletop_env import TabletopEnv
from vla.sim.tasks import get_task


def load(root: Path) -> LeRobotDataset:
    return LeRobotDataset(f"local/{root.name}", root=root)


def episode_frames(dataset: LeRobotDataset, episode: int) -> list[dict]:
    return [dataset[i] for i in range(len(dataset)) if int(dataset[i]["episode_index"]) == episode]


def test_record_round_trip_replays_in_the_env(tmp_path):
    root = tmp_path / "demos"
    tasks = ["put_red_cube_in_bin", "push_red_cube_to_pad"]
    result = run_cli("vla-record", "source=expert", f"task=[{','.join(tasks)}]", "episodes=1", f"root={root}",
                     "env.image_size=64")
    assert result.returncode == 0, result.stderr
    dataset = load(root)
    assert dataset.meta.total_episodes == 2 and dataset.fps == 10
    outcomes = dataset.hf_dataset.select_columns(["episode_index", "episode.seed", "episode.success"])

    env = TabletopEnv(image_size=64)
    for episode, task_name in enumerate(tasks):
        frames = episode_frames(dataset, episode)
        seed = episode_seed(0, get_task(task_name), 0)
        rows = [r for r in outcomes if int(r["episode_index"]) == episode]
        assert all(int(r["episode.seed"]) == seed and bool(r["episode.success"]) for r in rows)
        assert frames[0]["task"] in get_task(task_name).train_instructions

        # Replaying the recorded actions from the recorded seed reproduces the recorded states and images.
        obs, _ = env.reset(seed=seed, options={"task": task_name})
        for frame in frames:
            np.testing.assert_allclose(frame["observation.state"].numpy(), obs["observation.state"], atol=1e-5)
            image = (frame["observation.images.front"].permute(1, 2, 0).numpy() * 255).astype(np.float32)
            assert np.abs(image - obs["observation.images.front"]).mean() < 12  # mp4 is lossy
            np.testing.assert_allclose(frame["observation.environment_state"].numpy(), env.object_positions(),
                                       atol=1e-5)  # the privileged object positions of the same instant
            obs, _, terminated, _, info = env.step(frame["action"].numpy())
        assert terminated and info["success"]
    env.close()


def test_killed_recorder_keeps_finished_episodes_and_resumes(tmp_path):
    root = tmp_path / "demos"
    args = ["source=expert", "task=put_red_cube_in_bin", "episodes=3", f"root={root}", "env.image_size=32"]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    recorder = subprocess.Popen([str(Path(sys.executable).parent / "vla-record"), *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # Kill as soon as one episode is complete on disk (no save in progress).
    while time.time() < deadline and recorder.poll() is None:
        if list(root.glob("data/**/*.parquet")) and not (root / ".pending_save").exists():
            break
        time.sleep(0.05)
    recorder.send_signal(signal.SIGKILL)
    recorder.wait()

    kept = load(root).meta.total_episodes
    assert 1 <= kept < 3
    result = run_cli("vla-record", *args, "resume=true")
    assert result.returncode == 0, result.stderr
    dataset = load(root)
    assert dataset.meta.total_episodes == 3
    seeds = {int(s) for s in dataset.hf_dataset["episode.seed"]}
    assert len(seeds) == 3  # resumed with the next seeds, no episode recorded twice


def test_existing_dataset_needs_resume(tmp_path):
    root = tmp_path / "demos"
    args = ["source=expert", "task=push_red_cube_to_pad", "episodes=1", f"root={root}", "env.image_size=32"]
    assert run_cli("vla-record", *args).returncode == 0
    again = run_cli("vla-record", *args)
    assert again.returncode == 2 and "resume=true" in again.stderr and str(root) in again.stderr
    bad = run_cli("vla-record", "source=joystick", f"root={tmp_path / 'x'}")
    assert bad.returncode == 2 and "source" in bad.stderr
