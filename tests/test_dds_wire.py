"""Golden wire tests: every bridge message type serializes to the bytes a ROS 2 node sends.

The reference is rosbags' ROS 2 (Humble) CDR serializer, an implementation independent of cyclonedds. Each message
is built once as our cyclonedds type and converted field by field (driven by rosbags' own field definitions, so a
field renamed, reordered or retyped on our side fails) into the rosbags type.
"""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.base import Nodetype

from vla.robot_bridge import msgs
from vla.robot_bridge.msgs import (
    MESSAGE_TYPES,
    Bool,
    CompressedImage,
    DiagnosticArray,
    DiagnosticStatus,
    Duration,
    Float64MultiArray,
    Header,
    Image,
    JointState,
    JointTrajectory,
    JointTrajectoryPoint,
    KeyValue,
    MultiArrayDimension,
    MultiArrayLayout,
    String,
    Time,
)

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
NUMPY_DTYPES = {"float64": np.float64, "uint8": np.uint8}


def to_rosbags(msg):
    """The rosbags message with the same content as our cyclonedds message."""
    name = msgs.ros_type_name(type(msg))
    _, fields = TYPESTORE.fielddefs[name]
    values = {}
    for field_name, (nodetype, desc) in fields:
        value = getattr(msg, field_name)
        if nodetype == Nodetype.NAME:
            values[field_name] = to_rosbags(value)
        elif nodetype == Nodetype.SEQUENCE:
            (item_nodetype, item_desc), _bound = desc
            if item_nodetype == Nodetype.NAME:
                values[field_name] = [to_rosbags(item) for item in value]
            elif item_desc[0] in NUMPY_DTYPES:
                values[field_name] = np.array(list(value), dtype=NUMPY_DTYPES[item_desc[0]])
            else:
                values[field_name] = list(value)
        else:
            values[field_name] = value
    return TYPESTORE.types[name](**values)


def rosbags_bytes(msg) -> bytes:
    return bytes(TYPESTORE.serialize_cdr(to_rosbags(msg), msgs.ros_type_name(type(msg))))


STAMP = Time(sec=1_700_000_000, nanosec=123_456_789)
# Every type, with contents that exercise alignment: odd-length strings before float64 arrays, nested sequences,
# unicode, and empty strings/arrays.
EXAMPLES = {
    "Time": [Time(), STAMP, Time(sec=-5, nanosec=999_999_999)],
    "Duration": [Duration(), Duration(sec=2, nanosec=500_000_000)],
    "Header": [Header(), Header(stamp=STAMP, frame_id="panda_link0")],
    "String": [String(), String(data="put the red cube in the bin"), String(data="grüne Würfel ✓")],
    "Bool": [Bool(), Bool(data=True)],
    "MultiArrayDimension": [MultiArrayDimension(), MultiArrayDimension(label="joints", size=7, stride=7)],
    "MultiArrayLayout": [
        MultiArrayLayout(),
        MultiArrayLayout(dim=[MultiArrayDimension("t", 2, 6), MultiArrayDimension("j", 3, 3)], data_offset=1),
    ],
    "Float64MultiArray": [
        Float64MultiArray(),
        msgs.float64_multi_array([0.1, -0.2, 0.3, 1.5, -2.0, 0.0, 0.7, 1.0]),
        msgs.float64_multi_array(np.arange(6.0).reshape(2, 3), labels=["t", "j"]),
    ],
    "JointState": [
        JointState(),
        msgs.joint_state([f"panda_joint{i}" for i in range(1, 8)], np.linspace(-1, 1, 7), np.zeros(7),
                         stamp_ns=1_700_000_000_123_456_789, efforts=np.ones(7)),
        JointState(header=Header(STAMP, "a"), name=["j"], position=[1.0], velocity=[], effort=[]),
    ],
    "Image": [
        Image(),
        msgs.image_msg(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3), 1_700_000_000_000_000_001, "front"),
        msgs.image_msg(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8), 5, "wrist"),
    ],
    "CompressedImage": [
        CompressedImage(),
        CompressedImage(header=Header(STAMP, "front"), format="jpeg", data=b"\xff\xd8\xff\xe0 not really a jpeg"),
    ],
    "JointTrajectoryPoint": [
        JointTrajectoryPoint(),
        JointTrajectoryPoint(positions=[0.1, 0.2], velocities=[0.0, 0.0], accelerations=[], effort=[1.0],
                             time_from_start=Duration(0, 20_000_000)),
    ],
    "JointTrajectory": [
        JointTrajectory(),
        msgs.joint_trajectory(["a", "bb", "ccc"], np.arange(12.0).reshape(4, 3) / 10, [0.1, 0.2, 0.3, 0.4], 7),
    ],
    "KeyValue": [KeyValue(), KeyValue(key="commands_clipped", value="3")],
    "DiagnosticStatus": [
        DiagnosticStatus(),
        msgs.diagnostic_status("vla_bridge: safety", {"clipped": 3, "estop": False}, DiagnosticStatus.WARN,
                               "clipping", "panda"),
    ],
    "DiagnosticArray": [
        DiagnosticArray(),
        msgs.diagnostic_array([msgs.diagnostic_status("a", {}), msgs.diagnostic_status("b", {"x": 1.5})], 42),
    ],
}
CASES = [pytest.param(example, id=f"{name}-{i}") for name, examples in EXAMPLES.items()
         for i, example in enumerate(examples)]


def test_examples_cover_every_message_type():
    assert sorted(EXAMPLES) == sorted(t.__name__ for t in MESSAGE_TYPES)
    for name, examples in EXAMPLES.items():
        assert all(type(example).__name__ == name for example in examples)


@pytest.mark.parametrize("msg_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
def test_fields_match_ros2_definition(msg_type):
    _, fields = TYPESTORE.fielddefs[msgs.ros_type_name(msg_type)]
    assert [f.name for f in dataclasses.fields(msg_type)] == [name for name, _ in fields]


@pytest.mark.parametrize("msg", CASES)
def test_bytes_match_ros2_cdr(msg):
    wire = msg.serialize()
    assert wire[:4] == b"\x00\x01\x00\x00"  # CDR little endian, plain (XCDR1): what ROS 2 sends
    assert wire == rosbags_bytes(msg)


@pytest.mark.parametrize("msg", CASES)
def test_deserialize_round_trip(msg):
    wire = msg.serialize()
    assert type(msg).deserialize(wire) == msg
    # and our reader decodes what the ROS 2 serializer wrote
    assert type(msg).deserialize(rosbags_bytes(msg)) == msg


def test_golden_bytes_by_hand():
    """One message spelled out, so the reference is not only another implementation."""
    wire = msgs.joint_state(["j"], [1.5], stamp_ns=2_000_000_003).serialize()
    assert wire == bytes.fromhex(
        "00010000"  # encapsulation: CDR_LE, options 0
        "02000000" "03000000"  # stamp sec=2, nanosec=3
        "01000000" "00000000"  # frame_id "": length 1 (the NUL), padded to 4
        "01000000" "02000000" "6a000000"  # name: 1 string of length 2 ("j\0"), padded
        "01000000" "000000000000f83f"  # position: 1 value, 1.5 (already 8-aligned from the body start: no padding)
        "00000000" "00000000"  # velocity, effort: empty
    )


def test_image_data_travels_as_bytes():
    msg = msgs.image_msg(np.zeros((4, 5, 3), dtype=np.uint8))
    assert type(Image.deserialize(msg.serialize()).data) is bytes


def test_type_names_are_mangled_like_rmw():
    assert msgs.dds_type_name(JointState) == "sensor_msgs::msg::dds_::JointState_"
    assert msgs.ros_type_name(JointState) == "sensor_msgs/msg/JointState"
    for msg_type in MESSAGE_TYPES:
        package, kind, dds, name = msgs.dds_type_name(msg_type).split("::")
        assert (kind, dds, name) == ("msg", "dds_", msg_type.__name__ + "_")
        assert msgs.ros_type_name(msg_type) in TYPESTORE.types
        assert msg_type.__idl_annotations__["extensibility"] == "final"


@pytest.mark.parametrize(
    ("ros", "dds"),
    [("/joint_states", "rt/joint_states"), ("joint_states", "rt/joint_states"),
     ("/cameras/front/image_raw", "rt/cameras/front/image_raw"), ("/robot_1/estop", "rt/robot_1/estop")],
)
def test_dds_topic(ros, dds):
    assert msgs.dds_topic(ros) == dds


@pytest.mark.parametrize("bad", ["", "/", "/joint_states/", "//a", "/a//b", "/1st", "~/private", "/{node}/x",
                                 "/has space", "/double__underscore"])
def test_dds_topic_rejects_invalid_names(bad):
    with pytest.raises(ValueError, match="invalid ROS 2 topic name"):
        msgs.dds_topic(bad)


# Random contents: strings are any UTF-8-encodable text without NUL (CDR strings are NUL-terminated UTF-8),
# floats any double (NaN and infinities included: both serializers copy the IEEE bits).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
NAMES = st.lists(TEXT, max_size=8)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
STAMPS = st.builds(Time, st.integers(-(2**31), 2**31 - 1), st.integers(0, 999_999_999))


@st.composite
def joint_states(draw):
    names = draw(NAMES)
    arrays = [draw(st.one_of(st.just([]), st.lists(FLOATS, min_size=len(names), max_size=len(names))))
              for _ in range(3)]
    return JointState(Header(draw(STAMPS), draw(TEXT)), names, *arrays)


@st.composite
def joint_trajectories(draw):
    names = draw(NAMES)
    row = st.lists(FLOATS, min_size=len(names), max_size=len(names))
    points = draw(st.lists(st.builds(JointTrajectoryPoint, row, st.one_of(st.just([]), row), st.just([]),
                                     st.just([]), st.builds(Duration, st.integers(0, 100), st.integers(0, 10**9 - 1))),
                           max_size=5))
    return JointTrajectory(Header(draw(STAMPS), "base"), names, points)


@settings(max_examples=200, deadline=None)
@given(joint_states())
def test_random_joint_states_match_ros2_cdr(msg):
    wire = msg.serialize()
    assert wire == rosbags_bytes(msg)
    assert JointState.deserialize(wire).serialize() == wire


@settings(max_examples=200, deadline=None)
@given(joint_trajectories())
def test_random_joint_trajectories_match_ros2_cdr(msg):
    wire = msg.serialize()
    assert wire == rosbags_bytes(msg)
    assert JointTrajectory.deserialize(wire).serialize() == wire


# converters


def test_time_and_duration():
    assert msgs.time_msg(1_700_000_000_123_456_789) == Time(1_700_000_000, 123_456_789)
    assert msgs.time_ns(msgs.time_msg(-1)) == -1 and msgs.time_msg(-1) == Time(-1, 999_999_999)
    assert msgs.duration_msg(0.02) == Duration(0, 20_000_000)
    assert math.isclose(msgs.duration_s(Duration(2, 500_000_000)), 2.5)


def test_joint_state_matched_by_name():
    msg = msgs.joint_state(["b", "gripper", "a"], [2.0, 0.04, 1.0], velocities=[0.2, 0.0, 0.1])
    np.testing.assert_array_equal(msgs.to_numpy(msg, ["a", "b"]), [1.0, 2.0])
    np.testing.assert_array_equal(msgs.to_numpy(msg, ["a", "b"], "velocity"), [0.1, 0.2])
    with pytest.raises(ValueError, match=r"lacks joints \['c'\]"):
        msgs.to_numpy(msg, ["a", "c"])
    with pytest.raises(ValueError, match="effort has 0 values for 3"):
        msgs.to_numpy(msg, ["a"], "effort")
    with pytest.raises(ValueError, match="duplicate"):
        msgs.to_numpy(JointState(name=["a", "a"], position=[1.0, 2.0]), ["a"])
    with pytest.raises(ValueError, match=r"positions must have shape \(2,\)"):
        msgs.joint_state(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="finite"):
        msgs.joint_state(["a"], [float("nan")])


def test_image_round_trip_and_validation():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = msgs.image_msg(rgb, 9, "front")
    assert (msg.encoding, msg.step, msg.height, msg.width, msg.header.frame_id) == ("rgb8", 15, 4, 5, "front")
    np.testing.assert_array_equal(msgs.image_to_numpy(msg), rgb)
    # bgr8 with padded rows, as some camera drivers send
    padded = np.zeros((4, 16), dtype=np.uint8)
    padded[:, :15] = rgb[..., ::-1].reshape(4, 15)
    bgr = Image(height=4, width=5, encoding="bgr8", step=16, data=padded.tobytes())
    np.testing.assert_array_equal(msgs.image_to_numpy(bgr), rgb)
    with pytest.raises(ValueError, match="encoding"):
        msgs.image_to_numpy(Image(height=1, width=1, encoding="mono8", step=1, data=b"\x00"))
    with pytest.raises(ValueError, match="expected step \\* height"):
        msgs.image_to_numpy(Image(height=2, width=1, encoding="rgb8", step=3, data=b"\x00" * 3))
    with pytest.raises(ValueError, match="step 2 is less"):
        msgs.image_to_numpy(Image(height=1, width=1, encoding="rgb8", step=2, data=b"\x00" * 2))
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        msgs.image_msg(np.zeros((4, 5), dtype=np.uint8))


def test_trajectory_round_trip_and_validation():
    positions = np.arange(6.0).reshape(3, 2)
    msg = msgs.joint_trajectory(["a", "b"], positions, [0.1, 0.2, 0.3])
    got, times = msgs.trajectory_to_numpy(msg, ["b", "a"])
    np.testing.assert_array_equal(got, positions[:, ::-1])
    np.testing.assert_allclose(times, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="strictly increasing"):
        msgs.joint_trajectory(["a", "b"], positions, [0.1, 0.1, 0.3])
    with pytest.raises(ValueError, match=r"shape \(T>0, 2\)"):
        msgs.joint_trajectory(["a", "b"], positions.T, [0.1, 0.2])
    with pytest.raises(ValueError, match="point 0 has 1 positions for 2 joints"):
        msgs.trajectory_to_numpy(JointTrajectory(joint_names=["a", "b"], points=[JointTrajectoryPoint([1.0])]), ["a"])


def test_multi_array_round_trip():
    values = np.arange(24.0).reshape(2, 3, 4)
    msg = msgs.float64_multi_array(values)
    assert [(d.size, d.stride) for d in msg.layout.dim] == [(2, 24), (3, 12), (4, 4)]
    np.testing.assert_array_equal(msgs.multi_array_to_numpy(msg), values)
    np.testing.assert_array_equal(msgs.multi_array_to_numpy(Float64MultiArray(data=[1.0, 2.0])), [1.0, 2.0])
    bad = Float64MultiArray(MultiArrayLayout([MultiArrayDimension("", 2, 3)]), [1.0, 2.0])
    with pytest.raises(ValueError, match="row-major"):
        msgs.multi_array_to_numpy(bad)


def test_diagnostics():
    status = msgs.diagnostic_status("bridge", {"clipped": 3, "estop": True}, DiagnosticStatus.ERROR, "e-stop")
    array = msgs.diagnostic_array([status], stamp_ns=5)
    assert msgs.diagnostic_values(array.status[0]) == {"clipped": "3", "estop": "True"}
    assert array.status[0].level == 2 and array.header.stamp == Time(0, 5)
    with pytest.raises(ValueError, match="diagnostic level"):
        msgs.diagnostic_status("bridge", {}, level=7)
