#!/usr/bin/env python3
"""Serialise sample ROS 2 messages with rosbags (an independent, pure-Python CDR implementation)
and write them as golden fixtures: tests/fixtures/cdr/<pkg>__<Name>.json holds the message as
JSON (field names as in the .msg) and the hex of its CDR bytes. The Rust tests build the same
message from the JSON and must produce exactly these bytes, and decode them back.

    tools/test.sh --test ros_messages          # makes target/venv-ros (tools/requirements-ros.txt)
    target/venv-ros/bin/python tools/make_cdr_fixtures.py
"""

import json
import math
import pathlib
import sys

import numpy as np
from rosbags.typesys import Stores, get_typestore

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cdr"
TS = get_typestore(Stores.ROS2_HUMBLE)
T = TS.types


def time(sec, nanosec):
    return T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def header(sec, nanosec, frame):
    return T["std_msgs/msg/Header"](stamp=time(sec, nanosec), frame_id=frame)


def vec3(x, y, z):
    return T["geometry_msgs/msg/Vector3"](x=x, y=y, z=z)


def layout(dims, offset=0):
    D = T["std_msgs/msg/MultiArrayDimension"]
    return T["std_msgs/msg/MultiArrayLayout"](dim=[D(label=l, size=s, stride=st) for l, s, st in dims], data_offset=offset)


def f64(*v):
    return np.array(v, dtype=np.float64)


SAMPLES = {
    "sensor_msgs/msg/Image": [
        # 2x3 rgb8 with each row padded to 11 bytes: the uint8[] follows a u8 and a u32.
        T["sensor_msgs/msg/Image"](
            header=header(7, 8, "camera_optical_frame"), height=2, width=3, encoding="rgb8", is_bigendian=0, step=11,
            data=np.arange(22, dtype=np.uint8) * 11,
        ),
        T["sensor_msgs/msg/Image"](
            header=header(0, 0, ""), height=1, width=1, encoding="16UC1", is_bigendian=1, step=2,
            data=np.array([1, 2], dtype=np.uint8),
        ),
    ],
    "sensor_msgs/msg/CompressedImage": [
        T["sensor_msgs/msg/CompressedImage"](
            header=header(3, 4, "cam"), format="rgb8; jpeg compressed bgr8", data=np.array([255, 216, 255, 217], dtype=np.uint8)
        ),
        T["sensor_msgs/msg/CompressedImage"](header=header(0, 0, ""), format="png", data=np.array([], dtype=np.uint8)),
    ],
    "builtin_interfaces/msg/Time": [time(1764439200, 123456789), time(-5, 0)],
    "builtin_interfaces/msg/Duration": [T["builtin_interfaces/msg/Duration"](sec=2, nanosec=500_000_000)],
    "std_msgs/msg/Header": [header(12, 34, "base_link"), header(0, 0, "")],
    "std_msgs/msg/String": [T["std_msgs/msg/String"](data="start pick-and-place"), T["std_msgs/msg/String"](data="")],
    "std_msgs/msg/Bool": [T["std_msgs/msg/Bool"](data=True), T["std_msgs/msg/Bool"](data=False)],
    "std_msgs/msg/Float32MultiArray": [
        T["std_msgs/msg/Float32MultiArray"](layout=layout([("joints", 3, 3)]), data=np.array([0.5, -1.25, 3.0], dtype=np.float32)),
        T["std_msgs/msg/Float32MultiArray"](layout=layout([]), data=np.array([], dtype=np.float32)),
    ],
    "std_msgs/msg/Float64MultiArray": [
        T["std_msgs/msg/Float64MultiArray"](layout=layout([("joints", 3, 3)]), data=f64(0.1, -0.2, 0.3)),
        T["std_msgs/msg/Float64MultiArray"](layout=layout([("rows", 2, 6), ("cols", 3, 3)], offset=1), data=f64(9.0, 1, 2, 3, 4, 5, 6)),
    ],
    "sensor_msgs/msg/JointState": [
        T["sensor_msgs/msg/JointState"](
            header=header(100, 5, "arm"), name=["shoulder", "elbow", "wrist"],
            position=f64(0.1, -0.5, 1.5), velocity=f64(0.0, 0.25, -0.25), effort=f64()),
        T["sensor_msgs/msg/JointState"](header=header(0, 0, ""), name=[], position=f64(), velocity=f64(), effort=f64()),
    ],
    "sensor_msgs/msg/Imu": [
        T["sensor_msgs/msg/Imu"](
            header=header(7, 8, "imu_link"),
            orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(0.25), w=math.cos(0.25)),
            orientation_covariance=f64(*([0.01] + [0.0] * 3 + [0.01] + [0.0] * 3 + [0.01])),
            angular_velocity=vec3(0.1, 0.2, -0.3),
            angular_velocity_covariance=f64(*([-1.0] + [0.0] * 8)),
            linear_acceleration=vec3(0.0, 0.0, 9.81),
            linear_acceleration_covariance=f64(*range(9)),
        )
    ],
    "geometry_msgs/msg/Vector3": [vec3(1.0, -2.0, 3.5)],
    "geometry_msgs/msg/Point": [T["geometry_msgs/msg/Point"](x=0.4, y=0.0, z=0.3)],
    "geometry_msgs/msg/Quaternion": [T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)],
    "geometry_msgs/msg/Twist": [T["geometry_msgs/msg/Twist"](linear=vec3(0.5, 0.0, 0.0), angular=vec3(0.0, 0.0, -0.75))],
    "trajectory_msgs/msg/JointTrajectory": [
        T["trajectory_msgs/msg/JointTrajectory"](
            header=header(3, 4, ""), joint_names=["a", "bb", "ccc"],
            points=[T["trajectory_msgs/msg/JointTrajectoryPoint"](
                positions=f64(1, 2, 3), velocities=f64(0.5, 0.5, 0.5), accelerations=f64(), effort=f64(),
                time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=20_000_000))]),
    ],
    "diagnostic_msgs/msg/KeyValue": [T["diagnostic_msgs/msg/KeyValue"](key="rate_hz", value="99.8")],
    "diagnostic_msgs/msg/DiagnosticStatus": [
        T["diagnostic_msgs/msg/DiagnosticStatus"](level=1, name="skillgraft: control", message="stale input",
            hardware_id="arm-b", values=[T["diagnostic_msgs/msg/KeyValue"](key="k", value="v")]),
    ],
    "diagnostic_msgs/msg/DiagnosticArray": [
        T["diagnostic_msgs/msg/DiagnosticArray"](header=header(9, 10, ""), status=[
            T["diagnostic_msgs/msg/DiagnosticStatus"](level=0, name="a", message="ok", hardware_id="", values=[]),
            T["diagnostic_msgs/msg/DiagnosticStatus"](level=2, name="b", message="bad", hardware_id="hw",
                values=[T["diagnostic_msgs/msg/KeyValue"](key="x", value="1"), T["diagnostic_msgs/msg/KeyValue"](key="y", value="")]),
        ]),
    ],
}


def plain(value):
    """The message as JSON-ready data, field names as in the .msg."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__dataclass_fields__"):
        return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__ if name != "__msgtype__"}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))


def main():
    """Writes every fixture, or only the types named on the command line."""
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])
    for type_name, messages in SAMPLES.items():
        if only and type_name not in only:
            continue
        cases = []
        for m in messages:
            raw = bytes(TS.serialize_cdr(m, type_name))
            assert plain(TS.deserialize_cdr(raw, type_name)) == plain(m)
            cases.append({"message": plain(m), "cdr": raw.hex()})
        path = OUT / (type_name.replace("/msg/", "__").replace("/", "__") + ".json")
        path.write_text(json.dumps({"type": type_name, "store": "ROS2_HUMBLE", "rosbags": "0.11.9", "cases": cases}, indent=1) + "\n")
        print(path.name, len(cases))


if __name__ == "__main__":
    main()
