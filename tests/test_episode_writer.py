"""EpisodeWriter: round trip through lerobot's reader, discard, resume, and survival of a killed recorder."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from vla.data.episode_writer import EpisodeWriter

CAMERAS = ["front", "wrist"]
SIZE = 32
FPS = 10
FRAMES = 10
TASKS = ["pick up the red cube", "open the top drawer"]
REPO_ROOT = Path(__file__).resolve().parent.parent


def seed_of(episode: int) -> int:
    return 1000 + episode


def success_of(episode: int) -> bool:
    return episode % 3 != 1


def make_frame(episode: int, index: int) -> dict:
    """Frame `index` of episode `episode`; every image, state and action value tells which frame it is."""
    value = 20 + 20 * index  # neighbouring frames differ by 20 grey levels, far above the codec error
    front = np.empty((SIZE, SIZE, 3), np.uint8)
    front[...] = (value, 255 - value, 60 * episode % 256)
    wrist = np.empty((SIZE, SIZE, 3), np.uint8)
    wrist[...] = (60 * episode % 256, value, 255 - value)
    return {
        "observation.images.front": front,
        "observation.images.wrist": wrist,
        "observation.state": np.arange(8, dtype=np.float32) + episode + index / 8,
        "action": -np.arange(8, dtype=np.float32) * episode - index / 3,
        "task": TASKS[episode % len(TASKS)],
    }


def open_writer(root: Path, resume: bool = False, **overrides) -> EpisodeWriter:
    kwargs = dict(fps=FPS, camera_names=CAMERAS, robot_type="panda", image_size=SIZE, resume=resume)
    return EpisodeWriter(root, **{**kwargs, **overrides})


def write_episode(writer: EpisodeWriter, episode: int) -> int:
    for index in range(FRAMES):
        writer.add_frame(make_frame(episode, index))
    return writer.save_episode(seed=seed_of(episode), success=success_of(episode))


def check_dataset(root: Path, num_episodes: int) -> None:
    """Read `root` with lerobot and compare every frame with `make_frame`."""
    dataset = LeRobotDataset(f"local/{root.name}", root=root)
    assert dataset.num_episodes == num_episodes
    assert len(dataset) == num_episodes * FRAMES
    assert list(dataset.meta.episodes["tasks"]) == [[TASKS[e % len(TASKS)]] for e in range(num_episodes)]
    for position in range(len(dataset)):
        item = dataset[position]
        episode, index = int(item["episode_index"]), int(item["frame_index"])
        assert (episode, index) == divmod(position, FRAMES)
        expected = make_frame(episode, index)
        assert item["task"] == expected["task"]
        np.testing.assert_array_equal(item["observation.state"].numpy(), expected["observation.state"])
        np.testing.assert_array_equal(item["action"].numpy(), expected["action"])
        assert int(item["episode.seed"]) == seed_of(episode)
        assert bool(item["episode.success"]) == success_of(episode)
        for camera in CAMERAS:
            key = f"observation.images.{camera}"
            decoded = item[key].permute(1, 2, 0).numpy() * 255  # lerobot returns float CHW in [0, 1]
            error = np.abs(decoded - expected[key]).mean()
            assert error < 3, f"{key} of episode {episode} frame {index}: mean abs error {error:.1f}"


def test_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    with open_writer(root) as writer:
        assert [write_episode(writer, episode) for episode in range(3)] == [0, 1, 2]
        assert writer.num_episodes == 3
        outcomes = {seed_of(e): success_of(e) for e in range(3)}
        assert writer.recorded_episodes() == outcomes
    check_dataset(root, 3)
    columns = ["episode_index", "episode.seed", "episode.success"]
    episodes = LeRobotDataset("local/demo", root=root).hf_dataset.select_columns(columns).to_pandas()
    episodes = episodes.drop_duplicates("episode_index")  # the recipe of the episode_writer docstring
    assert episodes.values.tolist() == [[e, seed_of(e), success_of(e)] for e in range(3)]
    with open_writer(root, resume=True) as writer:
        assert writer.recorded_episodes() == outcomes  # read back from disk


def test_discard_drops_only_the_current_episode(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    with open_writer(root) as writer:
        write_episode(writer, 0)
        for index in range(4):
            writer.add_frame(make_frame(2, index))  # a botched attempt
        writer.discard_episode()
        assert write_episode(writer, 1) == 1
    check_dataset(root, 2)


def test_resume_appends_and_refuses_to_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    with open_writer(root) as writer:
        write_episode(writer, 0)

    with pytest.raises(FileExistsError, match=rf"{re.escape(str(root))}.*resume=true"):
        open_writer(root)
    with pytest.raises(ValueError, match=r"observation\.images\.front: dataset has \('video', \(32, 32, 3\)\)"):
        open_writer(root, resume=True, image_size=64)

    with open_writer(root, resume=True) as writer:
        assert writer.num_episodes == 1
        assert write_episode(writer, 1) == 1
    with open_writer(root, resume=True) as writer:
        assert write_episode(writer, 2) == 2
    check_dataset(root, 3)


def test_root_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match=rf"{re.escape(str(tmp_path))} exists but is not a LeRobot dataset"):
        open_writer(tmp_path, resume=True)


def test_bad_frames_name_the_key(tmp_path: Path) -> None:
    with open_writer(tmp_path / "demo") as writer:
        frame = make_frame(0, 0)
        del frame["observation.state"]
        with pytest.raises(ValueError, match=r"frame is missing \['observation\.state'\]"):
            writer.add_frame(frame)
        frame = {**make_frame(0, 0), "observation.images.top": make_frame(0, 0)["observation.images.front"]}
        with pytest.raises(ValueError, match=r"unexpected keys \['observation\.images\.top'\]"):
            writer.add_frame(frame)
        frame = {**make_frame(0, 0), "observation.state": np.zeros(7, np.float64)}
        with pytest.raises(ValueError, match=r"'observation\.state'\]: expected a float32 array of shape \(8,\), "
                                             r"got float64 \(7,\)"):
            writer.add_frame(frame)
        frame = {**make_frame(0, 0), "observation.images.wrist": np.zeros((16, 16, 3), np.uint8)}
        with pytest.raises(ValueError, match=r"'observation\.images\.wrist'\]: .* shape \(32, 32, 3\), got uint8 \(16"):
            writer.add_frame(frame)
        with pytest.raises(ValueError, match="at least one frame"):
            writer.save_episode(seed=0, success=True)
        assert writer.num_episodes == 0


def test_failed_save_leaves_the_dataset_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "demo"
    writer = open_writer(root)
    write_episode(writer, 0)

    def fail() -> None:
        raise OSError("disk full")

    monkeypatch.setattr(writer, "_make_durable", fail)
    with pytest.raises(OSError, match="disk full"):
        write_episode(writer, 1)
    with pytest.raises(RuntimeError, match="closed"):
        writer.add_frame(make_frame(1, 0))
    writer.close()
    check_dataset(root, 1)
    with open_writer(root, resume=True) as writer:
        write_episode(writer, 1)
    check_dataset(root, 2)


# Runs in a separate interpreter that the test kills; reuses this module's frames and writer settings.
CHILD = """
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, {tests_dir!r})
import test_episode_writer as t

writer = t.open_writer(Path({root!r}))
for episode in range(2):
    t.write_episode(writer, episode)
if {during_save!r}:
    # die once lerobot has written the third episode, before its parquet files have footers
    writer._make_durable = lambda: os.kill(os.getpid(), signal.SIGKILL)
    t.write_episode(writer, 2)
print("saved 2 episodes", flush=True)
while True:  # the third episode, which never gets saved
    writer.add_frame(t.make_frame(2, 0))
    time.sleep(0.01)
"""


@pytest.mark.parametrize("during_save", [False, True], ids=["mid_episode", "during_save"])
def test_sigkill_loses_only_the_episode_in_progress(tmp_path: Path, during_save: bool) -> None:
    root = tmp_path / "demo"
    log = tmp_path / "child.log"
    script = CHILD.format(tests_dir=str(Path(__file__).parent), root=str(root), during_save=during_save)
    with log.open("w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 cwd=REPO_ROOT)
    try:
        if not during_save:
            ready, _, _ = select.select([child.stdout], [], [], 120)
            assert ready and child.stdout.readline().strip() == "saved 2 episodes", log.read_text()[-3000:]
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=120) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        child.kill()
        child.stdout.close()

    if not during_save:
        check_dataset(root, 2)  # readable as is, without any repair
    with open_writer(root, resume=True) as writer:
        assert writer.num_episodes == 2
        assert write_episode(writer, 2) == 2
    check_dataset(root, 3)
    leftovers = {path.name for path in root.iterdir()} - {"data", "meta", "videos", "images"}
    assert not leftovers
    assert not [path for path in (root / "images").rglob("*") if path.is_file()]
