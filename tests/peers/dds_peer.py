#!/usr/bin/env python3
"""A ROS 2 peer nobody at skillgraft wrote: it publishes the example skill's observations and reads
its actions, and onnxruntime computes independently what the actions should be. Prints one JSON
report on stdout; the Rust tests (tests/dds_interop.rs, tests/ros2_interop.rs) judge it.

Middlewares (--via):
  cyclone   CycloneDDS from Python, with ROS 2's DDS names written by hand (tests/peers/ros_types.py)
  rclpy     a real ROS 2 node: rclpy on rmw_fastrtps_cpp, from the ROS 2 wheels on PyPI

Modes:
  follow    a sequence of observations, each held; the last action seen in each hold window
  stale     one observation, then silence; when the actions turn safe
  safety    bad observations of each kind, then the e-stop engaged and released
  latched   the e-stop engaged before the node starts (transient-local), then released
  record    an episode: `start` on ~/demo/control, observations and teleop actions with known
            values, `stop`; then the episode file is read with the Python MCAP readers and compared
            with what was sent (--no-stop: the node is killed mid-episode instead)
  graph     the node as the ROS graph shows it: names, and (rclpy) its publishers, subscriptions
            and services by node name
  params    (rclpy) the node's parameters through rclpy's parameter client: list, describe, get,
            a limit set and the next actions clamped to it, sets that must be refused
  service   (cyclone) list_parameters called with rmw_cyclonedds' request header
  adapt     (rclpy) three demonstrations of a teacher skill (--teacher), `ridge` on ~/adapt, the
            status until the adapted skill runs, and the node's actions then
"""

import argparse
import json
import math
import pathlib
import random
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort

HERE = pathlib.Path(__file__).resolve().parent


class Skill:
    """A skill as the peer understands it: its manifest and onnxruntime."""

    def __init__(self, folder, lower=None, upper=None):
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

    def expected(self, vec, lower=None, upper=None):
        x = ((np.array(vec) - self.mean) / self.std).astype(np.float32)[None, :]
        raw = self.sess.run([self.m["model"]["output"]], {self.m["model"]["input"]: x})[0][0].astype(np.float64)
        a = self.m["action"]
        act = raw * np.array(a["std"]) + np.array(a["mean"])
        lo = self.lower if lower is None else np.array(lower)
        hi = self.upper if upper is None else np.array(upper)
        return act.tolist(), np.clip(act, lo, hi).tolist()


class Cyclone:
    """CycloneDDS with hand-written ROS 2 types."""

    def __init__(self, domain, gid_len):
        from cyclonedds.core import Policy, Qos
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.util import duration

        sys.path.insert(0, str(HERE))
        import ros_types

        self.t = ros_types
        self.dp = DomainParticipant(domain)
        reliable = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(10),
                       Policy.Durability.Volatile)
        latched = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(1),
                      Policy.Durability.TransientLocal)
        sensor = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5), Policy.Durability.Volatile)
        self.qos = {"reliable": reliable, "latched": latched, "sensor": sensor}
        self.graph = self.reader("ros_discovery_info", ros_types.graph_types(gid_len), "latched", prefix="")
        self.seen = set()

    def type(self, name):
        return {"String": self.t.String}.get(name) or getattr(self.t, name)

    def writer(self, topic, msg_type, qos, prefix="rt"):
        from cyclonedds.pub import DataWriter
        from cyclonedds.topic import Topic

        return DataWriter(self.dp, Topic(self.dp, prefix + topic, msg_type, qos=self.qos[qos]), qos=self.qos[qos])

    def reader(self, topic, msg_type, qos, prefix="rt"):
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        return DataReader(self.dp, Topic(self.dp, prefix + topic, msg_type, qos=self.qos[qos]), qos=self.qos[qos])

    def garbage_writer(self, topic):
        """A writer whose samples carry the JointState type name and bytes that do not decode as one."""
        from dataclasses import dataclass

        from cyclonedds.idl import IdlStruct
        from cyclonedds.idl.types import uint8

        @dataclass
        class NotJointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
            flag: uint8 = 0

        w = self.writer(topic, NotJointState, "reliable")
        return lambda: w.write(NotJointState(flag=7))

    def spin(self):
        for info in self.graph.take(10):
            for n in info.node_entities_info_seq:
                self.seen.add((n.node_namespace, n.node_name))

    def nodes(self):
        self.spin()
        return self.seen

    def by_node(self, name, namespace):
        return None


class Rclpy:
    """A real ROS 2 node (rclpy), on the RMW the environment names (rmw_fastrtps_cpp)."""

    def __init__(self, domain, gid_len):
        import os

        os.environ["ROS_DOMAIN_ID"] = str(domain)
        import rclpy
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node("peer")
        self.qos = {
            "reliable": QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE),
            "latched": QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                  durability=DurabilityPolicy.TRANSIENT_LOCAL),
            "sensor": QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE,
                                 history=HistoryPolicy.KEEP_LAST),
        }

    def type(self, name):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Point, Twist, Vector3
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Float64MultiArray, String

        return {"JointState": JointState, "Point": Point, "Twist": Twist, "Vector3": Vector3, "Bool": Bool,
                "String": String, "Float64MultiArray": Float64MultiArray, "DiagnosticArray": DiagnosticArray}[name]

    def writer(self, topic, msg_type, qos):
        pub = self.node.create_publisher(msg_type, topic, self.qos[qos])

        class W:
            def write(_, msg):
                pub.publish(msg)

        return W()

    def reader(self, topic, msg_type, qos):
        queue = []
        self.node.create_subscription(msg_type, topic, queue.append, self.qos[qos])
        peer = self

        class R:
            def take(_, n):
                peer.spin()
                got = queue[:n]
                del queue[:n]
                return got

        return R()

    def garbage_writer(self, topic):
        pub = self.node.create_publisher(self.type("JointState"), topic, self.qos["reliable"])
        # An encapsulation header and a name count that runs past the end.
        return lambda: pub.publish(b"\x00\x01\x00\x00\xff\xff\xff\x7f")

    def spin(self):
        for _ in range(20):
            self.rclpy.spin_once(self.node, timeout_sec=0)

    def nodes(self):
        self.spin()
        return {(ns, name) for name, ns in self.node.get_node_names_and_namespaces()}

    def by_node(self, name, namespace):
        self.spin()
        n = self.node
        if (namespace, name) not in self.nodes():
            return None
        return {
            "publishers": sorted(t for t, _ in n.get_publisher_names_and_types_by_node(name, namespace)),
            "subscriptions": sorted(t for t, _ in n.get_subscriber_names_and_types_by_node(name, namespace)),
            "services": sorted(t for t, _ in n.get_service_names_and_types_by_node(name, namespace)),
        }

    def wait(self, future, timeout=10.0):
        self.rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        if not future.done():
            raise TimeoutError("no reply within %.0f s" % timeout)
        return future.result()


class Peer:
    def __init__(self, mw, skill, rng, obs_qos):
        self.mw = mw
        self.skill = skill
        self.rng = rng
        t = mw.type
        obs = skill.m["observation"]
        self.js = mw.writer(obs[0]["topic"], t("JointState"), obs_qos)
        self.point = mw.writer(obs[1]["topic"], t("Point"), obs_qos)
        self.twist = mw.writer(obs[2]["topic"], t("Twist"), obs_qos)
        self.actions = mw.reader(skill.m["action"]["topic"], t("Float64MultiArray"), "reliable")
        self.diag = mw.reader("/diagnostics", t("DiagnosticArray"), "reliable")
        self.estop = mw.writer("/estop", t("Bool"), "latched")
        self.last_diag = {}

    def msg(self, type_name, **fields):
        return self.mw.type(type_name)(**fields)

    def vec3(self, v):
        return self.msg("Vector3", x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def joint_state(self, names, position, velocity, effort):
        return self.msg("JointState", name=list(names), position=[float(x) for x in position],
                        velocity=[float(x) for x in velocity], effort=[float(x) for x in effort])

    def messages(self, vec, shuffle=True):
        """The messages of an observation vector in manifest order (joints in shuffled order)."""
        n = len(self.skill.joints)
        order = list(range(n))
        if shuffle:
            self.rng.shuffle(order)
        js = self.joint_state([self.skill.joints[i] for i in order], [vec[i] for i in order],
                              [vec[n + i] for i in order], [vec[2 * n + i] for i in order])
        point = self.msg("Point", x=float(vec[3 * n]), y=float(vec[3 * n + 1]), z=float(vec[3 * n + 2]))
        return js, point, self.msg("Twist", linear=self.vec3(vec[3 * n + 3:3 * n + 6]))

    def observation(self):
        """A random observation: the vector in manifest order, and its messages."""
        r = self.rng
        n = len(self.skill.joints)
        vec = ([r.uniform(-1.5, 1.5) for _ in range(n)] + [r.uniform(-1, 1) for _ in range(n)]
               + [r.uniform(-20, 20) for _ in range(n)]
               + [r.uniform(0.2, 0.6), r.uniform(-0.2, 0.2), r.uniform(0.1, 0.5)]
               + [r.uniform(-0.25, 0.25) for _ in range(3)])
        return vec, self.messages(vec)

    def send(self, msgs):
        js, point, twist = msgs
        self.js.write(js)
        self.point.write(point)
        self.twist.write(twist)

    def poll(self):
        """Actions received since the last poll, with their arrival times; diagnostics too."""
        got = [(time.monotonic(), list(s.data)) for s in self.actions.take(100)]
        for d in self.diag.take(10):
            for st in d.status:
                level = st.level[0] if isinstance(st.level, (bytes, bytearray)) else int(st.level)
                self.last_diag = {"level": level, "name": st.name, "message": st.message,
                                  "values": {kv.key: kv.value for kv in st.values}}
        return got

    def wait_for_node(self, msgs, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.hold(msgs, 0.1):
                return True
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

    def until(self, msgs, pred, timeout=30.0):
        """Holds msgs until pred() is true; returns whether it became true."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            self.hold(msgs, 0.05)
        return False


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


def safety(peer, args):
    vec, msgs = peer.observation()
    _, expected = peer.skill.expected(vec)
    js, point, twist = msgs
    report = {"expected": expected}
    report["good"] = last(peer.hold(msgs, 1.0))
    broken = {
        "unknown_joint": peer.joint_state(list(js.name[:-1]) + ["nonexistent"], js.position, js.velocity, js.effort),
        "wrong_length": peer.joint_state(js.name, list(js.position[:-1]), js.velocity, js.effort),
        "not_finite": peer.joint_state(js.name, [math.nan] + list(js.position[1:]), js.velocity, js.effort),
    }
    for kind, bad in broken.items():
        report[kind] = last(peer.hold((bad, point, twist), 0.5))
    garbage = peer.mw.garbage_writer(peer.skill.m["observation"][0]["topic"])
    end = time.monotonic() + 0.5
    got = []
    while time.monotonic() < end:
        garbage()
        peer.point.write(point)
        peer.twist.write(twist)
        time.sleep(0.02)
        got += peer.poll()
    report["decode"] = last(got)
    report["recovered"] = last(peer.hold(msgs, 1.0))
    peer.estop.write(peer.msg("Bool", data=True))
    report["estop_engaged"] = last(peer.hold(msgs, 0.6))
    peer.estop.write(peer.msg("Bool", data=False))
    report["estop_released"] = last(peer.hold(msgs, 1.0))
    peer.hold(msgs, 1.2)
    report["diagnostics"] = peer.last_diag
    return report


def latched(peer, args):
    """The e-stop is engaged before the node starts: a transient-local value the node must get
    when it joins, so it never drives; released, the policy takes over."""
    peer.estop.write(peer.msg("Bool", data=True))
    vec, msgs = peer.observation()
    _, expected = peer.skill.expected(vec)
    if not peer.wait_for_node(msgs, 60):
        return {"error": "no action from the node within 60 s"}
    engaged = [a for _, a in peer.hold(msgs, 1.0)]
    peer.estop.write(peer.msg("Bool", data=False))
    return {"expected": expected, "engaged": engaged, "released": last(peer.hold(msgs, 1.0))}


class Status:
    """A latched JSON status topic (~/demo/status, ~/adapt/status), as its last value."""

    def __init__(self, peer, topic):
        self.reader = peer.mw.reader(topic, peer.mw.type("String"), "latched")
        self.last = {}

    def now(self):
        for m in self.reader.take(10):
            self.last = json.loads(m.data)
        return self.last


def record(peer, args):
    mw = peer.mw
    control = mw.writer("/skillgraft/demo/control", mw.type("String"), "reliable")
    status = Status(peer, "/skillgraft/demo/status")
    action = mw.writer(peer.skill.m["action"]["topic"], mw.type("Float64MultiArray"), "reliable")
    if not peer.until(None, lambda: status.now().get("state") == "idle", 20):
        return {"error": "no idle status from the recorder"}
    # Joint states, target and twist at 100 Hz, teleop actions at 50 Hz, each with known values.
    time.sleep(0.5)
    control.write(peer.msg("String", data="start pick red cube"))
    if not peer.until(None, lambda: status.now().get("state") == "recording", 20):
        return {"error": f"the episode did not start: {status.last}"}
    sent = {"joint_states": [], "target": [], "twist": [], "action": []}
    joints = peer.skill.joints
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < args.seconds:
        js = peer.joint_state(list(reversed(joints)), [k + 0.01 * j for j in range(6)], [0.5] * 6, [-float(k)] * 6)
        js.header.stamp.sec = 1_700_000_000 + k
        peer.js.write(js)
        peer.point.write(peer.msg("Point", x=0.4, y=0.001 * k, z=0.3))
        peer.twist.write(peer.msg("Twist", linear=peer.vec3([0.01 * k, 0.0, 0.0])))
        sent["joint_states"].append(list(js.position))
        sent["target"].append([0.4, 0.001 * k, 0.3])
        sent["twist"].append([0.01 * k, 0.0, 0.0, 0.0, 0.0, 0.0])
        if k % 2 == 0:
            a = [0.1 * k - 0.01 * j for j in range(6)]
            action.write(peer.msg("Float64MultiArray", data=a))
            sent["action"].append(a)
        k += 1
        time.sleep(0.01)
    if args.no_stop:
        return {"sent": {t: len(v) for t, v in sent.items()}, "status": status.now()}
    time.sleep(0.5)
    control.write(peer.msg("String", data="stop"))
    if not peer.until(None, lambda: status.now().get("state") == "idle" and status.last.get("episodes_written", 0) >= 1,
                      20):
        return {"error": f"the episode did not end: {status.last}"}
    path = status.last["last_file"]
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


def service(peer, args):
    """(cyclone) `/skillgraft/list_parameters` called the way rmw_cyclonedds calls a service."""
    mw = peer.mw
    t = mw.t
    request = mw.writer("/skillgraft/list_parametersRequest", t.ListParametersCycloneRequest, "reliable", prefix="rq")
    replies = mw.reader("/skillgraft/list_parametersReply", t.ListParametersCycloneResponse, "reliable", prefix="rr")
    client, seq = 0x1122334455667788, 42
    end = time.monotonic() + 20
    while time.monotonic() < end:
        request.write(t.ListParametersCycloneRequest(client=client, seq=seq, prefixes=["action"], depth=0))
        time.sleep(0.2)
        for r in replies.take(10):
            return {"client": r.client == client, "seq": r.seq, "names": list(r.result.names),
                    "prefixes": list(r.result.prefixes)}
        seq += 1
    return {"error": "no reply to list_parameters within 20 s"}


def graph(peer, args):
    vec, msgs = peer.observation()
    end = time.monotonic() + args.wait
    while time.monotonic() < end and ("/", "skillgraft") not in peer.mw.nodes():
        peer.hold(msgs, 0.1)
    # Endpoints are discovered after the node itself: give them a moment.
    peer.hold(msgs, 1.0)
    return {"by_node": peer.mw.by_node("skillgraft", "/")}


def params(peer, args):
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterEvent
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    mw = peer.mw
    client = AsyncParameterClient(mw.node, "/skillgraft")
    if not client.wait_for_services(timeout_sec=20):
        return {"error": "the parameter services did not appear within 20 s"}
    events = mw.reader("/parameter_events", ParameterEvent, "reliable")
    report = {}
    listed = mw.wait(client.list_parameters())
    report["list"] = {"names": list(listed.result.names), "prefixes": list(listed.result.prefixes)}
    wanted = ["rate_hz", "blend_s", "action.upper", "rt_priority", "adapt_device", "no_such_parameter"]
    described = mw.wait(client.describe_parameters(wanted)).descriptors
    report["describe"] = {
        d.name or wanted[i]: {
            "type": d.type, "read_only": d.read_only, "description": d.description,
            "constraints": d.additional_constraints,
            "float_range": [[r.from_value, r.to_value] for r in d.floating_point_range],
            "int_range": [[r.from_value, r.to_value] for r in d.integer_range],
        } for i, d in enumerate(described)}
    types = mw.wait(client.get_parameter_types(["rate_hz", "action.lower", "use_sim_time", "no_such_parameter"]))
    report["types"] = list(types.types)

    def get(names):
        values = mw.wait(client.get_parameters(names)).values
        return {n: Parameter.from_parameter_msg(ParameterMsg(name=n, value=v)).value for n, v in zip(names, values)}

    def jsonable(v):
        return list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v

    report["get"] = {k: jsonable(v) for k, v in get(["rate_hz", "action.upper", "use_sim_time", "adapt_device"]).items()}

    vec, msgs = peer.observation()
    unclamped, expected = peer.skill.expected(vec)
    report["unclamped"] = unclamped
    report["before"] = last(peer.hold(msgs, 1.0))
    lower, upper = [-0.02] * 3 + [-0.03] * 3, [0.02] * 3 + [0.03] * 3
    result = mw.wait(client.set_parameters_atomically(
        [Parameter("action.lower", value=lower), Parameter("action.upper", value=upper)]))
    report["set_limits"] = {"successful": result.result.successful, "reason": result.result.reason}
    report["expected_after"] = peer.skill.expected(vec, lower, upper)[1]
    report["after"] = last(peer.hold(msgs, 0.8))
    refused = {
        "read_only": [Parameter("rate_hz", value=10.0)],
        "wider_than_at_launch": [Parameter("action.upper", value=[2.0] * 6)],
        "out_of_range": [Parameter("blend_s", value=100.0)],
        "wrong_type": [Parameter("blend_s", value="fast")],
        "unknown": [Parameter("colour", value="red")],
        "wrong_length": [Parameter("action.upper", value=[0.01] * 5)],
        "lower_above_upper": [Parameter("action.lower", value=[0.5] * 6)],
    }
    report["refused"] = {}
    for kind, ps in refused.items():
        r = mw.wait(client.set_parameters(ps)).results[0]
        report["refused"][kind] = {"successful": r.successful, "reason": r.reason}
    report["get_after_refused"] = {k: jsonable(v) for k, v in get(["action.upper", "blend_s", "rate_hz"]).items()}
    report["after_refused"] = last(peer.hold(msgs, 0.5))
    ok = mw.wait(client.set_parameters([Parameter("blend_s", value=1)])).results[0]
    report["integer_for_double"] = {"successful": ok.successful, "reason": ok.reason,
                                    "value": get(["blend_s"])["blend_s"]}
    peer.hold(msgs, 0.3)
    report["events"] = [{"node": e.node, "new": [p.name for p in e.new_parameters],
                         "changed": [p.name for p in e.changed_parameters]} for e in events.take(100)]
    return report


def adapt(peer, args):
    mw = peer.mw
    teacher = Skill(args.teacher)
    control = mw.writer("/skillgraft/demo/control", mw.type("String"), "reliable")
    request = mw.writer("/skillgraft/adapt", mw.type("String"), "reliable")
    teleop = mw.writer("/teleop/cmd", mw.type("Float64MultiArray"), "reliable")
    demo = Status(peer, "/skillgraft/demo/status")
    status = Status(peer, "/skillgraft/adapt/status")
    doubt = mw.reader("/skillgraft/uncertainty", mw.type("Float64MultiArray"), "reliable")
    rng = np.random.default_rng(11)
    vec = list(peer.skill.mean + 0.3 * peer.skill.std * rng.standard_normal(len(peer.skill.mean)))
    msgs = peer.messages(vec, shuffle=False)
    source = peer.skill.expected(vec)[1]
    want = teacher.expected(vec)[1]
    if not peer.until(msgs, lambda: status.now().get("state") == "idle" and demo.now().get("state") == "idle"):
        return {"error": f"no idle status: {status.last} {demo.last}"}
    report = {"source": source, "teacher": want, "before": last(peer.hold(msgs, 0.5))}
    for episode in range(3):
        control.write(peer.msg("String", data=f"start reach-{episode}"))
        if not peer.until(msgs, lambda: demo.now().get("state") == "recording"):
            return {"error": f"episode {episode} did not start: {demo.last}"}
        for _ in range(40):
            v = list(peer.skill.mean + 0.5 * peer.skill.std * rng.standard_normal(len(peer.skill.mean)))
            action = teacher.expected(v)[0]
            peer.send(peer.messages(v, shuffle=False))
            for _ in range(2):
                time.sleep(0.01)
                teleop.write(peer.msg("Float64MultiArray", data=[float(a) for a in action]))
            time.sleep(0.01)
        control.write(peer.msg("String", data="stop"))
        if not peer.until(msgs, lambda: demo.now().get("episodes_written", 0) >= episode + 1):
            return {"error": f"episode {episode} was not written: {demo.last}"}
    request.write(peer.msg("String", data=args.method))
    if not peer.until(msgs, lambda: status.now().get("state") in ("accepted", "rejected", "failed"), 120):
        return {"error": f"no adaptation result: {status.last}"}
    report["status"] = status.last
    report["after"] = last(peer.hold(msgs, 1.0))
    # A skill adapted by bayes says how sure it is, on ~/uncertainty; others say nothing there.
    doubts = [list(m.data) for m in doubt.take(10000)]
    report["uncertainty"] = doubts[-1] if doubts else None
    return report


def last(got):
    return got[-1][1] if got else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["follow", "stale", "safety", "latched", "record", "graph", "params", "adapt",
                                     "service"])
    ap.add_argument("--via", choices=["cyclone", "rclpy"], default="cyclone")
    ap.add_argument("--gid-len", type=int, default=24, help="Gid bytes in ros_discovery_info (cyclone)")
    ap.add_argument("--obs-qos", choices=["reliable", "sensor"], default="reliable",
                    help="observations reliable, or best effort (ROS 2's sensor-data QoS)")
    ap.add_argument("--seconds", type=float, default=2.0, help="how long to record (record)")
    ap.add_argument("--wait", type=float, default=20.0, help="how long to wait for the node to appear (graph)")
    ap.add_argument("--no-stop", action="store_true")
    ap.add_argument("--skill", required=True)
    ap.add_argument("--teacher")
    ap.add_argument("--method", default="ridge", help="what ~/adapt is asked for (adapt)")
    ap.add_argument("--domain", type=int, default=0)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--hold", type=float, default=0.5)
    ap.add_argument("--lower", type=json.loads)
    ap.add_argument("--upper", type=json.loads)
    args = ap.parse_args()
    skill = Skill(args.skill, args.lower, args.upper)
    mw = (Cyclone if args.via == "cyclone" else Rclpy)(args.domain, args.gid_len)
    peer = Peer(mw, skill, random.Random(5), args.obs_qos)
    if args.mode in ("follow", "stale", "safety", "params") and not peer.wait_for_node(peer.observation()[1]):
        print(json.dumps({"error": "no action from the node within 30 s"}))
        return 1
    modes = {"follow": follow, "stale": stale, "safety": safety, "latched": latched, "record": record, "graph": graph,
             "params": params, "adapt": adapt, "service": service}
    report = modes[args.mode](peer, args)
    report["nodes"] = sorted(mw.nodes())
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
