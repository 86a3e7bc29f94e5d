"""DiT action head with a mixture of horizons.

Tokens are `[state, action_0 .. action_{H-1}]`. The flow time enters through adaptive layer norm (adaLN-Zero: every
residual branch starts gated shut, so the untrained head is the identity on its tokens and predicts zero). Blocks
alternate cross-attention to the backbone tokens and bidirectional self-attention among the head's own tokens.

Mixture of horizons: the chunk is run once per horizon h_k, stacked along the batch (K*B) through the ONE shared head.
Branch k masks steps >= h_k out of the keys (so nothing it predicts depends on them) and zeroes them in the residual
stream and the output. A per-step linear gate fuses the branches active at each step (h_k > step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSIONS = ("gate", "mean", "single")
PREDICTIONS = ("velocity", "sample")
GATE_BALANCE_WEIGHT = 1e-3


@dataclass
class ActionHeadConfig:
    action_dim: int = 8
    state_dim: int = 8
    chunk: int = 16  # H, actions per chunk
    horizons: tuple[int, ...] = (4, 8, 12, 16)  # strictly increasing, last == chunk
    fusion: str = "gate"  # "gate" (learned per-step gate) | "mean" (uniform) | "single" (only the full horizon)
    width: int = 128
    depth: int = 4  # blocks, alternating cross-attention and self-attention, so even
    heads: int = 4
    cond_dim: int = 128  # backbone token dim
    gate_noise: float = 1.0  # std of the Gaussian noise on the gate logits, training only
    prediction: str = "velocity"  # what the head outputs: flow "velocity" or the clean "sample"

    def __post_init__(self) -> None:
        self.horizons = tuple(self.horizons)  # YAML gives lists
        for name in ("action_dim", "state_dim", "chunk", "width", "depth", "heads", "cond_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ActionHeadConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.horizons or min(self.horizons) < 1:
            raise ValueError(f"ActionHeadConfig.horizons must be non-empty and all >= 1, got {self.horizons}")
        if any(a >= b for a, b in zip(self.horizons, self.horizons[1:], strict=False)):
            raise ValueError(f"ActionHeadConfig.horizons must be strictly increasing, got {self.horizons}")
        if self.horizons[-1] != self.chunk:
            raise ValueError(f"ActionHeadConfig.horizons must end at chunk={self.chunk}, got {self.horizons}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"ActionHeadConfig.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.depth % 2:
            raise ValueError(f"ActionHeadConfig.depth must be even (cross/self-attention pairs), got {self.depth}")
        if self.width % self.heads:
            raise ValueError(f"ActionHeadConfig.width={self.width} must be divisible by heads={self.heads}")
        if self.gate_noise < 0:
            raise ValueError(f"ActionHeadConfig.gate_noise must be >= 0, got {self.gate_noise}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"ActionHeadConfig.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")

    @property
    def branch_horizons(self) -> tuple[int, ...]:
        """The horizons the head actually runs: all of them, or only the full chunk for fusion="single"."""
        return (self.chunk,) if self.fusion == "single" else self.horizons


def timestep_embedding(t_b: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of flow times t in [0, 1], scaled by 1000 as in DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t_b.device, dtype=torch.float32) / half)
    args = 1000.0 * t_b.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    return F.pad(emb, (0, dim - 2 * half))  # odd dim: one zero column


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention of queries x onto a context, with a key-padding mask (True = attend)."""

    def __init__(self, width: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_dim, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """x (R*B, T, W) onto context (B, N, C): a context shared by R stacked branches is projected once."""
        B, T, W = x.shape
        Bc, N, d = context.shape[0], context.shape[1], W // self.heads
        reps = B // Bc
        q = self.q(x).view(B, T, self.heads, d).transpose(1, 2)  # (B, heads, T, d)
        k, v = self.kv(context).view(Bc, N, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # each (Bc, heads, N, d)
        k, v, context_mask = k.repeat(reps, 1, 1, 1), v.repeat(reps, 1, 1, 1), context_mask.repeat(reps, 1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=context_mask[:, None, None, :])  # (B, heads, T, d)
        return self.proj(y.transpose(1, 2).reshape(B, T, W))  # (B, T, W)


class Block(nn.Module):
    """Attention (cross to the backbone or self among tokens) + MLP, each modulated by the flow time."""

    def __init__(self, cfg: ActionHeadConfig, cross: bool) -> None:
        super().__init__()
        self.cross = cross
        self.norm1 = nn.LayerNorm(cfg.width, elementwise_affine=False)
        self.attn = Attention(cfg.width, cfg.heads, cfg.cond_dim if cross else cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 6 * cfg.width))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: gates start at 0, the block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, temb: Tensor, token_mask: Tensor, cond: Tensor, cond_mask: Tensor) -> Tensor:
        """x (K*B, T, W), temb (K*B, W), token_mask (K*B, T), cond (B, N, C), cond_mask (B, N) -> (K*B, T, W)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(temb)[:, None].chunk(6, dim=-1)  # each (B, 1, W)
        h = modulate(self.norm1(x), shift1, scale1)
        h = self.attn(h, cond, cond_mask) if self.cross else self.attn(h, h, token_mask)
        x = x + gate1 * h
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x * token_mask[..., None]  # masked steps stay zero, so they are masked out of the queries too


class DiTActionHead(nn.Module):
    def __init__(self, cfg: ActionHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        W, K = cfg.width, len(cfg.branch_horizons)
        self.state_proj = nn.Linear(cfg.state_dim, W)
        self.action_proj = nn.Linear(cfg.action_dim, W)
        self.pos_emb = nn.Parameter(0.02 * torch.randn(cfg.chunk, W))  # (H, W), action tokens only
        self.time_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.cond_norm = nn.LayerNorm(cfg.cond_dim)
        self.blocks = nn.ModuleList(Block(cfg, cross=i % 2 == 0) for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(W, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.out = nn.Linear(W, cfg.action_dim)
        for layer in (self.final_ada[1], self.out):  # DiT: the untrained head predicts zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.gate = nn.Linear(W, K) if cfg.fusion == "gate" else None
        if self.gate is not None:  # starts as the uniform mean over active horizons
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        horizons = torch.tensor(cfg.branch_horizons)
        self.register_buffer("active", torch.arange(cfg.chunk)[:, None] < horizons[None, :], persistent=False)  # (H, K)

    def forward(
        self, noisy_actions: Tensor, t: Tensor, state: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """noisy_actions (B, H, A), t (B,), state (B, S), cond (B, N, C), cond_mask (B, N) bool True = valid.

        Returns branches (K, B, H, A) (zero at steps >= h_k), fused (B, H, A), gate (B, H, K) weights (zero for
        inactive horizons) and active (H, K).
        """
        cfg = self.cfg
        B, H, K = noisy_actions.shape[0], cfg.chunk, len(cfg.branch_horizons)
        if cond_mask is None:
            cond_mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
        self._check_inputs(noisy_actions, t, state, cond, cond_mask)
        active = self.active  # (H, K)

        tokens = torch.cat([self.state_proj(state)[:, None], self.action_proj(noisy_actions) + self.pos_emb], dim=1)
        temb = self.time_mlp(timestep_embedding(t, cfg.width))  # (B, W)
        cond = self.cond_norm(cond)

        # Stack the K branches along the batch, branch-major: row k*B + b is branch k of sample b.
        x = tokens.repeat(K, 1, 1)  # (K*B, 1+H, W)
        temb = temb.repeat(K, 1)  # (K*B, W)
        # cond (B, N, C) stays unstacked: cross-attention projects it once and shares it across the branches
        state_valid = torch.ones(K, B, 1, dtype=torch.bool, device=x.device)
        steps_valid = active.T[:, None, :].expand(K, B, H)  # (K, B, H): branch k sees steps < h_k
        token_mask = torch.cat([state_valid, steps_valid], dim=2).reshape(K * B, 1 + H)

        x = x * token_mask[..., None]
        for block in self.blocks:
            x = block(x, temb, token_mask, cond, cond_mask)
        hidden = x[:, 1:].reshape(K, B, H, cfg.width)  # (K, B, H, W), zero at masked steps
        shift, scale = self.final_ada(temb)[:, None].chunk(2, dim=-1)  # each (K*B, 1, W)
        y = self.out(modulate(self.final_norm(x[:, 1:]), shift, scale))  # (K*B, H, A)
        branches = y.reshape(K, B, H, cfg.action_dim) * steps_valid[..., None]  # (K, B, H, A)

        gate = self._gate_weights(hidden, active)  # (B, H, K)
        fused = torch.einsum("bhk,kbha->bha", gate, branches)  # (B, H, A)
        return {"branches": branches, "fused": fused, "gate": gate, "active": active}

    def _gate_weights(self, hidden: Tensor, active: Tensor) -> Tensor:
        """hidden (K, B, H, W) zero at inactive steps, active (H, K) -> weights (B, H, K) summing to 1 per step."""
        B = hidden.shape[1]
        if self.gate is None:  # "mean" / "single": uniform over the active horizons
            weights = active.float() / active.sum(dim=1, keepdim=True)  # (H, K)
            return weights[None].expand(B, -1, -1)
        mean_hidden = hidden.sum(dim=0) / active.sum(dim=1)[None, :, None]  # (B, H, W), mean over active branches
        logits = self.gate(mean_hidden)  # (B, H, K)
        if self.training and self.cfg.gate_noise > 0:  # exploration, so no horizon is starved early on
            logits = logits + self.cfg.gate_noise * torch.randn_like(logits)
        return logits.masked_fill(~active, float("-inf")).softmax(dim=-1)  # the full horizon is always active

    def _check_inputs(self, noisy_actions: Tensor, t: Tensor, state: Tensor, cond: Tensor, cond_mask: Tensor) -> None:
        cfg = self.cfg
        B = noisy_actions.shape[0]
        expected = {
            "noisy_actions": (noisy_actions, (B, cfg.chunk, cfg.action_dim)),
            "t": (t, (B,)),
            "state": (state, (B, cfg.state_dim)),
            "cond": (cond, (B, cond.shape[1] if cond.ndim == 3 else -1, cfg.cond_dim)),
            "cond_mask": (cond_mask, (B, cond.shape[1] if cond.ndim == 3 else -1)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"DiTActionHead: {name} must have shape {shape}, got {tuple(tensor.shape)}")
        if cond_mask.dtype != torch.bool or not cond_mask.any(dim=1).all():
            raise ValueError("DiTActionHead: cond_mask must be bool with at least one valid token per sample")


def moh_loss(out: dict[str, Tensor], target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Mixture-of-horizons loss against target (B, H, A) (velocity or clean sample, per `prediction`).

    loss = sum_k MSE(branch k, first h_k steps) + MSE(fused) + 1e-3 * balance, where balance = K * sum_k load_k^2 and
    load_k is the mean gate weight of horizon k over the steps where all horizons are active (1 when uniform, K when
    one horizon takes everything). Returns (loss, parts) with detached parts "branches", "fused", "balance".
    """
    branches, active = out["branches"], out["active"]  # (K, B, H, A), (H, K)
    horizons = active.sum(dim=0).tolist()  # h_k
    branch_loss = sum(F.mse_loss(branches[k, :, :h], target[:, :h]) for k, h in enumerate(horizons))
    fused_loss = F.mse_loss(out["fused"], target)
    load = out["gate"][:, : min(horizons)].mean(dim=(0, 1))  # (K,)
    balance = len(horizons) * (load**2).sum()
    loss = branch_loss + fused_loss + GATE_BALANCE_WEIGHT * balance
    parts = {"branches": branch_loss.detach(), "fused": fused_loss.detach(), "balance": balance.detach()}
    return loss, parts


def disagreement(out: dict[str, Tensor]) -> Tensor:
    """Per-step variance (B, H) across the active branches' outputs, averaged over action dims.

    Steps covered by a single horizon (the last h_K - h_{K-1} steps) have zero variance by construction: cap the
    number of executed actions at h_{K-1} if the disagreement is to mean anything there.
    """
    branches, active = out["branches"], out["active"]  # (K, B, H, A), (H, K)
    weights = (active.float() / active.sum(dim=1, keepdim=True)).T[:, None, :, None]  # (K, 1, H, 1)
    mean = (weights * branches).sum(dim=0)  # (B, H, A); inactive branches are zero and weighted 0
    var = (weights * (branches - mean) ** 2).sum(dim=0)  # (B, H, A)
    return var.mean(dim=-1)  # (B, H)
