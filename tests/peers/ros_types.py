"""ROS 2 message types as CycloneDDS IDL dataclasses, with the DDS type names ROS 2 middlewares use
(`pkg::msg::dds_::Name_`), for the interop peer. Written from the .msg definitions, independently
of skillgraft's Rust structs."""

from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import array, bounded_str, float64, int32, int64, sequence, uint8, uint32, uint64


@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class String(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str = ""


@dataclass
class Bool(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
    data: bool = False


@dataclass
class JointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
    header: Header = field(default_factory=Header)
    name: sequence[str] = field(default_factory=list)
    position: sequence[float64] = field(default_factory=list)
    velocity: sequence[float64] = field(default_factory=list)
    effort: sequence[float64] = field(default_factory=list)


@dataclass
class Point(IdlStruct, typename="geometry_msgs::msg::dds_::Point_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Vector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Twist(IdlStruct, typename="geometry_msgs::msg::dds_::Twist_"):
    linear: Vector3 = field(default_factory=Vector3)
    angular: Vector3 = field(default_factory=Vector3)


@dataclass
class MultiArrayDimension(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    label: str = ""
    size: uint32 = 0
    stride: uint32 = 0


@dataclass
class MultiArrayLayout(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    dim: sequence[MultiArrayDimension] = field(default_factory=list)
    data_offset: uint32 = 0


@dataclass
class Float64MultiArray(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: sequence[float64] = field(default_factory=list)


@dataclass
class KeyValue(IdlStruct, typename="diagnostic_msgs::msg::dds_::KeyValue_"):
    key: str = ""
    value: str = ""


@dataclass
class DiagnosticStatus(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticStatus_"):
    level: uint8 = 0
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: sequence[KeyValue] = field(default_factory=list)


@dataclass
class DiagnosticArray(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticArray_"):
    header: Header = field(default_factory=Header)
    status: sequence[DiagnosticStatus] = field(default_factory=list)


def graph_types(gid_len):
    """rmw_dds_common's ParticipantEntitiesInfo with a Gid of `gid_len` bytes: 24 up to Humble,
    16 from Iron on. Built on demand, since both layouts share their DDS type names."""

    @dataclass
    class Gid(IdlStruct, typename="rmw_dds_common::msg::dds_::Gid_"):
        data: array[uint8, gid_len] = field(default_factory=lambda: [0] * gid_len)

    @dataclass
    class NodeEntitiesInfo(IdlStruct, typename="rmw_dds_common::msg::dds_::NodeEntitiesInfo_"):
        node_namespace: bounded_str[256] = ""
        node_name: bounded_str[256] = ""
        reader_gid_seq: sequence[Gid] = field(default_factory=list)
        writer_gid_seq: sequence[Gid] = field(default_factory=list)

    @dataclass
    class ParticipantEntitiesInfo(IdlStruct, typename="rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_"):
        gid: Gid = field(default_factory=Gid)
        node_entities_info_seq: sequence[NodeEntitiesInfo] = field(default_factory=list)

    return ParticipantEntitiesInfo


@dataclass
class ListParametersCycloneRequest(IdlStruct, typename="rcl_interfaces::srv::dds_::ListParameters_Request_"):
    """rcl_interfaces/srv/ListParameters' request as rmw_cyclonedds puts it on the wire: its request
    header (the client's id and a sequence number) before the fields."""
    client: uint64 = 0
    seq: int64 = 0
    prefixes: sequence[str] = field(default_factory=list)
    depth: uint64 = 0


@dataclass
class ListParametersResult(IdlStruct, typename="rcl_interfaces::msg::dds_::ListParametersResult_"):
    names: sequence[str] = field(default_factory=list)
    prefixes: sequence[str] = field(default_factory=list)


@dataclass
class ListParametersCycloneResponse(IdlStruct, typename="rcl_interfaces::srv::dds_::ListParameters_Response_"):
    """The response, with the request header echoed before the fields."""
    client: uint64 = 0
    seq: int64 = 0
    result: ListParametersResult = field(default_factory=ListParametersResult)
