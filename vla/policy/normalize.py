"""Normalization as its own strict step: per-feature mean/std from the dataset, saved with the checkpoint.

A key without stats is an error that names it, never a silent pass-through.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

STATS_FILE = "normalization_stats.json"
MIN_STD = 1e-3  # a constant feature (say, a gripper that never moves) is centered, not blown up


class Normalizer:
    def __init__(self, stats: dict[str, dict[str, list[float]]]) -> None:
        self.stats: dict[str, dict[str, Tensor]] = {}
        for key, entry in stats.items():
            for field in ("mean", "std"):
                if field not in entry:
                    raise KeyError(f"normalization stats for '{key}' have no '{field}'")
            mean = torch.as_tensor(np.asarray(entry["mean"], dtype=np.float32))
            std = torch.as_tensor(np.asarray(entry["std"], dtype=np.float32))
            if mean.shape != std.shape or mean.ndim != 1:
                raise ValueError(f"normalization stats for '{key}': mean {tuple(mean.shape)} and std "
                                 f"{tuple(std.shape)} must be equal 1-D shapes")
            self.stats[key] = {"mean": mean, "std": std.clamp_min(MIN_STD)}

    def _get(self, key: str, x: Tensor) -> tuple[Tensor, Tensor]:
        if key not in self.stats:
            raise KeyError(f"no normalization stats for '{key}' (have: {sorted(self.stats)})")
        mean, std = self.stats[key]["mean"], self.stats[key]["std"]
        if x.shape[-1] != mean.shape[0]:
            raise ValueError(f"'{key}' has {x.shape[-1]} dims, its normalization stats have {mean.shape[0]}")
        return mean.to(x.device, x.dtype), std.to(x.device, x.dtype)

    def normalize(self, key: str, x: Tensor) -> Tensor:
        mean, std = self._get(key, x)
        return (x - mean) / std

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        mean, std = self._get(key, x)
        return x * std + mean

    def require(self, keys: list[str], source: str) -> None:
        missing = [k for k in keys if k not in self.stats]
        if missing:
            raise KeyError(f"{source}: normalization stats are missing {missing} (have: {sorted(self.stats)})")

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {k: {f: v.tolist() for f, v in entry.items()} for k, entry in self.stats.items()}

    def save(self, directory: Path) -> None:
        (Path(directory) / STATS_FILE).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, directory: Path) -> Normalizer:
        path = Path(directory) / STATS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no {STATS_FILE} (the normalization stats)")
        return cls(json.loads(path.read_text()))
