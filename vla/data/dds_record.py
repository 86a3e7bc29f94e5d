"""`vla-record source=dds`: record a robot's ROS 2 topics over Cyclone DDS (no ROS install) into a dataset.

Controls arrive on the `/vla/record_control` topic (std_msgs/String: start, stop, fail, discard) and, when the
recorder runs in a terminal, as typed lines.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

from vla.data.episode_writer import EpisodeWriter
from vla.data.topic_recorder import TopicRecorder
from vla.limits import load_robot_limits
from vla.robot_bridge import msgs
from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig


def _read_keyboard(controls: queue.Queue) -> None:
    for line in sys.stdin:
        controls.put(line)


def record_from_dds(root: Path, *, robot: str, cameras: tuple[str, ...], image_size: int, fps: int,
                    domain_id: int = 0, resume: bool = False, duration_s: float = 0.0) -> int:
    """Record until `duration_s` (0: until Ctrl-C); returns the number of episodes in the dataset."""
    limits = load_robot_limits(robot)
    names = [*limits.joint_names, "gripper"]
    topics = DdsConfig().cameras
    unknown = [c for c in cameras if c not in topics]
    if unknown:
        raise ValueError(f"env.cameras: no DDS topic for camera(s) {unknown} (known: {list(topics)})")
    config = DdsConfig(domain_id=domain_id, cameras={c: topics[c] for c in cameras})
    controls: queue.Queue[str] = queue.Queue()
    if sys.stdin.isatty():
        threading.Thread(target=_read_keyboard, args=(controls,), daemon=True).start()
        print("type start, stop, fail or discard (or publish them on /vla/record_control)")
    with (
        EpisodeWriter(root, fps=fps, camera_names=list(cameras), robot_type=limits.name, image_size=image_size,
                      resume=resume) as writer,
        DdsBridgeTransport("observer", config) as transport,
    ):
        recorder = TopicRecorder(writer, cameras)
        transport.listen("record_control", lambda msg: controls.put(msg.data))
        start, tick, period = time.monotonic(), 0, 1.0 / fps
        try:
            while duration_s <= 0 or time.monotonic() - start < duration_s:
                _take_inputs(transport, recorder, names, cameras)
                while not controls.empty():
                    print(recorder.on_control(controls.get()))
                recorder.tick()
                tick += 1
                time.sleep(max(0.0, start + tick * period - time.monotonic()))
        except KeyboardInterrupt:
            pass
        if recorder.recording:
            print(recorder.on_control("discard"))  # an unfinished episode is not kept
        return writer.num_episodes


def _take_inputs(transport: DdsBridgeTransport, recorder: TopicRecorder, names: list[str],
                 cameras: tuple[str, ...]) -> None:
    state = transport.take_latest_joint_state()
    if state is not None:
        recorder.on_joint_state(msgs.to_numpy(state, names))
    command = transport.take_latest_command()
    if command is not None:
        recorder.on_command(msgs.multi_array_to_numpy(command))
    instruction = transport.take_latest_instruction()
    if instruction is not None:
        recorder.on_instruction(instruction)
    for camera in cameras:
        image = transport.take_latest_image(camera)
        if image is not None:
            recorder.on_image(camera, msgs.image_to_numpy(image).copy())
