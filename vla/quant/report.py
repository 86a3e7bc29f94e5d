"""What quantization cost and bought: per-layer cosine, action MSE, weight bytes, peak RSS, chunk latency, success.

Every comparison runs the float and the quantized policy on the same observations with the same sampling noise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vla.policy.policy import VLAPolicy
from vla.quant.backends import tensor_bytes
from vla.quant.calibrate import BATCH, run_buffer
from vla.quant.convert import float_tensors, quantized_tensors
from vla.sim.report import percentiles_ms


def _outputs(policy: VLAPolicy, names: list[str], observations: list[dict], seed: int) -> dict[str, list]:
    captured: dict[str, list] = {n: [] for n in names}
    handles = [policy.get_submodule(n).register_forward_hook(
        lambda m, a, out, n=n: captured[n].append((out[0] if isinstance(out, tuple) else out).double()))
        for n in names]
    try:
        run_buffer(policy, observations, seed)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def layer_cosine(float_policy: VLAPolicy, quant_policy: VLAPolicy, buffer: list[dict], names: list[str],
                 seed: int) -> dict[str, float]:
    """Cosine similarity of each named layer's outputs (all calls, all denoising steps, concatenated)."""
    dot, f_sq, q_sq = (dict.fromkeys(names, 0.0) for _ in range(3))
    for i in range(0, len(buffer), BATCH):  # batch by batch: the captured outputs of one batch at a time
        chunk = buffer[i:i + BATCH]
        ref, out = _outputs(float_policy, names, chunk, seed + i), _outputs(quant_policy, names, chunk, seed + i)
        for n in names:
            for f, q in zip(ref[n], out[n], strict=True):
                dot[n] += float((f * q).sum())
                f_sq[n] += float((f * f).sum())
                q_sq[n] += float((q * q).sum())
    return {n: dot[n] / math.sqrt(max(f_sq[n] * q_sq[n], 1e-300)) for n in names}


def action_mse(float_policy: VLAPolicy, quant_policy: VLAPolicy, buffer: list[dict], seed: int) -> float:
    """Mean squared difference of the absolute actions (H, A) over the buffer, both from the same noise."""
    return float(np.mean((run_buffer(float_policy, buffer, seed) - run_buffer(quant_policy, buffer, seed)) ** 2))


def weight_bytes(float_policy: VLAPolicy, quant_policy: VLAPolicy) -> dict[str, int]:
    """Bytes of the quantized layers before (float weight + bias) and after (integer weights, scales, bias), and of
    every stored weight of the model (the frozen text encoder, loaded from its package, is not stored)."""
    names = quant_policy.quantization["modules"]
    before = sum(tensor_bytes(dict(float_policy.get_submodule(n).state_dict())) for n in names)
    after = tensor_bytes(quantized_tensors(quant_policy))
    return {"float": before, "quantized": after,
            "model_float": tensor_bytes(float_policy.stored_state_dict()),
            "model_quantized": tensor_bytes(float_tensors(quant_policy)) + after}


@contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def chunk_latency(policies: dict[str, nn.Module], obs: dict, runs: int, warmup: int,
                  device: str = "cpu") -> dict[str, dict]:
    """p50/p95 ms of `predict_chunk(obs)` per policy; the policies take turns call by call, so load on a busy
    machine hits them alike."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds: dict[str, list[float]] = {k: [] for k in policies}
    for i in range(warmup + runs):
        for label, policy in policies.items():
            sync()
            tic = time.perf_counter()
            policy.predict_chunk(obs)
            sync()
            if i >= warmup:
                seconds[label].append(time.perf_counter() - tic)
    return {label: percentiles_ms(s) for label, s in seconds.items()}


def _rss_probe(checkpoint: str, obs: dict) -> float:
    import resource

    VLAPolicy.from_pretrained(checkpoint).predict_chunk(obs)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB


def peak_rss_mib(checkpoint: str | Path, obs: dict) -> float:
    """Peak resident memory of a fresh process that loads the checkpoint and predicts one chunk."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_rss_probe, str(checkpoint), obs).result()


# ------------------------------------------------------------------------------------------------ files
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def to_markdown(report: dict[str, Any]) -> str:
    q, wb, lat = report["quantization"], report["weight_bytes"], report["latency_ms"]
    lines = [
        f"# Quantization report: {q['backend']} {q['scheme']}",
        "",
        f"Checkpoint `{report['checkpoint']}` -> `{report['out']}`. {q['why']}",
        "",
        "| metric | float | quantized | ratio |",
        "|---|---:|---:|---:|",
        f"| weight bytes, quantized layers | {wb['float']:,} | {wb['quantized']:,} | "
        f"{wb['quantized'] / wb['float']:.3f} |",
        f"| weight bytes, whole stored model | {wb['model_float']:,} | {wb['model_quantized']:,} | "
        f"{wb['model_quantized'] / wb['model_float']:.3f} |",
        f"| checkpoint file bytes | {report['file_bytes']['float']:,} | {report['file_bytes']['quantized']:,} | "
        f"{report['file_bytes']['quantized'] / report['file_bytes']['float']:.3f} |",
    ]
    if report.get("peak_rss_mib"):
        r = report["peak_rss_mib"]
        lines.append(f"| peak RSS (MiB, load + one chunk) | {r['float']:.0f} | {r['quantized']:.0f} | "
                     f"{r['quantized'] / r['float']:.3f} |")
    for device, prefix in (("CPU", ""), ("CUDA", "cuda_")):
        if f"{prefix}float_p50" in lat:
            for p in ("p50", "p95"):
                f, qv = lat[f"{prefix}float_{p}"], lat[f"{prefix}quantized_{p}"]
                lines.append(f"| chunk latency {device} {p} (ms, {lat['threads']} CPU threads) | {f:.1f} | {qv:.1f} "
                             f"| {f / qv:.2f}x speed-up |")
    lines += ["", f"Action MSE against the float model (same noise, {report['observations']['eval']} held-out "
                  f"observations, {report['sampler_steps']} denoising steps): **{report['action_mse']:.3e}** "
                  f"(action variance {report['action_variance']:.3e}).", ""]
    if report.get("ablation"):
        lines += ["## ATM / OHB ablation (action MSE, held-out observations)", "", "| ATM | OHB | action MSE |",
                  "|---|---|---:|"]
        lines += [f"| {a['atm']} | {a['ohb']} | {a['action_mse']:.3e} |" for a in report["ablation"]]
        lines.append("")
    if report.get("success"):
        s = report["success"]
        lines += [f"## Success ({s['episodes_per_task']} episodes per task, 95% Wilson intervals)", "",
                  "| task | float | quantized | delta |", "|---|---:|---:|---:|"]
        for name, row in s["tasks"].items():
            lines.append(f"| {name} | {_pct(row['float'])} [{_pct(row['float_ci95'][0])}, "
                         f"{_pct(row['float_ci95'][1])}] | {_pct(row['quantized'])} [{_pct(row['quantized_ci95'][0])},"
                         f" {_pct(row['quantized_ci95'][1])}] | {100 * (row['quantized'] - row['float']):+.1f} |")
        lines += [f"| **average** | {_pct(s['float'])} | {_pct(s['quantized'])} | "
                  f"{100 * (s['quantized'] - s['float']):+.1f} |", ""]
    else:
        lines += ["Success evaluation skipped (eval.episodes=0).", ""]
    calib = report["calibration"]
    lines += ["## Calibration", "", f"ATM {calib['atm']}, OHB {calib['ohb']}, "
              f"{report['observations']['calibration']} observations.", "",
              "| attention layer | alpha per head | beta | logit-std ratio before -> after | RMS ratio before -> after"
              " |",
              "|---|---|---:|---|---|"]
    for name, ratios in calib["logit_std_ratio"].items():
        alpha = ", ".join(f"{a:.3f}" for a in calib["alpha"].get(name, []))
        before = ", ".join(f"{r:.3f}" for r in ratios["before"])
        after = ", ".join(f"{r:.3f}" for r in ratios["after"])
        rms = calib["rms_ratio"][name]
        lines.append(f"| {name} | {alpha or '-'} | {calib['beta'].get(name, 1.0):.3f} | {before} -> {after} | "
                     f"{rms['before']:.3f} -> {rms['after']:.3f} |")
    lines += ["", "## Layout", "", f"Quantize patterns: `{q['layout']['quantize']}`; keep patterns: "
              f"`{q['layout']['keep']}`.", "", "| quantized layer | cosine to float |", "|---|---:|"]
    lines += [f"| {n} | {c:.5f} |" for n, c in report["layer_cosine"].items() if n in report["quantized_modules"]]
    lines += ["", "| float attention layer (downstream) | cosine to float |", "|---|---:|"]
    lines += [f"| {n} | {c:.5f} |" for n, c in report["layer_cosine"].items()
              if n not in report["quantized_modules"]]
    lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    success = report.get("success")
    fig, axes = plt.subplots(1, 2 if success else 1, figsize=(14 if success else 8, 5), squeeze=False)
    names = list(report["layer_cosine"])
    ax = axes[0, 0]
    colors = ["#c44e52" if n in report["quantized_modules"] else "#4c72b0" for n in names]
    ax.barh(range(len(names)), [1 - report["layer_cosine"][n] for n in names], color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("1 - cosine to float (red: quantized, blue: float attention)")
    if success:
        ax = axes[0, 1]
        tasks = list(success["tasks"])
        x = np.arange(len(tasks))
        for offset, key, color in ((-0.2, "float", "#4c72b0"), (0.2, "quantized", "#c44e52")):
            rates = np.array([success["tasks"][t][key] for t in tasks])
            ci = np.array([success["tasks"][t][f"{key}_ci95"] for t in tasks])
            ax.bar(x + offset, 100 * rates, 0.4, yerr=100 * np.stack([rates - ci[:, 0], ci[:, 1] - rates]),
                   capsize=2, color=color, label=key)
        ax.set_xticks(x, tasks, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("success (%)")
        ax.set_ylim(0, 105)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(to_markdown(report))
    plot(report, out / "report.png")
