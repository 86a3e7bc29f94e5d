"""The shipped embedded policy (checkpoints/tabletop): it loads, fits the size budget, acts on the real env and
keeps the vla-eval contract (latency and actions per inference in the report)."""

import json

import numpy as np
import pytest
from test_evaluate import REPO, run_cli

from vla.policy.policy import CONFIG_FILE, WEIGHTS_FILE, VLAPolicy
from vla.sim.init_states import load_init_states
from vla.sim.tabletop_env import TabletopEnv
from vla.sim.tasks import get_task

CHECKPOINT = REPO / "checkpoints" / "tabletop"
MAX_BYTES = 30 * 2**20


@pytest.fixture(scope="module")
def policy(one_thread) -> VLAPolicy:
    return VLAPolicy.from_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def observation() -> dict:
    env = TabletopEnv(task="put_red_cube_in_bin")
    init_state = load_init_states("put_red_cube_in_bin")[0]
    obs, _ = env.reset(options={"task": "put_red_cube_in_bin", "init_state": init_state})
    env.close()
    return obs


def test_checkpoint_is_complete_and_small():
    sizes = {p.name: p.stat().st_size for p in CHECKPOINT.iterdir() if p.is_file()}
    assert {CONFIG_FILE, WEIGHTS_FILE, "normalization_stats.json", "report.json"} <= set(sizes)
    assert sum(sizes.values()) <= MAX_BYTES
    config = json.loads((CHECKPOINT / CONFIG_FILE).read_text())
    assert config["backbone"]["type"] == "tiny" and config["head"]["fusion"] == "gate"


def test_acts_on_the_env_with_a_chunk_inside_the_joint_range(policy, observation):
    policy.reset(0)
    actions, n_execute = policy.predict_chunk(observation)
    ex = policy.cfg.execution
    assert actions.shape == (policy.cfg.head.chunk, 8) and np.isfinite(actions).all()
    assert ex.min_execute <= n_execute <= ex.max_execute
    # A trained relative policy moves smoothly from where the arm is: 10 Hz steps far below a radian.
    steps = np.diff(np.concatenate([observation["observation.state"][None, :7], actions[:, :7]]), axis=0)
    assert np.abs(steps).max() < 0.3


def test_the_instruction_steers_the_chunk(policy, observation):
    """Same images, state and noise, another task's instruction: the language path reaches the actions."""
    def chunk(instruction: str) -> np.ndarray:
        policy.reset(0)
        return policy.predict_chunk({**observation, "task": instruction})[0]

    same = chunk(get_task("put_red_cube_in_bin").instructions[0])
    other = chunk(get_task("push_yellow_bar_to_pad").instructions[0])
    assert np.array_equal(same, chunk(get_task("put_red_cube_in_bin").instructions[0]))
    assert np.abs(same - other).max() > 1e-3


def test_eval_report_carries_latency_and_actions_per_inference(tmp_path):
    result = run_cli("vla-eval", f"policy={CHECKPOINT}", "env=tabletop", "tasks=put_red_cube_in_bin", "episodes=1",
                     "num_envs=1", "videos_per_task=0", f"out={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tasks"]["put_red_cube_in_bin"]["episodes"] == 1
    assert report["latency_ms"]["p50"] > 0
    min_execute = json.loads((CHECKPOINT / CONFIG_FILE).read_text())["execution"]["min_execute"]
    assert report["actions_per_inference"] >= min_execute
