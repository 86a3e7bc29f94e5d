"""Training: ChunkDataset against lerobot's own loader, and vla-train end to end (CLI, resume, 2 processes, errors).

One tiny dataset (one expert episode of each of two tasks, 64 px) is recorded once for the module; every run shares
its decoded-frame cache (<root>/.cache/vla), built by the `chunks` fixture.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from safetensors.torch import load_file
from test_evaluate import REPO, run_cli

import vla.data.training_set as training_set
from vla.data.training_set import ChunkDataset, ChunkDatasets, open_chunk_datasets
from vla.policy.normalize import STATS_FILE
from vla.policy.policy import VLAPolicy, resize_images

CHUNK, SIZE, CAMERAS = 8, 32, ("front", "wrist")
TINY_POLICY = [
    "policy.backbone.width=32", "policy.backbone.vit_depth=1", "policy.backbone.fusion_depth=1",
    "policy.backbone.heads=2", f"policy.backbone.image_size={SIZE}", "policy.backbone.patch=8",
    "policy.backbone.max_text_tokens=8", "policy.head.width=32", "policy.head.depth=2", "policy.head.heads=2",
    f"policy.head.chunk={CHUNK}", "policy.head.horizons=[2,4,6,8]", "policy.sampler.steps=3",
    "policy.execution.min_execute=2", "policy.execution.max_execute=6", "policy.execution.fixed=4",
]
# warmup_steps >= steps: the learning rate is the linear warmup throughout, so it does not depend on `steps` and a
# 2-step run resumed to 4 steps must retrace a straight 4-step run exactly.
TRAIN_ARGS = ["save_every=2", "batch_size=4", "log_every=1", "warmup_steps=10", "keep_checkpoints=3", *TINY_POLICY]


def vla_train(*args: str, launcher: list[str] | None = None, extra_env: dict | None = None,
              timeout: int = 300) -> subprocess.CompletedProcess:
    """vla-train in a subprocess, one intra-op thread (tiny tensors; the machine has 2 busy cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    command = launcher or [str(Path(sys.executable).parent / "vla-train")]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def lerobot_windows(root: Path) -> LeRobotDataset:
    fps = json.loads((root / "meta" / "info.json").read_text())["fps"]
    return LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps={"action": [k / fps for k in range(CHUNK)]})


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return scalars


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "demos"
    result = run_cli("vla-record", "source=expert", "task=[put_red_cube_in_bin,push_red_cube_to_pad]", "episodes=1",
                     f"root={root}", "env.image_size=64")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def chunks(dataset_root) -> ChunkDataset:
    return ChunkDataset(dataset_root, CHUNK, CAMERAS, SIZE)


@pytest.fixture(scope="module")
def reference(dataset_root) -> LeRobotDataset:
    return lerobot_windows(dataset_root)


@pytest.fixture(scope="module")
def straight_run(dataset_root, chunks, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    result = vla_train(f"dataset.root={dataset_root}", f"out={out}", "steps=4", *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def episode_bounds(dataset: LeRobotDataset) -> list[tuple[int, int]]:
    episodes = dataset.meta.episodes
    return list(zip(episodes["dataset_from_index"], episodes["dataset_to_index"], strict=True))


# ------------------------------------------------------------------------------------------------ ChunkDataset
def test_action_windows_match_lerobot_delta_timestamps(chunks, reference):
    bounds = episode_bounds(reference)
    assert len(bounds) == 2 and len(chunks) == len(reference) == bounds[-1][1]
    indices = {0, 1}
    for start, end in bounds:  # each episode's first frames and the last CHUNK + 1, where padding starts
        indices |= {start, start + 1, *range(end - CHUNK - 1, end)}
    indices = sorted(indices)
    batch = chunks.__getitems__(indices)
    for row, i in enumerate(indices):
        expected = reference[i]
        np.testing.assert_array_equal(batch["action"][row].numpy(), expected["action"].numpy(), err_msg=f"frame {i}")
        np.testing.assert_array_equal(batch["action_is_pad"][row].numpy(), expected["action_is_pad"].numpy(),
                                      err_msg=f"frame {i}")
        np.testing.assert_array_equal(batch["observation.state"][row].numpy(), expected["observation.state"].numpy())
        assert batch["task"][row] == expected["task"]
    last = indices.index(bounds[0][1] - 1)  # the last frame of episode 0: only its own action is real
    assert batch["action_is_pad"][last].tolist() == [False] + [True] * (CHUNK - 1)
    assert (batch["action"][last] == batch["action"][last][0]).all()  # padded steps hold the last action
    assert not batch["action_is_pad"][indices.index(0)].any()


def test_images_are_the_decoded_video_frames_resized(chunks, reference):
    bounds = episode_bounds(reference)
    indices = [0, 17, bounds[0][1] - 1, bounds[1][0], bounds[1][1] - 1]
    batch = chunks.__getitems__(indices)
    for cam in CAMERAS:
        key = f"observation.images.{cam}"
        images = batch[key]
        assert images.dtype == torch.uint8 and images.shape == (len(indices), 3, SIZE, SIZE)
        for row, i in enumerate(indices):
            frame = (reference[i][key] * 255).round().to(torch.uint8)  # (3, 64, 64) float in [0, 1] -> uint8
            expected = resize_images(frame.permute(1, 2, 0)[None], SIZE)[0].int()
            diff = (images[row].int() - expected).abs()
            assert diff.max() <= 2 and diff.float().mean() < 0.5, (cam, i, diff.max())
        # the comparison can tell frames apart: the first frames of the two episodes differ
        assert (images[0].int() - images[3].int()).abs().float().mean() > 2
    # the requested order is kept (the cache is read in sorted order)
    shuffled = chunks.__getitems__(indices[::-1])
    for key in [f"observation.images.{c}" for c in CAMERAS] + ["observation.state", "action"]:
        torch.testing.assert_close(shuffled[key], batch[key].flip(0))


def test_frame_cache_resumes_an_interrupted_decode(chunks, dataset_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(dataset_root / ".cache" / "vla", cache)
    (start, end), _ = episode_bounds(chunks.lerobot)
    for cam in CAMERAS:  # as if the decode had been killed before episode 0 was marked done
        done_file = next(cache.glob(f"{cam}_{SIZE}px_*frames.done.json"))
        assert json.loads(done_file.read_text()) == [0, 1]
        done_file.write_text(json.dumps([1]))
        frames = np.load(next(cache.glob(f"{cam}_{SIZE}px_*frames.npy")), mmap_mode="r+")
        frames[start:end] = 0
        frames.flush()
        del frames

    decoded = []
    real_decode = training_set.decode_video_frames

    def counting_decode(video, timestamps, *args, **kwargs):
        decoded.append((Path(video).name, len(timestamps)))
        return real_decode(video, timestamps, *args, **kwargs)

    monkeypatch.setattr(training_set, "decode_video_frames", counting_decode)
    resumed = ChunkDataset(dataset_root, CHUNK, CAMERAS, SIZE, cache_dir=cache)
    assert [n for _, n in decoded] == [end - start] * len(CAMERAS)  # only the unfinished episode, per camera
    for cam in CAMERAS:
        np.testing.assert_array_equal(np.asarray(resumed.images[cam]), np.asarray(chunks.images[cam]))
        assert json.loads(next(cache.glob(f"{cam}_{SIZE}px_*frames.done.json")).read_text()) == [0, 1]
    decoded.clear()
    ChunkDataset(dataset_root, CHUNK, CAMERAS, SIZE, cache_dir=cache)
    assert decoded == []  # a complete cache decodes nothing


def test_normalization_stats_of_relative_actions(chunks, reference):
    table = reference.hf_dataset.with_format("numpy")
    state = np.stack(table["observation.state"]).astype(np.float64)
    action = np.stack(table["action"]).astype(np.float64)
    relative, absolute = [], []
    for start, end in episode_bounds(reference):
        for i in range(start, end):
            window = action[[min(i + k, end - 1) for k in range(CHUNK)]]  # (H, A), the last action repeated
            absolute.append(window)
            offsets = window.copy()
            offsets[:, :-1] -= state[i, :-1]  # arm joints relative to the state; the gripper stays absolute
            relative.append(offsets)
    relative, absolute = np.concatenate(relative), np.concatenate(absolute)

    stats = chunks.normalization_stats(relative_actions=True)
    assert set(stats) == {"observation.state", "action", "observation.environment_state"}  # the probe's target too
    env_state = np.stack(table["observation.environment_state"]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.environment_state"]["mean"], env_state.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["observation.environment_state"]["std"], env_state.std(0), atol=1e-5)
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), atol=1e-5)
    np.testing.assert_allclose(stats["action"]["mean"], relative.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], relative.std(0), atol=1e-5)
    plain = chunks.normalization_stats(relative_actions=False)
    np.testing.assert_allclose(plain["action"]["mean"], absolute.mean(0), atol=1e-5)
    np.testing.assert_allclose(plain["action"]["std"], absolute.std(0), atol=1e-5)
    assert np.abs(relative.mean(0)[:-1] - absolute.mean(0)[:-1]).max() > 1e-2  # the two really differ


def test_several_datasets_train_as_one(chunks, dataset_root, tmp_path):
    copy = tmp_path / "second"
    shutil.copytree(dataset_root, copy, ignore=shutil.ignore_patterns(".cache"))
    both = open_chunk_datasets([str(dataset_root), str(copy)], tmp_path / "cache", chunk=CHUNK, cameras=CAMERAS,
                               image_size=SIZE)
    assert isinstance(both, ChunkDatasets) and len(both) == 2 * len(chunks)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["0_demos", "1_second"]
    n = len(chunks)
    picked = [n + 3, 1, n - 1, n, 5]  # across both parts, out of order
    batch, expected = both.__getitems__(picked), chunks.__getitems__([i % n for i in picked])
    assert set(batch) == set(expected) and batch["task"] == expected["task"]
    for key in expected:
        if key != "task":
            assert torch.equal(batch[key], expected[key]), key
    stats, single = both.normalization_stats(True), chunks.normalization_stats(True)  # the same frames twice
    for key in single:
        np.testing.assert_allclose(stats[key]["mean"], single[key]["mean"], atol=1e-6)
        np.testing.assert_allclose(stats[key]["std"], single[key]["std"], atol=1e-6)


# ------------------------------------------------------------------------------------------------ vla-train
def test_train_cli_writes_checkpoints_a_loadable_policy_and_tensorboard(straight_run, chunks):
    checkpoints = straight_run / "checkpoints"
    assert (checkpoints / "last").read_text().strip() == "step_000004"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step_000002", "step_000004"]  # no *.tmp left
    pretrained = checkpoints / "step_000004" / "pretrained"
    config = json.loads((pretrained / "config.json").read_text())
    assert config["head"]["width"] == 32  # the overrides arrived
    # policy=tiny trained its environment-state probe (train/env_state below); the checkpoint leaves it out
    assert config["env_state_weight"] == 0.5 and config["env_state_dim"] == 0
    assert not [k for k in load_file(pretrained / "model.safetensors") if k.startswith("env_state_probe.")]
    stats = json.loads((pretrained / STATS_FILE).read_text())
    expected = chunks.normalization_stats(relative_actions=True)
    for key in expected:
        np.testing.assert_allclose(stats[key]["mean"], expected[key]["mean"], atol=1e-5)

    policy = VLAPolicy.from_pretrained(pretrained)
    batch = chunks[0]
    obs = {f"observation.images.{c}": batch[f"observation.images.{c}"].permute(1, 2, 0).numpy() for c in CAMERAS}
    obs.update({"observation.state": batch["observation.state"].numpy(), "task": batch["task"]})
    policy.reset(0)
    actions, n_execute = policy.predict_chunk(obs)
    assert actions.shape == (CHUNK, 8) and np.isfinite(actions).all() and 2 <= n_execute <= 6

    scalars = read_scalars(straight_run)
    for tag in ("train/loss", "train/fused", "train/branches", "train/balance", "train/env_state", "train/lr",
                "train/grad_norm"):
        assert sorted(scalars[tag]) == [1, 2, 3, 4], tag
    assert all(np.isfinite(v) for v in scalars["train/loss"].values())
    assert scalars["train/lr"][4] > scalars["train/lr"][1] > 0  # still warming up


def test_resumed_run_retraces_the_straight_run(straight_run, dataset_root, tmp_path):
    """2 steps, then resume=true to 4, in another run dir: bit-identical to 4 steps straight (same data order, same
    noise: the RNG states come back from the checkpoint, and nothing may draw from them on the way)."""
    out = tmp_path / "resumed"
    first = vla_train(f"dataset.root={dataset_root}", f"out={out}", "steps=2", *TRAIN_ARGS)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoints" / "last").read_text().strip() == "step_000002"
    second = vla_train(f"dataset.root={dataset_root}", f"out={out}", "steps=4", "resume=true", *TRAIN_ARGS)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (out / "checkpoints" / "last").read_text().strip() == "step_000004"

    straight, resumed = read_scalars(straight_run)["train/loss"], read_scalars(out)["train/loss"]
    assert resumed == straight  # steps 1-2 from the first run, 3-4 from the resumed one
    for part in ("pretrained/model.safetensors", "training_state/model.safetensors"):  # EMA and live weights
        expected = load_file(straight_run / "checkpoints" / "step_000004" / part)
        actual = load_file(out / "checkpoints" / "step_000004" / part)
        assert expected.keys() == actual.keys()
        changed = [k for k in expected if not torch.equal(expected[k], actual[k])]
        assert not changed, f"{part}: {changed[:5]}"
    step2, step4 = (load_file(straight_run / "checkpoints" / step / "pretrained" / "model.safetensors")
                    for step in ("step_000002", "step_000004"))
    assert any(not torch.equal(step2[k], step4[k]) for k in step2)  # steps 3-4 did change the weights


SLOW_RANK = """\
# vla-train with every process but the main one slow to save its state (a busy machine, a slower disk)
import runpy
import time

from accelerate import Accelerator

_save_state = Accelerator.save_state


def save_state(self, *args, **kwargs):
    if not self.is_main_process:
        time.sleep(2)
    return _save_state(self, *args, **kwargs)


Accelerator.save_state = save_state
runpy.run_module("vla.cli.train", run_name="__main__")
"""


def test_two_process_run_through_accelerate(dataset_root, chunks, tmp_path):
    """Two CPU processes (gloo) through `accelerate launch`. `--cpu --num_processes 2` alone starts ONE process
    (accelerate's simple launcher); `--multi_gpu` with ACCELERATE_USE_CPU=1 starts two on the CPU."""
    script = tmp_path / "slow_rank_train.py"
    script.write_text(SLOW_RANK)
    out = tmp_path / "ddp"
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    result = vla_train(f"dataset.root={dataset_root}", f"out={out}", "steps=2", *TRAIN_ARGS, launcher=launcher,
                       extra_env={"ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step_000002"]  # written once, no *.tmp
    state = checkpoints / "step_000002" / "training_state"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()  # both ranks
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # the main process logs
    assert result.stdout.count("trained 2 steps") == 1
    VLAPolicy.from_pretrained(checkpoints / "step_000002" / "pretrained")


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_dataset_is_named(tmp_path):
    result = vla_train("dataset.root=/nonexistent", f"out={tmp_path / 'run'}", *TINY_POLICY)
    assert result.returncode == 2
    assert "dataset.root" in result.stderr and "/nonexistent" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_policy_key_is_named(tmp_path):
    """Hydra refuses a key the policy group does not have (`+policy.head.widht=3` would get past it to
    VLAPolicyConfig.from_dict, whose message test_policy.py checks; not repeated here: 15 s of imports)."""
    result = vla_train(f"dataset.root={tmp_path}", f"out={tmp_path / 'run'}", "policy.head.widht=3")
    assert result.returncode != 0
    assert "policy.head.widht" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
