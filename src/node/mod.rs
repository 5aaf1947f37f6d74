//! The running node, the one place that knows every part: subscriptions feed the observer, the
//! control loop runs the skill, the recorder records demonstrations, live adaptation swaps adapted
//! skills in, the inbox installs pushed ones, the parameters change what may change while
//! running, and a diagnostics thread reports on `/diagnostics`.

pub mod diagnostics;
pub mod follow;
pub mod live;
pub mod parameters;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use triple_buffer::triple_buffer;

use crate::control::actuator::ActionEncoder;
use crate::control::safety::{Counters, SafetyConfig, SafetyFilter};
use crate::control::skills::{ActiveSkill, SkillInfo, Skills};
use crate::control::stats::NodeStats;
use crate::control::{ActionFrame, ControlLoop, DoubtOut, EStop, Tunables, publish_loop, realtime};
use crate::fleet::inbox::{Inbox, InboxSettings, Runner, RunnerError};
use crate::msg::cdr;
use crate::msg::{Bool, DiagnosticArray, Float64MultiArray, Header, RosMessage, StringMsg};
use crate::observe as observer;
use crate::record::episode::ChannelSpec;
use crate::record::{Recorder, RecorderConfig};
use crate::ros::args::{ArgsError, FromParam, RosArgs};
use crate::ros::transport::{Qos, RawPublisher, Transport, TransportError};
use crate::skill::Skill;
use crate::skill::manifest::Manifest;
use diagnostics::Reporter;
use live::{Live, LiveConfig};

/// Everything the node runs with: the skill's manifest with the node's parameters applied.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Control rate.
    pub rate_hz: f64,
    /// Resolved observation topics, in manifest order.
    pub observation_topics: Vec<String>,
    /// Resolved topic of each camera input.
    pub image_topics: Vec<String>,
    /// Resolved action topic.
    pub action_topic: String,
    /// Resolved e-stop topic.
    pub estop_topic: String,
    /// The e-stop topic must be younger than this (None: only its value counts).
    pub estop_timeout: Option<Duration>,
    /// At start, the safe action goes out until the e-stop topic is heard, at most this long.
    pub estop_wait: Duration,
    /// What the safety filter enforces.
    pub safety: SafetyConfig,
    /// Diagnostics period.
    pub diagnostics_period: Duration,
    /// Resolved diagnostics topic (`/diagnostics`).
    pub diagnostics_topic: String,
    /// `hardware_id` of the diagnostics status.
    pub hardware_id: String,
    /// SCHED_FIFO priority of the control thread (0: normal scheduling).
    pub rt_priority: i32,
    /// Whether the policy runs (false: a recorder-only node, `skillgraft record`).
    pub policy: bool,
    /// Folder of episode files.
    pub episodes_dir: std::path::PathBuf,
    /// Resolved topic of the demonstration actions (default: the action topic).
    pub demo_action_topic: String,
    /// Resolved episode control topic (`~/demo/control`).
    pub demo_control_topic: String,
    /// Resolved recorder status topic (`~/demo/status`).
    pub demo_status_topic: String,
    /// How often an episode's chunk is ended and synced.
    pub record_chunk: Duration,
    /// Messages the recorder queue holds before it drops.
    pub record_queue: usize,
    /// How episode chunks are compressed.
    pub record_compression: crate::record::episode::Compression,
    /// QoS of the observation and demonstration-action subscriptions.
    pub input_qos: Qos,
    /// Folder adapted skills are written into.
    pub adapted_dir: std::path::PathBuf,
    /// Where the node's fine-tuning runs.
    pub adapt_device: crate::adapt::device::Device,
    /// Whether each demonstration written starts a continual (bayes) update.
    pub continual: bool,
    /// Resolved uncertainty topic (`~/uncertainty`).
    pub uncertainty_topic: String,
    /// Predicted error over held-out error above which a stretch is marked.
    pub uncertainty_mark: f64,
    /// Resolved adaptation request topic (`~/adapt`).
    pub adapt_topic: String,
    /// Resolved adaptation status topic (`~/adapt/status`).
    pub adapt_status_topic: String,
    /// Resolved rollback topic (`~/skill/rollback`).
    pub rollback_topic: String,
    /// The skill store and its HTTP inbox (None: no inbox).
    pub inbox: Option<InboxSettings>,
    /// The fleet channel the node follows through its inbox (None: none).
    pub fleet: Option<FleetFollow>,
}

/// A fleet channel the node follows: what `skillgraft agent --inbox` does beside a node, in it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetFollow {
    /// The fleet server, `http://host:port`.
    pub url: String,
    /// The channel.
    pub channel: String,
    /// File holding the token sent to the fleet server.
    pub token_file: std::path::PathBuf,
    /// The pinned root public key.
    pub root: std::path::PathBuf,
    /// How often it polls, and reports an unchanged poll.
    pub every: crate::fleet::agent::Every,
}

/// A parameter as given, else its default for the skill `m`.
fn param<T: FromParam>(args: &RosArgs, m: &Manifest, name: &str) -> Result<T, ArgsError> {
    if let Some(v) = args.get::<T>(name)? {
        return Ok(v);
    }
    let default = parameters::spec(name).map(|p| (p.default)(m));
    default
        .as_ref()
        .and_then(T::from_param)
        .ok_or_else(|| ArgsError(format!("parameter `{name}` has no default {}", T::TYPE)))
}

impl NodeConfig {
    /// The manifest's settings with the node's parameters applied and topics resolved.
    pub fn new(m: &Manifest, args: &RosArgs) -> Result<NodeConfig, ArgsError> {
        parameters::check_given(args)?;
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(ArgsError(format!("parameter `{name}` is {v}; it must be above 0")))
            }
        };
        let rate_hz = positive("rate_hz", param::<f64>(args, m, "rate_hz")?)?;
        let blend_s = param::<f64>(args, m, "blend_s")?;
        if !(blend_s.is_finite() && blend_s >= 0.0) {
            return Err(ArgsError(format!("parameter `blend_s` is {blend_s}; give seconds, 0 or more")));
        }
        let estop_timeout = match param::<f64>(args, m, "estop_timeout_s")? {
            t if t > 0.0 && t.is_finite() => Some(Duration::from_secs_f64(t)),
            0.0 => None,
            t => {
                return Err(ArgsError(format!("parameter `estop_timeout_s` is {t}; give seconds, 0 to disable")));
            }
        };
        let n = m.action.lower.len();
        let vector = |name: &str| -> Result<Vec<f64>, ArgsError> {
            match param::<Vec<f64>>(args, m, name)? {
                v if v.len() != n => {
                    Err(ArgsError(format!("parameter `{name}` has {} values; the action has {n}", v.len())))
                }
                v => Ok(v),
            }
        };
        let safety = SafetyConfig {
            lower: vector("action.lower")?,
            upper: vector("action.upper")?,
            max_delta: vector("action.max_delta")?,
            safe: m.action.safe,
            blend_ticks: (blend_s * rate_hz).round() as u32,
            uncertainty_limit: match param::<f64>(args, m, "uncertainty.limit")? {
                l if l == 0.0 || l >= 1.0 => l,
                l => {
                    return Err(ArgsError(format!(
                        "parameter `uncertainty.limit` is {l}: the predicted error is never below the held-out error (a ratio of 1 or more), so a limit below 1 would slow every action; give 0 (off) or a ratio such as 2.0"
                    )));
                }
            },
            uncertainty_slow: param::<f64>(args, m, "uncertainty.slow")?,
        };
        safety.check().map_err(|e| ArgsError(e.to_string()))?;
        let diagnostics_period =
            Duration::from_secs_f64(positive("diagnostics_period_s", param::<f64>(args, m, "diagnostics_period_s")?)?);
        let topic = |t: &str| args.resolve_topic(t);
        let store = param::<String>(args, m, "store_dir")?;
        let inbox = if store.is_empty() {
            if let Some(p) = ["inbox_address", "inbox_trust", "inbox_tokens", "inbox_max_mib"]
                .iter()
                .find(|p| args.params.contains_key(**p))
            {
                return Err(ArgsError(format!("parameter `{p}` needs `store_dir`, the store the inbox installs into")));
            }
            None
        } else {
            let tokens = param::<String>(args, m, "inbox_tokens")?;
            if tokens.is_empty() {
                return Err(ArgsError(
                    "parameter `store_dir` turns on the inbox, which needs `inbox_tokens`: a file of bearer tokens (`skillgraft keys token FILE`)".into(),
                ));
            }
            Some(InboxSettings {
                listen: param::<String>(args, m, "inbox_address")?,
                store: store.into(),
                trust: param::<Vec<String>>(args, m, "inbox_trust")?.into_iter().map(Into::into).collect(),
                tokens: tokens.into(),
                max_mib: param::<i64>(args, m, "inbox_max_mib")? as u64,
            })
        };
        let fleet = match param::<String>(args, m, "fleet_url")? {
            url if url.is_empty() => {
                let needs =
                    ["fleet_channel", "fleet_token_file", "fleet_root", "fleet_interval_s", "fleet_report_every_s"];
                if let Some(p) = needs.iter().find(|p| args.params.contains_key(**p)) {
                    return Err(ArgsError(format!("parameter `{p}` needs `fleet_url`, the fleet server to follow")));
                }
                None
            }
            _ if inbox.is_none() => {
                return Err(ArgsError(
                    "parameter `fleet_url` needs `store_dir`: the node installs what its channel names into that store, through its inbox".into(),
                ));
            }
            url => {
                let (token_file, root) =
                    (param::<String>(args, m, "fleet_token_file")?, param::<String>(args, m, "fleet_root")?);
                if token_file.is_empty() || root.is_empty() {
                    return Err(ArgsError(
                        "parameter `fleet_url` needs `fleet_token_file` (the token sent to the fleet server) and `fleet_root` (the root key the robot pins)".into(),
                    ));
                }
                let channel = param::<String>(args, m, "fleet_channel")?;
                if !crate::skill::manifest::valid_name(&channel) {
                    return Err(ArgsError(format!("parameter `fleet_channel` is {channel:?}, not a channel name")));
                }
                let seconds = |name: &str| -> Result<Duration, ArgsError> {
                    Ok(Duration::from_secs_f64(positive(name, param::<f64>(args, m, name)?)?))
                };
                Some(FleetFollow {
                    url,
                    channel,
                    token_file: token_file.into(),
                    root: root.into(),
                    every: crate::fleet::agent::Every {
                        poll: seconds("fleet_interval_s")?,
                        report: seconds("fleet_report_every_s")?,
                    },
                })
            }
        };
        Ok(NodeConfig {
            inbox,
            fleet,
            rate_hz,
            observation_topics: m.observations.iter().map(|o| topic(&o.topic)).collect::<Result<_, _>>()?,
            image_topics: m.images.iter().map(|o| topic(&o.topic)).collect::<Result<_, _>>()?,
            action_topic: topic(&m.action.topic)?,
            estop_topic: topic(&param::<String>(args, m, "estop_topic")?)?,
            estop_timeout,
            estop_wait: Duration::from_secs_f64(param::<f64>(args, m, "estop_wait_s")?),
            safety,
            diagnostics_period,
            diagnostics_topic: topic("/diagnostics")?,
            hardware_id: param::<String>(args, m, "hardware_id")?,
            rt_priority: param::<i64>(args, m, "rt_priority")? as i32,
            policy: true,
            episodes_dir: param::<String>(args, m, "episodes_dir")?.into(),
            demo_action_topic: topic(&param::<String>(args, m, "demo_action_topic")?)?,
            demo_control_topic: topic("~/demo/control")?,
            demo_status_topic: topic("~/demo/status")?,
            adapted_dir: param::<String>(args, m, "adapted_dir")?.into(),
            adapt_device: param::<String>(args, m, "adapt_device")?
                .parse()
                .map_err(|e| ArgsError(format!("parameter `adapt_device`: {e}")))?,
            continual: param::<bool>(args, m, "continual")?,
            uncertainty_topic: topic("~/uncertainty")?,
            uncertainty_mark: param::<f64>(args, m, "uncertainty.mark")?,
            adapt_topic: topic("~/adapt")?,
            adapt_status_topic: topic("~/adapt/status")?,
            rollback_topic: topic("~/skill/rollback")?,
            record_chunk: Duration::from_secs_f64(positive(
                "record_chunk_s",
                param::<f64>(args, m, "record_chunk_s")?,
            )?),
            record_queue: param::<i64>(args, m, "record_queue")? as usize,
            record_compression: param::<String>(args, m, "record_compression")?
                .parse()
                .map_err(|e| ArgsError(format!("parameter `record_compression`: {e}")))?,
            input_qos: match param::<String>(args, m, "observation_reliability")?.as_str() {
                "best_effort" => Qos::SENSOR_DATA_DEEP,
                "reliable" => Qos { reliable: true, ..Qos::SENSOR_DATA_DEEP },
                other => {
                    return Err(ArgsError(format!(
                        "parameter `observation_reliability` is {other:?}; give \"best_effort\" or \"reliable\""
                    )));
                }
            },
        })
    }
}

/// Why the node could not start or swap a skill.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The transport refused.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// A thread could not start.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    /// A skill could not be swapped in.
    #[error(transparent)]
    Swap(#[from] crate::control::skills::SwapError),
    /// The inbox could not start.
    #[error("inbox: {0}")]
    Inbox(#[from] crate::fleet::FleetError),
    /// The fleet channel could not be followed.
    #[error("fleet channel: {0}")]
    Fleet(crate::fleet::FleetError),
    /// The skill store could not be read.
    #[error("skill store: {0}")]
    Store(#[from] crate::skill::store::StoreError),
}

/// The inbox's view of the node: the skill slot, and its counters.
struct NodeRunner(Arc<Skills>, Arc<NodeStats>, Mutex<SinceSwap>);

/// The counters when the running skill was first seen to run: the swap count then, ticks, the
/// skill's interventions and stale inputs.
#[derive(Default)]
struct SinceSwap {
    swaps: u64,
    ticks: u64,
    interventions: u64,
    stale: u64,
}

/// The interventions a skill's own actions cause: corrected actions (non-finite, clamped,
/// rate-limited, slowed when unsure) and failed inference; a stale input or the e-stop says
/// nothing of the skill.
fn skill_interventions(s: &NodeStats) -> u64 {
    use crate::control::safety::Intervention as I;
    [I::NonFinite, I::Failure, I::Clamped, I::RateLimited, I::Uncertain].iter().map(|&k| s.interventions.get(k)).sum()
}

impl Runner for NodeRunner {
    fn running(&self) -> (String, String) {
        let c = self.0.current();
        (c.name, c.version)
    }

    fn check(&self, manifest: &Manifest) -> Result<(), RunnerError> {
        self.0.compatible(manifest).map_err(|e| RunnerError::Refused(Box::new(e)))
    }

    fn swap(&self, skill: Skill) -> Result<(), RunnerError> {
        self.0.swap(skill).map(|_| ()).map_err(|e| RunnerError::Swap(Box::new(e)))
    }

    fn health(&self) -> serde_json::Value {
        let s = &self.1;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let interventions: serde_json::Map<String, serde_json::Value> = crate::control::safety::INTERVENTIONS
            .iter()
            .zip(&s.interventions.0)
            .map(|(name, n)| (name.to_string(), load(n).into()))
            .collect();
        let (swaps, ticks, skill) = (load(&s.swaps), load(&s.ticks), skill_interventions(s));
        // Counted apart from the skill's interventions: a sensor that drops out is not the
        // skill's doing, but a skill that reads a topic this robot does not publish, or wants it
        // fresher than it comes, is, and a rollout compares the two versions on it too.
        let stale = s.interventions.get(crate::control::safety::Intervention::Stale);
        let skill_now = self.0.current();
        let mut since = self.2.lock().unwrap_or_else(|p| p.into_inner());
        if since.swaps != swaps {
            *since = SinceSwap { swaps, ticks, interventions: skill, stale };
        }
        serde_json::json!({
            "seconds": s.epoch.elapsed().as_secs_f64(),
            // The running skill (not its folder: the inbox tells no paths), and for an adapted
            // one the numbers its gate accepted it on.
            "skill": {
                "name": skill_now.name,
                "version": skill_now.version,
                "digest": skill_now.digest,
                "parent": skill_now.parent,
                "gate": skill_now.gate,
            },
            "since_swap": {
                // Counters read before the lock: a swap seen by another reader in between must
                // not wrap these round.
                "ticks": ticks.saturating_sub(since.ticks),
                "interventions": skill.saturating_sub(since.interventions),
                "stale_inputs": stale.saturating_sub(since.stale),
            },
            "ticks": load(&s.ticks),
            "deadline_misses": load(&s.deadline_misses),
            "actions_published": load(&s.published),
            "skill_swaps": load(&s.swaps),
            "interventions": interventions,
        })
    }
}

/// A node running a skill.
pub struct RunningNode {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Its counters.
    pub stats: Arc<NodeStats>,
    skills: Arc<Skills>,
    live: Option<Arc<Live>>,
    recorder: Option<Recorder>,
    inbox: Option<Inbox>,
    follower: Option<follow::Follower>,
    tunables: Arc<Tunables>,
    manifest: Manifest,
    parameters: Option<Arc<crate::ros::params::ParameterServer>>,
    transport: Arc<dyn Transport>,
}

/// Subscribes an input's writer to its topic; each message also goes to the recorder as its
/// channel `channel`.
fn feed<D: observer::Decode + 'static>(
    transport: &dyn Transport,
    topic: &str,
    msg_type: &str,
    qos: Qos,
    mut writer: observer::Writer<D>,
    tap: Arc<crate::record::Tap>,
    channel: usize,
) -> Result<(), TransportError> {
    let type_name = crate::msg::schema::full_type_name(msg_type);
    transport.subscribe(
        topic,
        &type_name,
        qos,
        Box::new(move |s| {
            let _ = writer.on_message(&s.cdr, s.arrived);
            tap.offer(channel, s);
        }),
    )
}

impl RunningNode {
    /// Subscribes, advertises and starts the recorder and the control, publisher and
    /// diagnostics threads (control and publisher only when `cfg.policy`).
    pub fn start(skill: Skill, cfg: NodeConfig, transport: Arc<dyn Transport>) -> Result<RunningNode, NodeError> {
        let manifest = skill.manifest.clone();
        let label = format!("{} {}", manifest.name, manifest.version);
        let epoch = Instant::now();
        let observer::Observer { writers, image_writers, assembler } =
            observer::observer(&manifest.observations, &manifest.images, manifest.control.history, epoch);
        let interventions = Arc::new(Counters::default());
        let inputs = writers
            .iter()
            .map(|w| w.stats.clone())
            .chain(image_writers.iter().map(|w| w.stats.clone()))
            .zip(cfg.observation_topics.iter().chain(&cfg.image_topics))
            .map(|(s, t)| (t.clone(), s))
            .collect();
        let stats = Arc::new(NodeStats::new(inputs, interventions.clone()));

        let channels =
            ChannelSpec::for_skill(&manifest, &cfg.observation_topics, &cfg.image_topics, &cfg.demo_action_topic);
        let action_type = channels[channels.len() - 1].type_name.clone();
        let mut metadata = BTreeMap::new();
        metadata.insert("skill".to_string(), manifest.name.clone());
        metadata.insert("skill_version".to_string(), manifest.version.to_string());
        metadata.insert("skill_digest".to_string(), skill.digest.clone());
        metadata.insert("skill_dir".to_string(), skill.dir.display().to_string());
        metadata.insert("robot".to_string(), cfg.hardware_id.clone());
        metadata.insert("node".to_string(), fqn(transport.identity()));
        metadata.insert("rate_hz".to_string(), cfg.rate_hz.to_string());
        let status = transport.publisher(&cfg.demo_status_topic, StringMsg::TYPE, Qos::LATCHED)?;
        let recorder = Recorder::start(
            RecorderConfig {
                dir: cfg.episodes_dir.clone(),
                channels,
                chunk_period: cfg.record_chunk,
                queue: cfg.record_queue,
                compression: cfg.record_compression,
                metadata,
                observation_labels: manifest.input_labels(),
            },
            status,
        )
        .map_err(|e| NodeError::Thread("skillgraft-record", e))?;
        let tap = recorder.tap.clone();

        let n_inputs = manifest.observations.len() + manifest.images.len();
        let numeric =
            writers.into_iter().zip(&cfg.observation_topics).zip(manifest.observations.iter().map(|o| &o.msg_type));
        for (i, ((writer, topic), msg_type)) in numeric.enumerate() {
            feed(transport.as_ref(), topic, msg_type, cfg.input_qos, writer, tap.clone(), i)?;
        }
        let cameras = image_writers.into_iter().zip(&cfg.image_topics).zip(manifest.images.iter().map(|o| &o.msg_type));
        for (i, ((writer, topic), msg_type)) in cameras.enumerate() {
            let channel = manifest.observations.len() + i;
            feed(transport.as_ref(), topic, msg_type, cfg.input_qos, writer, tap.clone(), channel)?;
        }
        {
            let tap = tap.clone();
            transport.subscribe(
                &cfg.demo_action_topic,
                &action_type,
                cfg.input_qos,
                Box::new(move |s| tap.offer(n_inputs, s)),
            )?;
        }
        {
            let tap = tap.clone();
            let topic = cfg.demo_control_topic.clone();
            transport.subscribe(
                &cfg.demo_control_topic,
                StringMsg::TYPE,
                Qos::RELIABLE,
                Box::new(move |s| match cdr::decode::<StringMsg>(&s.cdr, StringMsg::TYPE) {
                    Ok(m) => tap.command(&m.data),
                    Err(e) => tracing::warn!(topic = %topic, "episode command rejected: {e}"),
                }),
            )?;
        }
        let tunables = Arc::new(Tunables::new(cfg.estop_timeout, cfg.diagnostics_period, cfg.uncertainty_mark));
        let estop = Arc::new(EStop {
            engaged: AtomicBool::new(false),
            heard: AtomicBool::new(false),
            last_ns: AtomicU64::new(0),
            wait: cfg.estop_wait,
            tunables: tunables.clone(),
        });
        if !cfg.estop_wait.is_zero() && cfg.policy {
            tracing::info!(
                "the safe action goes out until {} is heard, for at most {:.1} s (estop_wait_s)",
                cfg.estop_topic,
                cfg.estop_wait.as_secs_f64()
            );
        }
        {
            let (estop, stats) = (estop.clone(), stats.clone());
            let topic = cfg.estop_topic.clone();
            transport.subscribe(&cfg.estop_topic, Bool::TYPE, Qos::LATCHED, Box::new(move |s| {
                match cdr::decode::<Bool>(&s.cdr, Bool::TYPE) {
                    Ok(b) => {
                        if estop.engaged.swap(b.data, Ordering::Relaxed) != b.data {
                            tracing::warn!(topic = %topic, "e-stop {}", if b.data { "engaged" } else { "released" });
                        }
                        estop.last_ns.store(s.arrived.saturating_duration_since(epoch).as_nanos() as u64, Ordering::Relaxed);
                        estop.heard.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        if stats.estop_rejected.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(topic = %topic, "e-stop message rejected: {e}; the e-stop state is unchanged");
                        }
                    }
                }
            }))?;
        }
        let diagnostics = transport.publisher(&cfg.diagnostics_topic, DiagnosticArray::TYPE, Qos::RELIABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let skill_label = Arc::new(Mutex::new(label));
        let skills = Arc::new(Skills::new(&skill, skill_label.clone(), tap.clone(), cfg.policy));
        let swap = skills.slot.clone();
        let live = Arc::new(
            Live::start(
                LiveConfig {
                    episodes_dir: cfg.episodes_dir.clone(),
                    adapted_dir: cfg.adapted_dir.clone(),
                    device: cfg.adapt_device,
                },
                skills.clone(),
                transport.publisher(&cfg.adapt_status_topic, StringMsg::TYPE, Qos::LATCHED)?,
            )
            .map_err(|e| NodeError::Thread("skillgraft-adapt", e))?,
        );
        live.set_continual(cfg.continual);
        {
            let live = live.clone();
            tap.on_written(Box::new(move |_| live.episode_written()));
        }
        {
            let (live, topic) = (live.clone(), cfg.adapt_topic.clone());
            transport.subscribe(
                &cfg.adapt_topic,
                StringMsg::TYPE,
                Qos::RELIABLE,
                Box::new(move |s| match cdr::decode::<StringMsg>(&s.cdr, StringMsg::TYPE) {
                    Ok(m) => live.request(&m.data),
                    Err(e) => tracing::warn!(topic = %topic, "adaptation request rejected: {e}"),
                }),
            )?;
        }
        {
            let live = live.clone();
            transport.subscribe(
                &cfg.rollback_topic,
                StringMsg::TYPE,
                Qos::RELIABLE,
                Box::new(move |_| live.rollback()),
            )?;
        }
        // Before any thread of the node starts: a bad token file or a busy port stops the node
        // with nothing left running.
        let inbox = match (&cfg.inbox, cfg.policy) {
            (Some(settings), true) => {
                match Inbox::start(
                    settings,
                    Some(Arc::new(NodeRunner(skills.clone(), stats.clone(), Mutex::default()))),
                ) {
                    Ok(inbox) => {
                        stats.extra.lock().unwrap_or_else(|p| p.into_inner()).push(inbox.stats());
                        Some(inbox)
                    }
                    Err(e) => {
                        live.stop();
                        return Err(e.into());
                    }
                }
            }
            _ => None,
        };
        let follower = match (&cfg.fleet, &cfg.inbox, &inbox) {
            (Some(f), Some(settings), Some(running)) => match follow::Follower::start(f, settings, running.addr()) {
                Ok(follower) => {
                    stats.extra.lock().unwrap_or_else(|p| p.into_inner()).push(follower.stats());
                    Some(follower)
                }
                Err(e) => {
                    if let Some(i) = inbox {
                        i.stop();
                    }
                    live.stop();
                    return Err(NodeError::Fleet(e));
                }
            },
            _ => None,
        };
        let mut threads = Vec::new();

        if cfg.policy {
            let period_s = 1.0 / cfg.rate_hz;
            let encoder = ActionEncoder::new(&manifest.action, period_s);
            let publisher = transport.publisher(&cfg.action_topic, encoder.type_name(), Qos::RELIABLE)?;
            let doubt = DoubtOut::new(
                transport.publisher(&cfg.uncertainty_topic, Float64MultiArray::TYPE, Qos::RELIABLE)?,
                tap.clone(),
                tunables.clone(),
                manifest.action_width(),
            );
            let (action_in, action_out) = triple_buffer(&ActionFrame::new(manifest.action_width(), assembler.width()));
            let publisher_thread = {
                let (stop, stats, transport) = (stop.clone(), stats.clone(), transport.clone());
                spawn("skillgraft-publish", move || {
                    publish_loop(action_out, encoder, publisher, doubt, &*transport, &stats, &stop)
                })?
            };
            let publisher_handle = publisher_thread.thread().clone();
            threads.push(publisher_thread);
            let filter = SafetyFilter::new(cfg.safety.clone(), interventions);
            let active = ActiveSkill::new(skill);
            let (stop, stats, swap, tap, tunables) =
                (stop.clone(), stats.clone(), swap.clone(), tap.clone(), tunables.clone());
            let period = Duration::from_secs_f64(period_s);
            let rt_priority = cfg.rt_priority;
            threads.push(spawn("skillgraft-control", move || {
                realtime(rt_priority);
                let mut c = ControlLoop {
                    active,
                    assembler,
                    filter,
                    estop,
                    tap,
                    action: action_in,
                    publisher: publisher_handle,
                    stats,
                    swap,
                    tunables,
                    epoch,
                    seq: 0,
                };
                c.run(period, &stop)
            })?);
        }
        {
            let (stop, stats, transport, label, tap, tunables) =
                (stop.clone(), stats.clone(), transport.clone(), skill_label.clone(), tap, tunables.clone());
            let name = fqn(transport.identity());
            let hardware_id = cfg.hardware_id.clone();
            threads.push(spawn("skillgraft-diag", move || {
                diagnostics_loop(
                    diagnostics,
                    &*transport,
                    Reporter::new(stats, Some(tap)),
                    &name,
                    &hardware_id,
                    &label,
                    &tunables,
                    &stop,
                )
            })?);
        }
        Ok(RunningNode {
            stop,
            threads,
            stats,
            skills,
            live: Some(live),
            recorder: Some(recorder),
            inbox,
            follower,
            tunables,
            manifest,
            parameters: None,
            transport,
        })
    }

    /// Serves the node's ROS 2 parameters (the parameter services and `/parameter_events`, so
    /// `ros2 param` works) for a node started with `args`, which gave `cfg`.
    pub fn serve_parameters(&mut self, args: &RosArgs, cfg: &NodeConfig) -> Result<(), NodeError> {
        let (Some(live), Some(recorder)) = (self.live.as_ref(), self.recorder.as_ref()) else {
            return Ok(());
        };
        let host = Arc::new(parameters::NodeParameters::new(
            self.manifest.clone(),
            args.clone(),
            cfg.clone(),
            self.tunables.clone(),
            recorder.tap.clone(),
            live.clone(),
        ));
        let name = fqn(self.transport.identity());
        let resolve = |n: &str| args.resolve_topic(n);
        self.parameters = Some(crate::ros::params::serve(&*self.transport, &name, &resolve, host)?);
        Ok(())
    }

    /// CPU time the recorder thread has used, ns.
    pub fn recorder_cpu_ns(&self) -> u64 {
        self.recorder.as_ref().map_or(0, |r| r.tap.cpu_ns.load(Ordering::Relaxed))
    }

    /// The recorder's state.
    pub fn recorder_status(&self) -> Option<crate::record::Status> {
        self.recorder.as_ref().and_then(|r| r.tap.status.lock().ok().map(|s| s.clone()))
    }

    /// Hands a new skill to the control thread, which swaps it in between two ticks and blends
    /// to it. The skill must read and write the same topics and fields.
    pub fn swap_skill(&self, skill: Skill) -> Result<SkillInfo, NodeError> {
        Ok(self.skills.swap(skill)?)
    }

    /// Returns to the skill that ran before the current one; returns the one that runs now.
    pub fn rollback(&self) -> Result<SkillInfo, crate::control::skills::SwapError> {
        self.skills.rollback()
    }

    /// The skills the node runs and has run.
    pub fn skills(&self) -> &Skills {
        &self.skills
    }

    /// The state of adaptation, as `~/adapt/status` last said it.
    pub fn adapt_status(&self) -> Option<crate::node::live::Status> {
        self.live.as_ref().map(|l| l.status())
    }

    /// Stops every thread and waits for them; an episode being recorded is finished and kept.
    pub fn stop(mut self) {
        // The follower installs through the inbox: it stops first.
        if let Some(f) = self.follower.take() {
            f.stop();
        }
        if let Some(inbox) = self.inbox.take() {
            inbox.stop();
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
        if let Some(live) = self.live.take() {
            live.stop();
        }
        if let Some(r) = self.recorder.take() {
            r.stop();
        }
    }
}

fn fqn(id: &crate::ros::transport::NodeIdentity) -> String {
    if id.namespace == "/" { format!("/{}", id.name) } else { format!("{}/{}", id.namespace, id.name) }
}

fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, NodeError> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| NodeError::Thread(name, e))
}

#[allow(clippy::too_many_arguments)]
fn diagnostics_loop(
    mut publisher: Box<dyn RawPublisher>,
    transport: &dyn Transport,
    mut reporter: Reporter,
    name: &str,
    hardware_id: &str,
    label: &Mutex<String>,
    tunables: &Tunables,
    stop: &AtomicBool,
) {
    let mut next = Instant::now() + tunables.diagnostics_period();
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::park_timeout(next - now);
            continue;
        }
        next += tunables.diagnostics_period();
        let skill = label.lock().map(|l| l.clone()).unwrap_or_default();
        let (status, report) = reporter.status(name, hardware_id, &skill);
        tracing::debug!(?report, "diagnostics");
        let msg = DiagnosticArray {
            header: Header { stamp: transport.now(), frame_id: String::new() },
            status: vec![status],
        };
        buf.clear();
        if cdr::encode_into(&msg, &mut buf).is_ok()
            && let Err(e) = publisher.publish(&buf)
        {
            tracing::debug!("cannot publish diagnostics: {e}");
        }
    }
}

/// Why `skillgraft run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Bad ROS arguments or parameters.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// The skill did not load.
    #[error(transparent)]
    Skill(#[from] crate::skill::SkillError),
    /// The node did not start.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl From<TransportError> for LaunchError {
    fn from(e: TransportError) -> Self {
        LaunchError::Node(NodeError::Transport(e))
    }
}

/// The store's active version of `skill`, when the store has one: after a restart the robot
/// runs what the fleet last installed, not the folder it was first launched with.
fn from_store(skill: Skill, store: &std::path::Path) -> Result<Skill, LaunchError> {
    let store = crate::skill::store::Store::open(store).map_err(NodeError::from)?;
    let name = skill.manifest.name.clone();
    match store.state(&name).map_err(NodeError::from)? {
        Some(state) => {
            let dir = store.dir(&name, &state.active);
            let active = Skill::load(&dir)?;
            if active.digest != skill.digest {
                tracing::info!(
                    "running {name} {} from the store {} (in place of {} {})",
                    state.active,
                    dir.display(),
                    skill.dir.display(),
                    skill.manifest.version
                );
            }
            Ok(active)
        }
        None => Ok(skill),
    }
}

/// Loads a skill, applies the ROS arguments and starts the node (with the policy running, or a
/// recorder only); returns it and a line that says what runs where.
pub fn launch(
    skill: &std::path::Path,
    params_files: &[std::path::PathBuf],
    ros_args: &[String],
    policy: bool,
) -> Result<(RunningNode, String), LaunchError> {
    let args = RosArgs::parse(ros_args, params_files, "skillgraft")?;
    let mut skill = Skill::load(skill)?;
    let mut cfg = NodeConfig::new(&skill.manifest, &args)?;
    if let Some(settings) = cfg.inbox.as_ref().filter(|_| policy) {
        skill = from_store(skill, &settings.store)?;
        cfg = NodeConfig::new(&skill.manifest, &args)?;
    }
    cfg.policy = policy;
    let transport: Arc<dyn Transport> = Arc::from(crate::ros::transport::connect(&args)?);
    let what = if policy {
        format!("runs skill {} {} at {} Hz", skill.manifest.name, skill.manifest.version, cfg.rate_hz)
    } else {
        format!("records demonstrations for skill {} {}", skill.manifest.name, skill.manifest.version)
    };
    let summary = format!(
        "node {} {what} over {}: {} -> {}; episodes: {} into {} ({})",
        args.fully_qualified_name(),
        transport.backend(),
        cfg.observation_topics.join(", "),
        cfg.action_topic,
        cfg.demo_control_topic,
        cfg.episodes_dir.display(),
        cfg.demo_action_topic
    );
    let mut node = RunningNode::start(skill, cfg.clone(), transport)?;
    node.serve_parameters(&args, &cfg)?;
    Ok((node, summary))
}
