//! Message knowledge, below everything that reads or writes messages and knowing no transport:
//! ROS 2 message types as serde structs (fields in `.msg` order, so the CDR bytes are what every
//! ROS 2 middleware puts on the wire; golden tests hold them to bytes made by an independent
//! implementation, rosbags), the CDR codec, the message schemas and the fields a manifest can
//! select (`schema`), their `.msg` definitions for recordings (`defs`), and ROS names (`names`).

pub mod cdr;
pub mod defs;
pub mod names;
pub mod schema;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A message type with its ROS name.
pub trait RosMessage: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Full type name, `pkg/msg/Name`.
    const TYPE: &'static str;
}

macro_rules! ros_type {
    ($t:ty, $name:literal) => {
        impl RosMessage for $t {
            const TYPE: &'static str = $name;
        }
    };
}

/// builtin_interfaces/msg/Time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// Seconds.
    pub sec: i32,
    /// Nanoseconds within the second.
    pub nanosec: u32,
}
ros_type!(Time, "builtin_interfaces/msg/Time");

impl Time {
    /// From seconds since the epoch.
    pub fn from_secs_f64(t: f64) -> Time {
        let sec = t.floor();
        Time { sec: sec as i32, nanosec: ((t - sec) * 1e9).round().min(999_999_999.0) as u32 }
    }

    /// Seconds since the epoch.
    pub fn as_secs_f64(&self) -> f64 {
        self.sec as f64 + self.nanosec as f64 * 1e-9
    }
}

/// builtin_interfaces/msg/Duration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duration {
    /// Seconds.
    pub sec: i32,
    /// Nanoseconds within the second.
    pub nanosec: u32,
}
ros_type!(Duration, "builtin_interfaces/msg/Duration");

/// std_msgs/msg/Header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// When the data was taken.
    pub stamp: Time,
    /// Coordinate frame.
    pub frame_id: String,
}
ros_type!(Header, "std_msgs/msg/Header");

/// std_msgs/msg/String.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StringMsg {
    /// The text.
    pub data: String,
}
ros_type!(StringMsg, "std_msgs/msg/String");

/// std_msgs/msg/Bool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bool {
    /// The value.
    pub data: bool,
}
ros_type!(Bool, "std_msgs/msg/Bool");

/// std_msgs/msg/MultiArrayDimension.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiArrayDimension {
    /// Name of the dimension.
    pub label: String,
    /// Its size.
    pub size: u32,
    /// Stride of the dimension.
    pub stride: u32,
}
ros_type!(MultiArrayDimension, "std_msgs/msg/MultiArrayDimension");

/// std_msgs/msg/MultiArrayLayout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiArrayLayout {
    /// Dimensions, outermost first.
    pub dim: Vec<MultiArrayDimension>,
    /// Padding elements at the front of data.
    pub data_offset: u32,
}
ros_type!(MultiArrayLayout, "std_msgs/msg/MultiArrayLayout");

/// std_msgs/msg/Float32MultiArray.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Float32MultiArray {
    /// Layout.
    pub layout: MultiArrayLayout,
    /// Values.
    pub data: Vec<f32>,
}
ros_type!(Float32MultiArray, "std_msgs/msg/Float32MultiArray");

/// std_msgs/msg/Float64MultiArray.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Float64MultiArray {
    /// Layout.
    pub layout: MultiArrayLayout,
    /// Values.
    pub data: Vec<f64>,
}
ros_type!(Float64MultiArray, "std_msgs/msg/Float64MultiArray");

/// sensor_msgs/msg/JointState.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JointState {
    /// Stamp and frame.
    pub header: Header,
    /// Joint names.
    pub name: Vec<String>,
    /// Positions, parallel to `name` (or empty).
    pub position: Vec<f64>,
    /// Velocities, parallel to `name` (or empty).
    pub velocity: Vec<f64>,
    /// Efforts, parallel to `name` (or empty).
    pub effort: Vec<f64>,
}
ros_type!(JointState, "sensor_msgs/msg/JointState");

/// sensor_msgs/msg/Image: an uncompressed image, rows top to bottom.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Stamp (when the image was taken) and the camera's optical frame.
    pub header: Header,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Pixel encoding: `rgb8`, `bgr8`, `mono8`, `16UC1`, `32FC1`, ...
    pub encoding: String,
    /// Whether multi-byte pixel values are big-endian.
    pub is_bigendian: u8,
    /// Bytes per row (at least width × bytes per pixel; rows may be padded).
    pub step: u32,
    /// `step × height` bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
ros_type!(Image, "sensor_msgs/msg/Image");

/// sensor_msgs/msg/CompressedImage: an image as a JPEG or PNG file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompressedImage {
    /// Stamp and the camera's optical frame.
    pub header: Header,
    /// `jpeg` or `png`, as image_transport writes it (`rgb8; jpeg compressed bgr8`, ...).
    pub format: String,
    /// The file's bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
ros_type!(CompressedImage, "sensor_msgs/msg/CompressedImage");

/// A sensor_msgs/msg/Image decoded without copying its pixels: what a subscription reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImageView<'a> {
    /// Stamp and frame.
    pub header: Header,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Pixel encoding.
    pub encoding: String,
    /// Whether multi-byte pixel values are big-endian.
    pub is_bigendian: u8,
    /// Bytes per row.
    pub step: u32,
    /// The pixels, borrowed from the message bytes.
    #[serde(borrow, with = "serde_bytes")]
    pub data: &'a [u8],
}

/// A sensor_msgs/msg/CompressedImage decoded without copying the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompressedImageView<'a> {
    /// Stamp and frame.
    pub header: Header,
    /// `jpeg` or `png` (image_transport may add the encodings before it).
    pub format: String,
    /// The file's bytes, borrowed from the message bytes.
    #[serde(borrow, with = "serde_bytes")]
    pub data: &'a [u8],
}

/// geometry_msgs/msg/Vector3.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Vector3 {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
}
ros_type!(Vector3, "geometry_msgs/msg/Vector3");

/// geometry_msgs/msg/Point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
}
ros_type!(Point, "geometry_msgs/msg/Point");

/// geometry_msgs/msg/Quaternion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quaternion {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
    /// w.
    pub w: f64,
}
ros_type!(Quaternion, "geometry_msgs/msg/Quaternion");

impl Default for Quaternion {
    fn default() -> Self {
        Quaternion { x: 0.0, y: 0.0, z: 0.0, w: 1.0 }
    }
}

/// geometry_msgs/msg/Twist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Twist {
    /// Linear velocity.
    pub linear: Vector3,
    /// Angular velocity.
    pub angular: Vector3,
}
ros_type!(Twist, "geometry_msgs/msg/Twist");

/// sensor_msgs/msg/Imu.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Imu {
    /// Stamp and frame.
    pub header: Header,
    /// Orientation.
    pub orientation: Quaternion,
    /// Row-major 3x3 covariance.
    pub orientation_covariance: [f64; 9],
    /// Angular velocity.
    pub angular_velocity: Vector3,
    /// Row-major 3x3 covariance.
    pub angular_velocity_covariance: [f64; 9],
    /// Linear acceleration.
    pub linear_acceleration: Vector3,
    /// Row-major 3x3 covariance.
    pub linear_acceleration_covariance: [f64; 9],
}
ros_type!(Imu, "sensor_msgs/msg/Imu");

/// trajectory_msgs/msg/JointTrajectoryPoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JointTrajectoryPoint {
    /// Positions.
    pub positions: Vec<f64>,
    /// Velocities.
    pub velocities: Vec<f64>,
    /// Accelerations.
    pub accelerations: Vec<f64>,
    /// Efforts.
    pub effort: Vec<f64>,
    /// When to reach the point.
    pub time_from_start: Duration,
}
ros_type!(JointTrajectoryPoint, "trajectory_msgs/msg/JointTrajectoryPoint");

/// trajectory_msgs/msg/JointTrajectory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JointTrajectory {
    /// Stamp and frame.
    pub header: Header,
    /// Joint names.
    pub joint_names: Vec<String>,
    /// Points.
    pub points: Vec<JointTrajectoryPoint>,
}
ros_type!(JointTrajectory, "trajectory_msgs/msg/JointTrajectory");

/// diagnostic_msgs/msg/KeyValue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}
ros_type!(KeyValue, "diagnostic_msgs/msg/KeyValue");

/// diagnostic_msgs/msg/DiagnosticStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticStatus {
    /// OK = 0, WARN = 1, ERROR = 2, STALE = 3.
    pub level: u8,
    /// Component name.
    pub name: String,
    /// Summary.
    pub message: String,
    /// Hardware identifier.
    pub hardware_id: String,
    /// Values.
    pub values: Vec<KeyValue>,
}
ros_type!(DiagnosticStatus, "diagnostic_msgs/msg/DiagnosticStatus");

impl DiagnosticStatus {
    /// Level OK.
    pub const OK: u8 = 0;
    /// Level WARN.
    pub const WARN: u8 = 1;
    /// Level ERROR.
    pub const ERROR: u8 = 2;
    /// Level STALE.
    pub const STALE: u8 = 3;
}

/// diagnostic_msgs/msg/DiagnosticArray.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticArray {
    /// Stamp.
    pub header: Header,
    /// Statuses.
    pub status: Vec<DiagnosticStatus>,
}
ros_type!(DiagnosticArray, "diagnostic_msgs/msg/DiagnosticArray");

/// rcl_interfaces/msg/ParameterValue: one parameter's value; `type` says which field holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParameterValue {
    /// A `ParameterType` constant.
    #[serde(rename = "type")]
    pub kind: u8,
    /// Set when `type` is BOOL.
    pub bool_value: bool,
    /// Set when `type` is INTEGER.
    pub integer_value: i64,
    /// Set when `type` is DOUBLE.
    pub double_value: f64,
    /// Set when `type` is STRING.
    pub string_value: String,
    /// Set when `type` is BYTE_ARRAY.
    pub byte_array_value: Vec<u8>,
    /// Set when `type` is BOOL_ARRAY.
    pub bool_array_value: Vec<bool>,
    /// Set when `type` is INTEGER_ARRAY.
    pub integer_array_value: Vec<i64>,
    /// Set when `type` is DOUBLE_ARRAY.
    pub double_array_value: Vec<f64>,
    /// Set when `type` is STRING_ARRAY.
    pub string_array_value: Vec<String>,
}
ros_type!(ParameterValue, "rcl_interfaces/msg/ParameterValue");

/// rcl_interfaces/msg/ParameterType's constants.
pub mod parameter_type {
    /// No value.
    pub const NOT_SET: u8 = 0;
    /// bool.
    pub const BOOL: u8 = 1;
    /// int64.
    pub const INTEGER: u8 = 2;
    /// float64.
    pub const DOUBLE: u8 = 3;
    /// string.
    pub const STRING: u8 = 4;
    /// byte[].
    pub const BYTE_ARRAY: u8 = 5;
    /// bool[].
    pub const BOOL_ARRAY: u8 = 6;
    /// int64[].
    pub const INTEGER_ARRAY: u8 = 7;
    /// float64[].
    pub const DOUBLE_ARRAY: u8 = 8;
    /// string[].
    pub const STRING_ARRAY: u8 = 9;
}

/// rcl_interfaces/msg/Parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    /// Name.
    pub name: String,
    /// Value.
    pub value: ParameterValue,
}
ros_type!(Parameter, "rcl_interfaces/msg/Parameter");

/// rcl_interfaces/msg/FloatingPointRange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FloatingPointRange {
    /// Lowest value.
    pub from_value: f64,
    /// Highest value.
    pub to_value: f64,
    /// Step from `from_value` (0: any value).
    pub step: f64,
}
ros_type!(FloatingPointRange, "rcl_interfaces/msg/FloatingPointRange");

/// rcl_interfaces/msg/IntegerRange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegerRange {
    /// Lowest value.
    pub from_value: i64,
    /// Highest value.
    pub to_value: i64,
    /// Step from `from_value` (0: any value).
    pub step: u64,
}
ros_type!(IntegerRange, "rcl_interfaces/msg/IntegerRange");

/// rcl_interfaces/msg/ParameterDescriptor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParameterDescriptor {
    /// Name.
    pub name: String,
    /// A `ParameterType` constant.
    #[serde(rename = "type")]
    pub kind: u8,
    /// What it does.
    pub description: String,
    /// Constraints in words, beyond the ranges.
    pub additional_constraints: String,
    /// Fixed once the node runs.
    pub read_only: bool,
    /// Whether its type may change.
    pub dynamic_typing: bool,
    /// At most one range, for doubles.
    pub floating_point_range: Vec<FloatingPointRange>,
    /// At most one range, for integers.
    pub integer_range: Vec<IntegerRange>,
}
ros_type!(ParameterDescriptor, "rcl_interfaces/msg/ParameterDescriptor");

/// rcl_interfaces/msg/SetParametersResult.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetParametersResult {
    /// Whether the set took effect.
    pub successful: bool,
    /// Why not.
    pub reason: String,
}
ros_type!(SetParametersResult, "rcl_interfaces/msg/SetParametersResult");

/// rcl_interfaces/msg/ListParametersResult.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListParametersResult {
    /// Parameter names.
    pub names: Vec<String>,
    /// Their prefixes.
    pub prefixes: Vec<String>,
}
ros_type!(ListParametersResult, "rcl_interfaces/msg/ListParametersResult");

/// rcl_interfaces/msg/ParameterEvent, on `/parameter_events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParameterEvent {
    /// When.
    pub stamp: Time,
    /// The node's fully qualified name.
    pub node: String,
    /// Parameters declared.
    pub new_parameters: Vec<Parameter>,
    /// Parameters changed.
    pub changed_parameters: Vec<Parameter>,
    /// Parameters removed.
    pub deleted_parameters: Vec<Parameter>,
}
ros_type!(ParameterEvent, "rcl_interfaces/msg/ParameterEvent");

/// The six parameter services of a ROS 2 node: their request and response bodies, in the
/// order of the `.srv` files.
pub mod parameter_services {
    use serde::{Deserialize, Serialize};

    use super::{ListParametersResult, Parameter, ParameterDescriptor, ParameterValue, SetParametersResult};

    /// rcl_interfaces/srv/ListParameters request.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ListRequest {
        /// Only names under these prefixes (none: all).
        pub prefixes: Vec<String>,
        /// How many `.`-separated levels below a prefix (0: any).
        pub depth: u64,
    }
    /// rcl_interfaces/srv/ListParameters response.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ListResponse {
        /// The names.
        pub result: ListParametersResult,
    }
    /// A request of names: GetParameters, GetParameterTypes, DescribeParameters.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct NamesRequest {
        /// Parameter names.
        pub names: Vec<String>,
    }
    /// rcl_interfaces/srv/GetParameters response.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct GetResponse {
        /// One value per name (NOT_SET when unknown).
        pub values: Vec<ParameterValue>,
    }
    /// rcl_interfaces/srv/GetParameterTypes response.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TypesResponse {
        /// One type per name (NOT_SET when unknown).
        pub types: Vec<u8>,
    }
    /// rcl_interfaces/srv/DescribeParameters response.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct DescribeResponse {
        /// One descriptor per name.
        pub descriptors: Vec<ParameterDescriptor>,
    }
    /// SetParameters and SetParametersAtomically request.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct SetRequest {
        /// The new values.
        pub parameters: Vec<Parameter>,
    }
    /// rcl_interfaces/srv/SetParameters response.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SetResponse {
        /// One result per parameter.
        pub results: Vec<SetParametersResult>,
    }
    /// rcl_interfaces/srv/SetParametersAtomically response.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SetAtomicallyResponse {
        /// All or nothing.
        pub result: SetParametersResult,
    }
}
