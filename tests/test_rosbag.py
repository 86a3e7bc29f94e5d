"""Teleop sessions as rosbag2 (MCAP) bags: written and read back, readable by rosbags and mcap as a ROS 2 tool
would, and a DDS session recorded to a bag and replayed into a second recorder gives the same dataset."""

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from cyclonedds.idl import IdlStruct
from mcap.reader import make_reader
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from vla.robot_bridge import msgs
from vla.robot_bridge.dds import DdsConfig, loopback_uri
from vla.robot_bridge.rosbag import BagWriter, bag_info, main, read_bag, replay_bag

REPO = Path(__file__).resolve().parents[1]
NAMES = ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "joint7", "gripper"]
T0 = 1_700_000_000_000_000_000  # ns since the epoch
TOPICS = DdsConfig().topics()


def session_messages() -> list[tuple[str, int, IdlStruct]]:
    """One message of every type the bridge uses, with log times out of order (as Cyclone's threads may write)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return [
        (TOPICS["joint_states"], T0 + 30, msgs.joint_state(NAMES, rng.normal(size=8), rng.normal(size=8), T0)),
        (TOPICS["camera/front"], T0 + 10, msgs.image_msg(image, T0, "front_camera")),
        (TOPICS["instruction"], T0, msgs.String(data="put the red cube in the bin ✓")),
        (TOPICS["estop"], T0 + 20, msgs.Bool(data=True)),
        (TOPICS["command"], T0 + 50, msgs.float64_multi_array(rng.normal(size=8), ["joints"])),
        (TOPICS["trajectory"], T0 + 40,
         msgs.joint_trajectory(NAMES, rng.normal(size=(3, 8)), [0.1, 0.2, 0.3], stamp_ns=T0)),
        (TOPICS["diagnostics"], T0 + 60, msgs.diagnostic_array(
            [msgs.diagnostic_status("vla_bridge", {"held": 3, "mode": "policy"}, msgs.DiagnosticStatus.WARN)], T0)),
        (TOPICS["joint_states"], T0 + 70, msgs.joint_state(NAMES, np.zeros(8), stamp_ns=T0 + 70)),
    ]


def write_session(path: Path) -> list[tuple[str, int, IdlStruct]]:
    messages = session_messages()
    with BagWriter(path) as bag:
        for topic, log_time_ns, msg in messages:
            bag.write(topic, msg, log_time_ns)
    return sorted(messages, key=lambda m: m[1])


def test_bag_round_trip_keeps_every_message_in_log_time_order(tmp_path):
    expected = write_session(tmp_path / "session")
    assert list(read_bag(tmp_path / "session")) == expected
    assert [m[1] for m in read_bag(tmp_path / "session", topics=[TOPICS["joint_states"]])] == [T0 + 30, T0 + 70]


def assert_same_fields(ours, theirs, where="msg"):
    """Our message and rosbags' deserialized one hold the same values, field by field."""
    for field in dataclasses.fields(ours):
        mine, other, name = getattr(ours, field.name), getattr(theirs, field.name), f"{where}.{field.name}"
        if isinstance(mine, IdlStruct):
            assert_same_fields(mine, other, name)
        elif isinstance(mine, list) and mine and isinstance(mine[0], IdlStruct):
            assert len(mine) == len(other), name
            for i, (a, b) in enumerate(zip(mine, other, strict=True)):
                assert_same_fields(a, b, f"{name}[{i}]")
        elif isinstance(mine, bytes):
            assert np.array_equal(np.frombuffer(mine, np.uint8), other), name
        elif isinstance(mine, list):
            assert np.array_equal(np.asarray(mine), np.asarray(other)), name
        else:
            assert mine == other, name


def test_rosbags_reads_the_bag_as_ros2_messages(tmp_path):
    expected = write_session(tmp_path / "session")
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with Reader(tmp_path / "session") as reader:
        assert {topic: info.msgtype for topic, info in reader.topics.items()} == {
            topic: msgs.ros_type_name(type(msg)) for topic, _, msg in expected}
        read = [(c.topic, t, typestore.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages()]
    assert [(topic, t) for topic, t, _ in read] == [(topic, t) for topic, t, _ in expected]
    for (_, _, theirs), (topic, _, ours) in zip(read, expected, strict=True):
        assert_same_fields(ours, theirs, topic)


def test_storage_is_mcap_with_one_channel_per_topic(tmp_path, capsys):
    expected = write_session(tmp_path / "session")
    files = sorted(p.name for p in (tmp_path / "session").iterdir())
    assert files == ["metadata.yaml", "session.mcap"]
    assert "version: 8" in (tmp_path / "session" / "metadata.yaml").read_text()  # not 9, which Humble cannot parse
    with open(tmp_path / "session" / "session.mcap", "rb") as f:
        reader = make_reader(f)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        channels = {c.topic: (summary.schemas[c.schema_id].name, c.message_encoding) for c in summary.channels.values()}
        assert channels == {topic: (msgs.ros_type_name(type(msg)), "cdr") for topic, _, msg in expected}
        assert summary.statistics.message_count == len(expected)
    info = bag_info(tmp_path / "session")
    assert info.topics[TOPICS["joint_states"]] == ("sensor_msgs/msg/JointState", 2)
    assert (info.start_ns, info.duration_s) == (T0, 70e-9)
    main(["info", str(tmp_path / "session")])
    assert "/joint_states" in capsys.readouterr().out


def test_replay_holds_back_commands_unless_asked(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_uri())
    write_session(tmp_path / "session")
    config = DdsConfig(domain_id=1 + (os.getpid() + 13) % 200)  # nobody listens: publish at once
    assert replay_bag(tmp_path / "session", config, wait_s=0) == 6
    assert "not replaying the commands on ['/forward_position_controller/commands'" in caplog.text
    assert replay_bag(tmp_path / "session", config, commands=True, wait_s=0) == 8


# Runs `vla-record` command lines (JSON lists of arguments) back to back in one process: its start-up (importing
# lerobot) is most of the round-trip test's time, and two recorders starting at once take twice as long.
RECORDER = """
import json, sys
from vla.cli.record import main
for args in sys.argv[1:]:
    sys.argv = ["vla-record", *json.loads(args)]
    main()
"""


class Recorder:
    """`vla-record source=dds` sessions in a subprocess, its output read line by line; Ctrl-C ends a session."""

    def __init__(self, sessions: list[list[str]], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", RECORDER, *map(json.dumps, sessions)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()

    def wait_for(self, text: str, timeout_s: float = 180) -> None:
        """Read the output up to the next line containing `text`."""
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {timeout_s} s:\n{''.join(self.output)}") from None
            self.output.append(line)
            if text in line:
                return

    def interrupt(self, then: str) -> None:
        """Ctrl-C the session in progress, which closes its dataset and bag, and wait for its line `then`."""
        self.process.send_signal(signal.SIGINT)
        self.wait_for(then)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:  # the test failed while a session was running
            self.process.kill()
            self.process.wait()


def recorded_states(root: Path) -> list[list[float]]:
    """Per episode, the distinct consecutive states (joint1) in a dataset's parquet files, in frame order.

    Read with pyarrow rather than LeRobotDataset, whose import would add half this test's time; the recorder's own
    tests read its datasets through lerobot.
    """
    table = pq.read_table(root / "data", columns=["episode_index", "frame_index", "observation.state"])
    episodes: dict[int, list[float]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r["episode_index"], r["frame_index"])):
        levels = episodes.setdefault(row["episode_index"], [])
        value = round(row["observation.state"][0], 3)
        if not levels or levels[-1] != value:
            levels.append(value)
    return [episodes[e] for e in sorted(episodes)]


# The synthetic teleop session (seconds): state levels that change at least 0.3 s away from any control, so every
# level spans several frames at 20 fps, whatever the jitter of two replays.
CONTROLS = {0.3: "start", 1.2: "stop", 2.0: "start", 2.9: "stop"}
LEVELS = [(0.0, 1.0), (0.6, 1.1), (0.9, 1.2), (1.5, 2.0), (2.3, 2.1), (2.6, 2.2)]  # (from, joint positions)
EXPECTED_STATES = [[1.0, 1.1, 1.2], [2.0, 2.1, 2.2]]


def write_synthetic_session(path: Path) -> int:
    with BagWriter(path) as bag:
        bag.write(TOPICS["instruction"], msgs.String(data="put the red cube in the bin"), T0)
        for at, control in CONTROLS.items():
            bag.write(TOPICS["record_control"], msgs.String(data=control), T0 + round(at * 1e9))
        for step in range(156):  # 50 Hz for 3.1 s
            at = 0.02 * step
            level = [value for start, value in LEVELS if start <= at][-1]
            stamp = T0 + round(at * 1e9)
            bag.write(TOPICS["joint_states"], msgs.joint_state(NAMES, np.full(8, level), stamp_ns=stamp), stamp)
            bag.write(TOPICS["command"], msgs.float64_multi_array(np.full(8, level + 0.5)), stamp)
            for camera in ("front", "wrist"):
                image = msgs.image_msg(np.full((16, 16, 3), round(level * 100), np.uint8), stamp)
                bag.write(TOPICS[f"camera/{camera}"], image, stamp)
    return 1 + len(CONTROLS) + 156 * 4


def test_dds_session_recorded_to_a_bag_and_replayed_records_the_same_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_uri())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    domains = [1 + (os.getpid() + k) % 200 for k in (11, 12)]
    names = ["first", "second"]
    sessions = [["source=dds", f"root={tmp_path / name}", f"bag={tmp_path / f'{name}_bag'}", "env.image_size=16",
                 "env.control_hz=20", f"domain_id={domain}"] for name, domain in zip(names, domains, strict=True)]
    with Recorder(sessions, env) as recorder:
        published = write_synthetic_session(tmp_path / "synthetic")
        # The test publishes the synthetic session as the robot, bridge and operator would (no robot listens on
        # these domains, so commands too); the first session keeps what it received in first_bag.
        config = DdsConfig(domain_id=domains[0])
        assert replay_bag(tmp_path / "synthetic", config, commands=True, wait_s=120) == published
        recorder.wait_for("saved episode 1")
        recorder.interrupt(then=f"{tmp_path / 'first'}: 2 episodes in the dataset")

        # The recorded bag, replayed by the CLI into the second session.
        replay = subprocess.run(
            [sys.executable, "-m", "vla.robot_bridge.rosbag", "replay", str(tmp_path / "first_bag"),
             "--domain-id", str(domains[1]), "--wait", "120", "--commands"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        first_bag = bag_info(tmp_path / "first_bag")
        assert f"published {sum(n for _, n in first_bag.topics.values())} messages" in replay.stdout
        recorder.wait_for("saved episode 1")
        recorder.interrupt(then=f"{tmp_path / 'second'}: 2 episodes in the dataset")
        assert recorder.process.wait(timeout=180) == 0, "".join(recorder.output)

    assert recorded_states(tmp_path / "first") == recorded_states(tmp_path / "second") == EXPECTED_STATES
    bags = [tmp_path / f"{name}_bag" for name in names]
    controls = [[msg.data for topic, _, msg in read_bag(bag) if topic == TOPICS["record_control"]] for bag in bags]
    assert controls == [list(CONTROLS.values())] * 2
    second_bag = bag_info(bags[1])
    assert first_bag.topics.keys() == second_bag.topics.keys() == set(TOPICS.values()) - {
        TOPICS[key] for key in ("estop", "trajectory", "diagnostics", "sim_state")}
    assert abs(first_bag.duration_s - 3.1) < 0.5 and abs(second_bag.duration_s - first_bag.duration_s) < 0.5
