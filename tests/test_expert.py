"""Scripted experts: success on fixed initial states, inside the arm's limits, robust to perturbations."""

import numpy as np
import pytest

from vla.sim.expert import LIMIT_FACTOR, ScriptedExpert
from vla.sim.init_states import load_init_states
from vla.sim.tabletop_env import Perturbation, TabletopEnv
from vla.sim.tasks import TASKS


def rollout(env, expert, init_state, seed=0):
    obs, info = env.reset(seed=seed, options={"init_state": init_state})
    expert.reset(seed)
    actions, qvel = [], []
    done = False
    while not done:
        chunk, n = expert.predict_chunk({**obs, "privileged": info["privileged"], "task_name": info["task_name"]})
        assert chunk.shape == (1, 8) and n == 1 and chunk.dtype == np.float32
        actions.append(chunk[0])
        obs, _, terminated, truncated, info = env.step(chunk[0])
        qvel.append(env.data.qvel[env.model.joint("joint1").dofadr[0] :][:7].copy())
        done = terminated or truncated
    return info, np.array(actions), np.array(qvel)


@pytest.fixture(scope="module")
def expert():
    return ScriptedExpert()


@pytest.mark.parametrize("task", list(TASKS))
def test_expert_succeeds_inside_limits(task, expert):
    env = TabletopEnv(task=task, render_images=False)
    limits = env.limits
    for index in (0, 1):
        info, actions, qvel = rollout(env, expert, load_init_states(task)[index], seed=index)
        assert info["success"], f"{task} init state {index} failed"
        q = actions[:, :7]
        assert np.all(q >= limits.position_lower) and np.all(q <= limits.position_upper)
        q = np.vstack([load_init_states(task)[index][:7], q])  # from the start pose
        velocity = np.diff(q, axis=0) / env.control_dt
        acceleration = np.diff(velocity, axis=0) / env.control_dt
        assert np.all(np.abs(velocity) <= LIMIT_FACTOR * limits.velocity * (1 + 1e-4))
        assert np.all(np.abs(acceleration) <= LIMIT_FACTOR * limits.acceleration * (1 + 1e-4))
        assert np.all(np.abs(qvel) <= limits.velocity), "the simulated arm moved faster than its limit"


def test_expert_demos_differ_between_seeds(expert):
    env = TabletopEnv(task="put_red_cube_in_bin", render_images=False)
    state = load_init_states("put_red_cube_in_bin")[0]
    _, a, _ = rollout(env, expert, state, seed=1)
    _, b, _ = rollout(env, expert, state, seed=2)
    assert len(a) != len(b) or not np.allclose(a, b)


def test_expert_recovers_when_the_object_is_moved(expert):
    env = TabletopEnv(task="put_red_cube_in_bin", render_images=False, perturbation=Perturbation("move", step=12))
    state = load_init_states("put_red_cube_in_bin")[0]
    obs, info = env.reset(seed=0, options={"init_state": state})
    before = env.object_pose("red_cube")[:2]
    info, _, _ = rollout(env, expert, state)
    assert info["success"]
    assert np.linalg.norm(before - state[7:9]) < 0.01


def test_drop_perturbation_counts_a_lost_grasp(expert):
    env = TabletopEnv(task="put_green_cube_on_plate", render_images=False, perturbation=Perturbation("drop", step=0))
    info, _, _ = rollout(env, expert, load_init_states("put_green_cube_on_plate")[0])
    assert info["grasp_lost"] >= 1
