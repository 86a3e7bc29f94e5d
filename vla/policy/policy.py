"""VLAPolicy: a backbone and a DiT flow-matching action head with a mixture of horizons.

    loss, parts = policy(batch)                       # training: flow-matching loss on a batch of chunks
    actions, n_execute = policy.predict_chunk(obs)    # inference: one env observation -> (H, A) absolute actions
    policy.save_pretrained(dir); VLAPolicy.from_pretrained(dir)

A training batch holds `observation.images.<camera>` (B, 3, S, S) float in [0, 1] at the backbone's image size,
`observation.state` (B, S), `action` (B, H, A) absolute targets, and `task` (B strings). An observation for
`predict_chunk` is one env's: images uint8 (h, w, 3) of any size, state (S,), task.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vla.policy.action_head import DiTActionHead, moh_loss
from vla.policy.backbone import build_backbone
from vla.policy.config import VLAPolicyConfig
from vla.policy.env_state_probe import EnvStateProbe, KeypointProbe, ObjectToken
from vla.policy.flow import ddim_sample, euler_sample, execute_count, noisy_sample, sample_time, velocity_target
from vla.policy.normalize import Normalizer

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"  # privileged sim state: a training target, never an input
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FROZEN_TEXT_PREFIX = "backbone.text.encoder."  # loaded from its package, not stored in the checkpoint
FROZEN_VLM_PREFIX = "backbone.vlm."  # a frozen HF VLM: loaded from backbone.model_dir, not stored either
PROBE_PREFIX = "env_state_probe."  # checkpoints leave the training-only probe out (kept with object_token)


def resize_images(images_nhwc: Tensor, size: int) -> Tensor:
    """uint8 (N, h, w, 3) -> uint8 (N, 3, size, size), antialiased; training data and inference both go through it."""
    x = images_nhwc.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def relative_mask(action_dim: int) -> Tensor:
    """(A,) True for the action dims predicted relative to the state: every dim but the last (the gripper)."""
    mask = torch.ones(action_dim, dtype=torch.bool)
    mask[-1] = False
    return mask


def to_model_actions(actions: Tensor, state: Tensor, relative: bool) -> Tensor:
    """Absolute actions (..., H, A) -> what the head predicts (before normalization): offsets from state (..., S)."""
    if not relative:
        return actions
    mask = relative_mask(actions.shape[-1]).to(actions.device)
    return actions - torch.where(mask, state[..., None, :], torch.zeros_like(state[..., None, :]))


def from_model_actions(model_actions: Tensor, state: Tensor, relative: bool) -> Tensor:
    if not relative:
        return model_actions
    mask = relative_mask(model_actions.shape[-1]).to(model_actions.device)
    return model_actions + torch.where(mask, state[..., None, :], torch.zeros_like(state[..., None, :]))


class VLAPolicy(nn.Module):
    privileged = False

    def __init__(self, cfg: VLAPolicyConfig, normalizer: Normalizer) -> None:
        super().__init__()
        normalizer.require([STATE_KEY, ACTION_KEY], "VLAPolicy")
        self.backbone = build_backbone(cfg.backbone)
        cfg.head = dataclasses.replace(cfg.head, cond_dim=self.backbone.token_dim)  # the head reads backbone tokens
        if cfg.head.action_dim < 2 and cfg.relative_actions:
            raise ValueError("relative_actions needs an action with at least 2 dims (the last is the gripper)")
        self.cfg = cfg
        self.head = DiTActionHead(cfg.head)
        if cfg.object_token and not cfg.env_state_dim:
            raise ValueError("object_token needs env_state_dim > 0 (a dataset with observation.environment_state)")
        if cfg.env_state_dim:
            normalizer.require([ENV_STATE_KEY], "VLAPolicy (env_state_dim > 0)")
            self.env_state_probe = (KeypointProbe(cfg.backbone.cameras, cfg.env_state_dim)
                                    if cfg.env_state_probe == "keypoints" else
                                    EnvStateProbe(self.backbone.token_dim, cfg.env_state_dim, cfg.env_state_group))
        if cfg.object_token:
            self.object_token = ObjectToken(cfg.env_state_dim, self.backbone.token_dim)
        self.normalizer = normalizer
        self.cameras = tuple(cfg.backbone.cameras)
        self._noise_gen = torch.Generator()

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    # ---------------------------------------------------------------- training
    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """Flow-matching mixture-of-horizons loss on a batch; returns (loss, detached parts)."""
        state = batch[STATE_KEY]  # (B, S)
        actions = self.normalizer.normalize(ACTION_KEY, to_model_actions(batch[ACTION_KEY], state,
                                                                          self.cfg.relative_actions))  # (B, H, A)
        images = self._images(batch)
        tokens, mask = self.backbone(images, list(batch["task"]))  # (B, N, D), (B, N)
        B = actions.shape[0]
        probe_loss = None
        if self.cfg.env_state_dim:
            if ENV_STATE_KEY not in batch:
                raise KeyError(f"VLAPolicy: env_state_dim={self.cfg.env_state_dim}, but the batch lacks "
                               f"'{ENV_STATE_KEY}'")
            env_state = self.normalizer.normalize(ENV_STATE_KEY, batch[ENV_STATE_KEY])
            probe_loss = F.mse_loss(self.env_state_probe(images, tokens, mask), env_state)
            if self.cfg.object_token:  # teacher forcing: the recorded state, blurred to the estimate's error scale
                shown = env_state + self.cfg.object_token_noise * torch.randn(
                    env_state.shape, generator=generator, device=env_state.device, dtype=env_state.dtype)
                tokens, mask = self.object_token(tokens, mask, shown)
        noise = torch.randn(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
        t = sample_time(B, generator=generator, device=actions.device)
        state_in = self.normalizer.normalize(STATE_KEY, state)  # (B, S)
        if self.training and self.cfg.state_dropout > 0:  # zero = the dataset's mean state
            dropped = torch.rand(B, 1, generator=generator, device=state.device) < self.cfg.state_dropout
            state_in = state_in.masked_fill(dropped, 0.0)
        out = self.head(noisy_sample(actions, noise, t), t, state_in, tokens, mask)
        target = velocity_target(actions, noise) if self.cfg.head.prediction == "velocity" else actions
        loss, parts = moh_loss(out, target)
        if probe_loss is not None:
            loss = loss + self.cfg.env_state_weight * probe_loss
            parts["env_state"] = probe_loss.detach()
        return loss, parts

    def _images(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        missing = [IMAGE_PREFIX + c for c in self.cameras if IMAGE_PREFIX + c not in batch]
        if missing:
            raise KeyError(f"VLAPolicy: the batch lacks {missing}")
        return {c: batch[IMAGE_PREFIX + c] for c in self.cameras}

    # ---------------------------------------------------------------- inference
    def reset(self, seed: int | None = None) -> None:
        """A new episode: reseed the sampling noise, so an episode replays exactly under the same seed."""
        self._noise_gen.manual_seed(self.cfg.sampler.seed if seed is None else seed)

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any]) -> tuple[np.ndarray, int]:
        """One observation -> absolute actions (H, A) float32 and how many of them to execute."""
        actions, counts = self.predict_chunks([obs])
        return actions[0], int(counts[0])

    @torch.no_grad()
    def predict_chunks(self, observations: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """A batch of observations -> actions (B, H, A) and executed counts (B,)."""
        state = torch.as_tensor(np.stack([o[STATE_KEY] for o in observations]), dtype=torch.float32,
                                device=self.device)
        was_training = self.training
        self.eval()
        try:
            images, tokens, mask = self._encode(observations)
            if self.cfg.object_token:
                tokens, mask = self.object_token(tokens, mask, self.env_state_probe(images, tokens, mask))
            noise = self._sampling_noise(len(observations))
            sample = ddim_sample if self.cfg.sampler.kind == "ddim" else euler_sample
            chunk, spread = sample(self.head, self.normalizer.normalize(STATE_KEY, state), tokens, mask,
                                   steps=self.cfg.sampler.steps, noise=noise)
        finally:
            self.train(was_training)
        actions = from_model_actions(self.normalizer.unnormalize(ACTION_KEY, chunk), state, self.cfg.relative_actions)
        return actions.float().cpu().numpy(), self._execute_counts(spread)

    @torch.no_grad()
    def predict_env_state(self, observations: list[dict[str, Any]]) -> np.ndarray:
        """The probe's estimate of the environment state (B, E) in the dataset's units (needs env_state_dim > 0)."""
        if not self.cfg.env_state_dim:
            raise ValueError("predict_env_state: this policy has no environment-state probe (env_state_dim=0)")
        was_training = self.training
        self.eval()
        try:
            estimate = self.env_state_probe(*self._encode(observations))
        finally:
            self.train(was_training)
        return self.normalizer.unnormalize(ENV_STATE_KEY, estimate).float().cpu().numpy()

    def _encode(self, observations: list[dict[str, Any]]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Env observations -> the images at the backbone's size, its tokens and mask."""
        images = {}
        for c in self.cameras:
            key = IMAGE_PREFIX + c
            if key not in observations[0]:
                raise KeyError(f"VLAPolicy: the observation lacks '{key}' (has {sorted(observations[0])})")
            frames = torch.as_tensor(np.stack([o[key] for o in observations])).to(self.device)  # (B, h, w, 3) uint8
            images[c] = resize_images(frames, self.cfg.backbone.image_size).float() / 255
        return (images, *self.backbone(images, [str(o["task"]) for o in observations]))

    def _sampling_noise(self, batch: int) -> Tensor:
        cfg = self.cfg.head
        if self.cfg.sampler.fixed_noise:
            self._noise_gen.manual_seed(self.cfg.sampler.seed)
        return torch.randn(batch, cfg.chunk, cfg.action_dim, generator=self._noise_gen).to(self.device)

    def _execute_counts(self, spread: Tensor) -> np.ndarray:
        ex = self.cfg.execution
        if not ex.adaptive:
            return np.full(spread.shape[0], ex.fixed, dtype=np.int64)
        counts = execute_count(spread, ex.min_execute, ex.max_execute, ex.ratio)
        return counts.cpu().numpy().reshape(-1)

    # ---------------------------------------------------------------- checkpoints
    def stored_state_dict(self) -> dict[str, Tensor]:
        """The weights a checkpoint stores: all but the training-only probe and frozen pretrained weights that load
        from elsewhere (the tiny backbone's text encoder from its package, a Hugging Face VLM from
        backbone.model_dir)."""
        skip = [] if self.cfg.object_token else [PROBE_PREFIX]
        if getattr(self.cfg.backbone, "freeze_text", False):
            skip.append(FROZEN_TEXT_PREFIX)
        if self.cfg.backbone.type == "hf" and self.cfg.backbone.freeze:
            skip.append(FROZEN_VLM_PREFIX)
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith(tuple(skip))}

    def save_pretrained(self, directory: str | Path) -> Path:
        if getattr(self, "quantization", None):
            raise ValueError("save_pretrained writes float checkpoints; save a quantized policy with "
                             "vla.quant.convert.save_quantized")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Without a training-only probe: env_state_weight stays as a record of the training, env_state_dim=0 builds
        # no probe. With object_token the probe feeds the head, so it stays.
        inference_cfg = self.cfg if self.cfg.object_token else dataclasses.replace(self.cfg, env_state_dim=0)
        (directory / CONFIG_FILE).write_text(json.dumps(inference_cfg.to_dict(), indent=1))
        save_file(self.stored_state_dict(), str(directory / WEIGHTS_FILE))
        self.normalizer.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> VLAPolicy:
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"checkpoint {directory} has no {name}")
        data = json.loads((directory / CONFIG_FILE).read_text())
        quantization = data.pop("quantization", None)  # written by vla-quantize
        cfg = VLAPolicyConfig.from_dict(data, source=str(directory / CONFIG_FILE))
        policy = cls(cfg, Normalizer.load(directory))
        stored = load_file(str(directory / WEIGHTS_FILE))
        # Quantized layers store integer weights + scales under their module name, not float weights.
        prefixes = tuple(f"{name}." for name in quantization.get("modules", [])) if quantization else ()
        quantized = {k: stored.pop(k) for k in list(stored) if k.startswith(prefixes)}
        expected = [k for k in policy.stored_state_dict() if not k.startswith(prefixes)]
        missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        policy.load_state_dict(stored, strict=False)
        if quantization is not None:
            # Imported here, not at module level: vla.policy does not depend on vla.quant or its backends, and
            # float checkpoints never touch them.
            from vla.quant.convert import restore_quantized

            restore_quantized(policy, quantization, quantized, source=str(directory / CONFIG_FILE))
        policy.reset()
        return policy.to(device).eval()
