//! ROS 2 message types as serde structs: fields in `.msg` order, so the CDR bytes are what every
//! ROS 2 middleware puts on the wire. Golden tests hold them to bytes made by an independent
//! implementation (rosbags).

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
