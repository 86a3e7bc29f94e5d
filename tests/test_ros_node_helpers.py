"""The rclpy node's plain helpers, without ROS: parameters, image decoding, command and diagnostics messages.

rclpy is not installable here; these are everything `vla.robot_bridge.ros_node` does besides calling rclpy.
rclpy messages are stood in for by plain objects with the same fields (`uint8[]` and `float64[]` arrive from rclpy
as `array.array`).
"""

import array
import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vla.limits import CONF_DIR, load_robot_limits
from vla.robot_bridge import msgs
from vla.robot_bridge.ros_node import (
    COMMAND_TOPICS,
    NodeParams,
    command_message,
    decode_compressed_image,
    diagnostics_message,
    ros_args,
    run_ros_node,
    to_ros,
)
from vla.robot_bridge.safety import SafetyFilter, Stamped, mujoco_fk

PARAMS_FILE = Path(__file__).resolve().parent.parent / "launch" / "params" / "panda.yaml"
LIMITS = load_robot_limits("panda")
NAMES = (*LIMITS.joint_names, "gripper")


def encoded(image: np.ndarray, format_: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format_, **kwargs)
    return buffer.getvalue()


def test_compressed_png_decodes_exactly_from_rclpy_style_data():
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    data = array.array("B", encoded(image, "PNG"))
    decoded = decode_compressed_image("rgb8; png compressed bgr8", data)
    assert decoded.dtype == np.uint8 and decoded.shape == (48, 64, 3)
    np.testing.assert_array_equal(decoded, image)


def test_compressed_jpeg_decodes_to_rgb():
    image = np.zeros((32, 40, 3), dtype=np.uint8)
    image[..., 0] = 200  # red: a swapped channel order would put it in the last channel
    decoded = decode_compressed_image("jpeg", encoded(image, "JPEG", quality=95))
    assert decoded.shape == (32, 40, 3)
    assert np.abs(decoded.astype(int) - image).max() <= 3


def test_compressed_grayscale_becomes_three_channels():
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    decoded = decode_compressed_image("mono8; png compressed mono8", encoded(gray, "PNG"))
    assert decoded.shape == (12, 16, 3)
    np.testing.assert_array_equal(decoded[..., 2], gray)


@pytest.mark.parametrize("format_,data,match", [
    ("jpeg", b"not an image", "does not decode"),
    ("16UC1; compressedDepth png", b"", "depth image"),
    ("16UC1; png compressed", encoded(np.zeros((4, 4), dtype=np.uint16), "PNG"), "8-bit colour"),
])
def test_compressed_image_errors_name_the_problem(format_, data, match):
    with pytest.raises(ValueError, match=match):
        decode_compressed_image(format_, data)


def test_rclpy_style_messages_convert_with_the_shared_helpers():
    # Joints in the driver's order with an extra finger joint; positions as rclpy's array.array('d').
    names = [*NAMES[::-1], "finger"]
    state = types.SimpleNamespace(name=names, position=array.array("d", [*range(8)][::-1] + [9.0]))
    np.testing.assert_array_equal(msgs.to_numpy(state, NAMES), np.arange(8.0))
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    image = types.SimpleNamespace(height=4, width=5, encoding="bgr8", step=15, data=array.array("B", pixels.tobytes()))
    np.testing.assert_array_equal(msgs.image_to_numpy(image), pixels[..., ::-1])


@pytest.fixture(scope="module")
def filtered_command() -> np.ndarray:
    """A command the safety filter let through, as the node gets it from `BridgeCore.tick`."""
    safety = SafetyFilter.from_config("panda", fk=mujoco_fk(LIMITS))
    state = np.append(LIMITS.home, 1.0)
    target = state + np.array([0.05, -0.05, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5])
    result = safety.filter(Stamped(target, NAMES, 0.0), Stamped(state, NAMES, 0.0), 0.0)
    assert result.publish
    return result.command


def test_forward_position_command_carries_the_command(filtered_command):
    msg = command_message("forward_position", NAMES, filtered_command, 100.0)
    assert isinstance(msg, msgs.Float64MultiArray)
    np.testing.assert_array_equal(msgs.multi_array_to_numpy(msg), filtered_command)


def test_trajectory_command_is_one_point_one_period_ahead(filtered_command):
    msg = command_message("joint_trajectory", NAMES, filtered_command, 100.0)
    assert isinstance(msg, msgs.JointTrajectory) and list(msg.joint_names) == list(NAMES)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)  # "start now" for the controller
    positions, times = msgs.trajectory_to_numpy(msg, NAMES)
    np.testing.assert_array_equal(positions, filtered_command[None])
    assert times.tolist() == [0.01]


def test_command_message_refuses_what_cannot_be_sent(filtered_command):
    with pytest.raises(ValueError, match="command_interface"):
        command_message("effort", NAMES, filtered_command, 100.0)
    bad = np.array(filtered_command)
    bad[2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        command_message("joint_trajectory", NAMES, bad, 100.0)


def test_default_parameters_are_valid():
    params = NodeParams()
    assert params.cameras() == {"front": "/cameras/front/image_raw", "wrist": "/cameras/wrist/image_raw"}
    assert params.command_topic == COMMAND_TOPICS["forward_position"]
    assert NodeParams(command_interface="joint_trajectory").command_topic == COMMAND_TOPICS["joint_trajectory"]
    assert NodeParams(command_topic="/arm/commands").command_topic == "/arm/commands"
    declared = NodeParams.declared()
    assert declared["camera_names"] == ["front", "wrist"] and declared["command_topic"] == ""
    params.check_cameras(("wrist", "front"))


@pytest.mark.parametrize("overrides,match", [
    ({"camera_names": ["front"]}, "same length"),
    ({"camera_names": ["front", "front"]}, "camera_names: entries must be unique"),
    ({"camera_names": "front"}, "camera_names: expected a list"),
    ({"camera_topics": [], "camera_names": []}, "at least one camera"),
    ({"command_interface": "velocity"}, "command_interface: expected one of forward_position, joint_trajectory"),
    ({"estop_topic": ""}, "estop_topic: expected a topic name"),
    ({"compressed_images": "yes"}, "compressed_images: expected true or false"),
])
def test_invalid_parameters_name_the_parameter(overrides, match):
    with pytest.raises(ValueError, match=match):
        NodeParams(**overrides)


def test_cameras_must_be_those_the_watchdog_expects():
    with pytest.raises(ValueError, match=r"camera_names: expected the cameras \['front', 'wrist'\]"):
        NodeParams(camera_topics=["/c"], camera_names=["front"]).check_cameras(("front", "wrist"))


def test_params_file_holds_valid_node_parameters_and_no_limits():
    from vla.data.ros2_record import _DEFAULTS as RECORDER_PARAMETERS  # here: it imports lerobot (seconds)

    params = yaml.safe_load(PARAMS_FILE.read_text())
    bridge = params["vla_bridge"]["ros__parameters"]
    assert set(bridge) == set(NodeParams.declared())  # an undeclared key would be ignored by rclpy silently
    NodeParams(**bridge).check_cameras(("front", "wrist"))
    assert set(params["vla_record"]["ros__parameters"]) == set(RECORDER_PARAMETERS)
    robot = yaml.safe_load((CONF_DIR / "robot" / "panda.yaml").read_text())
    limit_keys = (set(robot) | set(robot["safety"])) - {"name"}
    for node in params.values():
        assert not limit_keys & set(node["ros__parameters"]), "limits live in conf/robot/panda.yaml only"


def diagnostics(fault: str = "none") -> dict:
    return {"published": 12, "fault": fault, "fault_message": "e-stop pressed" if fault != "none" else "",
            "limit_violations": 0}


@pytest.mark.parametrize("values,enabled,ready,level,message", [
    (diagnostics(), True, True, msgs.DiagnosticStatus.OK, "running"),
    (diagnostics(), True, False, msgs.DiagnosticStatus.WARN, "waiting for"),
    (diagnostics(), False, True, msgs.DiagnosticStatus.WARN, "disabled"),
    (diagnostics("estop"), False, True, msgs.DiagnosticStatus.ERROR, "fault estop: e-stop pressed"),
])
def test_diagnostics_level_and_values(values, enabled, ready, level, message):
    msg = diagnostics_message(values, enabled, ready, stamp_ns=1_500_000_000)
    [status] = msg.status
    assert status.name == "vla_bridge" and status.level == level and status.message.startswith(message)
    assert msgs.diagnostic_values(status) == {**{k: str(v) for k, v in values.items()}, "enabled": str(enabled)}
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_000)


class FakeRclpyMessage:
    """Stands in for an rclpy message: every field has a default (None here); a `byte` field's is b'\\x00'."""

    def __getattr__(self, name):
        return None


def fake_rclpy_class(type_name: str) -> type:
    defaults = {"level": b"\x00"} if type_name == "diagnostic_msgs/msg/DiagnosticStatus" else {}
    return type(type_name.rsplit("/", 1)[1], (FakeRclpyMessage,), {"type_name": type_name, **defaults})


def test_to_ros_copies_nested_messages_and_byte_fields():
    status = msgs.diagnostic_status("vla_bridge", {"fault": "estop"}, msgs.DiagnosticStatus.ERROR, "stop")
    ros = to_ros(msgs.diagnostic_array([status], stamp_ns=2_000_000_001), fake_rclpy_class)
    assert ros.type_name == "diagnostic_msgs/msg/DiagnosticArray"
    assert (ros.header.stamp.type_name, ros.header.stamp.sec, ros.header.stamp.nanosec) == (
        "builtin_interfaces/msg/Time", 2, 1)
    [ros_status] = ros.status
    assert ros_status.level == b"\x02" and ros_status.message == "stop"
    assert [(kv.type_name, kv.key, kv.value) for kv in ros_status.values] == [
        ("diagnostic_msgs/msg/KeyValue", "fault", "estop")]

    trajectory = to_ros(msgs.joint_trajectory(NAMES, np.zeros((1, 8)), [0.01]), fake_rclpy_class)
    [point] = trajectory.points
    assert point.type_name == "trajectory_msgs/msg/JointTrajectoryPoint" and point.positions == [0.0] * 8
    assert (point.time_from_start.sec, point.time_from_start.nanosec) == (0, 10_000_000)


def test_ros_args_pass_the_params_file(tmp_path):
    assert ros_args("") is None
    params = tmp_path / "arm.yaml"
    params.write_text("vla_bridge: {ros__parameters: {}}\n")
    assert ros_args(str(params)) == ["--ros-args", "--params-file", str(params)]
    with pytest.raises(FileNotFoundError, match="ros_params: no such file"):
        ros_args(str(tmp_path / "missing.yaml"))


def test_without_rclpy_the_error_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # importing it now fails, as without a ROS install
    with pytest.raises(ValueError, match=r"transport=ros2 needs rclpy from a ROS 2 install .*use transport=dds"):
        run_ros_node(policy=None, robot="panda", cfg=types.SimpleNamespace(ros_params=""))
