//! Demonstration recording. `~/demo/control` (std_msgs/String: `start [label]`, `stop`,
//! `discard`) starts and ends episodes; while one runs, the policy is muted (the person drives the
//! robot) and every observation message and every demonstration action is recorded as it arrived.
//! Subscriptions hand messages to the recorder thread through a bounded queue without ever
//! waiting (a full queue drops and counts), so recording I/O never reaches the control loop.
//! The state goes out on `~/demo/status` (JSON in a std_msgs/String) and `/diagnostics`.

pub mod dataset;
pub mod episode;
pub mod summary;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::msg::StringMsg;
use crate::msg::cdr;
use crate::ros::transport::{RawPublisher, Sample};
use episode::{ChannelSpec, EpisodeWriter};

/// Where and how the node records.
#[derive(Debug, Clone, PartialEq)]
pub struct RecorderConfig {
    /// Folder of episode files.
    pub dir: PathBuf,
    /// Topics recorded: the observation inputs, then the demonstration action.
    pub channels: Vec<ChannelSpec>,
    /// How often a chunk is ended and synced to disk.
    pub chunk_period: Duration,
    /// Messages the queue to the recorder thread holds.
    pub queue: usize,
    /// How episode chunks are compressed.
    pub compression: episode::Compression,
    /// Written into every episode's metadata (robot, skill, digest, node, ...).
    pub metadata: BTreeMap<String, String>,
    /// One label per value of the raw observation, for the marks of unsure stretches.
    pub observation_labels: Vec<String>,
}

/// The file in the episodes folder where the stretches the policy was unsure of are marked, one
/// JSON object per line: where a demonstration would teach it most.
pub const UNCERTAIN_FILE: &str = "uncertain.jsonl";

/// A stretch of ticks where the policy was unsure: where a demonstration would teach it most.
#[derive(Debug, Clone, PartialEq)]
pub struct Stretch {
    /// When it began.
    pub start: SystemTime,
    /// How long it lasted, s.
    pub seconds: f64,
    /// Actions published in it.
    pub ticks: u64,
    /// The highest ratio in it.
    pub peak_ratio: f64,
    /// The raw observation (the policy's input before normalising) at the peak.
    pub observation: Vec<f32>,
}

/// An episode command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start an episode with this label.
    Start(String),
    /// End the episode and keep it.
    Stop,
    /// End the episode and delete it.
    Discard,
}

/// Text on `~/demo/control` that is not an episode command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an episode command; send `start [label]`, `stop` or `discard`")]
pub struct CommandError(pub String);

impl Command {
    /// Parses `start [label]`, `stop` or `discard`.
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        let text = text.trim();
        let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        match word {
            "start" => Ok(Command::Start(rest.trim().to_string())),
            "stop" if rest.trim().is_empty() => Ok(Command::Stop),
            "discard" if rest.trim().is_empty() => Ok(Command::Discard),
            _ => Err(CommandError(text.to_string())),
        }
    }
}

enum Event {
    Message { channel: usize, log_ns: u64, cdr: Vec<u8> },
    Command(Command),
    Uncertain(Box<Stretch>),
    Shutdown,
}

/// The recorder's state, as published on `~/demo/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Status {
    /// `idle`, `recording` or `failed`.
    pub state: String,
    /// The current (or failed) episode.
    pub episode: Option<String>,
    /// Its label.
    pub label: String,
    /// Seconds since it started.
    pub duration_s: f64,
    /// Messages recorded per topic in it.
    pub messages: BTreeMap<String, u64>,
    /// Messages dropped in it because the recorder queue was full.
    pub dropped: u64,
    /// The last problem (a failed episode, a refused command).
    pub error: Option<String>,
    /// Episodes written since the node started.
    pub episodes_written: u64,
    /// The last episode written.
    pub last_file: Option<String>,
    /// Stretches marked in `uncertain.jsonl` since the node started.
    pub uncertain_stretches: u64,
    /// The last one, in words.
    pub last_uncertain: Option<String>,
}

/// What the subscription, control and diagnostics threads share with the recorder thread.
pub struct Tap {
    muted: AtomicBool,
    recording: AtomicBool,
    tx: SyncSender<Event>,
    /// Messages dropped because the recorder queue was full (whole node life).
    pub dropped: AtomicU64,
    /// The state, for diagnostics.
    pub status: Mutex<Status>,
    /// CPU time of the recorder thread, ns.
    pub cpu_ns: AtomicU64,
    /// Metadata that replaces the configured one from the next episode (the skill after a swap).
    metadata: Mutex<BTreeMap<String, String>>,
    /// How often a chunk is ended and synced, ns, from the next episode.
    chunk_ns: AtomicU64,
    /// Told of each episode written, on the recorder thread.
    on_written: Mutex<Option<EpisodeListener>>,
}

/// What is told of each episode written: its file.
pub type EpisodeListener = Box<dyn Fn(&std::path::Path) + Send>;

impl Tap {
    /// How often episodes from the next one on end a chunk and sync it.
    pub fn set_chunk_period(&self, period: Duration) {
        self.chunk_ns.store(period.as_nanos().max(1) as u64, Ordering::Relaxed);
    }

    /// Calls `listener` with each episode written from now on (continual adaptation); it runs on
    /// the recorder thread, so it must only hand the work on.
    pub fn on_written(&self, listener: EpisodeListener) {
        *self.on_written.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    /// Replaces entries of the episode metadata from the next episode on.
    pub fn set_metadata(&self, entries: BTreeMap<String, String>) {
        if let Ok(mut m) = self.metadata.lock() {
            m.extend(entries);
        }
    }

    /// Whether a demonstration is under way (the policy must not publish).
    pub fn muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    /// Hands a message of channel `channel` to the recorder when an episode is recording.
    /// Never waits: a full queue drops the message and counts it.
    pub fn offer(&self, channel: usize, sample: Sample) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let log_ns = epoch_ns(sample.arrived_ros.as_secs_f64());
        match self.tx.try_send(Event::Message { channel, log_ns, cdr: sample.cdr }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Hands a stretch where the policy was unsure to the recorder, which marks it in
    /// `uncertain.jsonl`. Never waits: a full queue drops it.
    pub fn mark(&self, stretch: Stretch) {
        if self.tx.try_send(Event::Uncertain(Box::new(stretch))).is_err() {
            tracing::debug!("the recorder queue is full: an uncertain stretch is not marked");
        }
    }

    /// Passes an episode command to the recorder (an unparsable one is reported on the status).
    pub fn command(&self, text: &str) {
        match Command::parse(text) {
            Ok(c) => {
                let _ = self.tx.send(Event::Command(c));
            }
            Err(e) => {
                tracing::warn!("demo/control: {e}");
                if let Ok(mut s) = self.status.lock() {
                    s.error = Some(e.to_string());
                }
            }
        }
    }
}

fn epoch_ns(secs: f64) -> u64 {
    (secs * 1e9).max(0.0) as u64
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The running recorder: its shared tap and its thread.
pub struct Recorder {
    /// Shared with subscriptions, the control thread and diagnostics.
    pub tap: Arc<Tap>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Starts the recorder thread; the state is published with `status`.
    pub fn start(cfg: RecorderConfig, status: Box<dyn RawPublisher>) -> std::io::Result<Recorder> {
        let (tx, rx) = sync_channel(cfg.queue.max(16));
        let tap = Arc::new(Tap {
            muted: AtomicBool::new(false),
            recording: AtomicBool::new(false),
            tx,
            dropped: AtomicU64::new(0),
            status: Mutex::new(Status { state: "idle".into(), ..Default::default() }),
            cpu_ns: AtomicU64::new(0),
            metadata: Mutex::new(BTreeMap::new()),
            chunk_ns: AtomicU64::new(cfg.chunk_period.as_nanos().max(1) as u64),
            on_written: Mutex::new(None),
        });
        let shared = tap.clone();
        let thread = std::thread::Builder::new().name("skillgraft-record".into()).spawn(move || {
            RecorderThread { cfg, tap: shared, status, current: None, written: 0, last_file: None }.run(rx)
        })?;
        Ok(Recorder { tap, thread: Some(thread) })
    }

    /// Ends any episode (keeping it) and stops the thread.
    pub fn stop(mut self) {
        let _ = self.tap.tx.send(Event::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Current {
    writer: Option<EpisodeWriter>,
    id: String,
    label: String,
    started: SystemTime,
    started_at: Instant,
    dropped_at_start: u64,
    error: Option<String>,
    /// The run's metadata when it started (the skill that ran then).
    metadata: BTreeMap<String, String>,
}

struct RecorderThread {
    cfg: RecorderConfig,
    tap: Arc<Tap>,
    status: Box<dyn RawPublisher>,
    current: Option<Current>,
    written: u64,
    last_file: Option<String>,
}

impl RecorderThread {
    fn chunk_period(&self) -> Duration {
        Duration::from_nanos(self.tap.chunk_ns.load(Ordering::Relaxed))
    }

    fn run(mut self, rx: Receiver<Event>) {
        let mut next_status = Instant::now();
        loop {
            let event = rx.recv_timeout(Duration::from_millis(100));
            match event {
                Ok(Event::Message { channel, log_ns, cdr }) => self.write(channel, log_ns, &cdr),
                Ok(Event::Command(c)) => {
                    self.command(c, &rx);
                    next_status = Instant::now();
                }
                Ok(Event::Uncertain(stretch)) => {
                    self.mark(&stretch);
                    next_status = Instant::now();
                }
                Ok(Event::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    if self.current.is_some() {
                        self.command(Command::Stop, &rx);
                    }
                    self.publish_status();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(c) = &mut self.current
                && let Some(w) = &mut c.writer
                && let Err(e) = w.flush_if_due()
            {
                let e = e.to_string();
                self.fail(e);
            }
            if Instant::now() >= next_status {
                self.publish_status();
                next_status = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// The configured metadata with what changed since (the skill after a swap).
    fn metadata(&self) -> BTreeMap<String, String> {
        let mut meta = self.cfg.metadata.clone();
        meta.extend(self.tap.metadata.lock().map(|m| m.clone()).unwrap_or_default());
        meta
    }

    /// Appends the stretch to `uncertain.jsonl`, with the skill that ran and the observation at
    /// its peak by label, and says where it was.
    fn mark(&mut self, stretch: &Stretch) {
        let meta = self.metadata();
        let observation: serde_json::Map<String, serde_json::Value> = self
            .cfg
            .observation_labels
            .iter()
            .cloned()
            .zip(stretch.observation.iter().map(|&v| serde_json::json!(v)))
            .collect();
        let line = serde_json::json!({
            "start": humantime::format_rfc3339_millis(stretch.start).to_string(),
            "seconds": stretch.seconds,
            "actions": stretch.ticks,
            "peak_ratio": stretch.peak_ratio,
            "skill": meta.get("skill"),
            "skill_version": meta.get("skill_version"),
            "skill_digest": meta.get("skill_digest"),
            "observation": observation,
        });
        let path = self.cfg.dir.join(UNCERTAIN_FILE);
        let written = std::fs::create_dir_all(&self.cfg.dir).and_then(|()| {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())
        });
        let words = format!(
            "unsure for {:.1} s from {} (peak {:.1}x its held-out error)",
            stretch.seconds,
            humantime::format_rfc3339_millis(stretch.start),
            stretch.peak_ratio
        );
        if let Ok(mut s) = self.tap.status.lock() {
            s.uncertain_stretches += 1;
            s.last_uncertain = Some(words.clone());
            if let Err(e) = &written {
                s.error = Some(format!("cannot mark an uncertain stretch in {}: {e}", path.display()));
            }
        }
        match written {
            Ok(()) => tracing::info!(
                "the policy was {words}: a demonstration from there would teach it most; marked in {}",
                path.display()
            ),
            Err(e) => tracing::warn!("the policy was {words}; cannot mark it in {}: {e}", path.display()),
        }
    }

    fn write(&mut self, channel: usize, log_ns: u64, cdr: &[u8]) {
        let Some(c) = &mut self.current else { return };
        let Some(w) = &mut c.writer else { return };
        if let Err(e) = w.write(channel, log_ns, cdr) {
            let e = e.to_string();
            self.fail(e);
        }
    }

    /// A write failed (disk full, folder gone): the episode stops recording and is marked
    /// failed; its `.part` file keeps what reached the disk. The demonstration itself goes on
    /// (the policy stays muted) until `stop` or `discard`.
    fn fail(&mut self, error: String) {
        self.tap.recording.store(false, Ordering::Relaxed);
        if let Some(c) = &mut self.current {
            tracing::error!("episode {} failed: {error}", c.id);
            c.writer = None;
            c.error = Some(error);
        }
        self.publish_status();
    }

    fn drain(&mut self, rx: &Receiver<Event>, keep: bool) -> Vec<Command> {
        let mut later = Vec::new();
        while let Ok(e) = rx.try_recv() {
            match e {
                Event::Message { channel, log_ns, cdr } if keep => self.write(channel, log_ns, &cdr),
                Event::Message { .. } => {}
                Event::Command(c) => later.push(c),
                Event::Uncertain(stretch) => self.mark(&stretch),
                Event::Shutdown => later.push(Command::Stop),
            }
        }
        later
    }

    fn command(&mut self, c: Command, rx: &Receiver<Event>) {
        match c {
            Command::Start(label) => self.start(label),
            Command::Stop | Command::Discard => {
                let keep = c == Command::Stop;
                self.tap.recording.store(false, Ordering::Relaxed);
                let later = self.drain(rx, keep);
                self.tap.muted.store(false, Ordering::Relaxed);
                if let Some(cur) = self.current.take() {
                    self.end(cur, keep);
                } else {
                    self.refuse(format!("`{}`: no episode is recording", if keep { "stop" } else { "discard" }));
                }
                for c in later {
                    self.command(c, rx);
                }
            }
        }
        self.publish_status();
    }

    fn refuse(&mut self, why: String) {
        tracing::warn!("demo/control: {why}");
        if let Ok(mut s) = self.tap.status.lock() {
            s.error = Some(why);
        }
    }

    fn start(&mut self, label: String) {
        if let Some(c) = &self.current {
            let why = format!("`start`: episode {} is recording; send `stop` or `discard` first", c.id);
            return self.refuse(why);
        }
        let started = SystemTime::now();
        let stamp = humantime::format_rfc3339_seconds(started).to_string().replace(':', "-");
        let tag: String =
            label.chars().map(|ch| if ch.is_ascii_alphanumeric() || "-_".contains(ch) { ch } else { '_' }).collect();
        let base = if tag.is_empty() { stamp } else { format!("{stamp}-{tag}") };
        let mut id = base.clone();
        let mut n = 1;
        while self.cfg.dir.join(format!("{id}.mcap")).exists()
            || self.cfg.dir.join(format!("{id}{}", episode::PART_SUFFIX)).exists()
        {
            n += 1;
            id = format!("{base}-{n}");
        }
        let base = self.metadata();
        let mut meta = base.clone();
        meta.insert("label".into(), label.clone());
        meta.insert("start".into(), rfc3339(started));
        meta.insert("status".into(), "recording".into());
        for (i, ch) in self.cfg.channels.iter().enumerate() {
            meta.insert(format!("channel.{i}"), format!("{} {} {}", ch.role, ch.topic, ch.type_name));
        }
        self.tap.muted.store(true, Ordering::Relaxed);
        let (writer, error) = match EpisodeWriter::create(
            &self.cfg.dir,
            &id,
            &self.cfg.channels,
            &meta,
            self.chunk_period(),
            self.cfg.compression,
        ) {
            Ok(w) => {
                self.tap.recording.store(true, Ordering::Relaxed);
                tracing::info!("episode {id} recording into {}", w.part_path().display());
                (Some(w), None)
            }
            Err(e) => {
                tracing::error!("episode {id} failed to start: {e}");
                (None, Some(e.to_string()))
            }
        };
        self.current = Some(Current {
            writer,
            id,
            label,
            started,
            started_at: Instant::now(),
            dropped_at_start: self.tap.dropped.load(Ordering::Relaxed),
            error,
            metadata: base,
        });
    }

    fn end(&mut self, cur: Current, keep: bool) {
        let Some(writer) = cur.writer else {
            // A failed episode: its .part (if any) stays for `episodes recover`.
            return;
        };
        if !keep {
            if let Err(e) = writer.discard() {
                self.refuse(e.to_string());
            }
            return;
        }
        let mut meta = cur.metadata.clone();
        meta.insert("label".into(), cur.label.clone());
        meta.insert("start".into(), rfc3339(cur.started));
        meta.insert("stop".into(), rfc3339(SystemTime::now()));
        meta.insert("status".into(), "complete".into());
        meta.insert("dropped".into(), (self.tap.dropped.load(Ordering::Relaxed) - cur.dropped_at_start).to_string());
        for (ch, n) in self.cfg.channels.iter().zip(&writer.counts) {
            meta.insert(format!("messages.{}", ch.topic), n.to_string());
        }
        match writer.finish(&meta) {
            Ok(path) => {
                self.written += 1;
                tracing::info!("episode {} written to {}", cur.id, path.display());
                self.last_file = Some(path.display().to_string());
                if let Some(listener) = self.tap.on_written.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    listener(&path);
                }
            }
            Err(e) => self.refuse(format!("episode {} could not be finished: {e}", cur.id)),
        }
    }

    fn publish_status(&mut self) {
        let cpu = thread_cpu_ns();
        self.tap.cpu_ns.store(cpu, Ordering::Relaxed);
        let mut s = self.tap.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.episodes_written = self.written;
        s.last_file = self.last_file.clone();
        match &self.current {
            None => {
                s.state = "idle".into();
                s.episode = None;
                s.label.clear();
                s.duration_s = 0.0;
                s.messages.clear();
                s.dropped = 0;
            }
            Some(c) => {
                s.state = if c.error.is_some() { "failed" } else { "recording" }.into();
                if c.error.is_some() {
                    s.error = c.error.clone();
                }
                s.episode = Some(c.id.clone());
                s.label = c.label.clone();
                s.duration_s = c.started_at.elapsed().as_secs_f64();
                s.dropped = self.tap.dropped.load(Ordering::Relaxed) - c.dropped_at_start;
                if let Some(w) = &c.writer {
                    s.messages =
                        self.cfg.channels.iter().zip(&w.counts).map(|(ch, n)| (ch.topic.clone(), *n)).collect();
                }
            }
        }
        if let Ok(mut shared) = self.tap.status.lock() {
            *shared = s.clone();
        }
        let text = serde_json::to_string(&s).unwrap_or_default();
        if let Ok(bytes) = cdr::encode(&StringMsg { data: text })
            && let Err(e) = self.status.publish(&bytes)
        {
            tracing::debug!("cannot publish the recorder status: {e}");
        }
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(Command::parse("start"), Ok(Command::Start(String::new())));
        assert_eq!(Command::parse("  start pick red cube "), Ok(Command::Start("pick red cube".into())));
        assert_eq!(Command::parse("stop"), Ok(Command::Stop));
        assert_eq!(Command::parse("discard\n"), Ok(Command::Discard));
        assert!(Command::parse("stop now").unwrap_err().to_string().contains("start [label]"));
        assert!(Command::parse("go").is_err());
    }
}
