//! The default transport: ros2-client over RustDDS, real RTPS on the wire and no ROS install
//! needed. The node announces itself on `ros_discovery_info`, so `ros2 node list` shows it.
//!
//! ros2-client's publishers and subscriptions are typed through serde; [`RawBody`] passes CDR
//! bodies through them unchanged: it serialises as a fixed-length run of bytes (which CDR writes
//! without a length or padding) and deserialises by taking bytes until the sample ends.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Instant;

use futures::StreamExt;
use futures::channel::oneshot;
use futures::future::{Either, FutureExt, Shared, select};
use ros2_client::dds::rustdds::DomainParticipantBuilder;
use ros2_client::dds::{Context, Node, Publisher};
use ros2_client::qos::{Durability, History, Reliability, WhenFull};
use ros2_client::{MessageTypeName, Name, NodeName, NodeOptions, QosProfile};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserializer, Serialize, Serializer};

use super::cdr::CDR_LE;
use super::transport::{
    NodeIdentity, Qos, RawPublisher, Sample, SampleSink, Transport, TransportError, join_all, ros_now, split_type,
};

/// Completes (with `Canceled`) for every waiter once the transport's stop sender is dropped.
type StopSignal = Shared<oneshot::Receiver<()>>;

/// A CDR body (no encapsulation header) carried through ros2-client's typed API unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct RawBody(pub Vec<u8>);

impl Serialize for RawBody {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

#[derive(Clone, Copy)]
struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = RawBody;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawBody, D::Error> {
        d.deserialize_tuple(usize::MAX, RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawBody;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the bytes of a CDR body")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawBody, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        // The sample's end shows as an end-of-input error: that is where the body stops.
        while let Ok(Some(b)) = seq.next_element::<u8>() {
            bytes.push(b);
        }
        Ok(RawBody(bytes))
    }
}

fn qos_profile(q: Qos) -> QosProfile {
    let reliability =
        if q.reliable { Reliability::Reliable { when_full: WhenFull::Fail } } else { Reliability::BestEffort };
    let durability = if q.transient_local { Durability::TransientLocal } else { Durability::Volatile };
    QosProfile::subscription_default()
        .reliability(reliability)
        .durability(durability)
        .history(History::KeepLast { depth: q.depth.max(1) })
}

fn err(what: &str) -> impl Fn(ros2_client::CreateError) -> TransportError + '_ {
    move |e| TransportError(format!("{what}: {e:?}"))
}

/// The ros2-client transport.
pub struct DdsTransport {
    identity: NodeIdentity,
    node: Mutex<Option<Node>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stopped: StopSignal,
    threads: Mutex<Vec<JoinHandle<()>>>,
    domain: u16,
    localhost: bool,
    _context: Context,
}

impl DdsTransport {
    /// Joins DDS domain `domain` as the node `identity`; `localhost_only` keeps discovery and
    /// traffic on 127.0.0.1.
    pub fn new(identity: NodeIdentity, domain: u16, localhost_only: bool) -> Result<DdsTransport, TransportError> {
        let mut builder = DomainParticipantBuilder::new(domain);
        if localhost_only {
            builder = builder.with_only_networks([IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        }
        let participant =
            builder.build().map_err(|e| TransportError(format!("cannot join DDS domain {domain}: {e:?}")))?;
        let context = Context::from_domain_participant(participant).map_err(err("cannot create the ROS 2 context"))?;
        let name = NodeName::new(&identity.namespace, &identity.name).map_err(|e| {
            TransportError(format!("invalid node name {}/{}: {e:?}", identity.namespace, identity.name))
        })?;
        let mut node = context
            .new_node(name, NodeOptions::new().enable_rosout(false))
            .map_err(|e| TransportError(format!("cannot create node {}: {e:?}", identity.name)))?;
        let spinner = node.spinner().map_err(err("cannot start the node's spinner"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = stopped.shared();
        let spin_stopped = stopped.clone();
        let spin = std::thread::Builder::new()
            .name("ros-spin".into())
            .spawn(move || {
                futures::executor::block_on(select(Box::pin(spinner.spin()), spin_stopped));
            })
            .map_err(|e| TransportError(format!("cannot start the spin thread: {e}")))?;
        Ok(DdsTransport {
            identity,
            node: Mutex::new(Some(node)),
            stop: Mutex::new(Some(stop)),
            stopped,
            threads: Mutex::new(vec![spin]),
            domain,
            localhost: localhost_only,
            _context: context,
        })
    }

    fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> Result<R, TransportError>) -> Result<R, TransportError> {
        let mut g = self.node.lock().map_err(|_| TransportError("the node lock is poisoned".into()))?;
        f(g.as_mut().ok_or_else(|| TransportError("the node has shut down".into()))?)
    }

    fn topic(
        node: &Node,
        topic: &str,
        type_name: &str,
        qos: Qos,
    ) -> Result<ros2_client::dds::rustdds::Topic, TransportError> {
        let (pkg, ty) = split_type(type_name)?;
        let name = Name::parse(topic).map_err(|e| TransportError(format!("invalid topic name {topic}: {e:?}")))?;
        node.create_topic(&name, MessageTypeName::new(pkg, ty), &qos_profile(qos))
            .map_err(|e| TransportError(format!("cannot create topic {topic} ({type_name}): {e:?}")))
    }
}

impl Drop for DdsTransport {
    fn drop(&mut self) {
        // Dropping the node first lets its spinner finish on its own; then the rest stop.
        if let Ok(mut node) = self.node.lock() {
            node.take();
        }
        if let Ok(mut stop) = self.stop.lock() {
            stop.take();
        }
        join_all(&self.threads);
    }
}

struct DdsPublisher {
    publisher: Publisher<RawBody>,
}

impl RawPublisher for DdsPublisher {
    fn publish(&mut self, cdr: &[u8]) -> Result<(), TransportError> {
        if cdr.len() < 4 || cdr[..2] != CDR_LE[..2] {
            return Err(TransportError("only little-endian CDR is published".into()));
        }
        self.publisher.publish(RawBody(cdr[4..].to_vec())).map_err(|e| TransportError(format!("publish failed: {e:?}")))
    }
}

impl Transport for DdsTransport {
    fn backend(&self) -> String {
        let distro = if cfg!(feature = "jazzy") { "jazzy" } else { "humble" };
        let scope = if self.localhost { ", localhost only" } else { "" };
        format!("dds (ros2-client 0.12.1, {distro}, domain {}{scope})", self.domain)
    }

    fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    fn publisher(&self, topic: &str, type_name: &str, qos: Qos) -> Result<Box<dyn RawPublisher>, TransportError> {
        let publisher = self.with_node(|node| {
            let t = Self::topic(node, topic, type_name, qos)?;
            node.create_publisher::<RawBody>(&t, Some(qos_profile(qos)))
                .map_err(|e| TransportError(format!("cannot publish on {topic}: {e:?}")))
        })?;
        Ok(Box::new(DdsPublisher { publisher }))
    }

    fn subscribe(&self, topic: &str, type_name: &str, qos: Qos, mut sink: SampleSink) -> Result<(), TransportError> {
        let subscription = self.with_node(|node| {
            let t = Self::topic(node, topic, type_name, qos)?;
            node.create_subscription::<RawBody>(&t, Some(qos_profile(qos)))
                .map_err(|e| TransportError(format!("cannot subscribe to {topic}: {e:?}")))
        })?;
        let stopped = self.stopped.clone();
        let topic_name = topic.to_string();
        let handle = std::thread::Builder::new()
            .name(format!("ros-sub {topic}"))
            .spawn(move || {
                futures::executor::block_on(async move {
                    let stream = subscription.async_stream_seed(RawSeed);
                    futures::pin_mut!(stream);
                    let mut stopped = stopped;
                    loop {
                        match select(stream.next(), stopped).await {
                            Either::Left((Some(Ok((body, _info))), rest)) => {
                                stopped = rest;
                                let mut cdr = Vec::with_capacity(body.0.len() + 4);
                                cdr.extend_from_slice(&CDR_LE);
                                cdr.extend_from_slice(&body.0);
                                sink(Sample { cdr, arrived: Instant::now(), arrived_ros: ros_now() });
                            }
                            Either::Left((Some(Err(e)), rest)) => {
                                stopped = rest;
                                tracing::warn!(topic = %topic_name, "receive error: {e:?}");
                            }
                            Either::Left((None, _)) | Either::Right(_) => break,
                        }
                    }
                });
            })
            .map_err(|e| TransportError(format!("cannot start the subscription thread: {e}")))?;
        self.threads.lock().map_err(|_| TransportError("the thread list lock is poisoned".into()))?.push(handle);
        Ok(())
    }
}

// Both plans of the node's threads need the transport from several threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<DdsTransport>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bodies_pass_through_cdr_unchanged() {
        let body = vec![1u8, 0, 0, 0, 7, 0, 0, 0, b'j', b'o', b'i', b'n', b't', b's', 0, 0, 3];
        let enc = cdr_encoding::to_vec::<_, byteorder::LittleEndian>(&RawBody(body.clone())).unwrap();
        assert_eq!(enc, body, "no length prefix, no padding");
        let mut de = cdr_encoding::CdrDeserializer::<byteorder::LittleEndian>::new(&body);
        assert_eq!(RawSeed.deserialize(&mut de).unwrap(), RawBody(body));
    }
}
