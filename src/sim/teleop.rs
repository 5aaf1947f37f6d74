//! Demonstrations by the simulated arm's expert through a running node's recorder. Each waits on
//! the recorder's state (recording, then the episode written), never on a fixed time, so a slow
//! machine records the same episodes: the demo drives it in-process, `skillgraft teleop` over
//! the node's `~/demo/status` topic.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::UnknownRobot;
use super::node::Teleop;
use crate::msg::{RosMessage, StringMsg, cdr};
use crate::record::Status;
use crate::ros::args::RosArgs;
use crate::ros::transport::{Qos, RawPublisher, Transport, TransportError};

/// Longest wait for the recorder to start an episode, and to write one.
const RECORDER_LIMIT: Duration = Duration::from_secs(10);

/// Longest wait for the simulated arm's first joint states and target.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(20);

/// Why demonstrations could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum TeleopError {
    /// A topic could not be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No such simulated robot.
    #[error(transparent)]
    Robot(#[from] UnknownRobot),
    /// What was waited for did not happen.
    #[error(
        "{what} did not happen within {} s; is the node running with its recorder (`skillgraft run` or `record`), and the simulated arm, on this ROS domain?",
        .limit.as_secs()
    )]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        limit: Duration,
    },
}

/// Polls `done` until it holds or `limit` passes.
fn wait(limit: Duration, what: &'static str, mut done: impl FnMut() -> bool) -> Result<(), TeleopError> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(TeleopError::Timeout { what, limit });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn say(p: &mut dyn RawPublisher, text: &str) -> Result<(), TransportError> {
    p.publish(&cdr::encode(&StringMsg { data: text.into() }).map_err(|e| TransportError(e.to_string()))?)
}

/// Records one demonstration labelled `label`: `start` on the recorder's control topic until
/// `status` says it records (the first may go out before discovery), the expert acting for
/// `seconds`, `stop`, then until `status` counts the episode written.
pub fn demonstrate(
    control: &mut dyn RawPublisher,
    status: &dyn Fn() -> Option<Status>,
    expert: &Teleop,
    label: &str,
    seconds: f64,
) -> Result<(), TeleopError> {
    let written = status().map_or(0, |s| s.episodes_written);
    let deadline = Instant::now() + RECORDER_LIMIT;
    while status().is_none_or(|s| s.state != "recording") {
        if Instant::now() > deadline {
            return Err(TeleopError::Timeout { what: "the recorder starting an episode", limit: RECORDER_LIMIT });
        }
        say(control, &format!("start {label}"))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    expert.enable(true);
    std::thread::sleep(Duration::from_secs_f64(seconds));
    expert.enable(false);
    say(control, "stop")?;
    wait(RECORDER_LIMIT, "the recorder writing the episode", || status().is_some_and(|s| s.episodes_written > written))
}

/// The recorder's state as its `~/demo/status` topic (latched JSON) last said it.
pub struct StatusTopic(Arc<Mutex<Option<Status>>>);

impl StatusTopic {
    /// Subscribes to `topic`.
    pub fn subscribe(transport: &dyn Transport, topic: &str) -> Result<StatusTopic, TransportError> {
        let last: Arc<Mutex<Option<Status>>> = Arc::default();
        let l = last.clone();
        transport.subscribe(
            topic,
            StringMsg::TYPE,
            Qos::LATCHED,
            Box::new(move |sample| {
                if let Ok(m) = cdr::decode::<StringMsg>(&sample.cdr, StringMsg::TYPE)
                    && let Ok(s) = serde_json::from_str::<Status>(&m.data)
                {
                    *l.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                }
            }),
        )?;
        Ok(StatusTopic(last))
    }

    /// The last state heard, if any.
    pub fn get(&self) -> Option<Status> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What `skillgraft teleop` records.
#[derive(Debug, Clone)]
pub struct TeleopOptions {
    /// The simulated robot (the expert knows its true parameters).
    pub robot: String,
    /// Demonstrations to record.
    pub episodes: usize,
    /// The skillgraft node (its `~/demo/control` and `~/demo/status`).
    pub node: String,
    /// The simulated arm's node (its `~/reset`).
    pub sim: String,
    /// Seconds per demonstration.
    pub seconds: f64,
}

/// Records `opts.episodes` demonstrations through the node, resetting the arm before each;
/// `done` hears each one finished (from 1).
pub fn teleop(
    transport: Arc<dyn Transport>,
    args: &RosArgs,
    opts: &TeleopOptions,
    done: &mut dyn FnMut(usize),
) -> Result<(), TeleopError> {
    let robot = super::robot(&opts.robot)?;
    let expert = Teleop::start(transport.clone(), args, robot)?;
    let mut control = transport.publisher(&format!("{}/demo/control", opts.node), StringMsg::TYPE, Qos::RELIABLE)?;
    let mut reset = transport.publisher(&format!("{}/reset", opts.sim), StringMsg::TYPE, Qos::RELIABLE)?;
    let status = StatusTopic::subscribe(&*transport, &format!("{}/demo/status", opts.node))?;
    // The arm's reset subscriber is announced with its joint states: once those arrive, a reset
    // is heard.
    wait(DISCOVERY_LIMIT, "the simulated arm's joint states and target", || expert.ready())?;
    for k in 0..opts.episodes {
        say(&mut *reset, "")?;
        demonstrate(&mut *control, &|| status.get(), &expert, &format!("teleop-{k}"), opts.seconds)?;
        done(k + 1);
    }
    Ok(())
}
