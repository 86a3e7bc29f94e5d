"""The training loop: one process or many through `accelerate`, resumable from its last checkpoint.

RUN/
  checkpoints/step_NNNNNN/pretrained/       the EMA policy: config.json, model.safetensors, normalization stats
  checkpoints/step_NNNNNN/training_state/   accelerate's state: weights, optimizer, scheduler, RNGs, EMA, step
  checkpoints/last                          the name of the newest complete checkpoint
  tensorboard/                              losses, learning rate, gradient norm, periodic sim success
  evals/step_NNNNNN/                        periodic vla-eval reports (when eval_every > 0)
A checkpoint directory is written under a temporary name and renamed when complete, so a crash never leaves a
half-written `last`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vla.data.training_set import identity_collate, open_chunk_datasets
from vla.policy.config import VLAPolicyConfig
from vla.policy.normalize import Normalizer
from vla.policy.policy import IMAGE_PREFIX, VLAPolicy
from vla.train.ema import EMA
from vla.train.settings import TrainSettings

LAST = "last"


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup to 1, then a cosine down to 0 at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, 3, S, S) -> the same size, each image shifted by up to `pad` pixels (edges replicated), as in DrQ."""
    if pad <= 0:
        return images
    B, _, S, _ = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, B)).tolist()
    return torch.stack([padded[b, :, dy[b]:dy[b] + S, dx[b]:dx[b] + S] for b in range(B)])


def prepare_batch(batch: dict, cameras: tuple[str, ...], image_size: int, shift_pixels: int,
                  device: torch.device) -> dict:
    """uint8 images -> float [0, 1] at the policy's image size, augmented; everything on `device`."""
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    for cam in cameras:
        images = out[IMAGE_PREFIX + cam].float() / 255
        if images.shape[-1] != image_size:  # the cache holds fewer pixels than the policy wants
            images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                                     align_corners=False)
        out[IMAGE_PREFIX + cam] = random_shift(images, shift_pixels)
    return out


def latest_checkpoint(run_dir: Path) -> Path | None:
    marker = run_dir / "checkpoints" / LAST
    if not marker.is_file():
        return None
    path = run_dir / "checkpoints" / marker.read_text().strip()
    return path if path.is_dir() else None


class Trainer:
    def __init__(self, policy_cfg: dict, dataset_root: str | list[str], run_dir: str, settings: TrainSettings,
                 cache_dir: str | None = None, evaluate_fn: Callable[[Path, Path], float] | None = None,
                 dataset_cameras: dict[str, str] | None = None) -> None:
        """`dataset_cameras`: the dataset's camera names -> the policy's, where they differ (`ChunkDataset`)."""
        self.settings, self.run_dir, self.evaluate_fn = settings, Path(run_dir), evaluate_fn
        self.accelerator = Accelerator(
            mixed_precision="bf16" if settings.bf16 and torch.cuda.is_available() else "no",
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
        set_seed(settings.seed)
        cfg = VLAPolicyConfig.from_dict(policy_cfg, source="policy")
        self.resume_from = latest_checkpoint(self.run_dir) if settings.resume else None
        if settings.resume and self.resume_from is None:
            print(f"resume=true but {self.run_dir} has no checkpoint yet: starting from step 0")
        if cfg.backbone.type == "hf":  # a wrong model_dir fails now, not after decoding the frame cache
            from vla.policy.hf_backbone import model_path

            model_path(cfg.backbone.model_dir)
        with self.accelerator.main_process_first():  # the first process decodes the frame cache, the rest reuse it
            self.dataset = open_chunk_datasets(dataset_root, cache_dir, chunk=cfg.head.chunk,
                                               cameras=tuple(cfg.backbone.cameras),
                                               image_size=cfg.backbone.image_size, camera_map=dataset_cameras,
                                               state_dim=cfg.head.state_dim, action_dim=cfg.head.action_dim)
        if cfg.env_state_weight > 0:  # the probe needs the dataset's privileged state; without one, no probe
            cfg = dataclasses.replace(cfg, env_state_dim=self.dataset.env_state_dim)
            if not cfg.env_state_dim:
                print(f"policy.env_state_weight={cfg.env_state_weight}, but {dataset_root} has no "
                      "observation.environment_state: training without the environment-state probe"
                      + (" and the object token" if cfg.object_token else ""))
                cfg = dataclasses.replace(cfg, object_token=False)
        elif cfg.object_token:
            raise ValueError("policy.object_token=true needs policy.env_state_weight > 0 (the probe that makes the "
                             "token learns only from its loss)")
        stats = (Normalizer.load(self.resume_from / "pretrained").to_dict() if self.resume_from
                 else self.dataset.normalization_stats(cfg.relative_actions))
        policy = VLAPolicy(cfg, Normalizer(stats))
        self.cameras, self.image_size = policy.cameras, cfg.backbone.image_size
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(settings.warmup_steps, settings.steps))
        # The loader draws its iterators' seeds from its own generator: drawing them from the global RNG (the
        # default) would shift the training noise of a run resumed mid-epoch away from the uninterrupted run's.
        loader = DataLoader(self.dataset, batch_size=settings.batch_size, shuffle=True, drop_last=True,
                            collate_fn=identity_collate, num_workers=settings.num_workers,
                            generator=torch.Generator().manual_seed(settings.seed))
        if len(loader) == 0:
            raise ValueError(f"batch_size={settings.batch_size} exceeds the dataset's {len(self.dataset)} frames")
        self.policy, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            policy, optimizer, loader, scheduler)
        self.ema = EMA(self.accelerator.unwrap_model(self.policy), settings.ema_decay)
        self.accelerator.register_for_checkpointing(self.ema)
        self.step = 0
        if self.resume_from is not None:
            self.accelerator.load_state(str(self.resume_from / "training_state"))
            self.step = json.loads((self.resume_from / "training_state" / "step.json").read_text())["step"]
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard")) if self.accelerator.is_main_process else None

    def run(self) -> Path | None:
        """Train to `settings.steps`; returns the last checkpoint directory."""
        s, acc = self.settings, self.accelerator
        progress = tqdm(total=s.steps, initial=self.step, desc="train", unit="step", disable=not acc.is_main_process)
        per_epoch = len(self.loader)
        while self.step < s.steps:
            epoch, done_in_epoch = divmod(self.step, per_epoch)
            self.loader.set_epoch(epoch)  # the same shuffled order as an uninterrupted run
            batches = acc.skip_first_batches(self.loader, done_in_epoch) if done_in_epoch else self.loader
            for batch in batches:
                loss, parts, grad_norm = self._train_step(batch)
                self.step += 1
                progress.update(1)
                if self.step % s.log_every == 0 or self.step == s.steps:
                    self._log(loss, parts, grad_norm, progress)
                evaluate_now = s.eval_every > 0 and (self.step % s.eval_every == 0 or self.step == s.steps)
                if evaluate_now or self.step % s.save_every == 0 or self.step == s.steps:
                    self.save()
                if evaluate_now:
                    self._evaluate()
                if self.step >= s.steps:
                    break
        progress.close()
        if self.writer:
            self.writer.close()
        return latest_checkpoint(self.run_dir)

    def _train_step(self, batch: dict) -> tuple[float, dict, float]:
        acc = self.accelerator
        batch = prepare_batch(batch, self.cameras, self.image_size, self.settings.shift_pixels, acc.device)
        with acc.autocast():
            loss, parts = self.policy(batch)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(self.policy.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(acc.unwrap_model(self.policy), self.step)
        return loss.item(), parts, float(grad_norm)

    def _log(self, loss: float, parts: dict, grad_norm: float, progress: tqdm) -> None:
        lr = self.scheduler.get_last_lr()[0]
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if self.writer:
            self.writer.add_scalar("train/loss", loss, self.step)
            for name, value in parts.items():
                self.writer.add_scalar(f"train/{name}", float(value), self.step)
            self.writer.add_scalar("train/lr", lr, self.step)
            self.writer.add_scalar("train/grad_norm", grad_norm, self.step)

    def save(self) -> Path:
        """Write checkpoints/step_N atomically and point `last` at it; keep the newest `keep_checkpoints`."""
        acc = self.accelerator
        root = self.run_dir / "checkpoints"
        final, tmp = root / f"step_{self.step:06d}", root / f"step_{self.step:06d}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "training_state"))
        acc.wait_for_everyone()  # every process has written its RNG state into tmp before it is renamed
        if acc.is_main_process:
            (tmp / "training_state" / "step.json").write_text(json.dumps({"step": self.step}))
            self.ema.model.save_pretrained(tmp / "pretrained")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            (root / f"{LAST}.tmp").write_text(final.name)
            (root / f"{LAST}.tmp").replace(root / LAST)
            for old in sorted(root.glob("step_??????"))[:-self.settings.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def _evaluate(self) -> None:
        if self.evaluate_fn is None or not self.accelerator.is_main_process:
            return
        checkpoint = latest_checkpoint(self.run_dir)  # saved at this step
        success = self.evaluate_fn(checkpoint / "pretrained", self.run_dir / "evals" / checkpoint.name)
        self.writer.add_scalar("eval/average_success", success, self.step)
