"""LIBERO data: expert episodes through vla-record, and training from a LeRobot-format LIBERO dataset recorded
elsewhere (the public datasets' schema: cameras `image` / `wrist_image`, 8-D state, 7-D delta actions, 10 fps)."""

import json
from pathlib import Path

import numpy as np
import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from test_evaluate import run_cli
from test_training import TINY_POLICY, vla_train

from vla.data.record import episode_seed, record_expert
from vla.data.training_set import ChunkDataset
from vla.policy.normalize import STATS_FILE
from vla.policy.policy import VLAPolicy
from vla.sim import libero_env
from vla.sim.libero_env import ACTION_DIM, STATE_DIM, LiberoEnv, suite_tasks

SUITE = "libero_spatial"
CHUNK, SIZE = 8, 32  # TINY_POLICY's chunk and image size
LIBERO_CAMERAS = ("agentview", "wrist")
CAMERA_MAP = {"image": "agentview", "wrist_image": "wrist", "image2": "wrist"}  # conf/env/libero_*.yaml
PUBLIC_FEATURES = {  # the public LIBERO datasets in LeRobot format, at 32 px
    "observation.images.image": {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "rgb"]},
    "observation.images.wrist_image": {"dtype": "video", "shape": (SIZE, SIZE, 3),
                                       "names": ["height", "width", "rgb"]},
    "observation.state": {"dtype": "float32", "shape": (8,),
                          "names": {"motors": ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"]}},
    "action": {"dtype": "float32", "shape": (7,),
               "names": {"motors": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]}},
}
COLOURS = {"image": (220, 40, 40), "wrist_image": (40, 40, 220)}  # tells the cameras apart after decoding


def write_public_dataset(root: Path, image_dtype: str = "video") -> Path:
    """2 episodes (12 and 9 frames) written with lerobot's own writer and default encoder, fps 10; `image_dtype`
    "image" stores the frames inside the parquet files, as physical-intelligence/libero does."""
    features = {key: {**ft, "dtype": image_dtype} if key.startswith("observation.images.") else ft
                for key, ft in PUBLIC_FEATURES.items()}
    dataset = LeRobotDataset.create(f"local/{root.name}", 10, features, root=root, robot_type="panda",
                                    video_backend="pyav")
    rng = np.random.default_rng(0)
    for episode, length in enumerate((12, 9)):
        for i in range(length):
            frame = {f"observation.images.{cam}": np.full((SIZE, SIZE, 3), colour, np.uint8) + np.uint8(i)
                     for cam, colour in COLOURS.items()}
            # States sit far from zero (an eef around 0.5 m): absolute and state-relative action stats differ.
            frame["observation.state"] = (0.5 + 0.1 * rng.normal(size=8)).astype(np.float32)
            frame["action"] = rng.uniform(-1, 1, size=7).astype(np.float32)
            frame["task"] = f"put the bowl on the plate {episode}"
            dataset.add_frame(frame)
        dataset.save_episode(parallel_encoding=False)
    dataset.finalize()
    return root


@pytest.fixture(scope="module")
def public_root(tmp_path_factory) -> Path:
    return write_public_dataset(tmp_path_factory.mktemp("libero_public") / "libero_spatial_no_noops")


@pytest.fixture(scope="module")
def public_chunks(public_root) -> ChunkDataset:
    return ChunkDataset(public_root, CHUNK, LIBERO_CAMERAS, SIZE, camera_map=CAMERA_MAP, state_dim=STATE_DIM,
                        action_dim=ACTION_DIM)


# ------------------------------------------------------------------------------------------------ vla-record
def test_sampled_initial_states_are_not_the_evaluation_states():
    """Demonstrations start from scenes LIBERO samples for their seed, never from the stored evaluation states."""
    env = LiberoEnv(SUITE, image_size=16, num_wait_steps=0, render_images=False)
    try:
        sampled = []
        for seed in (1, 2):
            env.reset(seed=seed, options={"sample_init": True})
            sampled.append(env.sim_state()[1:])  # without the time
    finally:
        env.close()
    stored = libero_env.load_libero_init_states(SUITE, env.task.name)[:, 1:]
    assert np.abs(sampled[0] - sampled[1]).max() > 1e-3
    for state in sampled:
        assert np.abs(stored - state).max(axis=1).min() > 1e-3


def test_record_cli_writes_a_libero_episode(tmp_path):
    task = next(iter(suite_tasks(SUITE).values()))
    root = tmp_path / "demos"
    # 12 steps: the expert cannot finish, so the episode is kept as a failure (keep_failed) after one attempt.
    result = run_cli("vla-record", "source=expert", f"env={SUITE}", f"task={task.name}", "episodes=1",
                     "keep_failed=true", "max_attempts_factor=1", "env.max_steps=12", "env.num_wait_steps=2",
                     f"env.image_size={SIZE}", f"root={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{task.name} kept    1 of    1 attempts" in result.stdout

    dataset = LeRobotDataset(f"local/{root.name}", root=root)
    assert (dataset.meta.fps, dataset.meta.robot_type, dataset.num_episodes, dataset.num_frames) == \
        (libero_env.CONTROL_HZ, "panda", 1, 12)
    features = dataset.meta.features
    assert dataset.meta.video_keys == [f"observation.images.{c}" for c in LIBERO_CAMERAS]
    for cam in LIBERO_CAMERAS:
        assert tuple(features[f"observation.images.{cam}"]["shape"]) == (SIZE, SIZE, 3)
    assert tuple(features["observation.state"]["shape"]) == (STATE_DIM,)
    assert features["observation.state"]["names"] == list(libero_env.STATE_NAMES)
    assert tuple(features["action"]["shape"]) == (ACTION_DIM,)
    assert features["action"]["names"] == list(libero_env.ACTION_NAMES)
    frame = dataset[5]
    assert frame["observation.images.agentview"].shape == (3, SIZE, SIZE)
    assert frame["observation.state"].shape == (STATE_DIM,) and frame["action"].shape == (ACTION_DIM,)
    assert frame["task"] == task.language
    assert float(frame["action"][-1]) == -1.0  # the gripper stays open while the expert approaches
    assert int(frame["episode.seed"]) == episode_seed(0, task, 0, tuple(suite_tasks(SUITE)))
    assert not bool(frame["episode.success"])


@pytest.mark.parametrize(("args", "named"), [
    (["instruction=held_out"], "one instruction each"),
    (["source=keyboard"], "source=expert"),
])
def test_record_cli_libero_errors(args, named, tmp_path):
    result = run_cli("vla-record", "source=expert", f"env={SUITE}", *args, f"root={tmp_path / 'demos'}")
    assert result.returncode != 0
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demos").exists()


def test_record_refuses_what_the_expert_or_libero_cannot_do(tmp_path):
    task = next(iter(suite_tasks(SUITE).values()))
    with pytest.raises(ValueError, match="seed: session seed 5000 gives episode seeds up to"):
        record_expert([task], 1, tmp_path / "demos", {"suite": SUITE, "image_size": SIZE}, session_seed=5000)
    goal = next(iter(suite_tasks("libero_goal").values()))
    with pytest.raises(ValueError, match="covers libero_spatial, libero_object"):
        record_expert([goal], 1, tmp_path / "demos", {"suite": "libero_goal", "image_size": SIZE})
    assert not (tmp_path / "demos").exists()


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("image_dtype", ["video", "image"])
def test_public_schema_maps_onto_the_env(image_dtype, public_chunks, public_root, tmp_path):
    if image_dtype == "video":
        root, chunks = public_root, public_chunks
    else:
        root = write_public_dataset(tmp_path / "libero_spatial_images", "image")
        chunks = ChunkDataset(root, CHUNK, LIBERO_CAMERAS, SIZE, camera_map=CAMERA_MAP, state_dim=STATE_DIM,
                              action_dim=ACTION_DIM)
    reference = LeRobotDataset(f"local/{root.name}", root=root)
    assert bool(reference.meta.video_keys) == (image_dtype == "video")
    assert chunks.sources == {"agentview": "image", "wrist": "wrist_image"}
    batch = chunks.__getitems__([0, 11, 12, 20])
    assert set(batch) == {"observation.images.agentview", "observation.images.wrist", "observation.state", "action",
                          "action_is_pad", "task"}
    for cam, source in chunks.sources.items():
        images = batch[f"observation.images.{cam}"]
        assert images.shape == (4, 3, SIZE, SIZE)
        expected = np.array(COLOURS[source])[None, :, None, None] + np.array([0, 11, 0, 8])[:, None, None, None]
        assert np.abs(images.numpy().astype(int) - expected).mean() < 4, cam  # that camera's frames, in order
    assert batch["observation.state"].shape == (4, STATE_DIM)
    assert batch["action"].shape == (4, CHUNK, ACTION_DIM)
    np.testing.assert_array_equal(batch["action"][2].numpy()[0], reference[12]["action"].numpy())

    table = reference.hf_dataset.with_format("numpy")
    state, action = np.stack(table["observation.state"]), np.stack(table["action"])
    windows = np.concatenate([action[[min(i + k, end - 1) for k in range(CHUNK)]]
                              for start, end in ((0, 12), (12, 21)) for i in range(start, end)])  # (F * H, 7)
    stats = chunks.normalization_stats(relative_actions=False)
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), atol=1e-5)
    np.testing.assert_allclose(stats["action"]["mean"], windows.mean(0), atol=1e-5)  # absolute, 7 dims
    np.testing.assert_allclose(stats["action"]["std"], windows.std(0), atol=1e-5)


def test_layout_mismatches_name_the_key_and_the_file(public_root):
    info = str(public_root / "meta" / "info.json")
    with pytest.raises(ValueError, match="policy.head.action_dim=8") as err:
        ChunkDataset(public_root, CHUNK, LIBERO_CAMERAS, SIZE, camera_map=CAMERA_MAP, action_dim=8)
    assert info in str(err.value)
    with pytest.raises(ValueError, match="policy.head.state_dim=9"):
        ChunkDataset(public_root, CHUNK, LIBERO_CAMERAS, SIZE, camera_map=CAMERA_MAP, state_dim=9)
    with pytest.raises(KeyError, match="policy camera 'agentview'.*none of the camera features") as err:
        ChunkDataset(public_root, CHUNK, LIBERO_CAMERAS, SIZE)  # no camera map
    assert info in str(err.value) and "env.dataset_cameras" in str(err.value)
    with pytest.raises(KeyError, match="policy camera 'wrist'.*several"):
        ChunkDataset(public_root, CHUNK, ("wrist",), SIZE, camera_map={"image": "wrist", "wrist_image": "wrist"})


def test_train_cli_on_a_public_schema_dataset(public_root, public_chunks, tmp_path):
    out = tmp_path / "run"
    result = vla_train(f"dataset.root={public_root}", f"env={SUITE}", f"out={out}", "steps=2", "batch_size=4",
                       "save_every=2", *TINY_POLICY)
    assert result.returncode == 0, result.stderr[-3000:]
    pretrained = out / "checkpoints" / "step_000002" / "pretrained"
    config = json.loads((pretrained / "config.json").read_text())
    assert config["backbone"]["cameras"] == list(LIBERO_CAMERAS)
    assert (config["head"]["state_dim"], config["head"]["action_dim"]) == (STATE_DIM, ACTION_DIM)
    assert config["relative_actions"] is False
    assert config["env_state_dim"] == 0  # no object positions in a public dataset: no probe
    stats = json.loads((pretrained / STATS_FILE).read_text())
    expected = public_chunks.normalization_stats(relative_actions=False)
    for key in expected:
        np.testing.assert_allclose(stats[key]["mean"], expected[key]["mean"], atol=1e-5)

    policy = VLAPolicy.from_pretrained(pretrained)
    env = LiberoEnv(SUITE, image_size=128)  # its observation space; no LIBERO model is built
    obs = env.observation_space.sample()
    obs["task"] = env.task.language
    policy.reset(0)
    actions, n_execute = policy.predict_chunk(obs)
    assert actions.shape == (CHUNK, ACTION_DIM) and np.isfinite(actions).all() and 1 <= n_execute <= CHUNK


def test_train_cli_names_a_layout_mismatch(public_root, tmp_path):
    """The tabletop's layout (the default env) on a LIBERO dataset: one line naming the camera and the file."""
    result = vla_train(f"dataset.root={public_root}", f"out={tmp_path / 'run'}", "steps=2", *TINY_POLICY)
    assert result.returncode == 2
    assert "policy camera 'front'" in result.stderr and str(public_root / "meta" / "info.json") in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_cli_evaluates_periodically_on_the_libero_suite(public_root, tmp_path):
    out = tmp_path / "run"
    result = vla_train(f"dataset.root={public_root}", f"env={SUITE}", f"out={out}", "steps=2", "batch_size=4",
                       "save_every=2", "eval_every=2", "eval_episodes=1", "env.max_steps=3", "env.num_wait_steps=1",
                       f"env.image_size={SIZE}", *TINY_POLICY, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "evals" / "step_000002" / "report.json").read_text())
    assert report["env"] == SUITE and set(report["tasks"]) == set(suite_tasks(SUITE))
    assert all(task["episodes"] == 1 for task in report["tasks"].values())
