"""Write robot episodes into a LeRobotDataset v3 with lerobot's own writer, so that a killed recorder loses
at most the episode in progress.

Frames (one dict per control step, checked by `EpisodeWriter.add_frame`):

    observation.images.<camera>  uint8 (image_size, image_size, 3), stored as mp4 video by lerobot
    observation.state            float32 (state_dim,)   joint1..joint7, gripper (or the env's `state_names`)
    action                       float32 (action_dim,)  same names (or the env's `action_names`)
    observation.environment_state float32 (len(env_state_names),), only when `env_state_names` are given:
                                 privileged sim state (object positions), a training-only target
    task                         str, the instruction (lerobot's task table, `meta/tasks.parquet`)

Seed and success of an episode are known only when it is saved; they are stored as two per-frame features,
constant over the episode: `episode.seed` (int64, shape (1,)) and `episode.success` (bool, shape (1,)).
lerobot 0.6 has no public way to add columns to the episode metadata rows, and per-frame features are what
lerobot itself uses for outcomes (`next.success` in lerobot-eval). One row per episode:

    LeRobotDataset(repo_id, root=root).hf_dataset.select_columns(
        ["episode_index", "episode.seed", "episode.success"]).to_pandas().drop_duplicates("episode_index")

and `EpisodeWriter.recorded_episodes()` gives seed -> success. Policies ignore both features (they are
neither `observation.*` nor `action`).

Crash safety. lerobot 0.6.1 keeps two ParquetWriters open for a whole session (the frames in `data/`, and
`meta/episodes/`, which also buffers 10 episode rows in memory) and only `finalize()` writes their footers;
a parquet file without its footer cannot be read, so a SIGKILL used to lose every episode of the session
while `info.json` already counted them. Three measures make each episode durable on its own:

1. Frames are buffered in memory until `save_episode`, so a kill mid-episode leaves nothing on disk.
2. Right after lerobot's `save_episode`, both ParquetWriters are closed and lerobot's file rotation is
   re-armed the way `LeRobotDataset.resume()` leaves it, so each episode gets its own data, metadata and
   video files (a legal v3 layout: files are addressed per episode by chunk/file index; the price is
   2 + cameras small files per episode), and no save re-muxes a growing mp4 and copies it over the file
   holding earlier episodes, as lerobot does otherwise. This costs about 10 ms per episode, flat in the
   number of episodes.
   Calling `finalize()` and `LeRobotDataset.resume()` after every episode was measured too: 0.15 s per
   episode at first, growing to 2.5 s at 400 episodes because resume re-reads all episode metadata, and
   every resume leaves another copy of it in the Hugging Face datasets cache.
3. A kill inside `save_episode` (mostly lerobot's image statistics and video encoding) is undone: before
   handing the episode to lerobot, the writer copies the metadata files lerobot rewrites in place
   (info.json, stats.json, tasks.parquet) to `root/.pending_save/`. Opening the dataset with `resume=True`
   restores them and deletes every file no committed episode refers to, plus lerobot's staging folders.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lerobot.configs import RGBEncoderConfig
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.utils.constants import DEFAULT_FEATURES
from lerobot.utils.utils import SuppressProgressBars

logger = logging.getLogger(__name__)

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"  # lerobot's name for privileged env state
ACTION_KEY = "action"
TASK_KEY = "task"
SEED_KEY = "episode.seed"
SUCCESS_KEY = "episode.success"

_PENDING_DIR = ".pending_save"
_MARKER = "started"  # created last when a save starts, deleted first when it ends
# lerobot rewrites these in place while saving an episode; every other file it touches is new.
_REWRITTEN = ("meta/info.json", "meta/stats.json", "meta/tasks.parquet")


def _video_encoder() -> RGBEncoderConfig:
    # lerobot 0.6 encodes with PyAV (torchcodec only decodes, and cannot load here without system FFmpeg).
    # Its default libsvtav1 works with this PyAV build too, but h264 encodes our small frames about twice as
    # fast at a similar error, and every decoder (PyAV, torchcodec, browsers) plays it.
    # x264 would print ~15 lines of statistics per video at INFO level; keep its warnings and errors only.
    return RGBEncoderConfig(vcodec="h264", crf=23, preset="veryfast", extra_options={"x264-params": "log=1"})


def dataset_features(camera_names: Sequence[str], image_size: int, state_dim: int, action_dim: int,
                     state_names: Sequence[str] | None = None, action_names: Sequence[str] | None = None,
                     env_state_names: Sequence[str] | None = None) -> dict:
    """The lerobot feature spec of an `EpisodeWriter` dataset; names default to joint1..jointN-1, gripper."""

    def names(given: Sequence[str] | None, dim: int, key: str) -> list[str]:
        if given is None:
            return [f"joint{i + 1}" for i in range(dim - 1)] + ["gripper"]
        if len(given) != dim:
            raise ValueError(f"{key}: {len(given)} names for {dim} dims: {list(given)}")
        return list(given)

    features: dict[str, dict[str, Any]] = {
        f"{IMAGE_PREFIX}{camera}": {
            "dtype": "video",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"],
        }
        for camera in camera_names
    }
    features[STATE_KEY] = {"dtype": "float32", "shape": (state_dim,), "names": names(state_names, state_dim, STATE_KEY)}
    features[ACTION_KEY] = {"dtype": "float32", "shape": (action_dim,),
                            "names": names(action_names, action_dim, ACTION_KEY)}
    if env_state_names:
        features[ENV_STATE_KEY] = {"dtype": "float32", "shape": (len(env_state_names),),
                                   "names": list(env_state_names)}
    features[SEED_KEY] = {"dtype": "int64", "shape": (1,), "names": None}
    features[SUCCESS_KEY] = {"dtype": "bool", "shape": (1,), "names": None}
    return features


class EpisodeWriter:
    """Records episodes frame by frame into the LeRobotDataset v3 at `root` (repo id `local/<root name>`).

    A new dataset is created when `root` does not exist (or is an empty directory); an existing one is only
    appended to with `resume=True`. Use as a context manager, or call `close()` when done.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: int,
        camera_names: Sequence[str],
        robot_type: str,
        image_size: int = 128,
        state_dim: int = 8,
        action_dim: int = 8,
        state_names: Sequence[str] | None = None,
        action_names: Sequence[str] | None = None,
        env_state_names: Sequence[str] | None = None,
        resume: bool = False,
    ) -> None:
        self.root = Path(root)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not camera_names or len(set(camera_names)) != len(camera_names):
            raise ValueError(f"camera_names must be non-empty and unique, got {list(camera_names)}")
        if image_size <= 0 or image_size % 2:
            raise ValueError(f"image_size must be a positive even number (h264 needs even sizes), got {image_size}")
        if state_dim < 1 or action_dim < 1:
            raise ValueError(f"state_dim and action_dim must be >= 1, got {state_dim} and {action_dim}")
        # libx264 prints a banner per video through PyAV's INFO logging: one per camera per episode.
        av.logging.set_level(av.logging.ERROR)
        self._features = dataset_features(camera_names, image_size, state_dim, action_dim, state_names, action_names,
                                          env_state_names)
        self._frames: list[dict[str, Any]] = []
        repo_id = f"local/{self.root.name}"
        if (self.root / "meta" / "info.json").is_file():
            if not resume:
                raise FileExistsError(
                    f"{self.root} already holds a LeRobot dataset; pass resume=true to append episodes to it, "
                    "or choose another root"
                )
            self._dataset = self._resume(repo_id)
            self._check_resumable(fps, robot_type)
        else:
            self._dataset = self._create(repo_id, fps, robot_type)
        if not (hasattr(self._dataset.meta, "_close_writer") and hasattr(self._dataset.writer, "_latest_episode")):
            self.close()
            raise RuntimeError("EpisodeWriter relies on lerobot 0.6 writer internals that this lerobot lacks")
        self._num_episodes = self._dataset.meta.total_episodes
        self._outcomes = _read_outcomes(self.root) if self._num_episodes else {}

    @property
    def num_episodes(self) -> int:
        """Episodes in the dataset, including those saved before a resume."""
        return self._num_episodes

    def recorded_episodes(self) -> dict[int, bool]:
        """Seed -> success of every saved episode."""
        return dict(self._outcomes)

    def add_frame(self, frame: dict[str, Any]) -> None:
        """Buffer one frame of the current episode; nothing reaches the disk before `save_episode`."""
        self._require_open()
        expected = {key for key in self._features if key not in (SEED_KEY, SUCCESS_KEY)} | {TASK_KEY}
        missing, extra = expected - frame.keys(), frame.keys() - expected
        if missing or extra:
            problem = f"is missing {sorted(missing)}" if missing else f"has unexpected keys {sorted(extra)}"
            raise ValueError(f"frame {problem}; expected exactly the keys {sorted(expected)}")
        task = frame[TASK_KEY]
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"frame['{TASK_KEY}'] must be a non-empty instruction string, got {task!r}")

        buffered: dict[str, Any] = {TASK_KEY: task}
        for key in expected - {TASK_KEY}:
            spec, value = self._features[key], frame[key]
            dtype = np.dtype(np.uint8 if spec["dtype"] == "video" else spec["dtype"])
            shape = tuple(spec["shape"])
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != shape:
                got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
                raise ValueError(f"frame['{key}']: expected a {dtype} array of shape {shape}, got {got}")
            if spec["dtype"] != "video" and not np.isfinite(value).all():
                raise ValueError(f"frame['{key}'] contains NaN or inf: {value}")
            buffered[key] = value.copy()  # callers may reuse their arrays between steps
        self._frames.append(buffered)

    def discard_episode(self) -> None:
        """Drop the frames buffered for the current episode, e.g. to redo it."""
        self._require_open()
        self._frames.clear()

    def save_episode(self, seed: int, success: bool) -> int:
        """Write the buffered frames as one episode and return its index.

        Once this returns, the episode survives a kill of the process. If it raises (Ctrl-C included), the
        dataset is left as it was before the call and this writer is closed; reopen with resume=True.
        """
        self._require_open()
        if not self._frames:
            raise ValueError("save_episode() needs at least one frame; call add_frame() first")
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        episode_values = {
            SEED_KEY: np.array([seed], dtype=np.int64),
            SUCCESS_KEY: np.array([bool(success)], dtype=bool),
        }
        self._begin_save()
        try:
            for frame in self._frames:
                self._dataset.add_frame({**frame, **episode_values})
            # A process pool per episode costs more than it saves on our small videos. The progress bar is
            # Hugging Face datasets' per-episode "Map" bar, noise next to a recorder's own progress.
            with SuppressProgressBars():
                self._dataset.save_episode(parallel_encoding=False)
            self._make_durable()
        except BaseException:
            self._abort_save()
            raise
        self._end_save()
        self._frames.clear()
        self._outcomes[int(seed)] = bool(success)
        self._num_episodes += 1
        return self._num_episodes - 1

    def close(self) -> None:
        """Finalize the dataset; frames of an unsaved episode are discarded. Safe to call twice."""
        if self._dataset is None:
            return
        if self._frames:
            logger.warning("closing %s with %d unsaved frames; discarding them", self.root, len(self._frames))
            self._frames.clear()
        dataset, self._dataset = self._dataset, None
        dataset.finalize()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._dataset is None:
            raise RuntimeError(f"EpisodeWriter for {self.root} is closed; reopen it with resume=True")

    def _create(self, repo_id: str, fps: int, robot_type: str) -> LeRobotDataset:
        if self.root.exists():
            if not self.root.is_dir() or any(self.root.iterdir()):
                raise FileExistsError(
                    f"{self.root} exists but is not a LeRobot dataset (no meta/info.json); "
                    "choose another root or remove it"
                )
            self.root.rmdir()  # lerobot's create() insists on making the directory itself
        # The video backend only matters for decoding, which a writer never does; naming one skips lerobot's
        # noisy torchcodec probe.
        return LeRobotDataset.create(
            repo_id,
            fps,
            self._features,
            root=self.root,
            robot_type=robot_type,
            rgb_encoder=_video_encoder(),
            video_backend="pyav",
        )

    def _resume(self, repo_id: str) -> LeRobotDataset:
        _roll_back_interrupted_save(self.root)
        try:
            return LeRobotDataset.resume(repo_id, root=self.root, rgb_encoder=_video_encoder(), video_backend="pyav")
        except Exception as err:  # lerobot reports unreadable local files as a failed Hub download of repo_id
            raise RuntimeError(f"lerobot cannot open the dataset at {self.root}: {err!r}") from err

    def _check_resumable(self, fps: int, robot_type: str) -> None:
        meta = self._dataset.meta

        def describe(features: dict) -> dict[str, tuple]:
            return {key: (ft["dtype"], tuple(ft["shape"])) for key, ft in features.items()}

        ours = {"fps": fps, "robot_type": robot_type, **describe(self._features)}
        theirs = {"fps": meta.fps, "robot_type": meta.robot_type, **describe(meta.features)}
        differences = [
            f"{key}: dataset has {theirs.get(key, 'nothing')}, this writer has {ours.get(key, 'nothing')}"
            for key in sorted(ours.keys() | theirs.keys())
            if ours.get(key) != theirs.get(key) and key not in DEFAULT_FEATURES
        ]
        if differences:
            self.close()
            raise ValueError(f"cannot resume {self.root}, it was recorded differently:\n  " + "\n  ".join(differences))

    def _begin_save(self) -> None:
        # Snapshot what lerobot rewrites in place; the marker, created last, says lerobot may have started.
        pending = self.root / _PENDING_DIR
        for relative in _REWRITTEN:
            if (self.root / relative).exists():
                (pending / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.root / relative, pending / relative)
        pending.mkdir(exist_ok=True)
        (pending / _MARKER).touch()

    def _end_save(self) -> None:
        pending = self.root / _PENDING_DIR
        (pending / _MARKER).unlink()  # first: from here on a kill keeps the episode
        shutil.rmtree(pending)

    def _make_durable(self) -> None:
        """Close lerobot's parquet writers so the episode just saved is readable, then re-arm file rotation.

        lerobot keeps its ParquetWriters open until finalize() and appends the next episode to the same files.
        After closing them (which writes the footers) the writers are put in the state `LeRobotDataset.resume()`
        leaves them in: no latest episode in memory, the last saved one as `meta.episodes[-1]`. The next
        episode then goes to new files instead of reopening, and truncating, the closed ones. These are
        private lerobot 0.6.1 internals (the constructor checks they exist, the crash tests check the result).
        """
        meta, writer = self._dataset.meta, self._dataset.writer
        latest = {key: value[0] for key, value in meta.latest_episode.items()}  # values are 1-element lists
        writer.close_writer()
        meta._close_writer()
        meta.episodes = [latest]
        meta.latest_episode = None
        writer._latest_episode = None

    def _abort_save(self) -> None:
        dataset, self._dataset = self._dataset, None
        self._frames.clear()
        # Close lerobot's writers first so that nothing they still hold is written after the roll-back.
        with contextlib.suppress(Exception):
            dataset.finalize()
        _roll_back_interrupted_save(self.root)


def _roll_back_interrupted_save(root: Path) -> None:
    """Return `root` to its state before a `save_episode` that never finished.

    An episode is committed by its row in meta/episodes. Once the snapshot's info.json is back, the committed
    rows are those of the first `total_episodes` episodes; every other metadata, data or video file was
    written by the interrupted save, as was everything in lerobot's staging folders.
    """
    pending = root / _PENDING_DIR
    if not pending.exists():
        return
    if (pending / _MARKER).exists():
        logger.warning("rolling back the episode whose saving was interrupted in %s", root)
        for relative in _REWRITTEN:
            if (pending / relative).exists():
                shutil.copy2(pending / relative, root / relative)
            else:
                (root / relative).unlink(missing_ok=True)
        info = json.loads((root / "meta" / "info.json").read_text())
        video_keys = [key for key, feature in info["features"].items() if feature["dtype"] == "video"]
        prefixes = ["data", *(f"videos/{key}" for key in video_keys)]
        columns = ["episode_index"] + [f"{p}/{part}" for p in prefixes for part in ("chunk_index", "file_index")]

        def file_of(template: str, row: dict, prefix: str, **names: str) -> Path:
            return root / template.format(
                chunk_index=row[f"{prefix}/chunk_index"], file_index=row[f"{prefix}/file_index"], **names
            )

        keep = set()
        for path in (root / "meta" / "episodes").glob("*/*.parquet"):
            try:
                rows = pq.read_table(path, columns=columns).to_pylist()
            except pa.ArrowInvalid:  # no footer yet
                rows = []
            committed = [row for row in rows if row["episode_index"] < info["total_episodes"]]
            if not committed:
                path.unlink()
            for row in committed:
                keep.add(file_of(info["data_path"], row, "data"))
                keep.update(file_of(info["video_path"], row, f"videos/{key}", video_key=key) for key in video_keys)
        for path in [*root.glob("data/*/*"), *root.glob("videos/*/*/*")]:
            if path not in keep:
                path.unlink()
        shutil.rmtree(root / "images", ignore_errors=True)  # lerobot's PNG frames
        for staging in root.glob("tmp*"):  # lerobot's per-video temporary folders
            shutil.rmtree(staging)
        (pending / _MARKER).unlink()
    shutil.rmtree(pending)


def _read_outcomes(root: Path) -> dict[int, bool]:
    table = pq.read_table(root / "data", columns=[SEED_KEY, SUCCESS_KEY])
    return dict(zip(table[SEED_KEY].to_pylist(), table[SUCCESS_KEY].to_pylist(), strict=True))
