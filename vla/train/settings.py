"""Training hyperparameters, validated on creation (the top level of conf/train/train.yaml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSettings:
    steps: int = 20_000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    shift_pixels: int = 4  # random-shift augmentation: pad by this many pixels, crop back at a random offset
    num_workers: int = 0
    seed: int = 0
    log_every: int = 50
    save_every: int = 1000
    keep_checkpoints: int = 2
    eval_every: int = 0  # steps between sim evaluations of the EMA policy; 0 = never
    eval_episodes: int = 2  # per task, for the periodic evaluation
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on the CPU)
    resume: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
