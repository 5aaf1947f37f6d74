//! The node's ROS 2 parameters: each one's type, default, range and whether it may change while
//! the node runs, and the host the parameter services call. A change at run time is checked the
//! way the same value given at start would be (one `NodeConfig::new`), and takes effect between
//! two ticks: the control thread picks up new limits at the start of a tick, never in the middle.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::msg::parameter_type as pt;
use crate::node::live::Live;
use crate::record::Tap;
use crate::ros::args::{ArgsError, Param, ParamValue, RosArgs};
use crate::ros::distro::RosDistro;
use crate::ros::params::{ParamDescriptor, ParamRange, ParameterHost, Rejected};
use crate::skill::manifest::Manifest;

use super::NodeConfig;
use crate::control::Tunables;
use crate::control::safety::SafetyConfig;

/// One parameter the node reads.
pub struct ParamSpec {
    /// Dotted name.
    pub name: &'static str,
    /// A `ParameterType` constant.
    pub kind: u8,
    /// Whether a set while the node runs takes effect (else it is read-only).
    pub runtime: bool,
    /// The range of a number parameter.
    pub range: Option<ParamRange>,
    /// What it does.
    pub doc: &'static str,
    /// Constraints in words, beyond the range.
    pub constraints: &'static str,
    /// Its value when not given, from the running skill's manifest.
    pub default: fn(&Manifest) -> ParamValue,
}

const fn float(from: f64, to: f64) -> Option<ParamRange> {
    Some(ParamRange::Float { from, to })
}

const fn int(from: i64, to: i64) -> Option<ParamRange> {
    Some(ParamRange::Integer { from, to })
}

fn text(s: &str) -> ParamValue {
    ParamValue::String(s.to_string())
}

const LIMIT: &str = "one value per action element; while the node runs, only within the limits it started with (the skill's own, unless widened at launch)";

/// Every parameter the node reads; anything else is refused.
pub const PARAMETERS: &[ParamSpec] = &[
    ParamSpec {
        name: "rate_hz",
        kind: pt::DOUBLE,
        runtime: false,
        range: float(0.1, 10_000.0),
        doc: "control rate, Hz (default: control.rate_hz of the skill)",
        constraints: "",
        default: |m| ParamValue::Double(m.control.rate_hz),
    },
    ParamSpec {
        name: "blend_s",
        kind: pt::DOUBLE,
        runtime: true,
        range: float(0.0, 60.0),
        doc: "seconds over which the policy blends in from the safe action after start, resume or a swap (default 0.5)",
        constraints: "",
        default: |_| ParamValue::Double(0.5),
    },
    ParamSpec {
        name: "estop_topic",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "std_msgs/Bool e-stop topic (default \"estop\")",
        constraints: "",
        default: |_| text("estop"),
    },
    ParamSpec {
        name: "estop_timeout_s",
        kind: pt::DOUBLE,
        runtime: true,
        range: float(0.0, 3600.0),
        doc: "if above 0, the e-stop topic must publish at least this often or the safe action is sent (default 0: off)",
        constraints: "",
        default: |_| ParamValue::Double(0.0),
    },
    ParamSpec {
        name: "estop_wait_s",
        kind: pt::DOUBLE,
        runtime: false,
        range: float(0.0, 60.0),
        doc: "at start, the safe action goes out until the e-stop topic is heard, at most this long (default 5.0): a latched e-stop engaged before the node started can take seconds to arrive (Fast DDS publishers resend every 3 s); 0 drives at once",
        constraints: "",
        default: |_| ParamValue::Double(5.0),
    },
    ParamSpec {
        name: "action.lower",
        kind: pt::DOUBLE_ARRAY,
        runtime: true,
        range: None,
        doc: "lowest value of each action element (default: action.lower of the skill)",
        constraints: LIMIT,
        default: |m| ParamValue::DoubleArray(m.action.lower.clone()),
    },
    ParamSpec {
        name: "action.upper",
        kind: pt::DOUBLE_ARRAY,
        runtime: true,
        range: None,
        doc: "highest value of each action element (default: action.upper of the skill)",
        constraints: LIMIT,
        default: |m| ParamValue::DoubleArray(m.action.upper.clone()),
    },
    ParamSpec {
        name: "action.max_delta",
        kind: pt::DOUBLE_ARRAY,
        runtime: true,
        range: None,
        doc: "largest change per tick of each action element (default: action.max_delta of the skill)",
        constraints: LIMIT,
        default: |m| ParamValue::DoubleArray(m.action.max_delta.clone()),
    },
    ParamSpec {
        name: "diagnostics_period_s",
        kind: pt::DOUBLE,
        runtime: true,
        range: float(0.01, 3600.0),
        doc: "period of the /diagnostics status (default 1.0)",
        constraints: "",
        default: |_| ParamValue::Double(1.0),
    },
    ParamSpec {
        name: "hardware_id",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "hardware_id on /diagnostics (default: the skill's source robot)",
        constraints: "",
        default: |m| text(&m.provenance.source_robot),
    },
    ParamSpec {
        name: "rt_priority",
        kind: pt::INTEGER,
        runtime: false,
        range: int(0, 99),
        doc: "SCHED_FIFO priority (1-99) of the control thread; 0 keeps normal scheduling (default)",
        constraints: "",
        default: |_| ParamValue::Int(0),
    },
    ParamSpec {
        name: "episodes_dir",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "folder of episode files (default \"episodes\")",
        constraints: "",
        default: |_| text("episodes"),
    },
    ParamSpec {
        name: "demo_action_topic",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "topic of the demonstrated actions (default: the skill's action topic)",
        constraints: "",
        default: |m| text(&m.action.topic),
    },
    ParamSpec {
        name: "record_chunk_s",
        kind: pt::DOUBLE,
        runtime: true,
        range: float(0.01, 3600.0),
        doc: "seconds between synced chunks of an episode file, from the next episode (default 1.0)",
        constraints: "",
        default: |_| ParamValue::Double(1.0),
    },
    ParamSpec {
        name: "record_compression",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "how episode chunks are compressed: zstd (default), lz4 (less CPU, larger files) or none",
        constraints: "zstd, lz4 or none",
        default: |_| text("zstd"),
    },
    ParamSpec {
        name: "record_queue",
        kind: pt::INTEGER,
        runtime: false,
        range: int(16, 10_000_000),
        doc: "messages the recorder queue holds before it drops (default 65536)",
        constraints: "",
        default: |_| ParamValue::Int(65536),
    },
    ParamSpec {
        name: "observation_reliability",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "best_effort (default: matches every publisher) or reliable (no loss from reliable publishers)",
        constraints: "best_effort or reliable",
        default: |_| text("best_effort"),
    },
    ParamSpec {
        name: "adapted_dir",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "folder adapted skills are written into (default \"adapted\")",
        constraints: "",
        default: |_| text("adapted"),
    },
    ParamSpec {
        name: "store_dir",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "skill store folder; turns on the HTTP inbox, and the store's active version runs (default \"\": no inbox)",
        constraints: "",
        default: |_| text(""),
    },
    ParamSpec {
        name: "inbox_address",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "address the inbox listens on (default \"127.0.0.1:8740\": this host only)",
        constraints: "needs store_dir",
        default: |_| text(crate::fleet::inbox::DEFAULT_LISTEN),
    },
    ParamSpec {
        name: "inbox_trust",
        kind: pt::STRING_ARRAY,
        runtime: false,
        range: None,
        doc: "public key files (.pub) whose bundles the inbox installs",
        constraints: "needs store_dir",
        default: |_| ParamValue::StringArray(vec![]),
    },
    ParamSpec {
        name: "inbox_tokens",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "file of bearer tokens the inbox accepts, one per line",
        constraints: "needs store_dir, which needs it",
        default: |_| text(""),
    },
    ParamSpec {
        name: "inbox_max_mib",
        kind: pt::INTEGER,
        runtime: false,
        range: int(1, 1_000_000),
        doc: "largest bundle, and largest unpacked skill, in MiB (default 512)",
        constraints: "needs store_dir",
        default: |_| ParamValue::Int(512),
    },
    ParamSpec {
        name: "fleet_url",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "fleet server whose signed channel the node follows, installing through its inbox (empty: none)",
        constraints: "needs store_dir, fleet_token_file and fleet_root",
        default: |_| text(""),
    },
    ParamSpec {
        name: "fleet_channel",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "the channel followed (default \"stable\")",
        constraints: "needs fleet_url",
        default: |_| text("stable"),
    },
    ParamSpec {
        name: "fleet_token_file",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "file holding the token sent to the fleet server (this robot's own: keys token FILE --robot NAME)",
        constraints: "needs fleet_url",
        default: |_| text(""),
    },
    ParamSpec {
        name: "fleet_root",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "the root public key (.pub) the robot pins: key lists it did not sign are refused",
        constraints: "needs fleet_url",
        default: |_| text(""),
    },
    ParamSpec {
        name: "fleet_interval_s",
        kind: pt::DOUBLE,
        runtime: false,
        range: float(1.0, 86_400.0),
        doc: "seconds between polls of the channel, moved by up to 20 % (default 60)",
        constraints: "needs fleet_url",
        default: |_| ParamValue::Double(60.0),
    },
    ParamSpec {
        name: "fleet_report_every_s",
        kind: pt::DOUBLE,
        runtime: false,
        range: float(1.0, 86_400.0),
        doc: "seconds after which a poll that changed nothing is reported again (default 300)",
        constraints: "needs fleet_url",
        default: |_| ParamValue::Double(300.0),
    },
    ParamSpec {
        name: "adapt_device",
        kind: pt::STRING,
        runtime: true,
        range: None,
        doc: "where fine-tuning runs, from the next adaptation: auto (the GPU when CUDA works, else the CPU; default), cpu or cuda",
        constraints: "auto, cpu or cuda",
        default: |_| text("auto"),
    },
    ParamSpec {
        name: "continual",
        kind: pt::BOOL,
        runtime: true,
        range: None,
        doc: "after each demonstration written, adapt by bayes on the statistics kept so far and swap in what the gate accepts",
        constraints: "true or false",
        default: |_| ParamValue::Bool(false),
    },
    ParamSpec {
        name: "uncertainty.limit",
        kind: pt::DOUBLE,
        runtime: true,
        range: float(0.0, 1000.0),
        doc: "for a skill adapted by bayes: above this predicted error over its held-out error, the safety filter slows the action (default 0: off)",
        constraints: "0 (off), or above 1: the ratio is at least 1",
        default: |_| ParamValue::Double(0.0),
    },
    ParamSpec {
        name: "uncertainty.slow",
        kind: pt::DOUBLE,
        runtime: true,
        range: float(0.0, 1.0),
        doc: "the share of the way from the safe action to the policy's action kept above uncertainty.limit (default 0.25; 0: the safe action)",
        constraints: "",
        default: |_| ParamValue::Double(0.25),
    },
    ParamSpec {
        name: "uncertainty.mark",
        kind: pt::DOUBLE,
        runtime: true,
        range: float(1.0, 1000.0),
        doc: "stretches whose predicted error over the held-out error rises above this are marked in uncertain.jsonl of episodes_dir (default 2.0)",
        constraints: "",
        default: |_| ParamValue::Double(2.0),
    },
    ParamSpec {
        name: "use_sim_time",
        kind: pt::BOOL,
        runtime: false,
        range: None,
        doc: "accepted as false only: skillgraft runs on the wall clock",
        constraints: "false",
        default: |_| ParamValue::Bool(false),
    },
    ParamSpec {
        name: "ros_distro",
        kind: pt::STRING,
        runtime: false,
        range: None,
        doc: "the robot's ROS 2 distro, for the DDS transport's graph layout (default: ROS_DISTRO, else humble)",
        constraints: "foxy, galactic, humble, iron, jazzy, kilted, lyrical or rolling",
        default: |_| text(RosDistro::choose(None).unwrap_or(RosDistro::DEFAULT).name()),
    },
];

/// The parameter called `name`.
pub fn spec(name: &str) -> Option<&'static ParamSpec> {
    PARAMETERS.iter().find(|p| p.name == name)
}

/// What the ROS parameter services say of a parameter.
pub fn descriptor(p: &ParamSpec) -> ParamDescriptor {
    ParamDescriptor {
        name: p.name.to_string(),
        kind: p.kind,
        description: p.doc.to_string(),
        constraints: p.constraints.to_string(),
        read_only: !p.runtime,
        range: p.range,
    }
}

/// A value with the parameter's own type: integers given for doubles are doubles.
fn typed(p: &ParamSpec, v: ParamValue) -> ParamValue {
    match (p.kind, v) {
        (pt::DOUBLE, ParamValue::Int(i)) => ParamValue::Double(i as f64),
        (pt::DOUBLE_ARRAY, ParamValue::IntArray(a)) => {
            ParamValue::DoubleArray(a.into_iter().map(|i| i as f64).collect())
        }
        (pt::STRING_ARRAY, ParamValue::StringArray(a)) => ParamValue::StringArray(a),
        (_, v) => v,
    }
}

/// The value of `name` for a node started with `args` and running a skill with manifest `m`:
/// as given, else its default.
pub fn value(args: &RosArgs, m: &Manifest, name: &str) -> Option<ParamValue> {
    let p = spec(name)?;
    Some(match args.params.get(name) {
        Some(given) => typed(p, given.value.clone()),
        None => (p.default)(m),
    })
}

/// The checks made at start: every parameter is one the node reads, and numbers are in range.
pub fn check_given(args: &RosArgs) -> Result<(), ArgsError> {
    for (name, given) in &args.params {
        let Some(p) = spec(name) else {
            let known: Vec<&str> = PARAMETERS.iter().map(|p| p.name).collect();
            return Err(ArgsError(format!("unknown parameter `{name}`; skillgraft reads {}", known.join(", "))));
        };
        let out_of_range = match (p.range, typed(p, given.value.clone())) {
            (Some(ParamRange::Float { from, to }), ParamValue::Double(d)) => !(from..=to).contains(&d),
            (Some(ParamRange::Integer { from, to }), ParamValue::Int(i)) => !(from..=to).contains(&i),
            _ => false,
        };
        if out_of_range {
            let (from, to) = match p.range {
                Some(ParamRange::Float { from, to }) => (from.to_string(), to.to_string()),
                Some(ParamRange::Integer { from, to }) => (from.to_string(), to.to_string()),
                None => unreachable!("out of range needs a range"),
            };
            return Err(ArgsError(format!(
                "parameter `{name}` (from {}) is {}; it must be within [{from}, {to}]",
                given.source, given.value
            )));
        }
    }
    Ok(())
}

/// The running node behind the parameter services.
pub struct NodeParameters {
    manifest: Manifest,
    /// The limits the node started with: the widest a set may give.
    launch: SafetyConfig,
    state: Mutex<(RosArgs, NodeConfig)>,
    tunables: Arc<Tunables>,
    tap: Arc<Tap>,
    live: Arc<Live>,
}

impl NodeParameters {
    /// The parameters of a node started with `args` (giving `cfg`) running a skill with `manifest`.
    pub fn new(
        manifest: Manifest,
        args: RosArgs,
        cfg: NodeConfig,
        tunables: Arc<Tunables>,
        tap: Arc<Tap>,
        live: Arc<Live>,
    ) -> NodeParameters {
        NodeParameters { manifest, launch: cfg.safety.clone(), state: Mutex::new((args, cfg)), tunables, tap, live }
    }

    /// Refuses limits outside those the node started with: at run time they may only tighten.
    fn within_launch(&self, s: &SafetyConfig) -> Result<(), Rejected> {
        let launch = &self.launch;
        let refuse = |name: &str, i: usize, v: f64, limit: f64, side: &str| {
            Err(Rejected(format!(
                "{name}[{i}] = {v} is {side} the limit the node started with ({limit}); while the node runs, limits can only tighten: restart it with -p {name}:=[...] to widen them"
            )))
        };
        for i in 0..s.lower.len() {
            if s.lower[i] < launch.lower[i] {
                return refuse("action.lower", i, s.lower[i], launch.lower[i], "below");
            }
            if s.upper[i] > launch.upper[i] {
                return refuse("action.upper", i, s.upper[i], launch.upper[i], "above");
            }
            if s.max_delta[i] > launch.max_delta[i] {
                return refuse("action.max_delta", i, s.max_delta[i], launch.max_delta[i], "above");
            }
        }
        Ok(())
    }
}

impl ParameterHost for NodeParameters {
    fn descriptors(&self) -> Vec<ParamDescriptor> {
        PARAMETERS.iter().map(descriptor).collect()
    }

    fn value(&self, name: &str) -> Option<ParamValue> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        value(&state.0, &self.manifest, name)
    }

    fn apply(&self, changes: &[(String, ParamValue)]) -> Result<(), Rejected> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (args, cfg) = &*state;
        let mut next = args.clone();
        for (name, value) in changes {
            if spec(name).is_none_or(|p| !p.runtime) {
                return Err(Rejected(format!("parameter `{name}` cannot change while the node runs")));
            }
            next.params.insert(name.clone(), Param { value: value.clone(), source: "set_parameters".into() });
        }
        let mut new = NodeConfig::new(&self.manifest, &next)?;
        new.policy = cfg.policy;
        if new.safety != cfg.safety {
            self.within_launch(&new.safety)?;
            let mut slot = self.tunables.safety.lock().unwrap_or_else(|p| p.into_inner());
            slot.retired = None;
            slot.pending = Some(new.safety.clone());
        }
        if new.estop_timeout != cfg.estop_timeout {
            let ns = new.estop_timeout.map_or(0, |t| t.as_nanos() as u64);
            self.tunables.estop_timeout_ns.store(ns, Ordering::Relaxed);
        }
        if new.uncertainty_mark != cfg.uncertainty_mark {
            self.tunables.uncertainty_mark_bits.store(new.uncertainty_mark.to_bits(), Ordering::Relaxed);
        }
        if new.diagnostics_period != cfg.diagnostics_period {
            self.tunables.diagnostics_period_ns.store(new.diagnostics_period.as_nanos() as u64, Ordering::Relaxed);
        }
        if new.record_chunk != cfg.record_chunk {
            self.tap.set_chunk_period(new.record_chunk);
        }
        if new.adapt_device != cfg.adapt_device {
            self.live.set_device(new.adapt_device);
        }
        if new.continual != cfg.continual {
            self.live.set_continual(new.continual);
        }
        for (name, value) in changes {
            tracing::info!("parameter {name} set to {value}");
        }
        *state = (next, new);
        Ok(())
    }
}
