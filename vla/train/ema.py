"""An exponential moving average of a model's weights, the copy that checkpoints ship."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    def decay_at(self, step: int) -> float:
        """Ramp up from 0, so the average does not remember the random initialization for thousands of steps."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        for avg, live in zip(self.model.parameters(), model.parameters(), strict=True):
            if live.requires_grad:
                avg.lerp_(live.detach(), 1 - decay)
        for avg, live in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(live)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.model.load_state_dict(state["model"])
