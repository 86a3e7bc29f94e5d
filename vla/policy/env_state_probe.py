"""A training-only probe: predict the privileged environment state (object positions) from the backbone tokens.

Flow matching alone teaches a vision encoder trained from scratch to localize objects slowly: the only signal is
how much a wrong grasp point raises the action loss. In simulation the recorder also stores every object's
position (`observation.environment_state`), and regressing it from the same tokens the action head reads gives
the encoder that signal directly. The probe never runs at inference and checkpoints leave it out; policies never
take the state as input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EnvStateProbe(nn.Module):
    """tokens (B, N, D) + validity mask (B, N) -> environment state (B, E): one learned query attends over the
    tokens (one head: any token width works), an MLP reads the result."""

    def __init__(self, token_dim: int, state_dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, token_dim) * 0.02)
        self.attn = nn.MultiheadAttention(token_dim, 1, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, token_dim), nn.GELU(),
                                 nn.Linear(token_dim, state_dim))

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        query = self.query.expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attn(query, tokens, tokens, key_padding_mask=~mask, need_weights=False)
        return self.mlp(pooled[:, 0])
