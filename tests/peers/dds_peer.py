#!/usr/bin/env python3
"""A ROS 2 peer nobody at skillgraft wrote: CycloneDDS (Python) publishes the example skill's
observations and reads its actions, and onnxruntime computes independently what the actions
should be. Prints one JSON report on stdout; the Rust tests (tests/dds_interop.rs) judge it.

Modes:
  follow    a sequence of observations, each held; the last action seen in each hold window
  stale     one observation, then silence; when the actions turn safe
  safety    bad observations of each kind, then the e-stop engaged and released
  record    an episode: `start` on ~/demo/control, observations and teleop actions with known
            values, `stop`; then the episode file is read with the Python MCAP readers and compared
            with what was sent (--no-stop: the node is killed mid-episode instead)
"""

import argparse
import json
from dataclasses import dataclass
import math
import pathlib
import random
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort
from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import uint8
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from ros_types import (  # noqa: E402
    Bool, DiagnosticArray, Float64MultiArray, JointState, ParticipantEntitiesInfo, Point, Twist, Vector3,
)
from ros_types import String as RosString  # noqa: E402

RELIABLE = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(10),
               Policy.Durability.Volatile)
LATCHED = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(1),
              Policy.Durability.TransientLocal)


class Skill:
    """The example skill as the peer understands it: its manifest and onnxruntime."""

    def __init__(self, folder, lower, upper):
        folder = pathlib.Path(folder)
        self.m = tomllib.loads((folder / "skill.toml").read_text())
        self.sess = ort.InferenceSession(str(folder / self.m["model"]["file"]), providers=["CPUExecutionProvider"])
        obs = self.m["observation"]
        self.mean = np.array(sum((o["mean"] for o in obs), []))
        self.std = np.array(sum((o["std"] for o in obs), []))
        a = self.m["action"]
        self.lower = np.array(lower if lower is not None else a["lower"])
        self.upper = np.array(upper if upper is not None else a["upper"])
        self.joints = obs[0]["joints"]

    def expected(self, vec):
        x = ((np.array(vec) - self.mean) / self.std).astype(np.float32)[None, :]
        raw = self.sess.run([self.m["model"]["output"]], {self.m["model"]["input"]: x})[0][0].astype(np.float64)
        a = self.m["action"]
        act = raw * np.array(a["std"]) + np.array(a["mean"])
        return act.tolist(), np.clip(act, self.lower, self.upper).tolist()


class Peer:
    def __init__(self, domain, skill, rng):
        self.dp = DomainParticipant(domain)
        self.skill = skill
        self.rng = rng
        obs = skill.m["observation"]
        self.js = DataWriter(self.dp, Topic(self.dp, "rt" + obs[0]["topic"], JointState, qos=RELIABLE), qos=RELIABLE)
        self.point = DataWriter(self.dp, Topic(self.dp, "rt" + obs[1]["topic"], Point, qos=RELIABLE), qos=RELIABLE)
        self.twist = DataWriter(self.dp, Topic(self.dp, "rt" + obs[2]["topic"], Twist, qos=RELIABLE), qos=RELIABLE)
        self.actions = DataReader(self.dp, Topic(self.dp, "rt" + skill.m["action"]["topic"], Float64MultiArray, qos=RELIABLE), qos=RELIABLE)
        self.graph = DataReader(self.dp, Topic(self.dp, "ros_discovery_info", ParticipantEntitiesInfo, qos=LATCHED), qos=LATCHED)
        self.diag = DataReader(self.dp, Topic(self.dp, "rt/diagnostics", DiagnosticArray, qos=RELIABLE), qos=RELIABLE)
        self.estop = DataWriter(self.dp, Topic(self.dp, "rt/estop", Bool, qos=LATCHED), qos=LATCHED)
        self.nodes = set()
        self.last_diag = {}

    def observation(self):
        """A random observation: the vector in manifest order, and the messages (joints shuffled)."""
        r = self.rng
        n = len(self.skill.joints)
        pos = [r.uniform(-1.5, 1.5) for _ in range(n)]
        vel = [r.uniform(-1, 1) for _ in range(n)]
        eff = [r.uniform(-20, 20) for _ in range(n)]
        target = [r.uniform(0.2, 0.6), r.uniform(-0.2, 0.2), r.uniform(0.1, 0.5)]
        lin = [r.uniform(-0.25, 0.25) for _ in range(3)]
        order = list(range(n))
        r.shuffle(order)
        js = JointState(name=[self.skill.joints[i] for i in order], position=[pos[i] for i in order],
                        velocity=[vel[i] for i in order], effort=[eff[i] for i in order])
        msgs = (js, Point(*target), Twist(linear=Vector3(*lin)))
        return pos + vel + eff + target + lin, msgs

    def send(self, msgs):
        js, point, twist = msgs
        self.js.write(js)
        self.point.write(point)
        self.twist.write(twist)

    def poll(self):
        """Actions received since the last poll, with their arrival times; graph and diagnostics too."""
        got = [(time.monotonic(), list(s.data)) for s in self.actions.take(100)]
        for info in self.graph.take(10):
            for n in info.node_entities_info_seq:
                self.nodes.add((n.node_namespace, n.node_name))
        for d in self.diag.take(10):
            for st in d.status:
                self.last_diag = {"level": st.level, "name": st.name, "message": st.message,
                                  "values": {kv.key: kv.value for kv in st.values}}
        return got

    def wait_for_node(self, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.poll():
                return True
            time.sleep(0.02)
        return False

    def hold(self, msgs, seconds, period=0.02):
        """Publishes msgs every period for seconds; returns the actions received meanwhile."""
        got = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if msgs is not None:
                self.send(msgs)
            time.sleep(period)
            got += self.poll()
        return got


def follow(peer, args):
    cases = []
    for _ in range(args.cases):
        vec, msgs = peer.observation()
        unclamped, expected = peer.skill.expected(vec)
        got = peer.hold(msgs, args.hold)
        cases.append({"observation": vec, "unclamped": unclamped, "expected": expected,
                      "received": got[-1][1] if got else None, "count": len(got)})
    return {"cases": cases}


def stale(peer, args):
    vec, msgs = peer.observation()
    _, expected = peer.skill.expected(vec)
    before = peer.hold(msgs, 1.5)
    last_sent = time.monotonic()
    after = peer.hold(None, 1.0)
    return {"expected": expected, "before": before[-1][1] if before else None, "last_sent": last_sent,
            "after": [[t - last_sent, a] for t, a in after]}


@dataclass
class NotJointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
    """Same DDS type name as JointState, other layout: its bytes do not decode as a JointState."""
    flag: uint8 = 0


def safety(peer, args):
    vec, msgs = peer.observation()
    _, expected = peer.skill.expected(vec)
    js, point, twist = msgs
    report = {"expected": expected}
    report["good"] = last(peer.hold(msgs, 1.0))
    broken = {
        "unknown_joint": JointState(name=js.name[:-1] + ["nonexistent"], position=js.position, velocity=js.velocity, effort=js.effort),
        "wrong_length": JointState(name=js.name, position=js.position[:-1], velocity=js.velocity, effort=js.effort),
        "not_finite": JointState(name=js.name, position=[math.nan] + js.position[1:], velocity=js.velocity, effort=js.effort),
    }
    for kind, bad in broken.items():
        report[kind] = last(peer.hold((bad, point, twist), 0.5))
    liar = DataWriter(peer.dp, Topic(peer.dp, "rt" + peer.skill.m["observation"][0]["topic"], NotJointState, qos=RELIABLE), qos=RELIABLE)
    end = time.monotonic() + 0.5
    got = []
    while time.monotonic() < end:
        liar.write(NotJointState(flag=7))
        peer.point.write(point)
        peer.twist.write(twist)
        time.sleep(0.02)
        got += peer.poll()
    report["decode"] = last(got)
    report["recovered"] = last(peer.hold(msgs, 1.0))
    peer.estop.write(Bool(data=True))
    report["estop_engaged"] = last(peer.hold(msgs, 0.6))
    peer.estop.write(Bool(data=False))
    report["estop_released"] = last(peer.hold(msgs, 1.0))
    peer.hold(msgs, 1.2)
    report["diagnostics"] = peer.last_diag
    return report


def record(peer, args):
    control = DataWriter(peer.dp, Topic(peer.dp, "rt/skillgraft/demo/control", RosString, qos=RELIABLE), qos=RELIABLE)
    status_reader = DataReader(peer.dp, Topic(peer.dp, "rt/skillgraft/demo/status", RosString, qos=LATCHED), qos=LATCHED)
    action = DataWriter(peer.dp, Topic(peer.dp, "rt" + peer.skill.m["action"]["topic"], Float64MultiArray, qos=RELIABLE), qos=RELIABLE)
    state = {"status": {}}

    def poll_status():
        for m in status_reader.take(10):
            state["status"] = json.loads(m.data)
        return state["status"]

    def wait_for(pred, timeout=20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(poll_status()):
                return True
            time.sleep(0.02)
        return False

    if not wait_for(lambda s: s.get("state") == "idle"):
        return {"error": "no idle status from the recorder"}
    # Joint states, target and twist at 100 Hz, teleop actions at 50 Hz, each with known values.
    time.sleep(0.5)
    control.write(RosString(data="start pick red cube"))
    if not wait_for(lambda s: s.get("state") == "recording"):
        return {"error": f"the episode did not start: {state['status']}"}
    sent = {"joint_states": [], "target": [], "twist": [], "action": []}
    joints = peer.skill.joints
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < args.seconds:
        js = JointState(name=list(reversed(joints)), position=[k + 0.01 * j for j in range(6)],
                        velocity=[0.5] * 6, effort=[-float(k)] * 6)
        js.header.stamp.sec = 1_700_000_000 + k
        peer.js.write(js)
        peer.point.write(Point(0.4, 0.001 * k, 0.3))
        peer.twist.write(Twist(linear=Vector3(0.01 * k, 0.0, 0.0)))
        sent["joint_states"].append(js.position)
        sent["target"].append([0.4, 0.001 * k, 0.3])
        sent["twist"].append([0.01 * k, 0.0, 0.0, 0.0, 0.0, 0.0])
        if k % 2 == 0:
            a = [0.1 * k - 0.01 * j for j in range(6)]
            action.write(Float64MultiArray(data=a))
            sent["action"].append(a)
        k += 1
        time.sleep(0.01)
    if args.no_stop:
        return {"sent": {t: len(v) for t, v in sent.items()}, "status": poll_status()}
    time.sleep(0.5)
    control.write(RosString(data="stop"))
    if not wait_for(lambda s: s.get("state") == "idle" and s.get("episodes_written", 0) >= 1):
        return {"error": f"the episode did not end: {state['status']}"}
    path = state["status"]["last_file"]
    return {"sent": {t: len(v) for t, v in sent.items()}, "file": path, "check": check_file(path, sent, peer.skill)}


def check_file(path, sent, skill):
    """Reads the episode with mcap + mcap-ros2-support and compares it with what was sent."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    got = {"joint_states": [], "target": [], "twist": [], "action": []}
    names = {"/joint_states": "joint_states", "/target": "target", "/gripper/twist": "twist", skill.m["action"]["topic"]: "action"}
    undecodable = 0
    meta = {}
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, message, msg in reader.iter_decoded_messages():
            key = names.get(channel.topic)
            if key == "joint_states":
                got[key].append(list(msg.position) if list(msg.name) == list(reversed(skill.joints)) else None)
                if message.publish_time != msg.header.stamp.sec * 10**9:
                    undecodable += 1
            elif key == "target":
                got[key].append([msg.x, msg.y, msg.z])
            elif key == "twist":
                got[key].append([msg.linear.x, msg.linear.y, msg.linear.z, msg.angular.x, msg.angular.y, msg.angular.z])
            elif key == "action":
                got[key].append(list(msg.data))
        for m in reader.iter_metadata():
            meta[m.name] = dict(m.metadata)
    return {t: {"sent": len(sent[t]), "recorded": len(got[t]), "equal": got[t] == sent[t]} for t in sent} | {
        "bad_publish_time": undecodable, "metadata": meta.get("skillgraft.episode", {})}


def last(got):
    return got[-1][1] if got else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["follow", "stale", "safety", "record"])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--no-stop", action="store_true")
    ap.add_argument("--skill", required=True)
    ap.add_argument("--domain", type=int, default=0)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--hold", type=float, default=0.5)
    ap.add_argument("--lower", type=json.loads)
    ap.add_argument("--upper", type=json.loads)
    args = ap.parse_args()
    skill = Skill(args.skill, args.lower, args.upper)
    peer = Peer(args.domain, skill, random.Random(5))
    if args.mode != "record" and not peer.wait_for_node():
        print(json.dumps({"error": "no action from the node within 30 s"}))
        return 1
    report = {"follow": follow, "stale": stale, "safety": safety, "record": record}[args.mode](peer, args)
    peer.poll()
    report["nodes"] = sorted(peer.nodes)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
