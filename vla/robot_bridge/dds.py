"""The robot bridge's ROS 2 topics over Cyclone DDS, without a ROS install.

ROS 2 nodes on rmw_cyclonedds_cpp talk plain DDS: a ROS topic `/joint_states` is the DDS topic `rt/joint_states`
of type `sensor_msgs::msg::dds_::JointState_`, in plain CDR. `DdsBridgeTransport` writes and reads exactly those
(types in `vla.robot_bridge.msgs`) with the QoS a ROS 2 node would use, so a ROS 2 graph on the same domain sees the
bridge as one more participant publishing and subscribing the usual topics.

Two sides share one topic table: the `bridge` side (the policy node) reads joint states, camera images, the
instruction and the e-stop and writes commands, trajectories and diagnostics; the `robot` side (the robot driver,
the MuJoCo robot process, a test) does the reverse.

QoS (a reader's requests must not exceed what the writer offers, or they silently never match):
- joint states, commands, trajectories, diagnostics: reliable, volatile, keep last 10 (ROS 2's default profile);
- camera images: best effort, keep last 1 (a late frame is worthless; a best-effort reader also matches reliable
  camera drivers);
- e-stop and instruction: reliable, transient local, keep last 1 ("latched"): a bridge that starts or restarts after
  the e-stop was pressed still sees it. The writer must be transient local too, e.g.
  `ros2 topic pub --once --qos-durability transient_local --qos-reliability reliable /estop std_msgs/msg/Bool
  "{data: true}"`.
Readers keep only the newest sample: the bridge acts on the latest state, never on a backlog.

Network: Cyclone reads its configuration from the CYCLONEDDS_URI environment variable when a process creates its
first participant. Tests, benchmarks and demos set it to `loopback_uri()` (the loopback interface, multicast off)
before creating a transport. On a robot, set CYCLONEDDS_URI to a configuration naming the interface the robot's
ROS 2 graph is on, and use its ROS_DOMAIN_ID as `DdsConfig.domain_id`, e.g.

    <CycloneDDS><Domain Id="any"><General><Interfaces>
      <NetworkInterface name="enp3s0"/>
    </Interfaces></General></Domain></CycloneDDS>
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cyclonedds.core import Listener, Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.internal import InvalidSample
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from vla.robot_bridge.msgs import (
    Bool,
    DiagnosticArray,
    Float64MultiArray,
    Image,
    JointState,
    JointTrajectory,
    String,
    dds_topic,
)

# bridge and robot write their own channels and read the other's; an observer (the teleop recorder) reads every
# channel; an operator writes the recording controls.
Side = Literal["bridge", "robot", "observer", "operator"]
SIDES = ("bridge", "robot", "observer", "operator")


def loopback_uri() -> str:
    """`file://` URI of the shipped Cyclone configuration that keeps DDS on the loopback interface."""
    return (Path(__file__).parent / "cyclonedds_loopback.xml").resolve().as_uri()


def _qos(reliable: bool, depth: int, transient_local: bool = False) -> Qos:
    reliability = Policy.Reliability.Reliable(max_blocking_time=duration(milliseconds=100))
    return Qos(
        reliability if reliable else Policy.Reliability.BestEffort,
        Policy.History.KeepLast(depth),
        Policy.Durability.TransientLocal if transient_local else Policy.Durability.Volatile,
        # ROS 2 speaks plain (XCDR1) CDR; pin it rather than rely on the type's default representation.
        Policy.DataRepresentation(use_cdrv0_representation=True),
    )


@dataclass(frozen=True)
class _Channel:
    msg_type: type[IdlStruct]
    writer_side: Side
    writer_qos: Qos
    reader_qos: Qos


# Writers keep ROS 2's default depth for retransmission; readers keep only the newest sample.
_RELIABLE = {"writer_qos": _qos(True, 10), "reader_qos": _qos(True, 1)}
_LATCHED = {"writer_qos": _qos(True, 1, transient_local=True), "reader_qos": _qos(True, 1, transient_local=True)}
_CHANNELS: dict[str, _Channel] = {
    "joint_states": _Channel(JointState, "robot", **_RELIABLE),
    "instruction": _Channel(String, "robot", **_LATCHED),
    "estop": _Channel(Bool, "robot", **_LATCHED),
    "command": _Channel(Float64MultiArray, "bridge", **_RELIABLE),
    "trajectory": _Channel(JointTrajectory, "bridge", **_RELIABLE),
    "diagnostics": _Channel(DiagnosticArray, "bridge", **_RELIABLE),
    # Simulation only: the MuJoCo robot's full state, for privileged scripted experts. Real robots never publish it.
    "sim_state": _Channel(Float64MultiArray, "robot", **_RELIABLE),
    # Teleop recording: start | stop | fail | discard (vla.data.topic_recorder).
    "record_control": _Channel(String, "operator", **_RELIABLE),
}
_CAMERA = _Channel(Image, "robot", writer_qos=_qos(False, 1), reader_qos=_qos(False, 1))


@dataclass(frozen=True)
class DdsConfig:
    """Domain and ROS 2 topic names of the bridge (topics as ROS names; `rt/` is added on the wire)."""

    domain_id: int = 0
    joint_states: str = "/joint_states"
    cameras: Mapping[str, str] = field(
        default_factory=lambda: {"front": "/cameras/front/image_raw", "wrist": "/cameras/wrist/image_raw"}
    )
    instruction: str = "/instruction"
    estop: str = "/estop"
    # ros2_control: a forward position controller takes Float64MultiArray, joint_trajectory_controller a trajectory.
    command: str = "/forward_position_controller/commands"
    trajectory: str = "/joint_trajectory_controller/joint_trajectory"
    diagnostics: str = "/diagnostics"
    sim_state: str = "/vla_sim/state"
    record_control: str = "/vla/record_control"

    def __post_init__(self) -> None:
        # 0..232 keeps Cyclone's default port mapping (7400 + 250 * domain_id + ...) within the UDP port range.
        if not 0 <= self.domain_id <= 232:
            raise ValueError(f"domain_id must be in 0..232 (ROS_DOMAIN_ID), got {self.domain_id}")
        for name, topic in self.topics().items():
            try:
                dds_topic(topic)
            except ValueError as error:
                raise ValueError(f"DdsConfig topic {name!r}: {error}") from None

    def topics(self) -> dict[str, str]:
        """ROS topic per channel key (`joint_states`, ..., and `camera/<name>` per camera)."""
        topics = {key: getattr(self, key) for key in _CHANNELS}
        topics.update({f"camera/{name}": topic for name, topic in self.cameras.items()})
        return topics


class DdsBridgeTransport:
    """Writers and readers for one side of the bridge's topics on one DDS domain participant.

    `take_latest_*` returns the newest sample that arrived since the previous take, or None. `listen` instead hands
    every arriving sample to a callback, on Cyclone's receive thread (keep it short); a listened topic is consumed
    by its callback. CYCLONEDDS_URI must be set before the first transport of a process is created.
    """

    def __init__(self, side: Side, config: DdsConfig | None = None) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        self.side = side
        self.config = config or DdsConfig()
        self._participant = DomainParticipant(self.config.domain_id)
        self._writers: dict[str, DataWriter] = {}
        self._readers: dict[str, DataReader] = {}
        for key, ros_topic in self.config.topics().items():
            channel = _CAMERA if key.startswith("camera/") else _CHANNELS[key]
            topic = Topic(self._participant, dds_topic(ros_topic), channel.msg_type)
            if channel.writer_side == side:
                self._writers[key] = DataWriter(self._participant, topic, qos=channel.writer_qos)
            else:
                self._readers[key] = DataReader(self._participant, topic, qos=channel.reader_qos)

    # robot side writes

    def publish_record_control(self, control: str) -> None:
        self._write("record_control", String(data=control))

    def publish_sim_state(self, msg: Float64MultiArray) -> None:
        self._write("sim_state", msg)

    def publish_joint_state(self, msg: JointState) -> None:
        self._write("joint_states", msg)

    def publish_image(self, camera: str, msg: Image) -> None:
        self._write(f"camera/{camera}", msg)

    def publish_instruction(self, text: str) -> None:
        self._write("instruction", String(data=text))

    def publish_estop(self, stop: bool) -> None:
        self._write("estop", Bool(data=stop))

    # bridge side writes

    def publish_command(self, msg: Float64MultiArray) -> None:
        self._write("command", msg)

    def publish_trajectory(self, msg: JointTrajectory) -> None:
        self._write("trajectory", msg)

    def publish_diagnostics(self, msg: DiagnosticArray) -> None:
        self._write("diagnostics", msg)

    # bridge side reads

    def take_latest_joint_state(self) -> JointState | None:
        return self._take_latest("joint_states")

    def take_latest_image(self, camera: str) -> Image | None:
        return self._take_latest(f"camera/{camera}")

    def take_latest_instruction(self) -> str | None:
        msg = self._take_latest("instruction")
        return None if msg is None else msg.data

    def take_latest_estop(self) -> bool | None:
        msg = self._take_latest("estop")
        return None if msg is None else msg.data

    def take_latest_sim_state(self) -> Float64MultiArray | None:
        return self._take_latest("sim_state")

    # robot side reads

    def take_latest_command(self) -> Float64MultiArray | None:
        return self._take_latest("command")

    def take_latest_trajectory(self) -> JointTrajectory | None:
        return self._take_latest("trajectory")

    def take_latest_diagnostics(self) -> DiagnosticArray | None:
        return self._take_latest("diagnostics")

    # generic

    def listen(self, key: str, callback: Callable[[Any], None]) -> None:
        """Call `callback(msg)` for every sample arriving on channel `key` (see `DdsConfig.topics`)."""
        reader = self._reader(key)

        def on_data_available(_reader: DataReader) -> None:
            for sample in reader.take(64):
                if not isinstance(sample, InvalidSample):
                    callback(sample)

        reader.set_listener(Listener(on_data_available=on_data_available))

    def matched(self, key: str) -> int:
        """How many remote readers (for a channel this side writes) or writers (one it reads) match channel `key`."""
        if key in self._writers:
            return len(self._writers[key].get_matched_subscriptions())
        return len(self._reader(key).get_matched_publications())

    def wait_matched(self, keys: list[str], timeout_s: float) -> bool:
        """Wait until every channel in `keys` has a match; volatile samples written before that are lost."""
        deadline = time.monotonic() + timeout_s
        while not all(self.matched(key) for key in keys):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Delete the readers, writers and participant (Cyclone deletes an entity when its last reference goes)."""
        for reader in self._readers.values():
            reader.set_listener(None)
        self._readers.clear()
        self._writers.clear()
        del self._participant

    def __enter__(self) -> DdsBridgeTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self, key: str, msg: IdlStruct) -> None:
        writer = self._writers.get(key)
        if writer is None:
            raise ValueError(self._wrong_side(key, "write"))
        writer.write(msg)

    def _reader(self, key: str) -> DataReader:
        reader = self._readers.get(key)
        if reader is None:
            raise ValueError(self._wrong_side(key, "read"))
        return reader

    def _take_latest(self, key: str) -> Any:
        samples = [s for s in self._reader(key).take(64) if not isinstance(s, InvalidSample)]
        return samples[-1] if samples else None

    def _wrong_side(self, key: str, action: str) -> str:
        if key not in self.config.topics():
            return f"unknown channel {key!r}; this transport has {sorted(self.config.topics())}"
        return f"the {self.side} side does not {action} {key!r} ({self.config.topics()[key]})"
