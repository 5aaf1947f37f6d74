//! The transport: how the node publishes and subscribes. Every backend moves raw CDR (the 4-byte
//! encapsulation header and the body), so the same message structs and codec serve all of them,
//! and what a subscription hands over can be recorded as is.

use std::time::Instant;

use super::args::RosArgs;
#[cfg(all(feature = "dds", not(feature = "rcl")))]
use super::distro::RosDistro;
use crate::msg::Time;

/// Delivery and history settings of a topic, in ROS 2 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    /// Reliable (retransmitted) or best effort.
    pub reliable: bool,
    /// Late joiners get the last `depth` samples.
    pub transient_local: bool,
    /// Keep-last depth.
    pub depth: usize,
}

impl Qos {
    /// ROS 2's sensor-data profile: best effort, volatile, depth 5.
    pub const SENSOR_DATA: Qos = Qos { reliable: false, transient_local: false, depth: 5 };
    /// Sensor data read without losing bursts: best effort (so it matches every publisher) with a
    /// deep reader history; the depth takes no part in matching.
    pub const SENSOR_DATA_DEEP: Qos = Qos { reliable: false, transient_local: false, depth: 1000 };
    /// Reliable, volatile, depth 10 (the ROS 2 default).
    pub const RELIABLE: Qos = Qos { reliable: true, transient_local: false, depth: 10 };
    /// Reliable and transient-local with depth 1: late joiners get the latest value (latched).
    pub const LATCHED: Qos = Qos { reliable: true, transient_local: true, depth: 1 };
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The message: encapsulation header and CDR body.
    pub cdr: Vec<u8>,
    /// When it arrived (monotonic clock).
    pub arrived: Instant,
    /// When it arrived (ROS time).
    pub arrived_ros: Time,
}

/// Called on the transport's thread for every sample of a subscription.
pub type SampleSink = Box<dyn FnMut(Sample) + Send>;

/// Answers one service's requests on the transport's thread: gets a request (encapsulation
/// header and CDR body) and returns the response the same way. An error leaves the request
/// unanswered; the transport logs it.
pub type ServiceHandler = Box<dyn FnMut(&[u8]) -> Result<Vec<u8>, TransportError> + Send>;

/// Why a transport operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Publishes raw CDR messages on one topic.
pub trait RawPublisher: Send {
    /// Publishes one message (header and body).
    fn publish(&mut self, cdr: &[u8]) -> Result<(), TransportError>;
}

/// The node's name and namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// Absolute namespace.
    pub namespace: String,
}

/// A ROS 2 node's connection to the graph. Topic names are absolute (already expanded and
/// remapped); type names are `pkg/msg/Name`.
pub trait Transport: Send + Sync {
    /// Which backend this is, for logs and diagnostics.
    fn backend(&self) -> String;
    /// The node.
    fn identity(&self) -> &NodeIdentity;
    /// A publisher on `topic`.
    fn publisher(&self, topic: &str, type_name: &str, qos: Qos) -> Result<Box<dyn RawPublisher>, TransportError>;
    /// Subscribes to `topic`; `sink` gets every sample, on the transport's thread.
    fn subscribe(&self, topic: &str, type_name: &str, qos: Qos, sink: SampleSink) -> Result<(), TransportError>;
    /// Serves `service` (absolute, resolved) of type `pkg/srv/Name` with `handler`.
    fn serve(&self, service: &str, type_name: &str, handler: ServiceHandler) -> Result<(), TransportError>;
    /// The current ROS time.
    fn now(&self) -> Time {
        ros_now()
    }
}

/// The wall clock as ROS time.
pub fn ros_now() -> Time {
    Time::from_secs_f64(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
    )
}

/// Joins every thread in the list: a transport's spin and subscription threads, once stopped.
#[cfg(any(feature = "dds", feature = "rcl"))]
pub(crate) fn join_all(threads: &std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>) {
    let handles = threads.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
    for t in handles {
        let _ = t.join();
    }
}

/// `pkg/msg/Name` split into package and name.
pub fn split_type(type_name: &str) -> Result<(&str, &str), TransportError> {
    match type_name.split('/').collect::<Vec<_>>().as_slice() {
        [pkg, "msg", name] | [pkg, name] if !pkg.is_empty() && !name.is_empty() => Ok((pkg, name)),
        _ => Err(TransportError(format!("{type_name:?} is not a message type name; write pkg/msg/Name"))),
    }
}

/// `pkg/srv/Name` split into package and name.
pub fn split_service_type(type_name: &str) -> Result<(&str, &str), TransportError> {
    match type_name.split('/').collect::<Vec<_>>().as_slice() {
        [pkg, "srv", name] if !pkg.is_empty() && !name.is_empty() => Ok((pkg, name)),
        _ => Err(TransportError(format!("{type_name:?} is not a service type name; write pkg/srv/Name"))),
    }
}

/// Whether the ROS environment asks to keep discovery on this host (`ROS_LOCALHOST_ONLY=1`, or
/// `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST` from Iron on).
pub fn localhost_only() -> bool {
    std::env::var("ROS_LOCALHOST_ONLY").is_ok_and(|v| v.trim() == "1")
        || std::env::var("ROS_AUTOMATIC_DISCOVERY_RANGE").is_ok_and(|v| v.trim().eq_ignore_ascii_case("LOCALHOST"))
}

/// The transport of the node `args` names, on the domain of `ROS_DOMAIN_ID`: rcl when built with
/// `rcl`, otherwise DDS in the graph layout of the robot's distro (`-p ros_distro:=...`, else
/// `ROS_DISTRO`, else Humble's).
pub fn connect(args: &RosArgs) -> Result<Box<dyn Transport>, TransportError> {
    let identity = NodeIdentity { name: args.node.clone(), namespace: args.namespace.clone() };
    #[cfg(feature = "rcl")]
    {
        Ok(Box::new(super::rcl::RclTransport::new(identity, args)?))
    }
    #[cfg(all(feature = "dds", not(feature = "rcl")))]
    {
        let distro = args.get::<String>("ros_distro").map_err(|e| TransportError(e.to_string()))?;
        let config = super::dds::DdsConfig {
            domain: super::args::domain_id().map_err(|e| TransportError(e.to_string()))?,
            localhost_only: localhost_only(),
            distro: RosDistro::choose(distro.as_deref()).map_err(|e| TransportError(e.to_string()))?,
        };
        Ok(Box::new(super::dds::DdsTransport::new(identity, &config)?))
    }
    #[cfg(not(any(feature = "dds", feature = "rcl")))]
    {
        let _ = identity;
        Err(TransportError(
            "this skillgraft was built without a ROS 2 transport; build with the `dds` feature (the default) or `rcl`"
                .into(),
        ))
    }
}
