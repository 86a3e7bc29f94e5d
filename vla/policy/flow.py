"""Flow matching for the action head, in openpi's (pi0's) convention.

- x_t = t * noise + (1 - t) * actions: t = 1 is pure noise, t = 0 is data.
- The target velocity is u = dx_t/dt = noise - actions, constant along the straight path.
- Training times t ~ Beta(1.5, 1) (density 1.5 * sqrt(t)), mapped to [0.001, 1]: more mass near t = 1, the noisy
  end, where predicting the velocity is hardest.
- Sampling starts from noise at t = 1 and takes `steps` Euler steps of dt = -1/steps down to t = 0
  (`ddim_sample` offers diffusers' DDIM on the same head, for comparison).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from vla.policy.action_head import DiTActionHead, disagreement

T_MIN = 1e-3  # keeps t away from 0, where a "sample" prediction no longer determines the velocity


def sample_time(batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """Flow times (batch,) ~ Beta(1.5, 1) scaled to [0.001, 1], drawn by inverting its CDF t^1.5."""
    u = torch.rand(batch, generator=generator, device=device)
    return u ** (2 / 3) * (1 - T_MIN) + T_MIN


def _bcast(t_b: Tensor) -> Tensor:
    return t_b[:, None, None]  # (B,) -> (B, 1, 1) against (B, H, A)


def noisy_sample(actions: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t (B, H, A) from actions (B, H, A), noise (B, H, A) and t (B,)."""
    return _bcast(t) * noise + (1 - _bcast(t)) * actions


def velocity_target(actions: Tensor, noise: Tensor) -> Tensor:
    """u = noise - actions, (B, H, A)."""
    return noise - actions


def to_velocity(pred: Tensor, x_t: Tensor, t: Tensor, prediction: str) -> Tensor:
    """The velocity (B, H, A) implied by a head output: itself, or for a clean-sample prediction (x_t - pred) / t."""
    if prediction == "velocity":
        return pred
    if prediction == "sample":
        return (x_t - pred) / _bcast(t.clamp_min(T_MIN))
    raise ValueError(f"prediction must be 'velocity' or 'sample', got {prediction!r}")


def _fused_velocity(head: DiTActionHead, x: Tensor, t: Tensor, state: Tensor, cond: Tensor,
                    cond_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The fused velocity (B, H, A) at (x, t) and the branches' disagreement (B, H)."""
    out = head(x, t, state, cond, cond_mask)
    return to_velocity(out["fused"], x, t, head.cfg.prediction), disagreement(out)


@contextmanager
def _eval_mode(head: DiTActionHead):
    """No gate noise while sampling, so the same noise gives the same actions."""
    was_training = head.training
    head.eval()
    try:
        yield
    finally:
        head.train(was_training)


def _start_noise(head: DiTActionHead, state: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if noise is not None:
        return noise
    cfg = head.cfg
    return torch.randn(state.shape[0], cfg.chunk, cfg.action_dim, generator=generator, device=state.device,
                       dtype=state.dtype)


@torch.no_grad()
def euler_sample(
    head: DiTActionHead,
    state: Tensor,
    cond: Tensor,
    cond_mask: Tensor | None = None,
    steps: int = 10,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Integrate the fused velocity from noise (t = 1) to actions (t = 0).

    state (B, S), cond (B, N, C), cond_mask (B, N); noise (B, H, A) or None to draw it from `generator`.
    Returns actions (B, H, A) and the branch disagreement (B, H) summed over the denoising steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = _start_noise(head, state, noise, generator)  # (B, H, A) at t = 1
    disagreement_sum = torch.zeros(x.shape[:2], device=x.device, dtype=x.dtype)
    with _eval_mode(head):
        for i in range(steps):
            t = torch.full((x.shape[0],), 1 - i / steps, device=x.device, dtype=x.dtype)
            velocity, spread = _fused_velocity(head, x, t, state, cond, cond_mask)
            disagreement_sum += spread
            x = x - velocity / steps  # dt = -1/steps
    return x, disagreement_sum


@torch.no_grad()
def ddim_sample(
    head: DiTActionHead,
    state: Tensor,
    cond: Tensor,
    cond_mask: Tensor | None = None,
    steps: int = 10,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The same flow-matching head sampled with diffusers' DDIMScheduler (cosine schedule), for comparison.

    DDIM's state x = a * actions + s * noise (a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar)) is the flow state
    x_t = (1 - t) * actions + t * noise scaled by (a + s), with t = s / (a + s). So each step rescales x to the flow
    path, asks the head for the velocity v there, and hands DDIM the implied noise eps = x_t + (1 - t) * v.
    """
    from diffusers import DDIMScheduler

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              set_alpha_to_one=True, prediction_type="epsilon", timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    x = _start_noise(head, state, noise, generator)
    disagreement_sum = torch.zeros(x.shape[:2], device=x.device, dtype=x.dtype)
    with _eval_mode(head):
        for step in scheduler.timesteps:
            alpha_bar = scheduler.alphas_cumprod[step].to(x.device, x.dtype)
            a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
            t = (s / (a + s)).expand(x.shape[0])
            x_flow = x / (a + s)
            velocity, spread = _fused_velocity(head, x_flow, t, state, cond, cond_mask)
            disagreement_sum += spread
            eps = x_flow + (1 - _bcast(t)) * velocity
            x = scheduler.step(eps, step, x).prev_sample
    return x, disagreement_sum


def execute_count(disagreement_sum: Tensor, min_execute: int, max_execute: int, ratio: float) -> int | Tensor:
    """How many actions of the chunk to execute, from the disagreement (H,) or (B, H).

    Always min_execute; then step n is added while its disagreement stays strictly under ratio * the mean
    disagreement of the first min_execute steps; never more than max_execute. Returns an int for (H,), else (B,) ints.
    """
    H = disagreement_sum.shape[-1]
    if not 1 <= min_execute <= max_execute <= H:
        raise ValueError(f"need 1 <= min_execute ({min_execute}) <= max_execute ({max_execute}) <= chunk ({H})")
    d = disagreement_sum.reshape(-1, H)  # (B, H)
    threshold = ratio * d[:, :min_execute].mean(dim=1, keepdim=True)  # (B, 1)
    under = d[:, min_execute:max_execute] < threshold  # (B, max - min)
    counts = min_execute + under.long().cumprod(dim=1).sum(dim=1)  # leading run of steps under the threshold
    return int(counts[0]) if disagreement_sum.ndim == 1 else counts
