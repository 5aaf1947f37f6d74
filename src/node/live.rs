//! Adaptation inside the running node. A request on `~/adapt` (std_msgs/String: a method and
//! `key=value` options) adapts the running skill on the episodes this node recorded for it (or
//! for the skills it ran before), in a background thread at the lowest CPU priority; an accepted
//! skill is written under `adapted_dir` and swapped in between two ticks, blending in. Every step
//! and the numbers go out as JSON on `~/adapt/status`; `~/skill/rollback` returns to the skill
//! before.
//!
//! With the `continual` parameter on, each demonstration written starts a `bayes` update on its
//! own: the statistics of every demonstration so far are kept under `adapted_dir` (one file per
//! skill's frozen layers, saved after every update, accepted or not), the new episodes are added,
//! and the head the gate accepts is swapped in the same way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;

use crate::adapt::args::{FinetuneOnly, MethodArgs, NotKeyValue, words_to_flags};
use crate::adapt::device::Device;
use crate::adapt::{Options, Progress, Report};
use crate::control::skills::{SkillInfo, Skills};
use crate::msg::StringMsg;
use crate::msg::cdr;
use crate::record::{dataset, episode};
use crate::ros::transport::RawPublisher;
use crate::skill::Skill;

/// A parsed `~/adapt` request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Method and settings.
    pub options: Options,
    /// Only episodes with this label.
    pub label: Option<String>,
    /// Only the most recent episodes, this many.
    pub last: Option<usize>,
    /// Where fine-tuning runs, when the request says (else the node's `adapt_device`).
    pub device: Option<Device>,
    /// A continual update: bayes on the episodes not yet in the node's statistics.
    pub continual: bool,
}

/// The request's own words besides the method's: which episodes.
#[derive(clap::Parser)]
#[command(name = "~/adapt", no_binary_name = true, disable_help_flag = true, disable_version_flag = true)]
struct RequestArgs {
    #[command(flatten)]
    how: MethodArgs,
    /// Only episodes with this label.
    #[arg(long)]
    label: Option<String>,
    /// Only the most recent episodes, this many.
    #[arg(long, value_parser = crate::adapt::args::count)]
    last: Option<usize>,
}

/// The request syntax, for error messages: the keys are the parser's own.
pub fn syntax() -> String {
    use clap::CommandFactory;
    let keys: Vec<String> = RequestArgs::command()
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .filter(|k| k != "method")
        .collect();
    format!(
        "`ridge` or `finetune`, then key=value options: {} (layers, epochs, batch, lr, pull, patience, seed, ridge_init and device for finetune only; e.g. `finetune layers=1 epochs=30`)",
        keys.join(", ")
    )
}

/// Why a `~/adapt` request was refused; each says what to send.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// Not ridge or finetune.
    #[error("unknown method {0:?}; send {syntax}", syntax = syntax())]
    Method(String),
    /// A word that is not `key=value`.
    #[error("{0}; send {syntax}", syntax = syntax())]
    NotKeyValue(#[from] NotKeyValue),
    /// A key the request does not take.
    #[error("unknown option {0:?}; send {syntax}", syntax = syntax())]
    Unknown(String),
    /// A value the key does not take.
    #[error("option {key}={value:?}: {why}")]
    Value {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What to give instead.
        why: String,
    },
    /// A finetune setting with ridge.
    #[error("option {} applies to finetune only", .0.0)]
    FinetuneOnly(#[from] FinetuneOnly),
    /// Anything else the parser refused (a key given twice, say).
    #[error("{0}; send {syntax}", syntax = syntax())]
    Other(String),
}

impl From<clap::Error> for RequestError {
    fn from(e: clap::Error) -> RequestError {
        use clap::error::{ContextKind, ErrorKind};
        let get = |k| e.get(k).map(|v| v.to_string()).unwrap_or_default();
        // `--ridge-init <BOOL>` or `--speed` back to the request's key.
        let key = get(ContextKind::InvalidArg)
            .trim_start_matches('-')
            .split([' ', '='])
            .next()
            .unwrap_or_default()
            .replace('-', "_");
        match e.kind() {
            ErrorKind::UnknownArgument => RequestError::Unknown(key),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
                let value = get(ContextKind::InvalidValue);
                if key == "method" {
                    return RequestError::Method(value);
                }
                let why = match (std::error::Error::source(&e), get(ContextKind::ValidValue)) {
                    (Some(s), _) => s.to_string(),
                    (None, valid) if !valid.is_empty() => format!("give one of {valid}"),
                    (None, _) => first_line(&e),
                };
                RequestError::Value { key, value, why }
            }
            _ => RequestError::Other(first_line(&e)),
        }
    }
}

fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string()
}

impl Request {
    /// Parses `METHOD [key=value ...]` with the parser of `skillgraft adapt`'s flags; an empty
    /// request means `ridge`.
    pub fn parse(text: &str) -> Result<Request, RequestError> {
        use clap::Parser;
        let args = RequestArgs::try_parse_from(words_to_flags(text)?)?;
        // One fitting thread unless asked: the node's control loop keeps the cores it needs.
        let options = args.how.options(1, Device::default(), None)?;
        Ok(Request { options, label: args.label, last: args.last, device: args.how.device, continual: false })
    }

    /// The update continual mode makes after each demonstration.
    fn continual() -> Request {
        let options = Options { method: crate::adapt::Method::Bayes, ..Options::default() };
        Request { options, label: None, last: None, device: None, continual: true }
    }
}

/// What `~/adapt/status` says.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// `idle`, `adapting`, `accepted`, `rejected`, `failed` or `rolled_back`.
    pub state: String,
    /// The request of the last adaptation.
    pub request: String,
    /// What the adaptation is doing now.
    pub phase: String,
    /// The skill that runs.
    pub skill: Option<SkillInfo>,
    /// Skills a rollback returns to, most recent first.
    pub earlier: Vec<SkillInfo>,
    /// The adapted skill written by the last adaptation.
    pub adapted: Option<SkillInfo>,
    /// Whether it was swapped in.
    pub swapped: bool,
    /// The last adaptation's numbers.
    pub report: Option<Report>,
    /// The last problem: a failed adaptation, a refused request or rollback.
    pub error: Option<String>,
    /// Seconds the last adaptation took.
    pub seconds: f64,
}

/// Where the node's adaptation finds episodes and writes skills.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveConfig {
    /// Folder of episode files.
    pub episodes_dir: PathBuf,
    /// Folder adapted skills are written into.
    pub adapted_dir: PathBuf,
    /// Where fine-tuning runs unless a request says otherwise.
    pub device: Device,
}

struct Board {
    status: Mutex<Status>,
    publisher: Mutex<Box<dyn RawPublisher>>,
    /// The node's `adapt_device` now (it may change while the node runs).
    device: Mutex<Device>,
}

impl Board {
    fn update(&self, skills: &Skills, f: impl FnOnce(&mut Status)) {
        let snapshot = {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            s.skill = Some(skills.current());
            s.earlier = skills.earlier();
            s.clone()
        };
        let text = serde_json::to_string(&snapshot).unwrap_or_default();
        let msg = StringMsg { data: text };
        match cdr::encode(&msg) {
            Ok(buf) => {
                if let Err(e) = self.publisher.lock().unwrap_or_else(|p| p.into_inner()).publish(&buf) {
                    tracing::warn!("cannot publish the adaptation status: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot encode the adaptation status: {e}"),
        }
    }
}

/// The node's adaptation: a worker thread and the status it publishes.
pub struct Live {
    tx: Mutex<Option<SyncSender<(String, Request)>>>,
    busy: Arc<AtomicBool>,
    /// Whether each demonstration written starts a continual update.
    continual: Arc<AtomicBool>,
    /// A demonstration arrived while an adaptation ran: the worker updates after it.
    pending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    board: Arc<Board>,
    skills: Arc<Skills>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Live {
    /// Starts the worker thread and publishes the idle status.
    pub fn start(cfg: LiveConfig, skills: Arc<Skills>, publisher: Box<dyn RawPublisher>) -> std::io::Result<Live> {
        let board = Arc::new(Board {
            status: Mutex::new(Status { state: "idle".into(), ..Default::default() }),
            publisher: Mutex::new(publisher),
            device: Mutex::new(cfg.device),
        });
        let (tx, rx) = sync_channel(1);
        let busy = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let continual = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicBool::new(false));
        let thread = {
            let flags = Flags {
                busy: busy.clone(),
                stop: stop.clone(),
                continual: continual.clone(),
                pending: pending.clone(),
            };
            let (board, skills) = (board.clone(), skills.clone());
            std::thread::Builder::new()
                .name("skillgraft-adapt".into())
                .spawn(move || worker(rx, &cfg, &skills, &board, &flags))?
        };
        board.update(&skills, |_| {});
        Ok(Live {
            tx: Mutex::new(Some(tx)),
            busy,
            continual,
            pending,
            stop,
            board,
            skills,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Turns continual adaptation on or off (from the next demonstration written).
    pub fn set_continual(&self, on: bool) {
        self.continual.store(on, Ordering::Relaxed);
    }

    /// A demonstration was written: with continual adaptation on, update now, or after the
    /// adaptation that runs (nothing recorded is left out: the update takes every episode not yet
    /// in the statistics).
    pub fn episode_written(&self) {
        if !self.continual.load(Ordering::Relaxed) {
            return;
        }
        self.pending.store(true, Ordering::Release);
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        self.pending.store(false, Ordering::Release);
        self.send("continual".into(), Request::continual());
    }

    /// Where fine-tuning runs from the next adaptation on, unless a request says otherwise.
    pub fn set_device(&self, device: Device) {
        *self.board.device.lock().unwrap_or_else(|p| p.into_inner()) = device;
    }

    /// Handles a `~/adapt` request: queues it, or says on the status why not.
    pub fn request(&self, text: &str) {
        let refuse = |why: String| {
            tracing::warn!("adaptation request {text:?} refused: {why}");
            self.board.update(&self.skills, |s| s.error = Some(why));
        };
        let request = match Request::parse(text) {
            Ok(r) => r,
            Err(e) => return refuse(e.to_string()),
        };
        if self.busy.swap(true, Ordering::AcqRel) {
            return refuse("an adaptation is running; wait for its result on ~/adapt/status".into());
        }
        if !self.send(text.trim().to_string(), request) {
            refuse("the adaptation worker is not taking requests (the node is stopping)".into());
        }
    }

    /// Hands a job to the worker, `busy` already taken; false (and `busy` released) when the
    /// worker is gone.
    fn send(&self, text: String, request: Request) -> bool {
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.try_send((text, request)).is_ok());
        if !sent {
            self.busy.store(false, Ordering::Release);
        }
        sent
    }

    /// Handles `~/skill/rollback`.
    pub fn rollback(&self) {
        match self.skills.rollback() {
            Ok(now) => {
                tracing::info!("rolled back to {}", now.label());
                self.board.update(&self.skills, |s| {
                    s.state = "rolled_back".into();
                    s.error = None;
                });
            }
            Err(e) => {
                tracing::warn!("rollback refused: {e}");
                self.board.update(&self.skills, |s| s.error = Some(e.to_string()));
            }
        }
    }

    /// The status as last published.
    pub fn status(&self) -> Status {
        self.board.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the worker; an adaptation under way ends at its next fold.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The lowest CPU priority for the calling thread, so adaptation takes only time the control,
/// subscription and recorder threads leave: SCHED_IDLE (it runs only on a core nothing else
/// wants, and any waking thread preempts it), else nice 19. Threads it starts inherit this.
fn lowest_priority() {
    // SAFETY: plain syscalls on the calling thread (pid 0 and its own tid name it).
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            if libc::setpriority(libc::PRIO_PROCESS, tid, 19) != 0 {
                tracing::debug!("cannot lower the adaptation thread's priority");
            }
        }
    }
}

struct Reporter<'a> {
    board: &'a Board,
    skills: &'a Skills,
    stop: &'a AtomicBool,
    phase: Mutex<(String, u64, u64)>,
}

impl Progress for Reporter<'_> {
    fn phase(&self, name: &str, total: u64) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = (name.to_string(), 0, total);
        self.board.update(self.skills, |s| s.phase = format!("{name}: 0 of {total}"));
    }

    fn step(&self, message: &str) {
        let text = {
            let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
            p.1 += 1;
            format!("{}: {} of {} ({message})", p.0, p.1, p.2)
        };
        self.board.update(self.skills, |s| s.phase = text);
    }

    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The worker's shared flags.
struct Flags {
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    continual: Arc<AtomicBool>,
    pending: Arc<AtomicBool>,
}

fn worker(rx: Receiver<(String, Request)>, cfg: &LiveConfig, skills: &Skills, board: &Board, flags: &Flags) {
    lowest_priority();
    while let Ok(job) = rx.recv() {
        let mut next = Some(job);
        while let Some((text, request)) = next.take() {
            one(&text, &request, cfg, skills, board, &flags.stop);
            // Demonstrations written meanwhile: one continual update takes them all.
            if flags.pending.swap(false, Ordering::AcqRel) && flags.continual.load(Ordering::Relaxed) {
                next = Some(("continual".into(), Request::continual()));
            }
        }
        flags.busy.store(false, Ordering::Release);
    }
}

/// Runs one adaptation and publishes what came of it.
fn one(text: &str, request: &Request, cfg: &LiveConfig, skills: &Skills, board: &Board, stop: &AtomicBool) {
    let t0 = Instant::now();
    board.update(skills, |s| {
        *s = Status {
            state: "adapting".into(),
            request: text.to_string(),
            phase: "reading episodes".into(),
            ..Default::default()
        }
    });
    let progress = Reporter { board, skills, stop, phase: Mutex::new((String::new(), 0, 0)) };
    let device = *board.device.lock().unwrap_or_else(|p| p.into_inner());
    let outcome = run(&LiveConfig { device, ..cfg.clone() }, skills, request, &progress);
    let seconds = t0.elapsed().as_secs_f64();
    match outcome {
        Ok(done) => {
            tracing::info!(
                "adaptation {text:?}: {} ({:.1} % better on held-out episodes){}",
                if done.report.accepted { "accepted" } else { "rejected" },
                done.report.improvement * 100.0,
                done.note.as_deref().map(|n| format!("; {n}")).unwrap_or_default()
            );
            board.update(skills, |s| {
                s.state = if done.report.accepted { "accepted" } else { "rejected" }.into();
                s.phase = String::new();
                s.adapted = done.adapted;
                s.swapped = done.swapped;
                s.error = match (done.note, done.report.accepted) {
                    (Some(n), _) => Some(n),
                    (None, false) => Some(done.report.reasons.join("; ")),
                    (None, true) => None,
                };
                s.report = Some(done.report);
                s.seconds = seconds;
            });
        }
        Err(e) => {
            tracing::warn!("adaptation {text:?} failed: {e}");
            board.update(skills, |s| {
                s.state = "failed".into();
                s.phase = String::new();
                s.error = Some(e);
                s.seconds = seconds;
            });
        }
    }
}

struct Done {
    report: Report,
    adapted: Option<SkillInfo>,
    swapped: bool,
    note: Option<String>,
}

/// Episodes paired into samples for the skill `m`.
fn pair_all(files: Vec<episode::EpisodeFile>, m: &crate::skill::Manifest) -> Result<Vec<dataset::Episode>, String> {
    files.into_iter().map(|f| dataset::pair(f, m).map_err(|e| e.to_string())).collect()
}

/// Episode files in `dir` recorded for one of `digests`, complete, oldest first.
fn select(dir: &Path, digests: &[String], request: &Request) -> Result<Vec<episode::EpisodeFile>, String> {
    let mut files = Vec::new();
    if !dir.exists() {
        // Nothing recorded yet: the recorder makes the folder with the first episode.
        return Ok(files);
    }
    let listed = episode::list(dir).map_err(|e| e.to_string())?;
    for path in listed.iter().filter(|p| p.extension().is_some_and(|e| e == "mcap")) {
        let f = match episode::read(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("episode {} left out: {e}", path.display());
                continue;
            }
        };
        let meta = |k: &str| f.metadata.get(k).map(String::as_str).unwrap_or_default();
        if !digests.iter().any(|d| d == meta("skill_digest")) {
            continue;
        }
        if request.label.as_deref().is_some_and(|l| l != meta("label")) {
            continue;
        }
        files.push(f);
    }
    if let Some(n) = request.last {
        let skip = files.len().saturating_sub(n);
        files.drain(..skip);
    }
    Ok(files)
}

fn run(cfg: &LiveConfig, skills: &Skills, request: &Request, progress: &Reporter<'_>) -> Result<Done, String> {
    let active = skills.current();
    let source = Skill::load(&active.dir).map_err(|e| e.to_string())?;
    if source.digest != active.digest {
        return Err(format!(
            "the folder of the running skill {} changed on disk since it was loaded ({} now); restore it or restart the node",
            active.dir.display(),
            source.digest
        ));
    }
    if request.continual {
        return continual(cfg, skills, &source, &active, progress);
    }
    let files = select(&cfg.episodes_dir, &skills.lineage(), request)?;
    let episodes = pair_all(files, &source.manifest)?;
    let needed = if request.options.method == crate::adapt::Method::Bayes { 1 } else { 2 };
    if episodes.len() < needed {
        return Err(format!(
            "{} episode(s) in {} were recorded for the running skill{}; record at least {needed} on ~/demo/control",
            episodes.len(),
            cfg.episodes_dir.display(),
            request.label.as_deref().map(|l| format!(" with label {l:?}")).unwrap_or_default()
        ));
    }
    let options = Options {
        cache: Some(cfg.episodes_dir.join(".features")),
        device: request.device.unwrap_or(cfg.device),
        ..request.options.clone()
    };
    let adapted = crate::adapt::adapt(&source, &episodes, &options, progress).map_err(|e| e.to_string())?;
    install(cfg, skills, &source, &active, adapted, &episodes)
}

/// The node's statistics file for skills with `key`'s frozen layers.
pub fn stats_file(adapted_dir: &Path, key: &crate::adapt::continual::Key) -> PathBuf {
    adapted_dir.join(format!("{}-{}.continual.stats", key.skill, &key.frozen[..key.frozen.len().min(16)]))
}

/// A continual update: the episodes recorded for the running skill's lineage that the node's
/// statistics do not hold yet are added to them (the prior stays the skill the statistics began
/// with), the statistics are saved whatever the gate says, and an accepted head is swapped in.
fn continual(
    cfg: &LiveConfig,
    skills: &Skills,
    source: &Skill,
    active: &SkillInfo,
    progress: &Reporter<'_>,
) -> Result<Done, String> {
    use crate::adapt::continual::{Continual, Key, STATS_FILE, StatsError};
    let key = Key::of(source);
    let file = stats_file(&cfg.adapted_dir, &key);
    // Without the node's own file (a first update, or a damaged file), a skill adapted by bayes
    // brings the statistics it was solved from: the update continues those.
    let beside = || {
        let path = source.dir.join(STATS_FILE);
        match Continual::load(&path) {
            Ok(c) if c.key == key => Some((c, path)),
            _ => None,
        }
    };
    let start: Option<(Continual, PathBuf)> = match Continual::load(&file) {
        Ok(c) => Some((c, file.clone())),
        Err(StatsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => beside(),
        Err(e) => {
            // Kept for a person to look at.
            let aside = file.with_extension("stats.damaged");
            tracing::warn!("{e}; moved to {} and starting again from the running skill's statistics", aside.display());
            std::fs::rename(&file, &aside).map_err(|e| format!("{}: {e}", file.display()))?;
            beside()
        }
    };
    let known: Vec<String> = start.iter().flat_map(|(c, _)| c.episodes.iter().map(|e| e.id.clone())).collect();
    let all = Request { continual: false, ..Request::continual() };
    let files: Vec<episode::EpisodeFile> =
        select(&cfg.episodes_dir, &skills.lineage(), &all)?.into_iter().filter(|f| !known.contains(&f.id())).collect();
    if files.is_empty() {
        return Err("continual: no demonstration recorded since the last update".into());
    }
    let episodes = pair_all(files, &source.manifest)?;
    let options = Options {
        cache: Some(cfg.episodes_dir.join(".features")),
        merge: start.map(|(_, path)| path).into_iter().collect(),
        ..Request::continual().options
    };
    let adapted = crate::adapt::adapt(source, &episodes, &options, progress).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&cfg.adapted_dir).map_err(|e| format!("{}: {e}", cfg.adapted_dir.display()))?;
    if let Some(stats) = &adapted.stats {
        stats.save(&file).map_err(|e| e.to_string())?;
    }
    install(cfg, skills, source, active, adapted, &episodes)
}

/// Writes an accepted adapted skill under `adapted_dir` and swaps it in, unless the running skill
/// changed meanwhile.
fn install(
    cfg: &LiveConfig,
    skills: &Skills,
    source: &Skill,
    active: &SkillInfo,
    adapted: crate::adapt::Adapted,
    episodes: &[dataset::Episode],
) -> Result<Done, String> {
    if !adapted.report.accepted {
        return Ok(Done { report: adapted.report, adapted: None, swapped: false, note: None });
    }
    let mut version = crate::adapt::next_version(&source.manifest.version);
    let folder = |v: &semver::Version| cfg.adapted_dir.join(format!("{}-{v}", source.manifest.name));
    while folder(&version).exists() {
        version = crate::adapt::next_version(&version);
    }
    let robot = crate::adapt::robot_of(episodes);
    let written = crate::adapt::write(source, &adapted, &folder(&version), Some(version), robot.as_deref())
        .map_err(|e| e.to_string())?;
    let info = SkillInfo::of(&written);
    if skills.current().digest != active.digest {
        let note = format!(
            "the running skill changed while adapting; {} is written to {} but not swapped in",
            info.label(),
            info.dir.display()
        );
        return Ok(Done { report: adapted.report, adapted: Some(info), swapped: false, note: Some(note) });
    }
    match skills.swap(written) {
        Ok(_) => Ok(Done { report: adapted.report, adapted: Some(info), swapped: true, note: None }),
        Err(e) => {
            let note = format!("{e}; the skill is written to {}", info.dir.display());
            Ok(Done { report: adapted.report, adapted: Some(info), swapped: false, note: Some(note) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::Method;

    #[test]
    fn requests_parse_and_bad_ones_say_what_to_send() {
        let r = Request::parse("").unwrap();
        assert_eq!(r.options.method, Method::Ridge);
        assert_eq!(r.options.threads, 1, "one fitting thread unless asked");
        let r = Request::parse("ridge margin=0.1 last=3 label=pick threads=2").unwrap();
        assert_eq!((r.options.margin, r.last, r.label.as_deref()), (0.1, Some(3), Some("pick")));
        assert_eq!(r.options.threads, 2);
        assert_eq!(r.device, None, "the node's adapt_device unless the request says");
        let r = Request::parse("finetune layers=1 epochs=30 lr=3e-3 seed=4 ridge_init=false device=cpu").unwrap();
        let Method::Finetune { layers, settings, ridge_init } = r.options.method else { panic!("finetune") };
        assert_eq!((layers, settings.epochs, settings.lr, settings.seed, ridge_init), (Some(1), 30, 3e-3, 4, false));
        assert_eq!(r.device, Some(Device::Cpu));
        for (bad, want) in [
            ("sgd", "unknown method"),
            ("ridge layers=2", "finetune only"),
            ("finetune epochs=0", "above 0"),
            ("ridge threads=0", "above 0"),
            ("ridge margin=-1", "0 or more"),
            ("ridge speed=9", "unknown option"),
            ("ridge fast", "not key=value"),
            ("finetune device=gpu", "auto, cpu or cuda"),
            ("ridge device=cuda", "finetune only"),
        ] {
            let e = Request::parse(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
