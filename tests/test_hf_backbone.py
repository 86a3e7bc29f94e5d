"""The Hugging Face VLM adapter on a tiny random SmolVLM saved to disk (no network, CPU, a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.policy.action_head import ActionHeadConfig
from vla.policy.config import ExecutionConfig, HFBackboneConfig, SamplerConfig, VLAPolicyConfig
from vla.policy.hf_backbone import HFVLMBackbone
from vla.policy.normalize import Normalizer
from vla.policy.policy import VLAPolicy

CAMERAS = ("front", "wrist")
VISION_SIZE, PATCH, SCALE = 32, 8, 2
IMAGE_TOKENS = (VISION_SIZE // PATCH) ** 2 // SCALE**2  # P = 4 per camera
HIDDEN, LAYERS = 48, 4
MEAN, STD = [0.4, 0.45, 0.5], [0.25, 0.26, 0.27]
WORDS = ["[PAD]", "[UNK]", "<image>"] + "pick up the red cube and place it on green plate open drawer".split()
PAD_ID, IMAGE_ID = 0, 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SmolVLM (2-layer vision encoder, 4-layer Llama) + a word-level tokenizer + preprocessor config."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMForConditionalGeneration

    path = tmp_path_factory.mktemp("tiny_smolvlm")
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=VISION_SIZE, patch_size=PATCH),
        text_config=dict(model_type="llama", vocab_size=len(WORDS), hidden_size=HIDDEN, intermediate_size=96,
                         num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=PAD_ID),
        scale_factor=SCALE, image_token_id=IMAGE_ID, pad_token_id=PAD_ID)
    torch.manual_seed(0)
    SmolVLMForConditionalGeneration(config).save_pretrained(path)
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return path


def backbone_config(model_dir: Path, **overrides) -> HFBackboneConfig:
    values = dict(model_dir=str(model_dir), num_layers=2, cameras=CAMERAS, image_size=VISION_SIZE, max_text_tokens=6)
    return HFBackboneConfig(**(values | overrides))


def random_images(batch: int, size: int = VISION_SIZE) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {c: torch.rand(batch, 3, size, size, generator=gen) for c in CAMERAS}


INSTRUCTIONS = ["pick up the cube", "open drawer"]  # 4 and 2 words, padded to 6


def test_tokens_shape_mask_and_kept_layers(model_dir: Path) -> None:
    backbone = HFVLMBackbone(backbone_config(model_dir))
    tokens, mask = backbone(random_images(2), INSTRUCTIONS)

    n_image = len(CAMERAS) * IMAGE_TOKENS
    assert backbone.token_dim == HIDDEN
    assert tokens.shape == (2, n_image + 6, HIDDEN) and tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()
    assert mask.dtype == torch.bool and mask.shape == tokens.shape[:2]
    assert mask[:, :n_image].all()  # image tokens are never padding
    assert mask[:, n_image:].tolist() == [[True] * 4 + [False] * 2, [True] * 2 + [False] * 4]
    long_text = " ".join(["cube"] * 10)  # truncated to max_text_tokens, all valid
    _, long_mask = backbone(random_images(1), [long_text])
    assert long_mask.shape == (1, n_image + 6) and long_mask.all()

    assert len(backbone.vlm.text_model.layers) == 2
    assert not any(".layers.2." in k or ".layers.3." in k for k in backbone.state_dict())
    assert backbone.pixel_mean.flatten().tolist() == pytest.approx(MEAN)
    assert backbone.pixel_std.flatten().tolist() == pytest.approx(STD)


def test_tokens_are_the_full_models_middle_layer(model_dir: Path) -> None:
    """The adapter's tokens equal the untouched VLM's hidden_states[num_layers] (after its final norm) when the VLM
    is given the same sequence the usual way: <image> placeholder ids merged with pixel_values by transformers."""
    from transformers import AutoModelForImageTextToText

    num_layers = 2
    backbone = HFVLMBackbone(backbone_config(model_dir, num_layers=num_layers))
    full = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True).model.eval()
    images = random_images(2)
    with torch.no_grad():
        tokens, mask = backbone(images, INSTRUCTIONS)
        text = backbone.tokenizer(INSTRUCTIONS, padding="max_length", max_length=6, return_tensors="pt")
        n_image = len(CAMERAS) * IMAGE_TOKENS
        input_ids = torch.cat([torch.full((2, n_image), IMAGE_ID), text["input_ids"]], dim=1)
        pixels = torch.stack([images[c] for c in CAMERAS], dim=1)  # (B, cams, 3, S, S)
        pixels = (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        out = full(input_ids=input_ids, pixel_values=pixels, attention_mask=mask.long(), output_hidden_states=True,
                   use_cache=False)
        expected = full.text_model.norm(out.hidden_states[num_layers])
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(tokens, out.last_hidden_state, atol=1e-3)  # the cut is not at the top


def test_frozen_vlm_gets_no_gradient_and_unfrozen_every_weight_does(model_dir: Path) -> None:
    frozen = HFVLMBackbone(backbone_config(model_dir))
    assert not any(p.requires_grad for p in frozen.parameters())
    tokens, _ = frozen(random_images(2), INSTRUCTIONS)
    assert not tokens.requires_grad  # no graph through a frozen VLM

    trainable = HFVLMBackbone(backbone_config(model_dir, freeze=False)).train()
    tokens, mask = trainable(random_images(2), INSTRUCTIONS)
    (tokens * mask[..., None]).square().mean().backward()
    no_grad = [n for n, p in trainable.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def tiny_policy_config(model_dir: Path) -> VLAPolicyConfig:
    return VLAPolicyConfig(
        backbone=backbone_config(model_dir, image_size=40),  # resized to the encoder's 32 inside the backbone
        head=ActionHeadConfig(action_dim=4, state_dim=4, chunk=8, horizons=(4, 8), width=32, depth=2, heads=2),
        sampler=SamplerConfig(steps=2, fixed_noise=True),
        execution=ExecutionConfig(min_execute=2, max_execute=4))


def tiny_normalizer() -> Normalizer:
    return Normalizer({"observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4},
                       "action": {"mean": [0.1] * 4, "std": [0.5] * 4}})


def test_policy_trains_predicts_and_round_trips(model_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    policy = VLAPolicy(tiny_policy_config(model_dir), tiny_normalizer())
    batch = {f"observation.images.{c}": img for c, img in random_images(2, size=40).items()}
    batch |= {"observation.state": torch.randn(2, 4), "action": torch.randn(2, 8, 4), "task": INSTRUCTIONS}
    loss, _ = policy(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in policy.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.head.parameters())

    rng = np.random.default_rng(0)
    obs = {f"observation.images.{c}": rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for c in CAMERAS}
    obs |= {"observation.state": np.zeros(4, dtype=np.float32), "task": "place the cube on the plate"}
    policy.reset()
    actions, n_execute = policy.predict_chunk(obs)
    assert actions.shape == (8, 4) and actions.dtype == np.float32 and np.isfinite(actions).all()
    assert 2 <= n_execute <= 4

    policy.save_pretrained(tmp_path / "ckpt")
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert stored and not any(k.startswith("backbone.") for k in stored)  # the frozen VLM loads from model_dir
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded.backbone, HFVLMBackbone) and len(loaded.backbone.vlm.text_model.layers) == 2
    loaded_actions, loaded_n = loaded.predict_chunk(obs)
    np.testing.assert_allclose(loaded_actions, actions, rtol=1e-5, atol=1e-5)
    assert loaded_n == n_execute


def test_bad_model_dir_and_too_many_layers_name_the_key(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="backbone.model_dir.*nowhere"):
        HFVLMBackbone(backbone_config(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="backbone.model_dir.*config.json"):
        HFVLMBackbone(backbone_config(tmp_path))  # a directory, but no model in it
    with pytest.raises(ValueError, match=r"backbone.num_layers=5 exceeds the 4 decoder layers"):
        HFVLMBackbone(backbone_config(model_dir, num_layers=5))
    with pytest.raises(ValueError, match="backbone.max_text_tokens"):
        backbone_config(model_dir, max_text_tokens=0)
