"""Teleop recording from robot topics: control semantics, and a real DDS session read back by lerobot."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from test_evaluate import REPO

from vla.data.episode_writer import EpisodeWriter
from vla.data.topic_recorder import TopicRecorder
from vla.robot_bridge import msgs
from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig, loopback_uri

NAMES = ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "joint7", "gripper"]


def feed(recorder, value):
    recorder.on_joint_state(np.full(8, value, np.float32))
    recorder.on_command(np.full(8, value + 0.5, np.float32))
    for camera in recorder.cameras:
        recorder.on_image(camera, np.full((16, 16, 3), int(value) % 255, np.uint8))


def test_controls_start_stop_fail_discard(tmp_path):
    with EpisodeWriter(tmp_path / "d", fps=10, camera_names=["front"], robot_type="panda", image_size=16) as writer:
        recorder = TopicRecorder(writer, ("front",))
        assert "not recording" in recorder.on_control("stop")
        recorder.on_control("start")
        feed(recorder, 1)
        assert not recorder.tick() and recorder.missing == ["instruction"]  # waits for every stream
        recorder.on_instruction("wave")
        assert recorder.tick() and recorder.tick()
        assert "saved episode 0" in recorder.on_control("stop")
        recorder.on_control("start")
        feed(recorder, 2)
        recorder.tick()
        assert "discarded" in recorder.on_control("discard")
        recorder.on_control("start")
        recorder.tick()
        assert "success=False" in recorder.on_control("FAIL")
        assert "ignored unknown" in recorder.on_control("pause")
        assert writer.num_episodes == 2
        assert sorted(writer.recorded_episodes().values()) == [False, True]


def test_dds_session_records_what_the_topics_carry(tmp_path):
    os.environ.setdefault("CYCLONEDDS_URI", loopback_uri())
    domain = 1 + (os.getpid() + 7) % 200
    root = tmp_path / "teleop"
    recorder = subprocess.Popen(
        [str(Path(sys.executable).parent / "vla-record"), "source=dds", f"root={root}", "env.image_size=16",
         "env.control_hz=20", f"domain_id={domain}"], cwd=REPO, env=os.environ.copy(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    config = DdsConfig(domain_id=domain)
    with DdsBridgeTransport("operator", config) as operator:
        # Alone on the domain, the control writer matches only the recorder's reader: it is up and listening.
        assert operator.wait_matched(["record_control"], timeout_s=120), "the recorder never subscribed"
        robot, bridge = DdsBridgeTransport("robot", config), DdsBridgeTransport("bridge", config)
        robot.publish_instruction("put the red cube in the bin")
        start = time.monotonic()
        controls = {1.0: "start", 2.5: "stop", 3.0: "start", 3.5: "discard", 4.0: "start", 4.8: "fail"}
        k = 0
        while time.monotonic() - start < 5.5:
            elapsed = time.monotonic() - start
            for at in [t for t in controls if t <= elapsed]:
                operator.publish_record_control(controls.pop(at))
            value = 0.01 * k
            robot.publish_joint_state(msgs.joint_state(NAMES, np.full(8, value), stamp_ns=time.time_ns()))
            bridge.publish_command(msgs.float64_multi_array(np.full(8, value + 0.5)))
            for camera in ("front", "wrist"):
                robot.publish_image(camera, msgs.image_msg(np.full((16, 16, 3), 100, np.uint8)))
            k += 1
            time.sleep(0.02)
        robot.close()
        bridge.close()
    recorder.send_signal(signal.SIGINT)  # Ctrl-C: finished episodes stay, the dataset is closed
    try:
        output, _ = recorder.communicate(timeout=180)  # closing encodes the videos: slow on 2 busy cores
    finally:
        recorder.kill()  # a recorder that failed to close must not outlive the test (it loads the next ones)
    assert recorder.returncode == 0, output
    assert "2 episodes in the dataset" in output, output
    dataset = LeRobotDataset(f"local/{root.name}", root=root)
    assert dataset.meta.total_episodes == 2
    frames = [dataset[i] for i in range(len(dataset))]
    assert len(frames) > 20
    for frame in frames:
        state, action = frame["observation.state"].numpy(), frame["action"].numpy()
        assert np.allclose(state, state[0]) and np.allclose(action, action[0])  # one published message each
        assert 0.45 <= action[0] - state[0] <= 0.55  # the command published with (or just after) that state
        assert frame["task"] == "put the red cube in the bin"
    successes = {int(e): bool(s) for e, s in zip(dataset.hf_dataset["episode_index"],
                                                   dataset.hf_dataset["episode.success"], strict=True)}
    assert successes == {0: True, 1: False}
