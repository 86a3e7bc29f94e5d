"""Mixture of horizons against its ablations, trained and evaluated the same way in the same run.

Fusion ablations (each trained with `vla-train` on the same dataset, steps and seed, then evaluated with `vla-eval`):
- `moh`: the shipped recipe, conf/train/policy/tiny.yaml (horizons 4/8/12/16, learned gate, adaptive execution);
- `mean`: the same horizons fused by a uniform mean (conf/train/policy/tiny_mean.yaml);
- `single_h16`: one 16-step horizon, 8 actions executed per call (conf/train/policy/tiny_single16.yaml);
- `single_h4`: one 4-step horizon, executed whole (conf/train/policy/tiny_single4.yaml).
Execution ablations on the `moh` checkpoint (same weights, only `execution` in config.json differs): adaptive vs
a fixed 4 (the adaptive minimum) and a fixed 12 (its maximum). Success, actions executed per inference call and
chunk latency come from each `report.json`. Training runs resume, so an interrupted benchmark picks up where it was.

    python benchmarks/horizons.py --dataset data/tabletop --steps 20000 --episodes 10 \
        [--moh-checkpoint checkpoints/tabletop] [--variants moh,mean,single_h16,single_h4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from vla.sim.report import machine_info

BIN = Path(sys.executable).parent
FUSION_VARIANTS = {"moh": "tiny", "mean": "tiny_mean", "single_h16": "tiny_single16", "single_h4": "tiny_single4"}
EXECUTION_VARIANTS = {"adaptive": {"adaptive": True}, "fixed_4": {"adaptive": False, "fixed": 4},
                      "fixed_12": {"adaptive": False, "fixed": 12}}


def run(*command: str) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def train(variant: str, dataset: Path, steps: int, runs: Path) -> Path:
    out = runs / variant
    run(str(BIN / "vla-train"), f"dataset.root={dataset}", f"policy={FUSION_VARIANTS[variant]}", f"out={out}",
        f"steps={steps}", "resume=true")
    return out / "checkpoints" / (out / "checkpoints" / "last").read_text().strip() / "pretrained"


def evaluate(checkpoint: Path, episodes: int, out: Path) -> dict:
    if not (out / "report.json").is_file():
        run(str(BIN / "vla-eval"), f"policy={checkpoint}", "env=tabletop", "tasks=all", f"episodes={episodes}",
            "videos_per_task=0", f"out={out}")
    report = json.loads((out / "report.json").read_text())
    return {"average_success": report["average_success"], "actions_per_inference": report["actions_per_inference"],
            "latency_ms_p50": report["latency_ms"]["p50"], "episodes": sum(t["episodes"] for t in
                                                                         report["tasks"].values())}


def with_execution(checkpoint: Path, execution: dict, out: Path) -> Path:
    """A copy of the checkpoint whose config differs only in `execution`."""
    out.mkdir(parents=True, exist_ok=True)
    for item in checkpoint.iterdir():
        shutil.copy2(item, out / item.name)
    config = json.loads((checkpoint / "config.json").read_text())
    config["execution"].update(execution)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def markdown(results: dict) -> str:
    lines = ["| variant | success | actions / inference | chunk latency p50 (ms) | episodes |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['average_success']:.1f}% | {r['actions_per_inference']:.2f} | "
                     f"{r['latency_ms_p50']:.1f} | {r['episodes']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("data/tabletop"))
    parser.add_argument("--steps", type=int, default=20_000, help="training steps per fusion variant")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task")
    parser.add_argument("--variants", default=",".join(FUSION_VARIANTS))
    parser.add_argument("--moh-checkpoint", type=Path, help="reuse this trained moh checkpoint (e.g. the shipped one)")
    parser.add_argument("--runs", type=Path, default=Path("outputs/horizons"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(FUSION_VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {list(FUSION_VARIANTS)}")

    fusion, execution = {}, {}
    for variant in variants:
        checkpoint = args.moh_checkpoint if variant == "moh" and args.moh_checkpoint else \
            train(variant, args.dataset, args.steps, args.runs)
        fusion[variant] = evaluate(checkpoint, args.episodes, args.runs / variant / "eval")
        if variant == "moh":
            for name, change in EXECUTION_VARIANTS.items():
                copy = with_execution(checkpoint, change, args.runs / f"moh_{name}" / "checkpoint")
                execution[name] = evaluate(copy, args.episodes, args.runs / f"moh_{name}" / "eval")

    result = {"dataset": str(args.dataset), "steps": args.steps, "episodes_per_task": args.episodes,
              "fusion": fusion, "execution": execution, "machine": machine_info()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "horizons.json").write_text(json.dumps(result, indent=1))
    text = (f"# Mixture of horizons vs ablations\n\n{args.episodes} episodes per task on the tabletop suite, "
            f"{args.steps} training steps per variant, machine: {result['machine']}.\n\n## Fusion\n\n"
            f"{markdown(fusion)}\n\n## Execution (the moh checkpoint)\n\n{markdown(execution)}\n")
    (args.out / "horizons.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
