"""How fast each environment-state probe learns where the objects are: error (cm) against training steps.

The object token is only as good as the probe's estimate, and a grasp needs it within about 2 cm. This trains
each probe source alone (`tokens`: attention over the tiny ViT backbone's tokens, backbone trained with it;
`keypoints`: the KeypointProbe's conv keypoints over the pixels) on the recorded object positions of a dataset,
the last `--held-out` episodes kept out, and reports the mean and median distance between estimated and true
object positions on held-out frames, with seconds per step. Writes benchmarks/results/localization.{json,md}.

    python benchmarks/localization.py --dataset data/tabletop_a [--steps 1000] [--every 250] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vla.data.training_set import ChunkDataset
from vla.policy.backbone import TinyVLMConfig, build_backbone
from vla.policy.env_state_probe import EnvStateProbe, KeypointProbe
from vla.policy.policy import ENV_STATE_KEY, IMAGE_PREFIX
from vla.sim.report import machine_info

CAMERAS = ("front", "wrist")
BATCH = 32
EVAL_FRAMES = 128


def build(source: str, env_dim: int) -> tuple[torch.nn.Module | None, torch.nn.Module]:
    if source == "keypoints":
        return None, KeypointProbe(CAMERAS, env_dim)
    backbone = build_backbone(TinyVLMConfig(cameras=CAMERAS))
    return backbone, EnvStateProbe(backbone.token_dim, env_dim)


def estimate(backbone, probe, batch: dict) -> torch.Tensor:
    images = {c: batch[IMAGE_PREFIX + c].float() / 255 for c in CAMERAS}
    tokens, mask = backbone(images, batch["task"]) if backbone is not None else (None, None)
    return probe(images, tokens, mask)


def train_probe(data: ChunkDataset, source: str, train_idx: np.ndarray, eval_idx: np.ndarray, args) -> list[dict]:
    torch.manual_seed(0)
    mean, std = data.env_state.mean(0), data.env_state.std(0) + 1e-6
    backbone, probe = build(source, data.env_state.shape[1])
    modules = [m for m in (backbone, probe) if m is not None]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    held_out = data.__getitems__(eval_idx.tolist())
    rng, rows, elapsed = np.random.default_rng(0), [], 0.0
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                pred = estimate(backbone, probe, held_out).numpy() * std + mean
            dist = 100 * np.linalg.norm((pred - held_out[ENV_STATE_KEY].numpy()).reshape(len(eval_idx), -1, 3), axis=-1)
            rows.append({"source": source, "step": step, "mean_cm": float(dist.mean()),
                         "median_cm": float(np.median(dist)), "s_per_step": elapsed / max(step, 1)})
            print(rows[-1], flush=True)
        if step == args.steps:
            break
        batch = data.__getitems__(rng.choice(train_idx, BATCH, replace=False).tolist())
        start = time.perf_counter()
        target = (batch[ENV_STATE_KEY] - torch.from_numpy(mean)) / torch.from_numpy(std)
        loss = F.mse_loss(estimate(backbone, probe, batch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed += time.perf_counter() - start
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="data/tabletop_a", help="a tabletop dataset with object positions")
    parser.add_argument("--sources", nargs="+", default=["tokens", "keypoints"], choices=["tokens", "keypoints"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--held-out", type=int, default=20, help="episodes kept out of training")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = ChunkDataset(args.dataset, chunk=1, cameras=CAMERAS, image_size=96)
    if data.env_state is None:
        parser.error(f"{args.dataset} has no '{ENV_STATE_KEY}' (record it with vla-record source=expert)")
    first_held_out = data.episode.max() + 1 - args.held_out
    train_idx = np.flatnonzero(data.episode < first_held_out)
    eval_idx = np.sort(np.random.default_rng(1).choice(np.flatnonzero(data.episode >= first_held_out),
                                                       EVAL_FRAMES, replace=False))
    rows = [row for source in args.sources for row in train_probe(data, source, train_idx, eval_idx, args)]

    machine = {**machine_info(), "torch_threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "localization.json").write_text(json.dumps(
        {"dataset": args.dataset, "lr": args.lr, "batch": BATCH, "held_out_episodes": args.held_out,
         "machine": machine, "rows": rows}, indent=2))
    lines = [f"# Object localization by probe source ({args.dataset})", "",
             f"Distance between estimated and true object positions on {EVAL_FRAMES} frames of the last "
             f"{args.held_out} episodes (held out), AdamW lr {args.lr}, batch {BATCH}. Machine: "
             f"{machine['platform']}, {machine['cpu_count']} cores, {machine['torch_threads']} torch threads.", "",
             "| probe reads | step | mean (cm) | median (cm) | s/step |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['source']} | {r['step']} | {r['mean_cm']:.1f} | {r['median_cm']:.1f} | {r['s_per_step']:.3f} |"
              for r in rows]
    (out / "localization.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'localization.md'}")


if __name__ == "__main__":
    main()
