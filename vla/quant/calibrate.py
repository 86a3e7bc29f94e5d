"""Calibration after QuantVLA: attention temperature matching (ATM) and output head balancing (OHB).

Both compare the quantized model with the float one on a buffer of observations, running the whole sampler (every
denoising step) with the same fixed noise in both, and fold a correction into float weights that already exist:

- ATM, per attention head: alpha = std(float logits) / std(quantized logits), clamped to [0.7, 1.4], multiplies the
  head's rows of the query projection (weight and bias), so the logits scale by alpha.
- OHB, per attention layer: beta = RMS(float output) / RMS(quantized output), |log beta| <= 0.3, multiplies the
  output projection (weight and bias).

Layers are calibrated one at a time in the order the model first calls them, ATM then OHB, each measured after
every earlier correction is folded in (a correction changes what every later layer sees). Layers that run before the
first quantized layer see identical inputs in both models and are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.policy.action_head import Attention
from vla.policy.policy import VLAPolicy

BATCH = 16  # observations per predict_chunks call: bounds the memory of the captured logits


@dataclass
class CalibrationSettings:
    atm: bool = True
    ohb: bool = True
    alpha_min: float = 0.7
    alpha_max: float = 1.4
    max_log_beta: float = 0.3
    seed: int = 0  # the fixed sampling noise, the same in both models

    def __post_init__(self) -> None:
        if not 0 < self.alpha_min <= 1 <= self.alpha_max:
            raise ValueError(f"calibration: need 0 < alpha_min ({self.alpha_min}) <= 1 <= alpha_max "
                             f"({self.alpha_max})")
        if self.max_log_beta < 0:
            raise ValueError(f"calibration.max_log_beta must be >= 0, got {self.max_log_beta}")


class Site:
    """One attention layer: its logits from the inputs it was called with, its output, and the two folds."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.heads = module.heads if isinstance(module, Attention) else module.num_heads

    def logits(self, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        """Pre-softmax logits (B, heads, T, N) and which of them are real keys, broadcastable (B, 1, 1, N)."""
        m, h = self.module, self.heads
        if isinstance(m, Attention):
            x, context, key_mask = args  # Attention.forward(x (B, T, W), context (Bc, N, C), context_mask (Bc, N))
            W = x.shape[-1]
            q = m.q(x)
            k = m.kv(context)[..., :W]  # kv packs [k | v] along the features
            reps = x.shape[0] // context.shape[0]
            k, key_mask = k.repeat(reps, 1, 1), key_mask.repeat(reps, 1)
        else:  # nn.MultiheadAttention(query, key, value, key_padding_mask=True at padding), batch_first
            x, context = args[0], args[1]
            E = m.embed_dim
            q = F.linear(x, m.in_proj_weight[:E], m.in_proj_bias[:E])
            k = F.linear(context, m.in_proj_weight[E:2 * E], m.in_proj_bias[E:2 * E])
            pad = kwargs.get("key_padding_mask")
            key_mask = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device) if pad is None else ~pad.bool()
        d = q.shape[-1] // h
        q = q.view(*q.shape[:2], h, d).transpose(1, 2)  # (B, h, T, d)
        k = k.view(*k.shape[:2], h, d).transpose(1, 2)  # (B, h, N, d)
        return q @ k.transpose(-1, -2) / math.sqrt(d), key_mask[:, None, None, :]

    @staticmethod
    def output(out: Tensor | tuple) -> Tensor:
        return out[0] if isinstance(out, tuple) else out  # MultiheadAttention returns (output, weights)

    @torch.no_grad()
    def scale_query(self, alpha: Tensor) -> None:
        """alpha (heads,): multiply each head's query rows."""
        m = self.module
        if isinstance(m, Attention):
            if type(m.q) is not nn.Linear:
                raise ValueError("ATM folds into the query projection, which the layout quantized; keep "
                                 "head.blocks.*.attn.* in floating point or set calibration.atm=false")
            weight, bias = m.q.weight, m.q.bias
        else:
            weight, bias = m.in_proj_weight[: m.embed_dim], m.in_proj_bias[: m.embed_dim]
        per_row = alpha.repeat_interleave(weight.shape[0] // self.heads).to(weight)  # (W,)
        weight.mul_(per_row[:, None])
        bias.mul_(per_row)

    @torch.no_grad()
    def scale_output(self, beta: float) -> None:
        proj = self.module.proj if isinstance(self.module, Attention) else self.module.out_proj
        if not isinstance(proj.weight, nn.Parameter) or proj.weight.dtype != torch.float32:
            raise ValueError("OHB folds into the attention output projection, which the layout quantized; keep it "
                             "in floating point or set calibration.ohb=false")
        proj.weight.mul_(beta)
        proj.bias.mul_(beta)


@dataclass
class SiteStats:
    """Running sums over every call (every denoising step, every observation)."""

    heads: int
    logit_sum: Tensor = None
    logit_sq: Tensor = None
    logit_n: Tensor = None
    out_sq: float = 0.0
    out_n: int = 0

    def __post_init__(self) -> None:
        self.logit_sum, self.logit_sq, self.logit_n = (torch.zeros(self.heads, dtype=torch.float64) for _ in range(3))

    def add(self, logits: Tensor, valid: Tensor, out: Tensor) -> None:
        valid = valid.expand_as(logits)
        masked = torch.where(valid, logits, 0).double()
        self.logit_sum += masked.sum(dim=(0, 2, 3)).cpu()
        self.logit_sq += (masked**2).sum(dim=(0, 2, 3)).cpu()
        self.logit_n += valid.sum(dim=(0, 2, 3)).double().cpu()
        self.out_sq += float((out.double() ** 2).sum())
        self.out_n += out.numel()

    @property
    def logit_std(self) -> Tensor:
        mean = self.logit_sum / self.logit_n
        return (self.logit_sq / self.logit_n - mean**2).clamp_min(0).sqrt()  # (heads,)

    @property
    def rms(self) -> float:
        return math.sqrt(self.out_sq / max(self.out_n, 1))


def attention_sites(model: nn.Module) -> dict[str, Site]:
    return {name: Site(m) for name, m in model.named_modules() if isinstance(m, (Attention, nn.MultiheadAttention))}


@contextmanager
def _capture(sites: dict[str, Site], stats: dict[str, SiteStats]) -> Iterator[None]:
    handles, pending = [], {}

    def pre(name: str):
        def hook(module, args, kwargs):
            pending[name] = sites[name].logits(args, kwargs)
        return hook

    def post(name: str):
        def hook(module, args, kwargs, out):
            stats[name].add(*pending.pop(name), Site.output(out))
        return hook

    for name, site in sites.items():
        handles.append(site.module.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(site.module.register_forward_hook(post(name), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_buffer(policy: VLAPolicy, buffer: list[dict], seed: int) -> np.ndarray:
    """Actions (len(buffer), H, A) for every observation, from the same fixed noise on every call."""
    policy.reset(seed)
    return np.concatenate([policy.predict_chunks(buffer[i:i + BATCH])[0] for i in range(0, len(buffer), BATCH)])


def measure(policy: VLAPolicy, buffer: list[dict], names: list[str], seed: int) -> dict[str, SiteStats]:
    """Logit and output statistics of the named attention layers over the buffer."""
    sites = attention_sites(policy)
    stats = {n: SiteStats(sites[n].heads) for n in names}
    with _capture({n: sites[n] for n in names}, stats):
        run_buffer(policy, buffer, seed)
    return stats


def call_order(policy: VLAPolicy, buffer: list[dict], names: list[str]) -> list[str]:
    """`names` in the order of their first call in one forward pass."""
    order: list[str] = []
    handles = [policy.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: order.append(n) if n not in order else None) for n in names]
    try:
        run_buffer(policy, buffer[:1], 0)
    finally:
        for handle in handles:
            handle.remove()
    return order


@dataclass
class CalibrationResult:
    alpha: dict[str, list[float]] = field(default_factory=dict)  # per layer, per head
    beta: dict[str, float] = field(default_factory=dict)
    logit_std_ratio: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # before / after, per head
    rms_ratio: dict[str, dict[str, float]] = field(default_factory=dict)


def calibrate(float_policy: VLAPolicy, quant_policy: VLAPolicy, buffer: list[dict],
              settings: CalibrationSettings) -> CalibrationResult:
    """Fold ATM / OHB factors into `quant_policy`'s float attention weights (in place: it is already a copy)."""
    result = CalibrationResult()
    quantized = list(quant_policy.quantization["modules"])
    order = call_order(quant_policy, buffer, quantized + list(attention_sites(quant_policy)))
    first = min(order.index(n) for n in quantized)
    names = [n for n in order[first:] if n not in quantized]  # attention layers downstream of a quantized one
    if not names:
        return result
    ref = measure(float_policy, buffer, names, settings.seed)
    before = measure(quant_policy, buffer, names, settings.seed)
    sites = attention_sites(quant_policy)
    for name in names:
        if settings.atm:
            q_std = measure(quant_policy, buffer, [name], settings.seed)[name].logit_std
            alpha = (ref[name].logit_std / q_std.clamp_min(1e-12)).clamp(settings.alpha_min, settings.alpha_max)
            sites[name].scale_query(alpha.float())
            result.alpha[name] = alpha.tolist()
        if settings.ohb:
            q_rms = measure(quant_policy, buffer, [name], settings.seed)[name].rms
            log_beta = float(np.clip(math.log(ref[name].rms / max(q_rms, 1e-12)), -settings.max_log_beta,
                                     settings.max_log_beta))
            sites[name].scale_output(math.exp(log_beta))
            result.beta[name] = math.exp(log_beta)
    after = measure(quant_policy, buffer, names, settings.seed)
    for name in names:
        result.logit_std_ratio[name] = {
            stage: (ref[name].logit_std / s[name].logit_std.clamp_min(1e-12)).tolist()
            for stage, s in (("before", before), ("after", after))}
        result.rms_ratio[name] = {stage: ref[name].rms / max(s[name].rms, 1e-12)
                                  for stage, s in (("before", before), ("after", after))}
    return result
