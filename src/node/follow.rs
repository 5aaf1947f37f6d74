//! The fleet channel a node follows: what `skillgraft agent --inbox` does beside a node, on a
//! thread of the node. Each poll checks the signed key list and index against the pinned root,
//! downloads what the index names, and installs and activates it through the node's own inbox,
//! which checks it against the running skill and swaps it in between two ticks; then it reports
//! to the fleet server with the node's health. Its counters are on `/diagnostics` (`fleet.*`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::FleetFollow;
use crate::fleet::FleetError;
use crate::fleet::agent::{AgentSettings, Polled, follow};
use crate::fleet::inbox::InboxSettings;
use crate::skill::bundle;
use crate::skill::store::Store;

/// Longest a node's stop waits for a poll under way (a download may run for minutes; what it
/// left is resumed by the next start).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The follower's counters.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Polls made.
    pub polls: AtomicU64,
    /// Polls that failed (the reason is in `last_error`).
    pub failed: AtomicU64,
    /// The serial of the index last accepted.
    pub serial: AtomicU64,
    /// Why the last poll failed, if it did.
    pub last_error: Mutex<Option<String>>,
    channel: String,
}

impl FollowStats {
    fn record(&self, polled: &Result<Polled, FleetError>) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match polled {
            Ok(p) => {
                self.serial.store(p.serial, Ordering::Relaxed);
                *last = None;
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("fleet channel {}: {e}", self.channel);
                // Diagnostics values stay short enough for one message.
                *last = Some(crate::fleet::inbox::clipped(&e.to_string(), 2048));
            }
        }
    }
}

impl crate::stats::Counted for FollowStats {
    fn values(&self) -> Vec<(String, String)> {
        let last = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        vec![
            ("fleet.channel".into(), self.channel.clone()),
            ("fleet.polls".into(), self.polls.load(Ordering::Relaxed).to_string()),
            ("fleet.polls_failed".into(), self.failed.load(Ordering::Relaxed).to_string()),
            ("fleet.serial".into(), self.serial.load(Ordering::Relaxed).to_string()),
            ("fleet.last_error".into(), last.unwrap_or_default()),
        ]
    }
}

/// The thread that follows the channel.
pub(crate) struct Follower {
    stop: Sender<()>,
    thread: JoinHandle<()>,
    stats: Arc<FollowStats>,
}

impl Follower {
    /// Reads the keys and tokens (a bad one stops the node at start, not at the first poll)
    /// and starts following `f` through the inbox listening on `inbox_at`.
    pub(crate) fn start(f: &FleetFollow, inbox: &InboxSettings, inbox_at: SocketAddr) -> Result<Follower, FleetError> {
        let config = |e: &dyn std::fmt::Display| FleetError::Config(e.to_string());
        let root = crate::fleet::channel::pinned_root(&f.root)
            .map_err(|e| FleetError::Config(format!("parameter `fleet_root`: {e}")))?;
        crate::fleet::client::join(&f.url, "/keys")
            .map_err(|e| FleetError::Config(format!("parameter `fleet_url` is {:?}: {e}", f.url)))?;
        let store = Store::attach(&inbox.store);
        let robot = store.identity().map_err(|e| config(&e))?.robot;
        // The inbox may listen on every address; the follower reaches it on this host.
        let at = match inbox_at.ip() {
            IpAddr::V4(a) if a.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, inbox_at.port())),
            IpAddr::V6(a) if a.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, inbox_at.port())),
            _ => inbox_at,
        };
        let settings = AgentSettings {
            fleet: f.url.clone(),
            token: crate::fleet::auth::read_token(&f.token_file)?,
            channel: f.channel.clone(),
            robot: robot.clone(),
            root,
            trusted: bundle::read_trusted(&inbox.trust).map_err(|e| config(&e))?,
            limits: bundle::Limits::mib(inbox.max_mib),
            timeout: Duration::from_secs(600),
            inbox: Some(crate::fleet::push::Robot {
                name: robot,
                url: format!("http://{at}"),
                token: crate::fleet::auth::read_token(&inbox.tokens)?,
            }),
        };
        let stats = Arc::new(FollowStats { channel: f.channel.clone(), ..Default::default() });
        let (stop, stopped) = std::sync::mpsc::channel();
        let (counts, every) = (stats.clone(), f.every);
        let thread = std::thread::Builder::new()
            .name("fleet-follow".into())
            .spawn(move || {
                if let Err(e) = follow(&settings, &store, every, stopped, |polled| {
                    counts.record(polled);
                    true
                }) {
                    tracing::error!("fleet channel {}: {e}", settings.channel);
                }
            })
            .map_err(|e| FleetError::Config(format!("cannot start the fleet-follow thread: {e}")))?;
        Ok(Follower { stop, thread, stats })
    }

    /// Its counters, for `/diagnostics`.
    pub(crate) fn stats(&self) -> Arc<FollowStats> {
        self.stats.clone()
    }

    /// Stops following: waits for a poll under way a moment, and leaves one that takes longer
    /// to end with the process.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let deadline = Instant::now() + STOP_WAIT;
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            tracing::info!("the fleet poll under way is left to end with the node");
        }
    }
}
