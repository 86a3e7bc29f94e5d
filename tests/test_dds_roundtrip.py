"""Two processes talk the bridge's ROS 2 topics over DDS on loopback: this test is the bridge, a child is the robot.

The child (this file run as a script) latches an instruction and the e-stop before anyone listens, then streams
joint states and camera images until the bridge's command, trajectory and diagnostics come back; it prints what it
received as JSON. Every process sets CYCLONEDDS_URI to the loopback config before its first participant, and each
run takes its own domain id so concurrent runs on the machine do not hear each other.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from vla.robot_bridge import msgs
from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig, loopback_uri

JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
INSTRUCTION = "put the red cube in the bin"
TIMEOUT_S = 15.0


def camera_image(seq: int) -> np.ndarray:
    """A 64x48 frame the bridge can check pixel for pixel."""
    return ((np.arange(48 * 64 * 3).reshape(48, 64, 3) + seq) % 256).astype(np.uint8)


def run_robot(domain_id: int) -> dict:
    """The child: robot side of the bridge's topics."""
    robot = DdsBridgeTransport("robot", DdsConfig(domain_id=domain_id, cameras={"front": "/cameras/front/image_raw"}))
    robot.publish_instruction(INSTRUCTION)  # latched: the bridge gets them although it may not be matched yet
    robot.publish_estop(True)
    received: dict = {}
    deadline = time.monotonic() + TIMEOUT_S
    seq = 0
    while time.monotonic() < deadline and len(received) < 3:
        seq += 1
        positions = np.linspace(-1.0, 1.0, 7) + seq * 1e-3
        # Joints listed in reverse with an extra finger joint: the bridge must match them by name.
        robot.publish_joint_state(msgs.joint_state(
            [*JOINTS[::-1], "panda_finger_joint1"], [*positions[::-1], 0.04], stamp_ns=time.time_ns()))
        robot.publish_image("front", msgs.image_msg(camera_image(seq), time.time_ns(), "front"))
        if (command := robot.take_latest_command()) is not None:
            received["command"] = msgs.multi_array_to_numpy(command).tolist()
        if (trajectory := robot.take_latest_trajectory()) is not None:
            positions_tn, times = msgs.trajectory_to_numpy(trajectory, JOINTS)
            received["trajectory"] = {"positions": positions_tn.tolist(), "times": times.tolist()}
        if (diagnostics := robot.take_latest_diagnostics()) is not None:
            received["diagnostics"] = msgs.diagnostic_values(diagnostics.status[0])
        time.sleep(0.01)
    return received


def spawn_robot(domain_id: int) -> subprocess.Popen:
    env = {**os.environ, "CYCLONEDDS_URI": loopback_uri()}
    return subprocess.Popen([sys.executable, __file__, str(domain_id)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_bridge_and_robot_processes_exchange_messages(monkeypatch):
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_uri())
    domain_id = 1 + os.getpid() % 200
    config = DdsConfig(domain_id=domain_id, cameras={"front": "/cameras/front/image_raw"})
    with DdsBridgeTransport("bridge", config) as bridge:
        robot = spawn_robot(domain_id)
        try:
            state = image = instruction = estop = None
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline and None in (state, image, instruction, estop):
                state = bridge.take_latest_joint_state() or state
                image = bridge.take_latest_image("front") or image
                instruction = bridge.take_latest_instruction() or instruction
                estop = bridge.take_latest_estop() if estop is None else estop
                time.sleep(0.005)
            assert state is not None and image is not None, "no joint state or image from the robot process"
            assert instruction == INSTRUCTION
            assert estop is True

            positions = msgs.to_numpy(state, JOINTS)
            seq = round((positions[0] + 1.0) / 1e-3)
            np.testing.assert_allclose(positions, np.linspace(-1.0, 1.0, 7) + seq * 1e-3)
            assert msgs.to_numpy(state, ["panda_finger_joint1"]).tolist() == [0.04]
            assert abs(time.time_ns() - msgs.time_ns(state.header.stamp)) < TIMEOUT_S * 1e9
            frame = msgs.image_to_numpy(image)
            assert frame.shape == (48, 64, 3) and image.header.frame_id == "front"
            np.testing.assert_array_equal(frame, camera_image(int(frame[0, 0, 0])))

            command = positions + 0.5
            targets = np.stack([positions, command])
            # The robot may still be discovering our writers: repeat until it has everything.
            while robot.poll() is None and time.monotonic() < deadline:
                bridge.publish_command(msgs.float64_multi_array(command))
                bridge.publish_trajectory(msgs.joint_trajectory(JOINTS, targets, [0.1, 0.2], time.time_ns()))
                bridge.publish_diagnostics(msgs.diagnostic_array(
                    [msgs.diagnostic_status("vla_bridge", {"commands": 1, "estop": estop})], time.time_ns()))
                time.sleep(0.02)
            out, err = robot.communicate(timeout=TIMEOUT_S)
        finally:
            robot.kill()
    assert robot.returncode == 0, err
    received = json.loads(out)
    np.testing.assert_allclose(received["command"], command)
    np.testing.assert_allclose(received["trajectory"]["positions"], targets)
    np.testing.assert_allclose(received["trajectory"]["times"], [0.1, 0.2])
    assert received["diagnostics"] == {"commands": "1", "estop": "True"}


def test_wrong_side_and_unknown_channel_are_errors(monkeypatch):
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_uri())
    with DdsBridgeTransport("robot", DdsConfig(domain_id=1 + (os.getpid() + 1) % 200)) as robot:
        with pytest.raises(ValueError, match="the robot side does not write 'command'"):
            robot.publish_command(msgs.float64_multi_array([0.0]))
        with pytest.raises(ValueError, match="the robot side does not read 'joint_states'"):
            robot.take_latest_joint_state()
        with pytest.raises(ValueError, match="unknown channel 'camera/left'"):
            robot.publish_image("left", msgs.image_msg(camera_image(0)))
    with pytest.raises(ValueError, match="domain_id must be in 0..232"):
        DdsConfig(domain_id=250)
    with pytest.raises(ValueError, match="DdsConfig topic 'estop'"):
        DdsConfig(estop="/e stop")


# Optional: the same JointState over Zenoh, keyed as rmw_zenoh (ROS 2 Jazzy+) keys topics:
# <domain_id>/<topic without leading '/'>/<DDS type name>/<RIHS01 type hash>, payload the same CDR bytes.
# rmw_zenoh also sends an attachment (sequence number, timestamp, publisher gid) and liveliness tokens for its graph;
# those are not reproduced here, so this checks the key format and the payload only.


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_joint_state_over_zenoh_with_rmw_zenoh_key():
    zenoh = pytest.importorskip("zenoh")
    from rosbags.typesys import Stores, get_typestore

    type_hash = get_typestore(Stores.ROS2_HUMBLE).hash_rihs01("sensor_msgs/msg/JointState")
    key = f"7/joint_states/{msgs.dds_type_name(msgs.JointState)}/{type_hash}"
    assert key.startswith("7/joint_states/sensor_msgs::msg::dds_::JointState_/RIHS01_")

    port = free_tcp_port()

    def session(endpoints_key: str) -> "zenoh.Session":
        config = zenoh.Config()
        config.insert_json5("mode", '"peer"')
        config.insert_json5("scouting/multicast/enabled", "false")  # loopback only: no multicast discovery
        config.insert_json5(endpoints_key, f'["tcp/127.0.0.1:{port}"]')
        return zenoh.open(config)

    sent = msgs.joint_state(JOINTS, np.linspace(0, 1, 7), stamp_ns=time.time_ns())
    with session("listen/endpoints") as subscriber_session, session("connect/endpoints") as publisher_session:
        subscriber = subscriber_session.declare_subscriber(key)
        publisher = publisher_session.declare_publisher(key)
        deadline = time.monotonic() + TIMEOUT_S
        sample = None
        while sample is None and time.monotonic() < deadline:
            publisher.put(sent.serialize())
            time.sleep(0.02)
            sample = subscriber.try_recv()
    assert sample is not None, "no JointState over Zenoh"
    assert str(sample.key_expr) == key
    assert msgs.JointState.deserialize(sample.payload.to_bytes()) == sent


if __name__ == "__main__":
    os.environ["CYCLONEDDS_URI"] = loopback_uri()
    print(json.dumps(run_robot(int(sys.argv[1]))))
