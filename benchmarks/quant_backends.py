"""Chunk latency on the CPU of the float policy against every quantization backend, and against PyTorch's deprecated
`torch.ao.quantization.quantize_dynamic` (qint8) as the anchor, all in the same run.

The policy is `checkpoints/tabletop` when it exists, otherwise a random-weight one built from
conf/train/policy/tiny.yaml (latency does not depend on the weights' values). Every variant quantizes the same layers
(vla/quant/layout.py's default, the one conf/quantize.yaml uses). One call = `predict_chunk(obs)` on one observation
with two 128x128 cameras (resize, backbone, every denoising step); variants take turns call by call, so a busy
machine slows them alike. p50/p95 over `--calls` timed calls after `--warmup`, at 1 and 2 torch threads; ratios are
float p50 / variant p50 from the same run. Writes benchmarks/results/quant_backends.{json,md}.

    python benchmarks/quant_backends.py [--calls 20] [--warmup 3] [--out DIR] [--note "the machine was busy"]
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from vla.policy.config import VLAPolicyConfig
from vla.policy.normalize import Normalizer
from vla.policy.policy import VLAPolicy
from vla.quant.backends import SCHEMES, get_scheme
from vla.quant.convert import keep_encoder_layers_unfused, quantize_policy
from vla.quant.layout import Layout
from vla.quant.report import chunk_latency, threads
from vla.sim.report import machine_info

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "tabletop"
TINY_CONFIG = ROOT / "conf" / "train" / "policy" / "tiny.yaml"
THREADS = (1, 2)
ANCHOR = "quantize_dynamic (deprecated, anchor)"


def float_policy() -> tuple[VLAPolicy, str]:
    if CHECKPOINT.is_dir():
        return VLAPolicy.from_pretrained(CHECKPOINT), str(CHECKPOINT.relative_to(ROOT))
    cfg = VLAPolicyConfig.from_dict(yaml.safe_load(TINY_CONFIG.read_text()))
    dims = cfg.head.state_dim
    stats = {k: {"mean": [0.0] * dims, "std": [1.0] * dims} for k in ("observation.state", "action")}
    torch.manual_seed(0)
    return VLAPolicy(cfg, Normalizer(stats)).eval(), f"random weights, {TINY_CONFIG.relative_to(ROOT)}"


def observation(policy: VLAPolicy) -> dict:
    rng = np.random.default_rng(0)
    obs = {f"observation.images.{c}": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for c in policy.cameras}
    return {**obs, "observation.state": rng.normal(0, 0.5, policy.cfg.head.state_dim).astype(np.float32),
            "task": "put the red cube in the bin"}


def variants(policy: VLAPolicy) -> dict[str, VLAPolicy]:
    out = {"float": policy}
    for backend, names in SCHEMES.items():
        for name in names:
            out[f"{backend} {name}"] = quantize_policy(policy, Layout(), get_scheme(backend, name))
    anchor = copy.deepcopy(policy)
    layers = set(Layout().select(anchor))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warning: this is the comparison, not something we build on
        out[ANCHOR] = torch.ao.quantization.quantize_dynamic(anchor, qconfig_spec=layers, dtype=torch.qint8)
    keep_encoder_layers_unfused(out[ANCHOR])
    return out


def to_markdown(result: dict) -> str:
    lines = [
        "# Quantization backends: chunk latency on the CPU",
        "",
        f"Policy: {result['policy']}; {len(result['quantized_layers'])} layers quantized (the default layout). "
        f"{result['calls']} timed calls per variant after {result['warmup']} warm-up calls, variants interleaved. "
        f"Speed-up = float p50 / variant p50 in the same run (medians quoted).",
        "",
    ]
    if result["note"]:
        lines += [f"**Note:** {result['note']}", ""]
    header = "| variant | " + " | ".join(f"p50 ms ({t} thr) | p95 ms ({t} thr) | speed-up ({t} thr)"
                                         for t in THREADS) + " |"
    lines += [header, "|---|" + "---:|---:|---:|" * len(THREADS)]
    for label in result["threads"][str(THREADS[0])]:
        cells = []
        for t in THREADS:
            row = result["threads"][str(t)][label]
            cells += [f"{row['p50']:.1f}", f"{row['p95']:.1f}", f"{row['speedup']:.2f}x"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    m = result["machine"]
    lines += ["", f"Machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, torch {torch.__version__}.",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--note", default="", help="a line for the Markdown (e.g. that the machine was busy)")
    args = parser.parse_args()

    policy, source = float_policy()
    models, obs = variants(policy), observation(policy)
    result = {"policy": source, "quantized_layers": Layout().select(policy), "calls": args.calls,
              "warmup": args.warmup, "note": args.note, "machine": machine_info(), "threads": {}}
    for t in THREADS:
        with threads(t):
            stats = chunk_latency(models, obs, args.calls, args.warmup)
        base = stats["float"]["p50"]
        result["threads"][str(t)] = {label: {**s, "speedup": base / s["p50"]} for label, s in stats.items()}
        print(f"{t} thread(s):", {k: round(v["p50"], 1) for k, v in stats.items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quant_backends.json").write_text(json.dumps(result, indent=1))
    (args.out / "quant_backends.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
