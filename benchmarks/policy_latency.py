"""Action-chunk latency on the CPU: the embedded vla policy and LeRobot's diffusion policy against SmolVLA (the
anchor), in the same run.

One call = one chunk of 16 actions (state and action dim 8) from one observation with two 128x128 cameras and the
instruction, timed with `torch.set_num_threads(1)` and `(2)`; p50 and p95 over `--calls` timed calls after `--warmup`
untimed ones. Weights are random (no network here): latency does not depend on their values.
- vla: `VLAPolicy.predict_chunk(obs)` on the env's observation dict (resize, normalization, backbone, every denoising
  step); `checkpoints/tabletop` when it exists, otherwise built from conf/train/policy/tiny.yaml.
- SmolVLA (anchor): LeRobot's `SmolVLAPolicy.predict_action_chunk` with the SmolVLM2-500M-Video-Instruct architecture
  written out below (no weights loaded), its default 16 VLM layers and 10 flow steps; its own image preprocessing
  (pad-resize to 512x512) is kept, and a second row keeps the images at 128x128 (`resize_imgs_with_padding`).
- diffusion: LeRobot's `DiffusionPolicy.predict_action_chunk` (ResNet-18 without pretrained weights, UNet, 100 DDPM
  steps by default), horizon 16, its default 2-frame observation history.
The LeRobot policies get a batch that is already tensors, normalized and tokenized (their processor pipelines run
before `predict_action_chunk`); the vla call starts from the raw uint8 observation, so it carries its own
preprocessing. Writes benchmarks/results/policy_latency.{json,md}.

    python benchmarks/policy_latency.py [--calls 20] [--warmup 3] [--max-seconds 180] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vla.policy.config import VLAPolicyConfig
from vla.policy.normalize import Normalizer
from vla.policy.policy import FROZEN_TEXT_PREFIX, VLAPolicy
from vla.sim.report import machine_info

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "tabletop"
TINY_CONFIG = ROOT / "conf" / "train" / "policy" / "tiny.yaml"
CAMERAS = ("front", "wrist")
IMAGE_SIZE = 128
STATE_DIM = ACTION_DIM = 8
CHUNK = 16
TASK = "put the red cube in the bin"
THREADS = (1, 2)
MIN_CALLS = 3  # a time-capped measurement still gets this many timed calls

# HuggingFaceTB/SmolVLM2-500M-Video-Instruct, SmolVLA's default VLM: its config.json (the model card), with the
# vision values that file leaves to SmolVLMVisionConfig's defaults (intermediate size, depth) written out too.
# Text tower = SmolLM2-360M; vision tower = SigLIP base, patch 16 at 512 px; pixel shuffle 4 -> 64 tokens per image.
SMOLVLM2_500M: dict[str, Any] = {
    "image_token_id": 49190,
    "scale_factor": 4,
    "vocab_size": 49280,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama",
        "vocab_size": 49280,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "pad_token_id": 2,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
        "num_channels": 3,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
}
# SmolVLMProcessor's special tokens: SmolVLA reads two of their ids at construction, nothing else of the tokenizer.
SPECIAL_TOKENS = {"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                  "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"}


@dataclass
class Candidate:
    key: str
    label: str
    call: Callable[[], Any]  # one action chunk from the prepared observation
    parameters: int
    notes: str


def observation(rng: np.random.Generator) -> dict[str, Any]:
    """One env observation, as the tabletop env and the bridge hand it to a policy."""
    obs: dict[str, Any] = {f"observation.images.{c}": rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                           for c in CAMERAS}
    obs["observation.state"] = rng.normal(0.0, 0.5, STATE_DIM).astype(np.float32)
    obs["task"] = TASK
    return obs


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------ builders, one per policy


def build_vla(obs: dict[str, Any]) -> Candidate:
    if (CHECKPOINT / "config.json").is_file():
        policy, source = VLAPolicy.from_pretrained(CHECKPOINT), f"trained checkpoint {CHECKPOINT.relative_to(ROOT)}"
    else:
        cfg = VLAPolicyConfig.from_dict(yaml.safe_load(TINY_CONFIG.read_text()), source=str(TINY_CONFIG))
        identity = {"mean": [0.0] * STATE_DIM, "std": [1.0] * STATE_DIM}
        policy = VLAPolicy(cfg, Normalizer({"observation.state": identity, "action": identity})).eval()
        policy.reset()
        source = f"random weights from {TINY_CONFIG.relative_to(ROOT)} (no checkpoints/tabletop)"
    chunk, _ = policy.predict_chunk(obs)
    assert chunk.shape == (CHUNK, ACTION_DIM), chunk.shape
    size = policy.cfg.backbone.image_size
    text = sum(p.numel() for name, p in policy.named_parameters() if name.startswith(FROZEN_TEXT_PREFIX))
    return Candidate("vla", "vla embedded policy", lambda: policy.predict_chunk(obs), parameter_count(policy),
                     f"{source}; parameters include the frozen text encoder ({text:,}); "
                     f"images resized {IMAGE_SIZE}->{size} inside the call; "
                     f"{policy.cfg.sampler.steps} {policy.cfg.sampler.kind} steps; the frozen text encoder's "
                     "tokens are cached per instruction, so repeated calls skip it")


def lerobot_features() -> tuple[dict, dict]:
    from lerobot.configs import FeatureType, PolicyFeature

    inputs = {f"observation.images.{c}": PolicyFeature(type=FeatureType.VISUAL, shape=(3, IMAGE_SIZE, IMAGE_SIZE))
              for c in CAMERAS}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))
    return inputs, {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}


def lerobot_batch(obs: dict[str, Any], history: int | None = None) -> dict[str, torch.Tensor]:
    """What LeRobot's preprocessor hands the policy: float images (B, 3, H, W) in [0, 1] and the state (B, S),
    normalized (zero-mean/unit-std stats: unchanged). `history`: stack that many copies along a time axis (B, T, ...),
    as `select_action` does on an episode's first step."""
    batch = {f"observation.images.{c}": torch.from_numpy(obs[f"observation.images.{c}"]).permute(2, 0, 1)[None]
             .float() / 255 for c in CAMERAS}
    batch["observation.state"] = torch.from_numpy(obs["observation.state"])[None]
    if history:
        batch = {k: torch.stack([v] * history, dim=1) for k, v in batch.items()}
    return batch


def write_smolvlm_dir(directory: Path) -> None:
    """A local VLM directory for SmolVLA to build from: the real architecture's config and a processor whose
    tokenizer holds only the special tokens (the instruction is tokenized outside the timed call, see
    `smolvla_tokens`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    SmolVLMConfig(**SMOLVLM2_500M).save_pretrained(directory)
    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_end|>", *SPECIAL_TOKENS.values()])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<|endoftext|>", pad_token="<|im_end|>",
                                        extra_special_tokens=SPECIAL_TOKENS)
    SmolVLMProcessor(SmolVLMImageProcessor(), tokenizer, SmolVLMVideoProcessor(), image_seq_len=64) \
        .save_pretrained(directory)


def smolvla_tokens(task: str) -> dict[str, torch.Tensor]:
    """The instruction as SmolVLA's tokenizer step would give it: `task + "\\n"`, unpadded (batch of one). SmolLM2's
    BPE maps each common English word (with its leading space) and the newline to one token, so the length is the
    word count + 1; the ids are arbitrary ordinary-text ids (they do not change the cost)."""
    length = len(task.split()) + 1
    ids = torch.arange(1000, 1000 + length)[None]
    return {"observation.language.tokens": ids, "observation.language.attention_mask": torch.ones_like(ids).bool()}


def build_smolvla(obs: dict[str, Any], resize: int | None) -> Candidate:
    """SmolVLA at its defaults but for the chunk (16) and, where `resize` is given, the image pad-resize target."""
    from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy

    inputs, outputs = lerobot_features()
    with tempfile.TemporaryDirectory() as vlm_dir:
        write_smolvlm_dir(Path(vlm_dir))
        overrides = {} if resize is None else {"resize_imgs_with_padding": (resize, resize)}
        config = SmolVLAConfig(vlm_model_name=vlm_dir, load_vlm_weights=False, chunk_size=CHUNK,
                               n_action_steps=CHUNK, input_features=inputs, output_features=outputs, device="cpu",
                               **overrides)
        policy = SmolVLAPolicy(config).eval()
    batch = lerobot_batch(obs) | smolvla_tokens(TASK)
    chunk = policy.predict_action_chunk(dict(batch))
    assert chunk.shape == (1, CHUNK, ACTION_DIM), chunk.shape
    vlm = policy.model.vlm_with_expert
    side = config.resize_imgs_with_padding[0]
    key = "smolvla" if resize is None else f"smolvla_{resize}px"
    label = "SmolVLA (anchor)" if resize is None else f"SmolVLA, images kept at {resize}x{resize}"
    return Candidate(key, label, lambda: policy.predict_action_chunk(dict(batch)), parameter_count(policy),
                     f"SmolVLM2-500M architecture, random weights; first {vlm.num_vlm_layers} of "
                     f"{SMOLVLM2_500M['text_config']['num_hidden_layers']} VLM layers, expert width x"
                     f"{config.expert_width_multiplier}; images pad-resized to {side}x{side}; "
                     f"{config.num_steps} flow steps; instruction {batch['observation.language.tokens'].shape[1]} "
                     f"tokens; parameters include the unused LM head ({vlm.vlm.lm_head.weight.numel():,})")


def build_diffusion(obs: dict[str, Any]) -> Candidate:
    from lerobot.policies.diffusion import DiffusionConfig, DiffusionPolicy

    inputs, outputs = lerobot_features()
    # horizon 16 and 8 executed steps are the Diffusion Policy paper's (LeRobot 0.6 defaults to 64/32).
    config = DiffusionConfig(horizon=CHUNK, n_action_steps=8, pretrained_backbone_weights=None,
                             input_features=inputs, output_features=outputs, device="cpu")
    policy = DiffusionPolicy(config).eval()
    batch = lerobot_batch(obs, history=config.n_obs_steps)
    policy.predict_action_chunk(batch)
    steps = config.num_inference_steps or config.num_train_timesteps
    return Candidate("diffusion", "LeRobot diffusion policy", lambda: policy.predict_action_chunk(batch),
                     parameter_count(policy),
                     f"{config.vision_backbone} (no pretrained weights) per camera + 1-D UNet {config.down_dims}; "
                     f"{steps} {config.noise_scheduler_type} steps over a horizon of {config.horizon} (returns "
                     f"{config.n_action_steps} executed steps); {config.n_obs_steps} observation frames per call")


BUILDERS: dict[str, Callable[[dict[str, Any]], Candidate]] = {
    "vla": build_vla,
    "smolvla": lambda obs: build_smolvla(obs, resize=None),
    "smolvla_128px": lambda obs: build_smolvla(obs, resize=IMAGE_SIZE),
    "diffusion": build_diffusion,
}


# ------------------------------------------------------------------ measurement


def time_calls(call: Callable[[], Any], warmup: int, calls: int, max_seconds: float) -> list[float]:
    """Milliseconds of each of `calls` timed calls after `warmup` untimed ones; stops early once `max_seconds` of
    timed calls have passed (after at least MIN_CALLS), so the slow policies stay within a bounded run."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < calls:
        tic = time.perf_counter()
        call()
        times.append((time.perf_counter() - tic) * 1e3)
        if len(times) >= MIN_CALLS and time.perf_counter() - start > max_seconds:
            break
    return times


def summarize(times_ms: list[float]) -> dict[str, Any]:
    return {"p50_ms": float(np.median(times_ms)), "p95_ms": float(np.percentile(times_ms, 95)),
            "calls": len(times_ms), "times_ms": [round(t, 3) for t in times_ms]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return machine_info()["processor"]


def measure(keys: list[str], warmup: int, calls: int, max_seconds: float) -> dict[str, Any]:
    """Build each policy in turn (only one in memory at a time) and time it at every thread count."""
    rng = np.random.default_rng(0)
    obs = observation(rng)
    results: dict[str, Any] = {}
    for key in keys:
        torch.manual_seed(0)
        torch.set_num_threads(max(THREADS))
        tic = time.perf_counter()
        candidate = BUILDERS[key](obs)
        entry = {"label": candidate.label, "parameters": candidate.parameters, "notes": candidate.notes,
                 "build_s": time.perf_counter() - tic, "threads": {}}
        for threads in THREADS:
            torch.set_num_threads(threads)
            entry["threads"][str(threads)] = summarize(time_calls(candidate.call, warmup, calls, max_seconds))
            print(f"{candidate.label}, {threads} thread(s): p50 {entry['threads'][str(threads)]['p50_ms']:.1f} ms "
                  f"({entry['threads'][str(threads)]['calls']} calls)", flush=True)
        results[key] = entry
        del candidate
        gc.collect()
    return results


def add_ratios(results: dict[str, Any], anchor: str = "smolvla", embedded: str = "vla") -> None:
    """p50 of each row over the anchor's and over the embedded policy's p50 at the same thread count."""
    for entry in results.values():
        for threads, stats in entry["threads"].items():
            for name, ref in (("vs_smolvla", anchor), ("vs_vla", embedded)):
                if ref in results:
                    stats[name] = stats["p50_ms"] / results[ref]["threads"][threads]["p50_ms"]


def ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}x" if value >= 10 else f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    machine = meta["machine"]
    rows = ["| policy | parameters | threads | p50 ms | p95 ms | p50 / SmolVLA | p50 / vla | timed calls |",
            "|---|---|---|---|---|---|---|---|"]
    for entry in results.values():
        for threads, s in entry["threads"].items():
            rows.append(f"| {entry['label']} | {entry['parameters'] / 1e6:,.1f} M | {threads} | {s['p50_ms']:,.1f} | "
                        f"{s['p95_ms']:,.1f} | {ratio(s.get('vs_smolvla'))} | {ratio(s.get('vs_vla'))} | "
                        f"{s['calls']} |")
    quick = " **Quick smoke run: too few calls for a p95; re-run without --quick on a quiet machine.**"
    return "\n".join([
        "# Policy latency: one action chunk on the CPU", "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['platform']}, Python "
        f"{machine['python']}, torch {meta['torch']}; 1-min load average {meta['load_average_1min'][0]:.1f} before, "
        f"{meta['load_average_1min'][1]:.1f} after the run"
        f"{' (the machine was busy: every row is slowed, the 2-thread rows most)' if meta['busy'] else ''}."
        f"{quick if meta['quick'] else ''}", "",
        f"One call = a chunk of {CHUNK} actions (dim {ACTION_DIM}) from one observation: {len(CAMERAS)} cameras at "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}, state dim {STATE_DIM}, the instruction \"{TASK}\". p50/p95 over the timed calls "
        f"after {meta['warmup']} warmup call(s) and the builder's check call: up to {meta['calls']} timed calls per "
        f"row, fewer where {meta['max_seconds']:.0f} s of timed calls ran out (at least {MIN_CALLS}). "
        "Ratios: p50 over SmolVLA's p50 (the anchor) and over the embedded vla policy's, at the same thread count. "
        "The LeRobot policies have random weights (latency does not depend on their values); see each row's notes.", "",
        *rows, "",
        *[f"- **{entry['label']}**: {entry['notes']}." for entry in results.values()],
        "- The LeRobot calls start from tensors already normalized and tokenized by their processor pipelines; the "
        "vla call starts from the raw uint8 observation and includes its own preprocessing.", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="timed calls per policy and thread count")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--max-seconds", type=float, default=180.0,
                        help="stop timing a policy after this many seconds of timed calls (at least 3 calls)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: no warmup beyond the builder's check call, 2 timed calls")
    parser.add_argument("--policies", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.calls = 0, 2

    load_before = os.getloadavg()[0]
    results = measure(args.policies, args.warmup, args.calls, args.max_seconds)
    add_ratios(results)
    load_after = os.getloadavg()[0]
    meta = {
        "machine": {**machine_info(), "cpu_model": cpu_model()},
        "torch": torch.__version__,
        "load_average_1min": [load_before, load_after],
        "busy": max(load_before, load_after) > 0.5,  # anything else running skews every row
        "warmup": args.warmup,
        "calls": args.calls,
        "max_seconds": args.max_seconds,
        "quick": args.quick,
        "threads": list(THREADS),
        "chunk": CHUNK,
        "image_size": IMAGE_SIZE,
        "cameras": list(CAMERAS),
        "task": TASK,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy_latency.json").write_text(json.dumps({**meta, "policies": results}, indent=2))
    md = markdown(results, meta)
    (args.out / "policy_latency.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
