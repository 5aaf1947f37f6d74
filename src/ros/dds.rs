//! The default transport: RustDDS, real RTPS on the wire and no ROS install needed. What ROS 2
//! adds on top of DDS lives here: topic and type names (`rt/...`, `pkg::msg::dds_::Name_`), QoS,
//! the node's entry in the ROS graph (`ros_discovery_info`, in the layout of the robot's distro,
//! chosen at run time: the Gid is 24 bytes up to Humble and 16 from Iron on), and services
//! (`rq/...Request` and `rr/...Reply` topics, with Fast DDS's or CycloneDDS's request ids).
//!
//! RustDDS is used directly, not through ros2-client, because ros2-client fixes the graph layout
//! when it is compiled and publishes its own graph entry for every node.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::oneshot;
use futures::future::{Either, FutureExt, Shared, select};
use rustdds::no_key::{self, DataWriter, Decode, DefaultDecoder, DeserializerAdapter, SerializerAdapter};
use rustdds::policy::{Deadline, Durability, History, Lifespan, Ownership, Reliability};
use rustdds::rpc::SampleIdentity;
use rustdds::{
    DataWriterStatus, DomainParticipant, DomainParticipantBuilder, GUID, QosPolicies, QosPolicyBuilder, RTPSEntity,
    RepresentationIdentifier, StatusEvented, Timestamp, Topic, TopicKind, WriteOptionsBuilder,
};
use serde::ser::SerializeTuple;
use serde::{Serialize, Serializer};

use super::distro::RosDistro;
use super::transport::{
    NodeIdentity, Qos, RawPublisher, Sample, SampleSink, ServiceHandler, Transport, TransportError, join_all, ros_now,
    split_service_type, split_type,
};
use crate::msg::cdr::{self, CDR_BE, CDR_LE};

/// Where and how the DDS transport joins the ROS graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdsConfig {
    /// DDS domain (`ROS_DOMAIN_ID`).
    pub domain: u16,
    /// Discovery and traffic on 127.0.0.1 only.
    pub localhost_only: bool,
    /// The robot's ROS 2 distribution: the layout of the node's graph entry.
    pub distro: RosDistro,
}

impl DdsConfig {
    /// On this host only, in the layout of the environment's distro (`ROS_DISTRO`, else Humble):
    /// for the demo, the benches and tests, where every participant is on this machine.
    pub fn local(domain: u16) -> Result<DdsConfig, super::distro::DistroError> {
        Ok(DdsConfig { domain, localhost_only: true, distro: RosDistro::choose(None)? })
    }
}

/// Completes (with `Canceled`) for every waiter once the transport's stop sender is dropped.
type StopSignal = Shared<oneshot::Receiver<()>>;

/// A sample as RustDDS hands it over: its representation and the CDR body after the 4-byte
/// encapsulation header, passed through unchanged.
#[derive(Debug, Clone)]
struct Raw {
    rep: [u8; 2],
    body: rustdds::bytes::Bytes,
}

impl Raw {
    /// Header and body, as the rest of skillgraft holds messages.
    fn to_cdr(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 4);
        out.extend_from_slice(&[self.rep[0], self.rep[1], 0, 0]);
        out.extend_from_slice(&self.body);
        out
    }

    /// A message to publish: only little-endian plain CDR goes out, as every ROS 2 RMW sends.
    fn from_cdr(cdr: &[u8]) -> Result<Raw, TransportError> {
        if cdr.len() < 4 || cdr[..2] != CDR_LE[..2] {
            return Err(TransportError("only little-endian CDR (header 00 01) is published".into()));
        }
        Ok(Raw { rep: [0, 1], body: rustdds::bytes::Bytes::copy_from_slice(&cdr[4..]) })
    }
}

/// Serialises and deserialises [`Raw`] without looking inside.
struct RawAdapter;

const ENCODINGS: [RepresentationIdentifier; 2] = [RepresentationIdentifier::CDR_LE, RepresentationIdentifier::CDR_BE];

impl SerializerAdapter<Raw> for RawAdapter {
    type Error = TransportError;

    fn output_encoding() -> RepresentationIdentifier {
        RepresentationIdentifier::CDR_LE
    }

    fn to_bytes(value: &Raw) -> Result<rustdds::bytes::Bytes, TransportError> {
        Ok(value.body.clone())
    }
}

impl DeserializerAdapter<Raw> for RawAdapter {
    type Error = TransportError;
    type Decoded = Raw;

    fn supported_encodings() -> &'static [RepresentationIdentifier] {
        &ENCODINGS
    }

    fn transform_decoded(decoded: Raw) -> Raw {
        decoded
    }
}

#[derive(Clone)]
struct RawDecoder;

impl<'de> Decode<'de, Raw> for RawDecoder {
    type Error = TransportError;

    fn decode_bytes(self, input: &'de [u8], encoding: RepresentationIdentifier) -> Result<Raw, TransportError> {
        Ok(Raw { rep: encoding.to_bytes(), body: rustdds::bytes::Bytes::copy_from_slice(input) })
    }
}

impl DefaultDecoder<Raw> for RawAdapter {
    type Decoder = RawDecoder;
    const DECODER: RawDecoder = RawDecoder;
}

fn qos_policies(q: Qos) -> QosPolicies {
    // A full send window fails at once instead of blocking: the control loop's publisher thread
    // must never wait on a slow reader.
    let reliability = if q.reliable {
        Reliability::Reliable { max_blocking_time: rustdds::Duration::ZERO }
    } else {
        Reliability::BestEffort
    };
    let durability = if q.transient_local { Durability::TransientLocal } else { Durability::Volatile };
    QosPolicyBuilder::new()
        .reliability(reliability)
        .durability(durability)
        .history(History::KeepLast { depth: q.depth.clamp(1, i32::MAX as usize) as i32 })
        .build()
}

/// `ros_discovery_info`'s QoS, as rmw_dds_common publishes it: late joiners get the last entry.
fn discovery_qos() -> QosPolicies {
    QosPolicyBuilder::new()
        .durability(Durability::TransientLocal)
        .deadline(Deadline(rustdds::Duration::INFINITE))
        .ownership(Ownership::Shared)
        .reliable(rustdds::Duration::ZERO)
        .history(History::KeepLast { depth: 1 })
        .lifespan(Lifespan { duration: rustdds::Duration::INFINITE })
        .build()
}

/// Services' QoS (rmw's default): reliable, volatile, the last 10.
const SERVICE_QOS: Qos = Qos { reliable: true, transient_local: false, depth: 10 };

/// How long a reply waits for the client's reply reader to be matched: a reply sent before the
/// match is lost, and Fast DDS clients may send a request as soon as they see our request reader.
const REPLY_MATCH_WAIT: Duration = Duration::from_secs(2);

/// The request ids a service's clients use. Fast DDS (and RustDDS) carry the id beside the data
/// (the RTPS related-sample-identity); rmw_cyclonedds puts a 16-byte header in front of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceMapping {
    Enhanced,
    Cyclone,
}

impl ServiceMapping {
    /// Every node of a ROS 2 system runs one RMW, named by `RMW_IMPLEMENTATION`.
    fn from_env() -> ServiceMapping {
        match std::env::var("RMW_IMPLEMENTATION") {
            Ok(v) if v.starts_with("rmw_cyclonedds") => ServiceMapping::Cyclone,
            _ => ServiceMapping::Enhanced,
        }
    }
}

/// DDS name of a ROS topic or service topic: `rt/robot/joints`, `rq/robot/list_parametersRequest`.
fn dds_name(prefix: &str, ros_name: &str, suffix: &str) -> Result<String, TransportError> {
    if !ros_name.starts_with('/') {
        return Err(TransportError(format!("{ros_name:?} is not an absolute name; resolve it first")));
    }
    Ok(format!("{prefix}{ros_name}{suffix}"))
}

/// The node's entry in `ros_discovery_info` (rmw_dds_common/ParticipantEntitiesInfo).
struct GraphEntry {
    gid_len: usize,
    participant: GUID,
    namespace: String,
    name: String,
    readers: Vec<GUID>,
    writers: Vec<GUID>,
    writer: DataWriter<Raw, RawAdapter>,
}

/// A Gid of the distro's length: the GUID's 16 bytes, then zeros (Humble pads to 24).
struct Gid<'a>(&'a GUID, usize);

impl Serialize for Gid<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.0.to_bytes();
        let mut t = s.serialize_tuple(self.1)?;
        for i in 0..self.1 {
            t.serialize_element(&bytes.get(i).copied().unwrap_or(0))?;
        }
        t.end()
    }
}

#[derive(Serialize)]
struct NodeEntitiesInfo<'a> {
    node_namespace: &'a str,
    node_name: &'a str,
    reader_gid_seq: Vec<Gid<'a>>,
    writer_gid_seq: Vec<Gid<'a>>,
}

#[derive(Serialize)]
struct ParticipantEntitiesInfo<'a> {
    gid: Gid<'a>,
    node_entities_info_seq: Vec<NodeEntitiesInfo<'a>>,
}

impl GraphEntry {
    /// The participant's entry: this node with its readers and writers, or no node at all.
    fn encode(&self, with_node: bool) -> Result<Vec<u8>, TransportError> {
        let n = self.gid_len;
        let node = NodeEntitiesInfo {
            node_namespace: &self.namespace,
            node_name: &self.name,
            reader_gid_seq: self.readers.iter().map(|g| Gid(g, n)).collect(),
            writer_gid_seq: self.writers.iter().map(|g| Gid(g, n)).collect(),
        };
        let info = ParticipantEntitiesInfo {
            gid: Gid(&self.participant, n),
            node_entities_info_seq: if with_node { vec![node] } else { vec![] },
        };
        cdr::encode(&info).map_err(|e| TransportError(format!("cannot encode the graph entry: {e}")))
    }

    fn announce(&self, with_node: bool) -> Result<(), TransportError> {
        let raw = Raw::from_cdr(&self.encode(with_node)?)?;
        self.writer.write(raw, None).map_err(|e| TransportError(format!("cannot announce the node: {e:?}")))
    }
}

/// The RustDDS transport.
pub struct DdsTransport {
    identity: NodeIdentity,
    config: DdsConfig,
    participant: DomainParticipant,
    publisher: rustdds::Publisher,
    subscriber: rustdds::Subscriber,
    graph: Mutex<GraphEntry>,
    mapping: ServiceMapping,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stopped: StopSignal,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Requests left unanswered (undecodable, or the handler failed).
    pub unanswered: std::sync::Arc<AtomicU64>,
}

fn dds_err(what: &str) -> impl Fn(rustdds::dds::CreateError) -> TransportError + '_ {
    move |e| TransportError(format!("{what}: {e:?}"))
}

impl DdsTransport {
    /// Joins the DDS domain of `config` as the node `identity` and announces it in the ROS graph.
    pub fn new(identity: NodeIdentity, config: &DdsConfig) -> Result<DdsTransport, TransportError> {
        let domain = config.domain;
        let mut builder = DomainParticipantBuilder::new(domain);
        if config.localhost_only {
            builder = builder.with_only_networks([std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)]);
        }
        let participant =
            builder.build().map_err(|e| TransportError(format!("cannot join DDS domain {domain}: {e:?}")))?;
        let publisher = participant
            .create_publisher(&qos_policies(Qos::RELIABLE))
            .map_err(dds_err("cannot create the DDS publisher"))?;
        let subscriber = participant
            .create_subscriber(&qos_policies(Qos::SENSOR_DATA))
            .map_err(dds_err("cannot create the DDS subscriber"))?;
        let topic = participant
            .create_topic(
                "ros_discovery_info".into(),
                "rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_".into(),
                &discovery_qos(),
                TopicKind::NoKey,
            )
            .map_err(dds_err("cannot create ros_discovery_info"))?;
        let writer = publisher
            .create_datawriter_no_key::<Raw, RawAdapter>(&topic, Some(discovery_qos()))
            .map_err(dds_err("cannot publish ros_discovery_info"))?;
        let graph = GraphEntry {
            gid_len: config.distro.gid_len(),
            participant: participant.guid(),
            namespace: identity.namespace.clone(),
            name: identity.name.clone(),
            readers: Vec::new(),
            writers: vec![writer.guid()],
            writer,
        };
        graph.announce(true)?;
        let (stop, stopped) = oneshot::channel::<()>();
        Ok(DdsTransport {
            identity,
            config: *config,
            participant,
            publisher,
            subscriber,
            graph: Mutex::new(graph),
            mapping: ServiceMapping::from_env(),
            stop: Mutex::new(Some(stop)),
            stopped: stopped.shared(),
            threads: Mutex::new(Vec::new()),
            unanswered: Default::default(),
        })
    }

    fn topic(&self, dds_name: String, dds_type: String, qos: Qos) -> Result<Topic, TransportError> {
        self.participant
            .create_topic(dds_name.clone(), dds_type.clone(), &qos_policies(qos), TopicKind::NoKey)
            .map_err(|e| TransportError(format!("cannot create topic {dds_name} ({dds_type}): {e:?}")))
    }

    /// Adds readers and writers to the node's graph entry and announces it again.
    fn register(&self, readers: &[GUID], writers: &[GUID]) -> Result<(), TransportError> {
        let mut g = self.graph.lock().map_err(|_| TransportError("the graph lock is poisoned".into()))?;
        g.readers.extend_from_slice(readers);
        g.writers.extend_from_slice(writers);
        g.announce(true)
    }

    fn spawn(&self, name: String, f: impl FnOnce(StopSignal) + Send + 'static) -> Result<(), TransportError> {
        let stopped = self.stopped.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || f(stopped))
            .map_err(|e| TransportError(format!("cannot start a transport thread: {e}")))?;
        self.threads.lock().map_err(|_| TransportError("the thread list lock is poisoned".into()))?.push(handle);
        Ok(())
    }

    /// The graph entry this node announces, encoded (for tests of the layout).
    pub fn graph_entry(&self) -> Result<Vec<u8>, TransportError> {
        self.graph.lock().map_err(|_| TransportError("the graph lock is poisoned".into()))?.encode(true)
    }
}

impl Drop for DdsTransport {
    fn drop(&mut self) {
        // Peers drop the node from their graph now rather than when the participant times out.
        if let Ok(g) = self.graph.lock() {
            let _ = g.announce(false);
        }
        if let Ok(mut stop) = self.stop.lock() {
            stop.take();
        }
        join_all(&self.threads);
    }
}

struct DdsPublisher(DataWriter<Raw, RawAdapter>);

impl RawPublisher for DdsPublisher {
    fn publish(&mut self, cdr: &[u8]) -> Result<(), TransportError> {
        self.0.write(Raw::from_cdr(cdr)?, None).map_err(|e| TransportError(format!("publish failed: {e:?}")))
    }
}

fn dds_type(type_name: &str) -> Result<String, TransportError> {
    let (pkg, name) = split_type(type_name)?;
    Ok(format!("{pkg}::msg::dds_::{name}_"))
}

impl Transport for DdsTransport {
    fn backend(&self) -> String {
        let scope = if self.config.localhost_only { ", localhost only" } else { "" };
        format!("dds (RustDDS 0.15.1, {} graph, domain {}{scope})", self.config.distro, self.config.domain)
    }

    fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    fn publisher(&self, topic: &str, type_name: &str, qos: Qos) -> Result<Box<dyn RawPublisher>, TransportError> {
        let t = self.topic(dds_name("rt", topic, "")?, dds_type(type_name)?, qos)?;
        let writer = self
            .publisher
            .create_datawriter_no_key::<Raw, RawAdapter>(&t, Some(qos_policies(qos)))
            .map_err(|e| TransportError(format!("cannot publish on {topic}: {e:?}")))?;
        self.register(&[], &[writer.guid()])?;
        Ok(Box::new(DdsPublisher(writer)))
    }

    fn subscribe(&self, topic: &str, type_name: &str, qos: Qos, mut sink: SampleSink) -> Result<(), TransportError> {
        let t = self.topic(dds_name("rt", topic, "")?, dds_type(type_name)?, qos)?;
        let reader = self
            .subscriber
            .create_simple_datareader_no_key::<Raw, RawAdapter>(&t, Some(qos_policies(qos)))
            .map_err(|e| TransportError(format!("cannot subscribe to {topic}: {e:?}")))?;
        self.register(&[reader.guid()], &[])?;
        let topic_name = topic.to_string();
        self.spawn(format!("ros-sub {topic}"), move |stopped| {
            futures::executor::block_on(async move {
                let stream = reader.as_async_stream();
                futures::pin_mut!(stream);
                let mut stopped = stopped;
                loop {
                    match select(stream.next(), stopped).await {
                        Either::Left((Some(Ok(change)), rest)) => {
                            stopped = rest;
                            let cdr = change.into_value().to_cdr();
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
    }

    fn serve(&self, service: &str, type_name: &str, mut handler: ServiceHandler) -> Result<(), TransportError> {
        let (pkg, name) = split_service_type(type_name)?;
        let request_topic =
            self.topic(dds_name("rq", service, "Request")?, format!("{pkg}::srv::dds_::{name}_Request_"), SERVICE_QOS)?;
        let reply_topic =
            self.topic(dds_name("rr", service, "Reply")?, format!("{pkg}::srv::dds_::{name}_Response_"), SERVICE_QOS)?;
        let reader = self
            .subscriber
            .create_simple_datareader_no_key::<Raw, RawAdapter>(&request_topic, Some(qos_policies(SERVICE_QOS)))
            .map_err(|e| TransportError(format!("cannot serve {service}: {e:?}")))?;
        let writer = self
            .publisher
            .create_datawriter_no_key::<Raw, RawAdapter>(&reply_topic, Some(qos_policies(SERVICE_QOS)))
            .map_err(|e| TransportError(format!("cannot serve {service}: {e:?}")))?;
        self.register(&[reader.guid()], &[writer.guid()])?;
        let (mapping, unanswered, service_name) = (self.mapping, self.unanswered.clone(), service.to_string());
        self.spawn(format!("ros-srv {service}"), move |stopped| {
            let mut matched = HashSet::new();
            futures::executor::block_on(async move {
                let stream = reader.as_async_stream();
                futures::pin_mut!(stream);
                let mut stopped = stopped;
                loop {
                    let request = match select(stream.next(), stopped).await {
                        Either::Left((Some(Ok(change)), rest)) => {
                            stopped = rest;
                            change
                        }
                        Either::Left((Some(Err(e)), rest)) => {
                            stopped = rest;
                            tracing::warn!(service = %service_name, "request not received: {e:?}");
                            continue;
                        }
                        Either::Left((None, _)) | Either::Right(_) => break,
                    };
                    let answered = answer(&request, mapping, &mut handler, &writer, &mut matched);
                    if let Err(e) = answered {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(service = %service_name, "request not answered: {e}");
                    }
                }
            });
        })
    }
}

/// Answers one request: finds its id (and, for CycloneDDS, the header to echo), runs the
/// handler and writes the reply once the client's reply reader is matched.
fn answer(
    request: &no_key::DeserializedCacheChange<Raw>,
    mapping: ServiceMapping,
    handler: &mut ServiceHandler,
    writer: &DataWriter<Raw, RawAdapter>,
    matched: &mut HashSet<GUID>,
) -> Result<(), TransportError> {
    let raw = &request.sample;
    // Fast DDS clients name their reply reader in the related identity and leave its sequence
    // number unknown; the request's own sequence number identifies it.
    let client_reader = request.related_sample_identity().map(|r| r.writer_guid).filter(|g| *g != GUID::GUID_UNKNOWN);
    let identity = SampleIdentity {
        writer_guid: client_reader.unwrap_or(request.writer_guid),
        sequence_number: request.sequence_number,
    };
    let (header, body) = match mapping {
        ServiceMapping::Enhanced => (&[][..], &raw.body[..]),
        ServiceMapping::Cyclone if raw.body.len() >= 16 => raw.body.split_at(16),
        ServiceMapping::Cyclone => {
            return Err(TransportError(format!(
                "a CycloneDDS request of {} bytes has no request header",
                raw.body.len()
            )));
        }
    };
    let mut cdr = Vec::with_capacity(body.len() + 4);
    cdr.extend_from_slice(&[raw.rep[0], raw.rep[1], 0, 0]);
    cdr.extend_from_slice(body);
    if raw.rep == [CDR_BE[0], CDR_BE[1]] {
        return Err(TransportError(
            "big-endian requests are not supported; ROS 2 clients send little-endian CDR".into(),
        ));
    }
    let response = handler(&cdr)?;
    let mut reply = Raw::from_cdr(&response)?;
    if !header.is_empty() {
        let mut with_header = Vec::with_capacity(header.len() + reply.body.len());
        with_header.extend_from_slice(header);
        with_header.extend_from_slice(&reply.body);
        reply.body = with_header.into();
    }
    if let Some(reader) = client_reader {
        let deadline = Instant::now() + REPLY_MATCH_WAIT;
        loop {
            while let Some(status) = writer.try_recv_status() {
                if let DataWriterStatus::PublicationMatched { current, reader, .. } = status {
                    if current.count_change() > 0 {
                        matched.insert(reader);
                    } else if current.count_change() < 0 {
                        matched.remove(&reader);
                    }
                }
            }
            if matched.contains(&reader) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let options =
        WriteOptionsBuilder::new().related_sample_identity(identity).source_timestamp(Timestamp::now()).build();
    writer.write_with_options(reply, options).map(|_| ()).map_err(|e| TransportError(format!("reply not sent: {e:?}")))
}

// The node's threads share the transport.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<DdsTransport>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_samples_keep_their_bytes() {
        let cdr = [0u8, 1, 0, 0, 7, 0, 0, 0, b'j', b'o', b'i', b'n', b't', b's', 0, 0, 3];
        let raw = Raw::from_cdr(&cdr).unwrap();
        assert_eq!(&raw.body[..], &cdr[4..]);
        assert_eq!(raw.to_cdr(), cdr);
        assert!(Raw::from_cdr(&[0, 0, 0, 0, 1]).is_err(), "big-endian is not published");
        let decoded = RawDecoder.decode_bytes(&cdr[4..], RepresentationIdentifier::CDR_BE).unwrap();
        assert_eq!(decoded.to_cdr()[..2], CDR_BE[..2]);
    }

    #[test]
    fn names_follow_ros_conventions() {
        assert_eq!(dds_name("rt", "/robot/joints", "").unwrap(), "rt/robot/joints");
        assert_eq!(
            dds_name("rq", "/skillgraft/get_parameters", "Request").unwrap(),
            "rq/skillgraft/get_parametersRequest"
        );
        assert!(dds_name("rt", "joints", "").is_err());
        assert_eq!(dds_type("std_msgs/msg/Float64MultiArray").unwrap(), "std_msgs::msg::dds_::Float64MultiArray_");
    }
}
