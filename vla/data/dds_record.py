"""`vla-record source=dds`: record a robot's ROS 2 topics over Cyclone DDS (no ROS install) into a dataset.

Controls arrive on the `/vla/record_control` topic (std_msgs/String: start, stop, fail, discard) and, when the
recorder runs in a terminal, as typed lines. With `bag`, every message received is also written to a rosbag2 (MCAP)
bag, stamped with its receive time, for replay (`python -m vla.robot_bridge.rosbag replay BAG`) or ROS 2 tools.
"""

from __future__ import annotations

import functools
import queue
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from vla.data.episode_writer import EpisodeWriter
from vla.data.topic_recorder import TopicRecorder
from vla.limits import load_robot_limits
from vla.robot_bridge import msgs
from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig
from vla.robot_bridge.rosbag import BagWriter


def _read_keyboard(controls: queue.Queue) -> None:
    for line in sys.stdin:
        controls.put(line)


class _Latest:
    """The newest message per channel since it was last taken, set on Cyclone's threads."""

    def __init__(self) -> None:
        self._msgs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def put(self, key: str, msg: Any) -> None:
        with self._lock:
            self._msgs[key] = msg

    def take(self, key: str) -> Any:
        with self._lock:
            return self._msgs.pop(key, None)


def _listen(transport: DdsBridgeTransport, key: str, on_msg: Callable[[Any], None], bag: BagWriter | None) -> None:
    """Hand every message on channel `key` to `on_msg`, after writing it to `bag` at its receive time."""
    topic = transport.config.topics()[key]

    def callback(msg: Any) -> None:
        if bag is not None:
            bag.write(topic, msg, time.time_ns())
        on_msg(msg)

    transport.listen(key, callback)


def record_from_dds(root: Path, *, robot: str, cameras: tuple[str, ...], image_size: int, fps: int,
                    domain_id: int = 0, resume: bool = False, duration_s: float = 0.0,
                    bag: Path | None = None) -> int:
    """Record until `duration_s` (0: until Ctrl-C); returns the number of episodes in the dataset.

    `bag`: also write every message received to a new rosbag2 (MCAP) bag there.
    """
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
        # Entered first and so closed last, once the transport's listeners no longer write to it.
        (BagWriter(bag) if bag is not None else nullcontext()) as bag_writer,
        EpisodeWriter(root, fps=fps, camera_names=list(cameras), robot_type=limits.name, image_size=image_size,
                      resume=resume) as writer,
        DdsBridgeTransport("observer", config) as transport,
    ):
        recorder = TopicRecorder(writer, cameras)
        # Listening rather than polling sees every message, which the bag keeps; the recorder uses the newest.
        latest = _Latest()
        for key in ("joint_states", "command", "instruction", *(f"camera/{c}" for c in cameras)):
            _listen(transport, key, functools.partial(latest.put, key), bag_writer)
        _listen(transport, "record_control", lambda msg: controls.put(msg.data), bag_writer)
        start, tick, period = time.monotonic(), 0, 1.0 / fps
        try:
            while duration_s <= 0 or time.monotonic() - start < duration_s:
                _take_inputs(latest, recorder, names, cameras)
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


def _take_inputs(latest: _Latest, recorder: TopicRecorder, names: list[str], cameras: tuple[str, ...]) -> None:
    state = latest.take("joint_states")
    if state is not None:
        recorder.on_joint_state(msgs.to_numpy(state, names))
    command = latest.take("command")
    if command is not None:
        recorder.on_command(msgs.multi_array_to_numpy(command))
    instruction = latest.take("instruction")
    if instruction is not None:
        recorder.on_instruction(instruction.data)
    for camera in cameras:
        image = latest.take(f"camera/{camera}")
        if image is not None:
            recorder.on_image(camera, msgs.image_to_numpy(image).copy())
