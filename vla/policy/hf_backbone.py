"""The Hugging Face VLM adapter: a SmolVLM / Idefics3-class model from a local directory, cut after a middle layer.

    tokens, mask = HFVLMBackbone(cfg)(images, instructions)   # (B, cams*P + L, D), (B, cams*P + L)

The sequence is `[camera_0 image tokens, ..., camera_k image tokens, instruction tokens]`: each camera goes through
the VLM's vision encoder and connector (pixel shuffle + projection into the language model's width, P tokens per
image), the instruction through the VLM's own tokenizer and token embeddings. The sequence then runs through the
first `cfg.num_layers` decoder layers only (the rest are deleted at load, as GR00T and SmolVLA do: the middle layers
carry more spatial detail than the last ones, and the upper half costs memory and time for nothing) and the language
model's final norm. D is the language model's hidden size, so no projection is added.

Images are preprocessed in torch, without the processor's image splitting: one resize to the vision encoder's input
size, then the mean / std of the model directory's `preprocessor_config.json` (0.5 / 0.5 without one).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.policy.config import HFBackboneConfig

log = logging.getLogger(__name__)

PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_MEAN_STD = (0.5, 0.5)  # SigLIP's, which SmolVLM and Idefics3 use


def model_path(configured: str) -> Path:
    """The checked local model directory; never a hub id (nothing is downloaded)."""
    path = Path(configured).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"backbone.model_dir: {path} is not a directory (expected a local Hugging Face VLM "
                                "directory with config.json, weights, tokenizer and preprocessor_config.json)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"backbone.model_dir: {path} has no config.json (expected a transformers VLM)")
    return path


def image_mean_std(path: Path) -> tuple[list[float], list[float]]:
    """The per-channel pixel mean / std the VLM was trained with, from its preprocessor config."""
    file = path / PREPROCESSOR_FILE
    if not file.is_file():
        log.info("backbone.model_dir: %s has no %s; normalizing images with mean/std 0.5", path, PREPROCESSOR_FILE)
        return [DEFAULT_MEAN_STD[0]] * 3, [DEFAULT_MEAN_STD[1]] * 3
    config = json.loads(file.read_text())
    mean, std = config.get("image_mean", DEFAULT_MEAN_STD[0]), config.get("image_std", DEFAULT_MEAN_STD[1])
    mean, std = ([v] * 3 if isinstance(v, int | float) else list(v) for v in (mean, std))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"backbone.model_dir: {file} has image_mean {mean} / image_std {std}; expected 3 values each")
    return mean, std


class HFVLMBackbone(nn.Module):
    """A local SmolVLM / Idefics3 VLM up to decoder layer `cfg.num_layers`: images + instruction -> tokens, mask."""

    def __init__(self, cfg: HFBackboneConfig) -> None:
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.cfg = cfg
        path = model_path(cfg.model_dir)
        try:
            # The generation model, not AutoModel: checkpoints are saved with their LM head, and loading the base
            # model would warn about it. Only `.model` (vision encoder, connector, text model) is kept.
            vlm = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32).model
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"backbone.model_dir: cannot load a VLM and its tokenizer from {path}: {err}") from err
        missing = [name for name in ("vision_model", "connector", "text_model") if not hasattr(vlm, name)]
        if missing:
            raise ValueError(f"backbone.model_dir: {path} holds a {type(vlm).__name__} without {missing}; expected "
                             "a SmolVLM / Idefics3-class VLM")

        layers = vlm.text_model.layers
        if cfg.num_layers > len(layers):
            raise ValueError(f"backbone.num_layers={cfg.num_layers} exceeds the {len(layers)} decoder layers of "
                             f"the VLM in {path}")
        # Drop the layers above the cut, so their weights are freed and never run.
        vlm.text_model.layers = nn.ModuleList(layers[: cfg.num_layers])
        vlm.text_model.config.num_hidden_layers = cfg.num_layers
        self.vlm = vlm

        # Right padding: the text follows the image tokens directly, so its positions do not depend on its length.
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"backbone.model_dir: the tokenizer in {path} has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token  # padded positions are masked out anyway

        self.vision_size = int(vlm.config.vision_config.image_size)
        if cfg.image_size != self.vision_size:
            log.info("backbone.image_size=%d: images are resized to the vision encoder's %d", cfg.image_size,
                     self.vision_size)
        mean, std = image_mean_std(path)
        # Not persistent: they come from model_dir, like the weights, and are not stored in a checkpoint.
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        self.frozen = cfg.freeze
        self.vlm.requires_grad_(not self.frozen)
        self.train()  # a frozen VLM stays in eval mode (no dropout)

    @property
    def token_dim(self) -> int:
        return int(self.vlm.config.text_config.hidden_size)

    def train(self, mode: bool = True) -> HFVLMBackbone:
        super().train(mode)
        if self.frozen:
            self.vlm.eval()
        return self

    def image_tokens(self, pixels: Tensor) -> Tensor:
        """(N, 3, S, S) in [0, 1] -> (N, P, D): the vision encoder, then the connector into the text model's width."""
        if pixels.shape[-2:] != (self.vision_size, self.vision_size):
            pixels = F.interpolate(pixels, size=(self.vision_size, self.vision_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        pixels = ((pixels - self.pixel_mean) / self.pixel_std).to(self.vlm.dtype)
        # The vision model directly, not `get_image_features`: that one drops images whose normalized pixels are
        # all 0 (its padding convention), which a uniformly gray camera frame would trip.
        features = self.vlm.vision_model(pixel_values=pixels).last_hidden_state  # (N, patches, C_vision)
        return self.vlm.connector(features)  # (N, P, D), P = patches / scale_factor^2

    def text_tokens(self, instructions: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """B strings -> token embeddings (B, L, D) and their mask (B, L), False on padding."""
        batch = self.tokenizer(list(instructions), padding="max_length", truncation=True,
                               max_length=self.cfg.max_text_tokens, return_tensors="pt").to(device)
        return self.vlm.get_input_embeddings()(batch["input_ids"]), batch["attention_mask"].bool()

    def forward(self, images: dict[str, Tensor], instructions: list[str]) -> tuple[Tensor, Tensor]:
        """images {camera: (B, 3, S, S) in [0, 1]}, instructions [B] -> tokens (B, cams*P + L, D), mask (same, bool)."""
        cameras = self.cfg.cameras
        missing = [c for c in cameras if c not in images]
        if missing:
            raise KeyError(f"HFVLMBackbone: missing camera(s) {missing}; expected {list(cameras)}")
        pixels = torch.stack([images[c] for c in cameras], dim=1)  # (B, cams, 3, S, S)
        B, cams = pixels.shape[:2]
        if len(instructions) != B:
            raise ValueError(f"HFVLMBackbone: {len(instructions)} instructions for a batch of {B} images")

        # A frozen VLM needs no autograd graph: the head's gradients stop at the tokens.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            image_tokens = self.image_tokens(pixels.flatten(0, 1))  # (B*cams, P, D)
            image_tokens = image_tokens.reshape(B, -1, image_tokens.shape[-1])  # (B, cams*P, D)
            text_tokens, text_mask = self.text_tokens(instructions, pixels.device)  # (B, L, D), (B, L)
            mask = torch.cat([torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=pixels.device),
                              text_mask], dim=1)  # (B, cams*P + L)
            tokens = torch.cat([image_tokens, text_tokens.to(image_tokens.dtype)], dim=1)  # (B, cams*P + L, D)
            # The text model with its kept layers: causal attention, padding masked, then its final norm.
            out = self.vlm.text_model(inputs_embeds=tokens, attention_mask=mask.long(), use_cache=False)
        return out.last_hidden_state, mask
