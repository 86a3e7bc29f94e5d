"""`vla-record source=ros2`: the teleop recorder as an rclpy node (`vla_record`), on a machine with ROS 2.

A thin adapter: messages become numpy through `vla.robot_bridge.msgs`' helpers and all logic lives in
`TopicRecorder`. Topics come from the `vla_record` parameters (launch/params/<arm>.yaml).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla.data.episode_writer import EpisodeWriter
from vla.data.topic_recorder import TopicRecorder
from vla.limits import load_robot_limits
from vla.robot_bridge import msgs

_DEFAULTS = {
    "joint_states_topic": "/joint_states",
    "camera_topics": ["/cameras/front/image_raw", "/cameras/wrist/image_raw"],
    "camera_names": ["front", "wrist"],
    "instruction_topic": "/instruction",
    "command_topic": "/forward_position_controller/commands",
    "control_topic": "/vla/record_control",
}


def record_from_ros2(root: Path, cfg) -> None:
    try:
        import rclpy
        from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray, String
    except ImportError as err:
        raise ValueError("source=ros2 needs rclpy from a ROS 2 install (source /opt/ros/<distro>/setup.bash); "
                         f"use source=dds without ROS ({err})") from None

    rclpy.init(args=["--ros-args", "--params-file", cfg.ros_params] if cfg.ros_params else None)
    node = rclpy.create_node("vla_record")
    params = {key: node.declare_parameter(key, value).value for key, value in _DEFAULTS.items()}
    cameras = tuple(params["camera_names"])
    if len(cameras) != len(params["camera_topics"]):
        raise ValueError("vla_record parameters: camera_names and camera_topics must have the same length")
    names = [*load_robot_limits(cfg.env.robot).joint_names, "gripper"]
    reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    best_effort = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT)
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)

    with EpisodeWriter(root, fps=cfg.env.control_hz, camera_names=list(cameras), robot_type=cfg.env.robot,
                       image_size=cfg.env.image_size, resume=cfg.resume) as writer:
        recorder = TopicRecorder(writer, cameras)
        node.create_subscription(JointState, params["joint_states_topic"], lambda m: recorder.on_joint_state(
            msgs.to_numpy(msgs.JointState(name=list(m.name), position=list(m.position)), names)), reliable)
        node.create_subscription(Float64MultiArray, params["command_topic"],
                                 lambda m: recorder.on_command(np.asarray(m.data, dtype=np.float32)), reliable)
        node.create_subscription(String, params["instruction_topic"], lambda m: recorder.on_instruction(m.data),
                                 latched)
        node.create_subscription(String, params["control_topic"],
                                 lambda m: node.get_logger().info(recorder.on_control(m.data)), reliable)
        for camera, topic in zip(cameras, params["camera_topics"], strict=True):
            node.create_subscription(Image, topic, lambda m, c=camera: recorder.on_image(c, msgs.image_to_numpy(
                msgs.Image(height=m.height, width=m.width, encoding=m.encoding, step=m.step,
                           data=bytes(m.data))).copy()), best_effort)
        node.create_timer(1.0 / cfg.env.control_hz, recorder.tick)
        try:
            rclpy.spin(node)
        except KeyboardInterrupt:
            pass
        finally:
            if recorder.recording:
                recorder.on_control("discard")
            node.destroy_node()
            rclpy.shutdown()
