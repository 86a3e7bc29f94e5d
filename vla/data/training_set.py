"""Training samples from a LeRobotDataset v3: the frame's images and state, the task, and an action chunk window.

The chunk window follows lerobot's `delta_timestamps` semantics for `action` = [0, 1/fps, ..., (H-1)/fps]: indices
past the episode's end repeat its last action and are flagged in `action_is_pad` (the target becomes "hold").

Video frames (or image features: frames stored inside the parquet files) are decoded once through lerobot's decoder,
resized to the policy's image size and cached as uint8 arrays beside the dataset (`<root>/.cache/vla/`), episode by
episode, so an interrupted first run resumes and every later epoch reads memory instead of decoding mp4s on 2 CPU
cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.datasets.video_utils import decode_video_frames, get_safe_default_video_backend
from tqdm import tqdm

from vla.policy.policy import ACTION_KEY, ENV_STATE_KEY, IMAGE_PREFIX, STATE_KEY, resize_images, to_model_actions


def open_lerobot_dataset(root: str | Path, chunk: int) -> LeRobotDataset:
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"dataset.root: {root} is not a LeRobotDataset v3 (no meta/info.json); record one "
                                "with vla-record or name an existing dataset directory")
    fps = json.loads((root / "meta" / "info.json").read_text())["fps"]
    window = {ACTION_KEY: [k / fps for k in range(chunk)]}
    return LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=window)


class ChunkDataset(torch.utils.data.Dataset):
    """Batches of {`observation.images.<cam>` (B, 3, S, S) uint8, `observation.state` (B, S), `action` (B, H, A),
    `action_is_pad` (B, H), `task` [B]} and, where the dataset records it, `observation.environment_state` (B, E);
    index it with a list of frame indices (the DataLoader does, through `__getitems__`).

    `cameras` are the policy's (the env's) names. A dataset recorded elsewhere may name them differently:
    `camera_map` maps its camera names to the policy's (`{"image": "agentview"}` reads the policy's `agentview`
    from `observation.images.image`). `state_dim` / `action_dim`, when given, must be the dataset's.
    """

    def __init__(self, root: str | Path, chunk: int, cameras: tuple[str, ...], image_size: int,
                 cache_dir: str | Path | None = None, *, camera_map: dict[str, str] | None = None,
                 state_dim: int | None = None, action_dim: int | None = None) -> None:
        self.root = Path(root)
        self.lerobot = open_lerobot_dataset(self.root, chunk)
        meta = self.lerobot.meta
        info = self.root / "meta" / "info.json"
        self.sources = {cam: self._source_camera(cam, camera_map or {}) for cam in cameras}  # policy -> dataset
        for key, dim, policy_key in ((STATE_KEY, state_dim, "policy.head.state_dim"),
                                     (ACTION_KEY, action_dim, "policy.head.action_dim")):
            if key not in meta.features:
                raise KeyError(f"the dataset at {self.root} has no '{key}' feature ({info})")
            shape = tuple(meta.features[key]["shape"])
            if dim is not None and shape != (dim,):
                raise ValueError(f"{policy_key}={dim}, but '{key}' has shape {list(shape)} in {info}; choose the env "
                                 f"the dataset was recorded in (env=...) or set {policy_key}")
        # Frames are cached at the policy's size, or at the recorded size when the policy wants more pixels:
        # upsampling in the cache would only cost disk (the policy resizes its input itself).
        recorded = min(meta.features[IMAGE_PREFIX + c]["shape"][0] for c in self.sources.values())
        self.cameras, self.image_size, self.chunk = tuple(cameras), min(image_size, recorded), chunk

        table = self.lerobot.hf_dataset.with_format("numpy")
        self.state = np.stack(table[STATE_KEY]).astype(np.float32)  # (F, S)
        self.action = np.stack(table[ACTION_KEY]).astype(np.float32)  # (F, A)
        self.env_state = (np.stack(table[ENV_STATE_KEY]).astype(np.float32) if ENV_STATE_KEY in meta.features
                          else None)  # (F, E) privileged object positions, a training-only target
        self.episode = np.asarray(table["episode_index"]).reshape(-1)  # (F,)
        self.timestamp = np.asarray(table["timestamp"], dtype=np.float64).reshape(-1)  # (F,)
        tasks = meta.tasks.index.tolist()  # task_index -> instruction
        self.task = [tasks[i] for i in np.asarray(table["task_index"]).reshape(-1)]
        self.window, self.window_pad = self._action_windows()  # (F, H) frame indices, (F, H) padded flags
        self.images = {cam: self._frame_cache(self.sources[cam],
                                              Path(cache_dir) if cache_dir else self.root / ".cache" / "vla")
                       for cam in self.cameras}  # policy camera -> frames

    def __len__(self) -> int:
        return len(self.state)

    def _source_camera(self, cam: str, camera_map: dict[str, str]) -> str:
        """The dataset camera that feeds policy camera `cam`: its own name, or one that `camera_map` maps to it."""
        camera_keys = self.lerobot.meta.camera_keys  # video and image features
        names = [cam, *(name for name, target in camera_map.items() if target == cam and name != cam)]
        found = [name for name in names if IMAGE_PREFIX + name in camera_keys]
        if len(found) == 1:
            return found[0]
        problem = (f"has several of {[IMAGE_PREFIX + n for n in found]}: map only one" if found else
                   f"has none of the camera features {[IMAGE_PREFIX + n for n in names]}")
        raise KeyError(f"policy camera '{cam}': the dataset at {self.root} {problem} (it has {camera_keys}, "
                       f"{self.root / 'meta' / 'info.json'}); env.dataset_cameras maps a dataset's camera names to "
                       "the env's")

    def _action_windows(self) -> tuple[np.ndarray, np.ndarray]:
        episodes = self.lerobot.meta.episodes
        start = np.asarray(episodes["dataset_from_index"])[self.episode]  # (F,)
        end = np.asarray(episodes["dataset_to_index"])[self.episode]
        wanted = np.arange(len(self.state))[:, None] + np.arange(self.chunk)[None]  # (F, H)
        return np.clip(wanted, start[:, None], end[:, None] - 1), wanted >= end[:, None]

    def _frame_cache(self, cam: str, cache_dir: Path) -> np.ndarray:
        """(F, 3, S, S) uint8 frames of one dataset camera, decoded episode by episode into a resumable memmap."""
        key, S = IMAGE_PREFIX + cam, self.image_size
        cache_dir.mkdir(parents=True, exist_ok=True)
        stem = cache_dir / f"{cam}_{S}px_{len(self)}frames"
        size = len(self) * 3 * S * S
        if not Path(f"{stem}.npy").exists() and shutil.disk_usage(cache_dir).free < 1.1 * size:
            raise OSError(f"dataset.cache_dir: {cache_dir} has {shutil.disk_usage(cache_dir).free / 1e9:.1f} GB "
                          f"free; the {cam} frame cache needs {size / 1e9:.1f} GB")
        frames = np.lib.format.open_memmap(f"{stem}.npy", mode="r+" if Path(f"{stem}.npy").exists() else "w+",
                                           dtype=np.uint8, shape=(len(self), 3, S, S))
        done_path = Path(f"{stem}.done.json")
        done = set(json.loads(done_path.read_text())) if done_path.exists() else set()
        episodes = self.lerobot.meta.episodes
        todo = [e for e in range(len(episodes)) if e not in done]
        for ep in tqdm(todo, desc=f"decode {cam} frames", unit="ep", disable=not todo):
            lo, hi = episodes["dataset_from_index"][ep], episodes["dataset_to_index"][ep]
            if key in self.lerobot.meta.video_keys:
                offset = episodes[f"videos/{key}/from_timestamp"][ep]
                video = self.root / self.lerobot.meta.get_video_file_path(ep, key)
                decoded = decode_video_frames(video, (self.timestamp[lo:hi] + offset).tolist(),
                                              self.lerobot.tolerance_s, get_safe_default_video_backend(),
                                              return_uint8=True).permute(0, 2, 3, 1)
            else:  # an image feature: encoded frames inside the parquet files (physical-intelligence/libero does this)
                decoded = torch.from_numpy(np.stack(self.lerobot.hf_dataset.with_format("numpy")[lo:hi][key]))
            frames[lo:hi] = resize_images(decoded, S).numpy()  # (n, H, W, 3) -> (n, 3, S, S)
            done.add(ep)
            if len(done) % 25 == 0 or ep == todo[-1]:
                frames.flush()
                done_path.write_text(json.dumps(sorted(done)))
        return frames

    def __getitems__(self, indices: list[int]) -> dict:
        idx = np.asarray(indices)
        batch = {IMAGE_PREFIX + cam: torch.from_numpy(np.ascontiguousarray(self.images[cam][np.sort(idx)]))
                 for cam in self.cameras}
        order = np.argsort(np.argsort(idx))  # memmaps read faster in sorted order; restore the requested order
        batch = {k: v[torch.from_numpy(order)] for k, v in batch.items()}
        batch[STATE_KEY] = torch.from_numpy(self.state[idx])
        batch[ACTION_KEY] = torch.from_numpy(self.action[self.window[idx]])  # (B, H, A)
        batch[ACTION_KEY + "_is_pad"] = torch.from_numpy(self.window_pad[idx])
        if self.env_state is not None:
            batch[ENV_STATE_KEY] = torch.from_numpy(self.env_state[idx])
        batch["task"] = [self.task[i] for i in idx]
        return batch

    def __getitem__(self, index: int) -> dict:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def model_actions(self, relative_actions: bool) -> np.ndarray:
        """Every frame's chunk as the head predicts it (offsets from the state when relative), (F * H, A)."""
        return to_model_actions(torch.from_numpy(self.action[self.window]), torch.from_numpy(self.state),
                                relative_actions).reshape(-1, self.action.shape[1]).numpy()

    @property
    def env_state_dim(self) -> int:
        """Dims of `observation.environment_state`; 0 when the dataset has none."""
        return 0 if self.env_state is None else self.env_state.shape[1]

    def normalization_stats(self, relative_actions: bool) -> dict[str, dict[str, list[float]]]:
        """Mean/std of the state, of the actions as the head predicts them (offsets when relative) and of the
        environment state where there is one."""
        return mean_std(self.state, self.model_actions(relative_actions), self.env_state)


class ChunkDatasets(torch.utils.data.Dataset):
    """Several recording sessions trained on as one: the parts' frames back to back, one set of stats.

    Saves merging datasets (lerobot's `aggregate_datasets` re-encodes every video) before training on them.
    """

    def __init__(self, parts: list[ChunkDataset]) -> None:
        if len({p.state.shape[1] for p in parts}) > 1 or len({p.action.shape[1] for p in parts}) > 1:
            raise ValueError("dataset.root: the datasets differ in state or action dims: "
                             f"{[(str(p.root), p.state.shape[1], p.action.shape[1]) for p in parts]}")
        self.parts = parts
        dims = {p.env_state_dim for p in parts}  # the probe's target only where every part has the same one
        self.env_state_dim = dims.pop() if len(dims) == 1 else 0
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # (parts + 1,) first frame of each part

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitems__(self, indices: list[int]) -> dict:
        idx = np.asarray(indices)
        part_of = np.searchsorted(self.starts, idx, side="right") - 1  # (B,)
        pieces = [(np.flatnonzero(part_of == k), self.parts[k].__getitems__((idx[part_of == k] - start).tolist()))
                  for k, start in enumerate(self.starts[:-1]) if (part_of == k).any()]
        order = np.argsort(np.concatenate([positions for positions, _ in pieces]))  # back to the requested order
        batch = {key: torch.cat([piece[key] for _, piece in pieces])[torch.from_numpy(order)]
                 for key in pieces[0][1] if key != "task" and (key != ENV_STATE_KEY or self.env_state_dim)}
        tasks = [task for _, piece in pieces for task in piece["task"]]
        batch["task"] = [tasks[i] for i in order]
        return batch

    def __getitem__(self, index: int) -> dict:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def normalization_stats(self, relative_actions: bool) -> dict[str, dict[str, list[float]]]:
        return mean_std(np.concatenate([p.state for p in self.parts]),
                        np.concatenate([p.model_actions(relative_actions) for p in self.parts]),
                        np.concatenate([p.env_state for p in self.parts]) if self.env_state_dim else None)


def open_chunk_datasets(roots: str | list[str], cache_dir: str | Path | None = None,
                        **kwargs) -> ChunkDataset | ChunkDatasets:
    """One dataset directory, or several as one (`ChunkDatasets`); `kwargs` are `ChunkDataset`'s.

    With several roots, an explicit `cache_dir` holds one subdirectory per dataset.
    """
    if isinstance(roots, str | Path):
        return ChunkDataset(roots, cache_dir=cache_dir, **kwargs)
    if not roots:
        raise ValueError("dataset.root: an empty list; name one or more dataset directories")
    return ChunkDatasets([ChunkDataset(root, cache_dir=Path(cache_dir) / f"{i}_{Path(root).name}" if cache_dir
                                       else None, **kwargs) for i, root in enumerate(roots)])


def mean_std(state: np.ndarray, model_actions: np.ndarray,
             env_state: np.ndarray | None = None) -> dict[str, dict[str, list[float]]]:
    features = {STATE_KEY: state, ACTION_KEY: model_actions, ENV_STATE_KEY: env_state}
    return {key: {"mean": x.mean(0).tolist(), "std": x.std(0).tolist()} for key, x in features.items()
            if x is not None}


def identity_collate(batch: dict) -> dict:
    """`__getitems__` already returns a collated batch."""
    return batch
