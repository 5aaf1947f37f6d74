#!/usr/bin/env python3
"""Reads an episode file with the Python `mcap` and `mcap-ros2-support` packages (nobody at
skillgraft wrote them) and prints, as JSON, every message decoded through the file's own
schemas: topic, log time, publish time, and the numbers it carries (for images: size, encoding,
the SHA-256 of the pixels and one pixel); and the compression of the file's chunks."""

import hashlib
import json
import sys

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory


def numbers(msg):
    kind = type(msg).__name__
    if hasattr(msg, "encoding") and hasattr(msg, "step"):  # Image
        data = bytes(msg.data)
        at = 9 * msg.step + 5 * 3
        return {"width": msg.width, "height": msg.height, "encoding": msg.encoding, "step": msg.step,
                "sha256": hashlib.sha256(data).hexdigest(), "pixel_5_9": list(data[at:at + 3]),
                "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec]}
    if hasattr(msg, "position"):  # JointState
        return {"name": list(msg.name), "position": list(msg.position), "velocity": list(msg.velocity),
                "effort": list(msg.effort), "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec]}
    if hasattr(msg, "linear"):  # Twist
        return {"values": [msg.linear.x, msg.linear.y, msg.linear.z, msg.angular.x, msg.angular.y, msg.angular.z]}
    if hasattr(msg, "data") and hasattr(msg, "layout"):  # *MultiArray
        return {"values": list(msg.data)}
    if hasattr(msg, "x"):  # Point, Vector3
        return {"values": [msg.x, msg.y, msg.z]}
    return {"kind": kind}


def main():
    out = {"channels": {}, "messages": [], "metadata": {}, "compression": []}
    with open(sys.argv[1], "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        for ch in summary.channels.values():
            schema = summary.schemas[ch.schema_id]
            out["channels"][ch.topic] = {"schema": schema.name, "encoding": schema.encoding,
                                         "message_encoding": ch.message_encoding, "role": ch.metadata.get("skillgraft.role")}
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            out["messages"].append({"topic": channel.topic, "log_time": message.log_time,
                                    "publish_time": message.publish_time, **numbers(decoded)})
        out["compression"] = sorted({c.compression for c in summary.chunk_indexes})
        for m in reader.iter_metadata():
            out["metadata"][m.name] = dict(m.metadata)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
