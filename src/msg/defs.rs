//! Message definitions in the `ros2msg` schema encoding that rosbag2 writes into MCAP files: the
//! type's `.msg` fields, then each type it uses, separated by a line of `=` and `MSG: pkg/Name`.
//! Readers (ros2 bag, Foxglove, mcap-ros2-support) decode the CDR messages with them.

/// Fields of each type, as in its `.msg` (nested types fully qualified).
const DEFINITIONS: &[(&str, &str)] = &[
    ("builtin_interfaces/Time", "int32 sec\nuint32 nanosec\n"),
    ("builtin_interfaces/Duration", "int32 sec\nuint32 nanosec\n"),
    ("std_msgs/Header", "builtin_interfaces/Time stamp\nstring frame_id\n"),
    ("std_msgs/String", "string data\n"),
    ("std_msgs/Bool", "bool data\n"),
    ("std_msgs/MultiArrayDimension", "string label\nuint32 size\nuint32 stride\n"),
    ("std_msgs/MultiArrayLayout", "std_msgs/MultiArrayDimension[] dim\nuint32 data_offset\n"),
    ("std_msgs/Float32MultiArray", "std_msgs/MultiArrayLayout layout\nfloat32[] data\n"),
    ("std_msgs/Float64MultiArray", "std_msgs/MultiArrayLayout layout\nfloat64[] data\n"),
    (
        "sensor_msgs/JointState",
        "std_msgs/Header header\nstring[] name\nfloat64[] position\nfloat64[] velocity\nfloat64[] effort\n",
    ),
    (
        "sensor_msgs/Image",
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data\n",
    ),
    ("sensor_msgs/CompressedImage", "std_msgs/Header header\nstring format\nuint8[] data\n"),
    ("geometry_msgs/Vector3", "float64 x\nfloat64 y\nfloat64 z\n"),
    ("geometry_msgs/Point", "float64 x\nfloat64 y\nfloat64 z\n"),
    ("geometry_msgs/Quaternion", "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n"),
    ("geometry_msgs/Twist", "geometry_msgs/Vector3 linear\ngeometry_msgs/Vector3 angular\n"),
    (
        "sensor_msgs/Imu",
        "std_msgs/Header header\ngeometry_msgs/Quaternion orientation\nfloat64[9] orientation_covariance\ngeometry_msgs/Vector3 angular_velocity\nfloat64[9] angular_velocity_covariance\ngeometry_msgs/Vector3 linear_acceleration\nfloat64[9] linear_acceleration_covariance\n",
    ),
    (
        "trajectory_msgs/JointTrajectoryPoint",
        "float64[] positions\nfloat64[] velocities\nfloat64[] accelerations\nfloat64[] effort\nbuiltin_interfaces/Duration time_from_start\n",
    ),
    (
        "trajectory_msgs/JointTrajectory",
        "std_msgs/Header header\nstring[] joint_names\ntrajectory_msgs/JointTrajectoryPoint[] points\n",
    ),
];

const SEPARATOR: &str = "================================================================================\n";

fn short(type_name: &str) -> String {
    type_name.replace("/msg/", "/")
}

fn fields(short_name: &str) -> Option<&'static str> {
    DEFINITIONS.iter().find(|(n, _)| *n == short_name).map(|(_, f)| *f)
}

/// The `ros2msg` definition of `pkg/msg/Name` (or `pkg/Name`), with every type it uses.
pub fn definition(type_name: &str) -> Option<String> {
    let root = short(type_name);
    let mut text = fields(&root)?.to_string();
    let mut done = vec![root.clone()];
    let mut queue = vec![root];
    while let Some(t) = queue.pop() {
        for line in fields(&t)?.lines() {
            let ty = line.split_whitespace().next().unwrap_or("");
            let ty = ty.split('[').next().unwrap_or(ty);
            if ty.contains('/') && !done.iter().any(|d| d == ty) {
                done.push(ty.to_string());
                queue.push(ty.to_string());
                text.push_str(SEPARATOR);
                text.push_str(&format!("MSG: {ty}\n"));
                text.push_str(fields(ty)?);
            }
        }
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_carry_every_nested_type_once() {
        let d = definition("sensor_msgs/msg/JointState").unwrap();
        assert!(d.starts_with("std_msgs/Header header\n"));
        assert_eq!(d.matches("MSG: std_msgs/Header").count(), 1);
        assert_eq!(d.matches("MSG: builtin_interfaces/Time").count(), 1);
        let t = definition("trajectory_msgs/msg/JointTrajectory").unwrap();
        for nested in [
            "std_msgs/Header",
            "builtin_interfaces/Time",
            "trajectory_msgs/JointTrajectoryPoint",
            "builtin_interfaces/Duration",
        ] {
            assert_eq!(t.matches(&format!("MSG: {nested}\n")).count(), 1, "{nested}");
        }
        assert!(definition("std_msgs/msg/Float64MultiArray").unwrap().contains("MSG: std_msgs/MultiArrayDimension"));
        for s in crate::msg::schema::SCHEMAS {
            assert!(definition(s.name).is_some(), "{} has no definition", s.name);
        }
        assert!(definition("nav_msgs/msg/Odometry").is_none());
    }
}
