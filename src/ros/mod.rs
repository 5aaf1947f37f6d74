//! ROS 2 side of the node: which message types skills may read and write, and which numeric
//! fields of each a manifest can map onto a policy's tensors.

pub mod args;
pub mod cdr;
#[cfg(feature = "dds")]
pub mod dds;
pub mod distro;
pub mod msg;
pub mod msg_defs;
pub mod names;
pub mod params;
#[cfg(feature = "rcl")]
pub mod rcl;
pub mod schema;
pub mod transport;
