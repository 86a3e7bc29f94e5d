"""The tabletop suite: every task's spaces, determinism, success predicates and perturbations."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from vla.sim import TABLETOP_ENV_ID, scene
from vla.sim.init_states import generate_init_states, load_init_states
from vla.sim.tabletop_env import TabletopEnv
from vla.sim.tasks import FAMILIES, TASKS, SceneView, get_task, is_success, resolve_tasks


@pytest.fixture(scope="module")
def env():
    env = TabletopEnv(image_size=64)
    yield env
    env.close()


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_passes_gymnasium_checker_and_is_finite(task):
    env = gym.make(TABLETOP_ENV_ID, task=task, image_size=32)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=1)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())  # arbitrary jumps across the joint ranges
    assert env.unwrapped.data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number == 0, "the simulation went unstable"

    assert obs["observation.state"].dtype == np.float32 and obs["observation.state"].shape == (8,)
    assert np.all(np.isfinite(obs["observation.state"]))
    for camera in ("front", "wrist"):
        image = obs[f"observation.images.{camera}"]
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        assert image.std() > 5, f"{camera} image of {task} is blank"
    assert obs["task"] in get_task(task).instructions
    env.close()


def test_task_suite_shape():
    assert len(TASKS) >= 10
    assert {t.family for t in TASKS.values()} == set(FAMILIES) and len(FAMILIES) >= 3
    for task in TASKS.values():
        assert len(task.train_instructions) >= 3
        assert task.held_out_instruction not in task.train_instructions


def test_resets_are_deterministic(env):
    obs_a, _ = env.reset(seed=7)
    state_a = env.init_state_vector()
    obs_b, _ = env.reset(seed=7)
    assert np.array_equal(state_a, env.init_state_vector())
    assert np.array_equal(obs_a["observation.images.front"], obs_b["observation.images.front"])
    env.reset(seed=8)
    assert not np.allclose(state_a, env.init_state_vector())


def test_stored_init_states_regenerate_identically():
    fresh = generate_init_states()
    for task in TASKS:
        stored = load_init_states(task)
        assert stored.shape == (50, 7 + 7 * len(scene.OBJECT_NAMES))
        np.testing.assert_array_equal(stored, fresh[task])


def test_reset_from_stored_init_state_places_objects(env):
    state = load_init_states("put_red_cube_in_bin")[3]
    env.reset(options={"task": "put_red_cube_in_bin", "init_state": state})
    red = env.object_pose("red_cube")
    stored_red = state[7:14]
    assert np.linalg.norm(red[:2] - stored_red[:2]) < 0.005  # settled where it was placed


def _view(**overrides):
    positions = {name: np.array([0.35 + 0.05 * i, 0.0, spec.half_height])
                 for i, (name, spec) in enumerate(scene.OBJECTS_BY_NAME.items())}
    grasped = overrides.pop("grasped", None)
    positions.update({k: np.asarray(v, dtype=float) for k, v in overrides.items()})
    return SceneView(positions=positions, up_z={n: 1.0 for n in positions}, grasped=grasped)


def test_success_predicates_on_hand_built_states():
    in_bin = [*scene.BIN_CENTER, 0.03]
    assert is_success(get_task("put_red_cube_in_bin"), _view(red_cube=in_bin))
    assert not is_success(get_task("put_red_cube_in_bin"), _view(red_cube=in_bin, grasped="red_cube"))
    assert not is_success(get_task("put_red_cube_in_bin"), _view(red_cube=[*scene.BIN_CENTER + 0.1, 0.02]))
    assert not is_success(get_task("put_red_cube_in_bin"), _view(red_cube=[*scene.BIN_CENTER, 0.2]))  # above it

    on_plate = [*scene.PLATE_CENTER, 2 * scene.PLATE_HALF_HEIGHT + 0.017]
    assert is_success(get_task("put_yellow_bar_on_plate"), _view(yellow_bar=on_plate))
    assert not is_success(get_task("put_yellow_bar_on_plate"), _view(yellow_bar=[*scene.PLATE_CENTER, 0.1]))

    stack = get_task("stack_red_cube_on_green_cube")
    green = np.array([0.5, 0.1, 0.02])
    assert is_success(stack, _view(green_cube=green, red_cube=green + [0.005, 0, 0.04]))
    assert not is_success(stack, _view(green_cube=green, red_cube=green + [0.03, 0, 0.04]))  # off centre
    assert not is_success(stack, _view(green_cube=green, red_cube=green + [0, 0, 0.04], grasped="red_cube"))
    lifted = green + [0, 0, 0.05]
    assert not is_success(stack, _view(green_cube=lifted, red_cube=lifted + [0, 0, 0.04]))

    push = get_task("push_red_cube_to_pad")
    assert is_success(push, _view(red_cube=[*scene.PAD_CENTER, 0.02]))
    assert not is_success(push, _view(red_cube=[*scene.PAD_CENTER, 0.08]))  # carried, not pushed
    assert not is_success(push, _view(red_cube=[*scene.PAD_CENTER - [0.1, 0], 0.02]))


def test_env_reports_success_from_simulator_state(env):
    env.reset(seed=0, options={"task": "put_purple_ball_in_bin"})
    adr = env.model.joint("purple_ball").qposadr[0]
    env.data.qpos[adr : adr + 3] = [*scene.BIN_CENTER, 0.05]
    _, reward, terminated, _, info = env.step(np.append(env.limits.home, 1.0))
    assert terminated and info["success"] and reward == 1.0


def test_bad_task_names_say_what_was_meant():
    with pytest.raises(KeyError, match="Did you mean 'put_red_cube_in_bin'"):
        get_task("put_red_cub_in_bin")
    assert len(resolve_tasks("stack")) == 3
    assert [t.name for t in resolve_tasks("push_red_cube_to_pad,put_red_cube_in_bin")] == [
        "push_red_cube_to_pad", "put_red_cube_in_bin"]


def test_bad_actions_are_rejected(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full(8, np.nan))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(7))
    _, _, _, _, info = env.step(np.full(8, 100.0))
    assert info["action_clipped"]
