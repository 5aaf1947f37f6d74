//! The rcl transport, through r2r, for robots with a sourced ROS 2: the node is a real rcl node,
//! with the robot's RMW (Fast DDS, Cyclone, ...), `ros2 param` and the rest of the ROS tooling.
//! It moves raw CDR (`create_publisher_untyped` / `publish_raw`, `subscribe_raw`), so the same
//! message structs and codec serve both transports. One thread owns the node and spins it;
//! each subscription's stream is drained on a thread of its own.
//!
//! Build it on the robot with ROS 2 sourced (`ROS_DISTRO`, `AMENT_PREFIX_PATH`) and the message
//! packages limited by `IDL_PACKAGE_FILTER` (see `.cargo/config.toml`). CI can only type-check it,
//! through the `rcl-check` feature, because r2r cannot link without ROS 2.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::StreamExt;
use r2r::{Context, Node, PublisherUntyped, QosProfile};

use super::transport::{
    NodeIdentity, Qos, RawPublisher, Sample, SampleSink, Transport, TransportError, join_all, ros_now, split_type,
};

fn qos_profile(q: Qos) -> QosProfile {
    let p = QosProfile::default().keep_last(q.depth.max(1));
    let p = if q.reliable { p.reliable() } else { p.best_effort() };
    if q.transient_local { p.transient_local() } else { p.volatile() }
}

/// The r2r transport.
pub struct RclTransport {
    identity: NodeIdentity,
    node: Arc<Mutex<Option<Node>>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl RclTransport {
    /// Creates the rcl node (rcl reads `--ros-args` from the process's arguments itself; the
    /// name and namespace given here already carry them).
    pub fn new(identity: NodeIdentity) -> Result<RclTransport, TransportError> {
        let ctx =
            Context::create().map_err(|e| TransportError(format!("cannot initialise rcl: {e}; is ROS 2 sourced?")))?;
        let node = Node::create(ctx, &identity.name, &identity.namespace)
            .map_err(|e| TransportError(format!("cannot create node {}: {e}", identity.name)))?;
        let node = Arc::new(Mutex::new(Some(node)));
        let stop = Arc::new(AtomicBool::new(false));
        let spin = {
            let (node, stop) = (node.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rcl-spin".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match node.lock() {
                            Ok(mut g) => match g.as_mut() {
                                Some(n) => n.spin_once(Duration::from_millis(5)),
                                None => break,
                            },
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| TransportError(format!("cannot start the spin thread: {e}")))?
        };
        Ok(RclTransport { identity, node, stop, threads: Mutex::new(vec![spin]) })
    }

    fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> Result<R, TransportError>) -> Result<R, TransportError> {
        let mut g = self.node.lock().map_err(|_| TransportError("the node lock is poisoned".into()))?;
        f(g.as_mut().ok_or_else(|| TransportError("the node has shut down".into()))?)
    }
}

impl Drop for RclTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut g) = self.node.lock() {
            g.take();
        }
        join_all(&self.threads);
    }
}

struct RclPublisher(PublisherUntyped);

impl RawPublisher for RclPublisher {
    fn publish(&mut self, cdr: &[u8]) -> Result<(), TransportError> {
        self.0.publish_raw(cdr).map_err(|e| TransportError(format!("publish failed: {e}")))
    }
}

impl Transport for RclTransport {
    fn backend(&self) -> String {
        let rmw = std::env::var("RMW_IMPLEMENTATION").unwrap_or_else(|_| "the default RMW".into());
        format!("rcl (r2r 0.9.7, ROS {}, {rmw})", r2r::ROS_DISTRO)
    }

    fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    fn publisher(&self, topic: &str, type_name: &str, qos: Qos) -> Result<Box<dyn RawPublisher>, TransportError> {
        split_type(type_name)?;
        let p = self.with_node(|n| {
            n.create_publisher_untyped(topic, type_name, qos_profile(qos))
                .map_err(|e| TransportError(format!("cannot publish on {topic} ({type_name}): {e}")))
        })?;
        Ok(Box::new(RclPublisher(p)))
    }

    fn subscribe(&self, topic: &str, type_name: &str, qos: Qos, mut sink: SampleSink) -> Result<(), TransportError> {
        split_type(type_name)?;
        let mut stream = self.with_node(|n| {
            n.subscribe_raw(topic, type_name, qos_profile(qos))
                .map_err(|e| TransportError(format!("cannot subscribe to {topic} ({type_name}): {e}")))
        })?;
        let handle = std::thread::Builder::new()
            .name(format!("rcl-sub {topic}"))
            .spawn(move || {
                while let Some(cdr) = futures::executor::block_on(stream.next()) {
                    sink(Sample { cdr, arrived: Instant::now(), arrived_ros: ros_now() });
                }
            })
            .map_err(|e| TransportError(format!("cannot start the subscription thread: {e}")))?;
        self.threads.lock().map_err(|_| TransportError("the thread list lock is poisoned".into()))?.push(handle);
        Ok(())
    }
}
