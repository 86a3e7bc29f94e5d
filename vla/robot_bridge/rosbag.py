"""Teleop sessions as rosbag2 bags (MCAP storage) through `rosbags`, and their replay over DDS.

A bag written here has the layout `ros2 bag record` writes: a directory holding `<name>.mcap` and `metadata.yaml`,
one connection per topic with its ROS 2 type name, message definition and type hash, and CDR payloads. Our message
types serialize to ROS 2 CDR already (vla.robot_bridge.msgs), so messages go in and come out as raw bytes, without
conversion, and any rosbag2 or MCAP reader (rosbags, `ros2 bag`, Foxglove) decodes them as ROS 2 messages.

    python -m vla.robot_bridge.rosbag info BAG
    python -m vla.robot_bridge.rosbag replay BAG [--rate R] [--domain-id D] [--wait S] [--commands]

Replay publishes on the network CYCLONEDDS_URI configures (see vla.robot_bridge.dds).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclonedds.idl import IdlStruct
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vla.robot_bridge.dds import DdsBridgeTransport, DdsConfig, Side
from vla.robot_bridge.msgs import MESSAGE_TYPES, ros_type_name

logger = logging.getLogger(__name__)

# Message definitions and type hashes for the bag's connections; ours match these field for field (test_dds_wire).
_TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
_MSG_TYPES = {ros_type_name(msg_type): msg_type for msg_type in MESSAGE_TYPES}
_STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

_Publish = Callable[[DdsBridgeTransport, Any], None]
# The side that writes each channel and how it publishes a message read back from a bag (see vla.robot_bridge.dds).
_PUBLISHERS: dict[str, tuple[Side, _Publish]] = {
    "joint_states": ("robot", DdsBridgeTransport.publish_joint_state),
    "instruction": ("robot", lambda transport, msg: transport.publish_instruction(msg.data)),
    "estop": ("robot", lambda transport, msg: transport.publish_estop(msg.data)),
    "sim_state": ("robot", DdsBridgeTransport.publish_sim_state),
    "command": ("bridge", DdsBridgeTransport.publish_command),
    "trajectory": ("bridge", DdsBridgeTransport.publish_trajectory),
    "diagnostics": ("bridge", DdsBridgeTransport.publish_diagnostics),
    "record_control": ("operator", lambda transport, msg: transport.publish_record_control(msg.data)),
}


# Channels that move the robot.
_ACTUATION = ("command", "trajectory")


def _publisher(key: str) -> tuple[Side, _Publish]:
    if key.startswith("camera/"):
        camera = key.removeprefix("camera/")
        return "robot", lambda transport, msg: transport.publish_image(camera, msg)
    return _PUBLISHERS[key]


class BagWriter:
    """Writes our messages into a new rosbag2 bag at `path` (a directory; it must not exist yet).

    Thread-safe, so DDS listeners can write from Cyclone's threads. Closing (also on an exception) writes the
    MCAP summary and metadata.yaml, which readers need: a bag whose process was killed is not readable.
    """

    def __init__(self, path: Path | str, storage: str = "mcap") -> None:
        if storage not in _STORAGES:
            raise ValueError(f"storage must be one of {sorted(_STORAGES)}, got {storage!r}")
        self.path = Path(path)
        # Version 8 rather than 9: Humble's rosbag2 cannot parse version 9's QoS lists; Jazzy and later read both.
        self._writer = Writer(self.path, version=8, storage_plugin=_STORAGES[storage])
        self._writer.open()
        self._connections: dict[str, Connection] = {}
        self._lock = threading.Lock()

    def write(self, ros_topic: str, msg: IdlStruct, log_time_ns: int) -> None:
        """Append `msg` on `ros_topic` at `log_time_ns` (ns since the epoch, the time it was received or sent)."""
        msgtype = ros_type_name(type(msg))
        data = msg.serialize()  # outside the lock: serializing an image takes longer than appending it
        with self._lock:
            connection = self._connections.get(ros_topic)
            if connection is None:
                connection = self._writer.add_connection(ros_topic, msgtype, typestore=_TYPESTORE)
                self._connections[ros_topic] = connection
            elif connection.msgtype != msgtype:
                raise ValueError(f"{ros_topic} carries {connection.msgtype} in this bag, not {msgtype}")
            self._writer.write(connection, log_time_ns, data)

    def close(self) -> None:
        with self._lock:
            if self._writer.storage is not None:
                self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # keep what was written, whatever ended the session


def read_bag(path: Path | str, topics: Collection[str] | None = None) -> Iterator[tuple[str, int, IdlStruct]]:
    """(ROS topic, log time in ns, message) for every message of the bag (or of `topics`), in log-time order.

    `path` is the bag directory or its storage file. A topic whose type is not one of ours is an error.
    """
    with Reader(path) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        for connection in connections:
            if connection.msgtype not in _MSG_TYPES:
                raise ValueError(f"{path}: {connection.topic} has type {connection.msgtype}, which vla does not "
                                 f"read (known: {sorted(_MSG_TYPES)})")
        if not connections:  # rosbags reads every connection when given none
            return
        for connection, log_time_ns, raw in reader.messages(connections):
            yield connection.topic, log_time_ns, _MSG_TYPES[connection.msgtype].deserialize(bytes(raw))


@dataclass(frozen=True)
class BagInfo:
    start_ns: int  # log time of the first message (0 in an empty bag)
    duration_s: float  # from the first message to the last
    topics: dict[str, tuple[str, int]]  # ROS topic -> (ROS type, message count)


def bag_info(path: Path | str) -> BagInfo:
    with Reader(path) as reader:
        topics = {topic: (info.msgtype or "(several types)", info.msgcount) for topic, info in reader.topics.items()}
        if not reader.message_count:
            return BagInfo(start_ns=0, duration_s=0.0, topics=topics)
        # rosbags' end time is just after the last message.
        return BagInfo(start_ns=reader.start_time, duration_s=(reader.end_time - 1 - reader.start_time) / 1e9,
                       topics=topics)


def replay_bag(path: Path | str, config: DdsConfig, rate: float = 1.0, *, commands: bool = False,
               wait_s: float = 5.0) -> int:
    """Publish a bag's messages on DDS with their original spacing in log time divided by `rate`.

    Each topic of `config` in the bag is published through a transport of the side that writes it (robot topics as
    the robot, commands as the bridge, record controls as the operator); other topics are skipped, and so are the
    commands unless `commands`: they would move a robot listening on this domain, with no safety filter on the way.
    Publishing starts once every replayed topic has a reader elsewhere, or after `wait_s`: samples written before a
    reader matches never reach it. Returns the number of messages published.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    in_bag = bag_info(path).topics
    keys = {topic: key for key, topic in config.topics().items() if topic in in_bag}
    if not commands:
        held_back = sorted(topic for topic, key in keys.items() if key in _ACTUATION)
        if held_back:
            logger.warning("not replaying the commands on %s (replay them with commands=True, --commands)", held_back)
        keys = {topic: key for topic, key in keys.items() if key not in _ACTUATION}
    replayed = sorted(keys)
    if not replayed:
        return 0
    publishers = {topic: _publisher(keys[topic]) for topic in replayed}
    sides = sorted({side for side, _ in publishers.values()})
    transports = {side: DdsBridgeTransport(side, config) for side in sides}
    try:
        # Each other transport here reads the channel too (a side reads every channel it does not write), so a
        # reader elsewhere is one match more.
        local_readers = len(transports) - 1

        def unmatched() -> list[str]:
            return [topic for topic, (side, _) in publishers.items()
                    if transports[side].matched(keys[topic]) <= local_readers]

        deadline = time.monotonic() + wait_s
        while (missing := unmatched()) and time.monotonic() < deadline:
            time.sleep(0.01)
        if missing:
            logger.warning("no subscriber for %s after %.1f s; publishing anyway", missing, wait_s)
        count, first_ns, start = 0, 0, 0.0
        for topic, log_time_ns, msg in read_bag(path, replayed):
            if count == 0:
                first_ns, start = log_time_ns, time.monotonic()
            time.sleep(max(0.0, start + (log_time_ns - first_ns) / 1e9 / rate - time.monotonic()))
            side, publish = publishers[topic]
            publish(transports[side], msg)
            count += 1
        return count
    finally:
        for transport in transports.values():
            transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vla.robot_bridge.rosbag", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="topics, types, message counts and duration of a bag")
    info.add_argument("bag", type=Path)
    replay = commands.add_parser("replay", help="publish a bag on DDS with its original timing")
    replay.add_argument("bag", type=Path)
    replay.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    replay.add_argument("--domain-id", type=int, default=0, help="DDS domain, i.e. ROS_DOMAIN_ID (default 0)")
    replay.add_argument("--wait", type=float, default=5.0, help="seconds to wait for subscribers (default 5)")
    replay.add_argument("--commands", action="store_true",
                        help="also replay the commands, which move a robot on the domain: only where none listens")
    args = parser.parse_args(argv)
    if args.command == "info":
        summary = bag_info(args.bag)
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.start_ns / 1e9))
        print(f"{args.bag}: {sum(n for _, n in summary.topics.values())} messages, "
              f"{summary.duration_s:.3f} s from {start}")
        for topic, (msgtype, count) in sorted(summary.topics.items()):
            print(f"  {topic:48s} {msgtype:36s} {count:8d}")
    else:
        count = replay_bag(args.bag, DdsConfig(domain_id=args.domain_id), rate=args.rate,
                           commands=args.commands, wait_s=args.wait)
        print(f"published {count} messages from {args.bag}")


if __name__ == "__main__":
    main()
