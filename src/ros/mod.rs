//! The node's connection to ROS 2: the transports behind one trait (dds: RustDDS, the default;
//! rcl: r2r), the ROS command line (`--ros-args`), the robot's distro, and the parameter
//! services. Message knowledge (types, CDR, schemas, names) lives below, in `msg`.

pub mod args;
#[cfg(feature = "dds")]
pub mod dds;
pub mod distro;
pub mod params;
#[cfg(feature = "rcl")]
pub mod rcl;
pub mod transport;
