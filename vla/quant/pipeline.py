"""vla-quantize's work: float checkpoint -> quantized checkpoint directory + report (json, md, png).

    load float -> collect observations (calibration + held-out) -> quantize a copy (layout, scheme) -> ATM/OHB ->
    save -> reload from disk -> measure the reloaded checkpoint against the float one -> report
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.policy.policy import CONFIG_FILE, WEIGHTS_FILE, VLAPolicy
from vla.quant.backends import get_scheme
from vla.quant.buffer import collect_observations
from vla.quant.calibrate import CalibrationResult, CalibrationSettings, attention_sites, calibrate, run_buffer
from vla.quant.convert import QUANT_SECTION, quantize_policy, save_quantized
from vla.quant.layout import Layout
from vla.quant.report import action_mse, chunk_latency, layer_cosine, peak_rss_mib, threads, weight_bytes, write_report
from vla.sim.report import run_metadata, wilson_interval
from vla.sim.tasks import Task

WHY = {  # from benchmarks/results/quant_backends.md (2 busy CPU cores, the tiny.yaml-sized policy)
    ("torchao", "w8a8"): "torchao dynamic int8 activations x int8 weights: the matmul itself is integer "
                         "(torch._int_mm), the faster of the two real int8-kernel paths on the CPU (bitsandbytes int8 "
                         "is the other), hence the default. At this policy's widths (128-512) quantizing activations "
                         "per token costs more than the integer matmul saves: it measured 0.6-0.7x float's speed.",
    ("torchao", "w8"): "torchao weight-only int8: the same 4x smaller weights, but the weight is cast back to float "
                       "inside every matmul (no integer kernel); it measured about float's speed (1.0x).",
    ("bitsandbytes", "int8"): "bitsandbytes 8-bit (the onboard-GPU format); on the CPU its inputs are quantized "
                              "through float16 first, and it measured 0.6x float's speed.",
    ("bitsandbytes", "nf4"): "bitsandbytes 4-bit NF4 (the smallest weights); dequantized per matmul on the CPU, "
                             "measured 0.8x float's speed.",
}


@dataclass
class QuantizeSettings:
    checkpoint: Path
    out: Path
    backend: str = "torchao"
    scheme: str = "w8a8"
    layout: Layout = field(default_factory=Layout)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    calibration_observations: int = 32
    eval_observations: int = 16  # held out from calibration: action MSE, per-layer cosine
    tasks: list[Task] = field(default_factory=list)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    ablation: bool = True
    latency_runs: int = 30
    latency_warmup: int = 3
    latency_threads: int = 2
    rss: bool = True
    eval_episodes: int = 20  # per task; 0 skips the success evaluation
    eval_num_envs: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        get_scheme(self.backend, self.scheme)
        if self.calibration_observations < 32:
            raise ValueError(f"calibration.observations must be >= 32, got {self.calibration_observations}")
        for name in ("eval_observations", "latency_runs", "latency_threads", "eval_num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '.', 1)} must be >= 1, got {getattr(self, name)}")
        if self.latency_warmup < 0 or self.eval_episodes < 0:
            raise ValueError("latency.warmup and eval.episodes must be >= 0")
        if not self.tasks:
            raise ValueError("tasks: expected at least one task")


def _calibrated(policy: VLAPolicy, s: QuantizeSettings, buffer: list[dict], atm: bool,
                ohb: bool) -> tuple[VLAPolicy, CalibrationResult]:
    quant = quantize_policy(policy, s.layout, get_scheme(s.backend, s.scheme))
    calib = CalibrationSettings(**{**asdict(s.calibration), "atm": atm, "ohb": ohb})
    result = calibrate(policy, quant, buffer, calib) if atm or ohb else CalibrationResult()
    return quant, result


def _success(float_dir: Path, quant_dir: Path, s: QuantizeSettings) -> dict[str, Any]:
    from vla.sim.evaluate import EvalSettings, evaluate

    settings = EvalSettings(tasks=s.tasks, episodes=s.eval_episodes, num_envs=s.eval_num_envs, seed=s.seed,
                            videos_per_task=0, env_kwargs=s.env_kwargs)
    reports = {label: evaluate(lambda d=d: VLAPolicy.from_pretrained(d), settings, s.out / "eval" / label,
                               policy_name=f"{label} {d}")
               for label, d in (("float", float_dir), ("quantized", quant_dir))}
    tasks = {}
    for name in reports["float"]["tasks"]:
        row = {}
        for label, report in reports.items():
            t = report["tasks"][name]
            row[label], row[f"{label}_ci95"] = t["success_rate"], list(wilson_interval(t["successes"], t["episodes"]))
        tasks[name] = row
    return {"episodes_per_task": s.eval_episodes, "tasks": tasks,
            "float": reports["float"]["average_success"], "quantized": reports["quantized"]["average_success"],
            "episodes": {label: sum(t["episodes"] for t in r["tasks"].values()) for label, r in reports.items()}}


def quantize_checkpoint(s: QuantizeSettings) -> dict[str, Any]:
    config = s.checkpoint / CONFIG_FILE
    if config.is_file() and QUANT_SECTION in json.loads(config.read_text()):
        raise ValueError(f"checkpoint: {s.checkpoint} is already quantized; start from a float checkpoint")
    policy = VLAPolicy.from_pretrained(s.checkpoint)
    observations = collect_observations(s.calibration_observations + s.eval_observations, s.tasks, s.env_kwargs,
                                        seed=s.seed)
    calib_buffer, eval_buffer = observations[:s.calibration_observations], observations[s.calibration_observations:]

    quant, calib = _calibrated(policy, s, calib_buffer, s.calibration.atm, s.calibration.ohb)
    section = {"layout": asdict(s.layout), "calibration": {**asdict(s.calibration), **asdict(calib)}}
    save_quantized(quant, s.out, extra=section)
    reloaded = VLAPolicy.from_pretrained(s.out)  # everything below measures what is on disk

    ablation = []
    if s.ablation:
        for atm, ohb in ((False, False), (True, False), (False, True), (True, True)):
            variant = reloaded if (atm, ohb) == (s.calibration.atm, s.calibration.ohb) else \
                _calibrated(policy, s, calib_buffer, atm, ohb)[0]
            ablation.append({"atm": atm, "ohb": ohb, "action_mse": action_mse(policy, variant, eval_buffer, s.seed)})

    names = reloaded.quantization["modules"]
    sites = [n for n in attention_sites(reloaded) if n in calib.logit_std_ratio]
    with threads(s.latency_threads):
        latency = chunk_latency({"float": policy, "quantized": reloaded}, eval_buffer[0], s.latency_runs,
                                s.latency_warmup)
    latency_ms = {"threads": s.latency_threads, "runs": s.latency_runs}  # <label>_p50: CPU, cuda_<label>_p50: GPU
    for label, stats in latency.items():
        latency_ms.update({f"{label}_p50": stats["p50"], f"{label}_p95": stats["p95"]})
    if torch.cuda.is_available():
        cuda = chunk_latency({"float": VLAPolicy.from_pretrained(s.checkpoint, device="cuda"),
                              "quantized": VLAPolicy.from_pretrained(s.out, device="cuda")},
                             eval_buffer[0], s.latency_runs, s.latency_warmup, device="cuda")
        for label, stats in cuda.items():
            latency_ms.update({f"cuda_{label}_p50": stats["p50"], f"cuda_{label}_p95": stats["p95"]})

    float_actions = run_buffer(policy, eval_buffer, s.seed)
    report = {
        "checkpoint": str(s.checkpoint),
        "out": str(s.out),
        "quantization": {"backend": s.backend, "scheme": s.scheme, "layout": asdict(s.layout),
                         "why": WHY[(s.backend, s.scheme)]},
        "quantized_modules": names,
        "weight_bytes": weight_bytes(policy, reloaded),
        "file_bytes": {"float": (s.checkpoint / WEIGHTS_FILE).stat().st_size,
                       "quantized": (s.out / WEIGHTS_FILE).stat().st_size},
        "latency_ms": latency_ms,
        "action_mse": action_mse(policy, reloaded, eval_buffer, s.seed),
        "action_variance": float(np.var(float_actions)),
        "sampler_steps": policy.cfg.sampler.steps,
        "observations": {"calibration": len(calib_buffer), "eval": len(eval_buffer)},
        "layer_cosine": layer_cosine(policy, reloaded, eval_buffer, names + sites, s.seed),
        "calibration": section["calibration"],
        "ablation": ablation,
        "peak_rss_mib": {"float": peak_rss_mib(s.checkpoint, eval_buffer[0]),
                         "quantized": peak_rss_mib(s.out, eval_buffer[0])} if s.rss else None,
        "success": _success(s.checkpoint, s.out, s) if s.eval_episodes else None,
        "run": run_metadata(),
    }
    write_report(report, s.out)
    return report
