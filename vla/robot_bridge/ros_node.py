"""The bridge as a ROS 2 node (rclpy), for `vla-bridge transport=ros2`: the only module that imports rclpy.

The DDS node's twin (`dds_node.py`): message callbacks feed the core, a timer on the steady clock ticks it at the
command rate, and only what the core's `tick` lets through is published. rclpy and the ROS message packages are
imported inside `RosBridgeNode` and `run_ros_node`, so the plain helpers above them (parameters, image decoding,
command and diagnostics messages, the DDS-to-rclpy copy) import and test without a ROS install. Messages are built
with `vla.robot_bridge.msgs` and copied field by field into rclpy's classes (`to_ros`), so both transports send the
same bytes.

Every input is stamped at receipt with `time.monotonic()`, the clock `tick` runs on, so staleness never depends on
the robot's clock being in sync. One single-threaded executor runs every callback, so the core needs no lock.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from vla.robot_bridge import msgs
from vla.robot_bridge.core import BridgeCore
from vla.robot_bridge.safety import trajectory_points
from vla.robot_bridge.watchdog import ResetRefused

NODE_NAME = "vla_bridge"
# ros2_control's controllers and the topics they listen on by default.
COMMAND_TOPICS = {
    "forward_position": "/forward_position_controller/commands",  # std_msgs/Float64MultiArray
    "joint_trajectory": "/joint_trajectory_controller/joint_trajectory",  # trajectory_msgs/JointTrajectory
}
DIAGNOSTICS_HZ = 10.0
# The simulated arm's full state (vla.robot_bridge.sim_robot), which privileged scripted experts plan from.
SIM_STATE_TOPIC = "/vla_sim/state"


# ---------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class NodeParams:
    """The `vla_bridge` node's ROS parameters (launch/params/<arm>.yaml); the defaults are what it declares.

    Limits and safety settings are not parameters: they live in conf/robot/<arm>.yaml alone.
    """

    joint_states_topic: str = "/joint_states"
    camera_topics: tuple[str, ...] = ("/cameras/front/image_raw", "/cameras/wrist/image_raw")
    camera_names: tuple[str, ...] = ("front", "wrist")  # camera_names[i] is seen on camera_topics[i]
    compressed_images: bool = False  # true: sensor_msgs/CompressedImage (JPEG or PNG) instead of Image
    instruction_topic: str = "/instruction"
    estop_topic: str = "/estop"
    command_interface: str = "forward_position"  # a key of COMMAND_TOPICS
    command_topic: str = ""  # empty: the controller's default topic for command_interface
    diagnostics_topic: str = "/diagnostics"
    heartbeat_topic: str = "/vla/heartbeat"  # empty: joint states alone count as the heartbeat

    def __post_init__(self) -> None:
        for key in ("camera_topics", "camera_names"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(item, str) and item for item in value):
                raise ValueError(f"{NODE_NAME} parameter {key}: expected a list of non-empty strings, got {value!r}")
            object.__setattr__(self, key, tuple(value))  # rclpy hands lists; keep the frozen params hashable
        for key in ("joint_states_topic", "instruction_topic", "estop_topic", "diagnostics_topic"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{NODE_NAME} parameter {key}: expected a topic name, got {value!r}")
        if not self.camera_names:
            raise ValueError(f"{NODE_NAME} parameter camera_names: the policy needs at least one camera")
        if len(self.camera_topics) != len(self.camera_names):
            raise ValueError(f"{NODE_NAME} parameters camera_topics ({len(self.camera_topics)}) and camera_names "
                             f"({len(self.camera_names)}) must have the same length")
        for key in ("camera_topics", "camera_names"):
            value = getattr(self, key)
            if len(set(value)) != len(value):
                raise ValueError(f"{NODE_NAME} parameter {key}: entries must be unique, got {list(value)}")
        if not isinstance(self.compressed_images, bool):
            raise ValueError(f"{NODE_NAME} parameter compressed_images: expected true or false, "
                             f"got {self.compressed_images!r}")
        if self.command_interface not in COMMAND_TOPICS:
            raise ValueError(f"{NODE_NAME} parameter command_interface: expected one of "
                             f"{', '.join(COMMAND_TOPICS)}, got {self.command_interface!r}")
        if not self.command_topic:
            object.__setattr__(self, "command_topic", COMMAND_TOPICS[self.command_interface])

    @classmethod
    def declared(cls) -> dict[str, Any]:
        """Each parameter's name and default, as `declare_parameter` takes them (lists, not tuples)."""
        return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                for f in dataclasses.fields(cls)}

    def cameras(self) -> dict[str, str]:
        """Topic per camera name."""
        return dict(zip(self.camera_names, self.camera_topics, strict=True))

    def check_cameras(self, required: Sequence[str]) -> None:
        """The cameras must be exactly those the core's watchdog and policy expect, no more and no fewer."""
        if set(self.camera_names) != set(required):
            raise ValueError(f"{NODE_NAME} parameter camera_names: expected the cameras {sorted(required)} that the "
                             f"policy and watchdog use, got {list(self.camera_names)}")



def ros_args(params_file: str) -> list[str] | None:
    """`rclpy.init`'s arguments: the parameters file for every node of the process, when one is given."""
    if not params_file:
        return None
    if not Path(params_file).is_file():
        raise FileNotFoundError(f"ros_params: no such file '{params_file}'")
    return ["--ros-args", "--params-file", params_file]


# ---------------------------------------------------------------------- messages


def decode_compressed_image(format_: str, data: bytes | bytearray | memoryview | Sequence[int]) -> np.ndarray:
    """A uint8 (H, W, 3) RGB array from a `sensor_msgs/CompressedImage`'s `format` and `data` (JPEG or PNG).

    image_transport's formats name the raw encoding first ("rgb8; jpeg compressed bgr8"); whatever it is, the
    compressed file itself is a standard JPEG/PNG, so decoding it gives RGB. Depth images are refused.
    """
    if "compresseddepth" in format_.lower().replace(" ", ""):
        raise ValueError(f"CompressedImage format {format_!r} is a depth image, not a camera frame")
    try:
        with PILImage.open(io.BytesIO(bytes(data))) as image:
            if image.mode not in ("RGB", "RGBA", "L", "P"):  # 16-bit and float images would lose their range
                raise ValueError(f"CompressedImage ({format_!r}) holds a {image.mode} image; expected 8-bit colour")
            return np.asarray(image.convert("RGB"))
    except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ValueError(f"CompressedImage ({format_!r}) does not decode: {error}") from None


def command_message(interface: str, names: Sequence[str], command: np.ndarray,
                    command_hz: float) -> msgs.Float64MultiArray | msgs.JointTrajectory:
    """The message that sends one filtered command (8,) (joints + gripper, in `names` order) to the controller.

    `joint_trajectory`: one point reached 1 / command_hz from now, built with `trajectory_points` so that
    time_from_start is finite and > 0 (safety invariant 10). Its stamp stays 0, which joint_trajectory_controller
    reads as "start now": the robot's clock need not agree with ours.
    """
    if interface == "forward_position":
        return msgs.float64_multi_array(command)
    if interface == "joint_trajectory":
        positions, times = trajectory_points(np.asarray(command, dtype=np.float64)[None], 1.0 / command_hz)
        return msgs.joint_trajectory(names, positions, times)
    raise ValueError(f"command_interface: expected one of {', '.join(COMMAND_TOPICS)}, got {interface!r}")


def diagnostics_message(diagnostics: Mapping[str, object], enabled: bool, ready: bool,
                        stamp_ns: int) -> msgs.DiagnosticArray:
    """`/diagnostics` for the core's counters: ERROR while a fault is latched, WARN while disabled or waiting."""
    status = msgs.DiagnosticStatus
    if diagnostics["fault"] != "none":
        level, message = status.ERROR, (f"fault {diagnostics['fault']}: {diagnostics['fault_message']}; the arm "
                                        "holds until ~/reset succeeds")
    elif not enabled:
        level, message = status.WARN, "disabled: no commands are published, the controller holds"
    elif not ready:
        level, message = status.WARN, ("waiting for a joint state, a frame from every camera and an instruction "
                                       "(and, for the scripted expert, the simulator's state)")
    else:
        level, message = status.OK, "running"
    values = {**diagnostics, "enabled": enabled}
    return msgs.diagnostic_array([msgs.diagnostic_status(NODE_NAME, values, level, message)], stamp_ns=stamp_ns)


def to_ros(msg: Any, resolve: Callable[[str], type]) -> Any:
    """The rclpy message equal to a message of `vla.robot_bridge.msgs`, copied field by field.

    `resolve` maps a ROS type name (`std_msgs/msg/Float64MultiArray`) to its rclpy class
    (`rosidl_runtime_py.utilities.get_message` on a robot).
    """
    ros = resolve(msgs.ros_type_name(type(msg)))()
    for field in dataclasses.fields(msg):
        value = getattr(msg, field.name)
        if dataclasses.is_dataclass(value):
            value = to_ros(value, resolve)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [to_ros(item, resolve) for item in value]
        elif isinstance(value, int) and isinstance(getattr(ros, field.name), bytes):
            value = bytes([value])  # a ROS `byte` field (DiagnosticStatus.level) is a 1-byte bytes in rclpy
        setattr(ros, field.name, value)
    return ros


# ---------------------------------------------------------------------- the node


class RosBridgeNode:
    """The `vla_bridge` rclpy node around a core; `node` is the rclpy node to spin.

    While disabled (`~/disable`) the command timer does not tick the core and nothing is published: the
    controller holds its last command. Inputs and diagnostics keep flowing, so faults still latch.
    """

    def __init__(self, core: BridgeCore, command_hz: float) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.clock import Clock, ClockType
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosidl_runtime_py.utilities import get_message
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import Bool, Float64MultiArray, String
        from std_srvs.srv import Trigger

        self.core = core
        self.command_hz = command_hz
        self.enabled = True
        self.node = rclpy.create_node(NODE_NAME)
        self.params = NodeParams(**{name: self.node.declare_parameter(name, default).value
                                    for name, default in NodeParams.declared().items()})
        self.params.check_cameras(core.cameras)
        self._resolve = functools.cache(get_message)
        self._log = self.node.get_logger()

        # Newest sample only: the core acts on the latest state, never on a backlog.
        newest = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)  # a late frame is worthless
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)  # a (re)started node still sees them
        outgoing = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        p, n = self.params, self.node
        n.create_subscription(JointState, p.joint_states_topic, self._on_joint_state, newest)
        image_type = CompressedImage if p.compressed_images else Image
        for camera, topic in p.cameras().items():
            n.create_subscription(image_type, topic, functools.partial(self._on_image, camera), best_effort)
        n.create_subscription(String, p.instruction_topic, lambda m: core.on_instruction(m.data), latched)
        n.create_subscription(Bool, p.estop_topic, lambda m: core.on_estop(m.data, time.monotonic()), latched)
        if p.heartbeat_topic:
            n.create_subscription(Bool, p.heartbeat_topic, self._on_heartbeat, best_effort)
        if core.privileged:
            self._log.warning(f"the scripted expert plans from the simulator's state on {SIM_STATE_TOPIC}: it drives "
                              "only the simulated arm")
            n.create_subscription(Float64MultiArray, SIM_STATE_TOPIC, self._on_sim_state, newest)
        command_type = self._resolve(msgs.ros_type_name(
            msgs.Float64MultiArray if p.command_interface == "forward_position" else msgs.JointTrajectory))
        self._commands = n.create_publisher(command_type, p.command_topic, outgoing)
        self._diagnostics = n.create_publisher(DiagnosticArray, p.diagnostics_topic, outgoing)
        n.create_service(Trigger, "~/reset", self._on_reset)
        n.create_service(Trigger, "~/enable", functools.partial(self._set_enabled, True))
        n.create_service(Trigger, "~/disable", functools.partial(self._set_enabled, False))
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # the wall clock may jump (NTP); ticks must not
        n.create_timer(1.0 / command_hz, self._tick, clock=steady)
        n.create_timer(1.0 / DIAGNOSTICS_HZ, self._publish_diagnostics, clock=steady)
        self._log.info(f"{p.command_interface} commands on {p.command_topic} at {command_hz:g} Hz; joint states "
                       f"{p.joint_states_topic}, cameras {p.cameras()}, instruction {p.instruction_topic}, "
                       f"e-stop {p.estop_topic}, heartbeat {p.heartbeat_topic or '(joint states)'}")

    # ------------------------------------------------------------------ inputs
    def _on_joint_state(self, msg: Any) -> None:
        now = time.monotonic()
        try:
            positions = msgs.to_numpy(msg, self.core.names)
        except ValueError as error:  # dropped: if no good state follows, the watchdog's timeout holds the arm
            self._log.error(f"dropped a joint state: {error}", throttle_duration_sec=1.0)
            return
        self.core.on_joint_state(positions, now, now)

    def _on_image(self, camera: str, msg: Any) -> None:
        now = time.monotonic()
        try:
            if self.params.compressed_images:
                image = decode_compressed_image(msg.format, msg.data)
            else:
                image = msgs.image_to_numpy(msg)
        except ValueError as error:  # dropped: the camera timeout catches a stream of bad frames
            self._log.error(f"dropped a frame from camera {camera!r}: {error}", throttle_duration_sec=1.0)
            return
        self.core.on_image(camera, image, now)

    def _on_heartbeat(self, msg: Any) -> None:
        if msg.data:
            self.core.watchdog.heartbeat(time.monotonic())

    def _on_sim_state(self, msg: Any) -> None:
        self.core.on_sim_state(msgs.multi_array_to_numpy(msg), msg.layout.dim[0].label)  # the label is the task

    # ------------------------------------------------------------------ services
    def _on_reset(self, request: Any, response: Any) -> Any:
        try:
            self.core.reset(time.monotonic())
        except ResetRefused as refused:
            response.success, response.message = False, str(refused)
        else:
            response.success, response.message = True, "reset: the arm moves again on the policy's next command"
        self._log.info(f"~/reset: {response.message}")
        return response

    def _set_enabled(self, enabled: bool, request: Any, response: Any) -> Any:
        self.enabled = enabled
        fault = self.core.diagnostics()["fault"]
        response.success = True
        response.message = ("enabled" if enabled else "disabled: no commands, the controller holds") + (
            f"; fault {fault} is latched: the arm holds until ~/reset" if fault != "none" else "")
        self._log.info(response.message)
        return response

    # ------------------------------------------------------------------ timers
    def _tick(self) -> None:
        if not self.enabled:
            return
        result = self.core.tick(time.monotonic())
        if result is not None and result.publish:
            msg = command_message(self.params.command_interface, self.core.names, result.command, self.command_hz)
            self._commands.publish(to_ros(msg, self._resolve))

    def _publish_diagnostics(self) -> None:
        msg = diagnostics_message(self.core.diagnostics(), self.enabled, self.core.ready,
                                  self.node.get_clock().now().nanoseconds)
        self._diagnostics.publish(to_ros(msg, self._resolve))


def run_ros_node(policy, robot: str, cfg) -> None:
    """Run the `vla_bridge` node with the bridge config `cfg` until `duration` (0: forever) or Ctrl-C.

    The ROS domain comes from ROS_DOMAIN_ID as for every ROS 2 node (`domain_id` is for transport=dds).
    """
    try:
        import rclpy
        from rclpy.exceptions import NameValidationException, ParameterException
        from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    except ImportError as error:
        raise ValueError("transport=ros2 needs rclpy from a ROS 2 install (source /opt/ros/<distro>/setup.bash); "
                         f"use transport=dds without ROS ({error})") from None

    rclpy.init(args=ros_args(cfg.ros_params))
    core = bridge = None
    try:
        core = BridgeCore.from_config(policy, robot, cfg.command_hz, cfg.policy_hz, cfg.blend, time.monotonic(),
                                      joint_state_timeout=cfg.joint_state_timeout, camera_timeout=cfg.camera_timeout)
        try:
            bridge = RosBridgeNode(core, cfg.command_hz)
        except (ValueError, ParameterException, NameValidationException) as error:
            where = f"ros_params {cfg.ros_params}" if cfg.ros_params else f"{NODE_NAME}'s default parameters"
            raise ValueError(f"{where}: {error}") from None
        executor = SingleThreadedExecutor()
        executor.add_node(bridge.node)
        end = time.monotonic() + cfg.duration if cfg.duration > 0 else math.inf
        while rclpy.ok() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C: the controller holds the last command sent
    finally:
        if core is not None:
            core.close()
        if bridge is not None:
            bridge.node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
