"""vla-eval: the command-line contract, the report, and errors that name what was wrong."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vla.sim.report import summarize, wilson_interval
from vla.sim.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
VLA_EVAL = Path(sys.executable).parent / "vla-eval"


def run_cli(tool: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([str(Path(sys.executable).parent / tool), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_wilson_interval():
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.92 < low < 0.94
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.27 < high < 0.29
    low, high = wilson_interval(5, 10)
    assert low < 0.5 < high and abs((0.5 - low) - (high - 0.5)) < 1e-9


def test_summary_counts_false_completions():
    episodes = [
        {"task": "a", "success": True, "steps": 10, "grasp_lost": 0},
        {"task": "a", "success": True, "steps": 20, "grasp_lost": 1},
        {"task": "a", "success": False, "steps": 30, "grasp_lost": 2},
        {"task": "b", "success": False, "steps": 40, "grasp_lost": 0},
    ]
    summary = summarize(episodes, ["a", "b"])
    assert summary["tasks"]["a"]["success_rate"] == pytest.approx(2 / 3)
    assert summary["tasks"]["a"]["false_completions"] == 1
    assert summary["tasks"]["a"]["grasp_lost"] == 3
    assert summary["average_success"] == pytest.approx(1 / 3)


def test_eval_cli_contract(tmp_path):
    out = tmp_path / "eval"
    result = run_cli("vla-eval", "policy=expert", "env=tabletop", "tasks=[put_red_cube_in_bin,push_red_cube_to_pad]",
                     "episodes=2", f"out={out}")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["average_success"] == 1.0
    for task in ("put_red_cube_in_bin", "push_red_cube_to_pad"):
        assert report["tasks"][task]["episodes"] == 2
        assert report["tasks"][task]["success_rate"] == 1.0
    assert report["latency_ms"]["p50"] > 0 and report["actions_per_inference"] == 1.0
    assert report["protocol"]["init_states"] == "tabletop.npz"
    assert report["run"]["command"].startswith("vla-eval")
    assert (out / "report.md").read_text().startswith("# Evaluation")
    assert (out / "success.png").stat().st_size > 1000
    assert len(list((out / "videos").glob("*.mp4"))) == 2
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 4
    # The instruction crosses the process boundary intact (shared memory used to blank it).
    assert {e["instruction"] for e in episodes} == {get_task(t).instructions[0] for t in report["tasks"]}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["tasks=put_red_cub_in_bin"], "Did you mean 'put_red_cube_in_bin'"),
        (["episodez=3"], "episodez"),
        (["env.image_sise=64"], "image_sise"),
        (["episodes=80"], "episodes must be within 1..50"),
        (["instruction=paraphrase"], "instruction_mode"),
        (["policy=/no/such/dir"], "/no/such/dir"),
    ],
)
def test_eval_cli_errors_name_the_key(args, named, tmp_path):
    result = run_cli("vla-eval", *args, f"out={tmp_path}", timeout=120)
    assert result.returncode != 0
    assert named in result.stderr
    assert "Traceback" not in result.stderr
