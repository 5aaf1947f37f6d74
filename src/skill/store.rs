//! The robot's skill store: every installed version of every skill, which one is active and
//! which ran before it. A version is installed from a signed bundle by unpacking it into a
//! scratch folder, checking it (signature, files, a smoke inference), and renaming it into
//! place; only then does the skill's `state.json` (replaced atomically) point at it. A crash at
//! any point leaves either the old or the new version active, never neither.
//!
//! ```text
//! ROOT/.lock                  flock()ed while a change is made, so processes take turns
//! ROOT/.incoming/             scratch (PID_START-...), cleared of dead processes' leftovers on open
//! ROOT/.identity.json         {"robot": NAME, "fleet": NAME or null}: whom downgrades must name
//! ROOT/NAME/versions/VERSION/ installed skill folders, never changed once there
//! ROOT/NAME/state.json        {"active": VERSION, "previous": VERSION or null, "highest": VERSION}
//! ```
//!
//! A first install killed after its rename leaves a `versions/` folder and no `state.json`: no
//! version of that skill was ever active, so the next install of it clears the folder first.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::Manifest;
use super::bundle::{self, BundleError, Limits};
use super::sandbox::Sandbox;
use crate::file::FileError;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bundle is not to be trusted.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// The request does not fit what is installed; the message says what would.
    #[error("{0}")]
    Refused(String),
}

/// What the caller checks before an install commits: the manifest, and whether the bundle is a
/// downgrade valid here; its error (the node's reason, say) refuses the install.
pub type Check<'a> = dyn Fn(&Manifest, bool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + 'a;

/// Which version of a skill runs, and which ran before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The active version.
    pub active: semver::Version,
    /// The version active before it, for rollback.
    pub previous: Option<semver::Version>,
    /// The highest version ever installed: a new one must be above it (unless a downgrade).
    #[serde(default)]
    pub highest: Option<semver::Version>,
}

/// Whom this store's robot is: downgrade bundles must name it (or its fleet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The robot's name (default: the host name).
    pub robot: String,
    /// The fleet it belongs to, if it is named.
    #[serde(default)]
    pub fleet: Option<String>,
}

/// One installed skill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Skill name.
    pub name: String,
    /// Installed versions, lowest first.
    pub versions: Vec<semver::Version>,
    /// Which is active, and which was before.
    pub state: State,
}

/// The store at a folder.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// One change at a time in this process (the lock file orders processes, not threads).
    changing: Mutex<()>,
    /// Where bundles are checked: a worker process, or (None) this one.
    sandbox: Option<Sandbox>,
}

/// Held while a change is made: this process's mutex and the store's lock file, so the node's
/// inbox and a `skillgraft store` command on the same robot never interleave two changes.
struct Changing<'a> {
    _thread: std::sync::MutexGuard<'a, ()>,
    _file: std::fs::File,
}

/// Crash tests name a step in `SKILLGRAFT_STORE_KILL_AT`; the process SIGKILLs itself there, so
/// the store's crash consistency is checked at every step of a real install.
fn kill_point(step: &str) {
    if std::env::var("SKILLGRAFT_STORE_KILL_AT").is_ok_and(|s| s == step) {
        // SAFETY: sends a signal to this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    Ok(std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(FileError::at("sync", dir))?)
}

/// Syncs a folder and every folder under it, so a renamed version is whole after a power cut.
fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    for e in std::fs::read_dir(dir).map_err(FileError::at("read", dir))?.filter_map(|e| e.ok()) {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            sync_tree(&e.path())?;
        }
    }
    fsync_dir(dir)
}

impl Store {
    /// Opens (creating) the store at `root`, discarding what interrupted installs left. Scratch
    /// entries are named after their process, and only those of processes that are gone are
    /// removed: another process may be installing into the same store right now.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let incoming = root.join(".incoming");
        std::fs::create_dir_all(&incoming).map_err(FileError::at("create", &incoming))?;
        clear_scratch(&incoming)?;
        Ok(Store { root: root.to_path_buf(), changing: Mutex::new(()), sandbox: None })
    }

    /// Another handle on a store this process opened already (the inbox's, for the node's fleet
    /// follower): `open` again would take this process's own scratch, an install under way,
    /// for a dead process's leftovers.
    pub fn attach(root: &Path) -> Store {
        Store { root: root.to_path_buf(), changing: Mutex::new(()), sandbox: None }
    }

    /// Checks bundles in worker processes under `sandbox`'s limits from now on.
    pub fn sandboxed(mut self, sandbox: Sandbox) -> Store {
        self.sandbox = Some(sandbox);
        self
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh path in the store's scratch folder (same file system as the versions, so an
    /// upload spooled there costs no copy); `open` removes it once this process is gone.
    pub fn scratch(&self, what: &str) -> PathBuf {
        self.root.join(".incoming").join(format!("{}-{what}-{}", scratch_owner(), super::bundle::unique()))
    }

    /// Whom this robot is, as `.identity.json` says, or the host name.
    pub fn identity(&self) -> Result<Identity, StoreError> {
        let path = self.root.join(".identity.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Refused(format!("{}: {e}; write it again with `skillgraft store identify`", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Identity { robot: hostname(), fleet: None }),
            Err(e) => Err(FileError::at("read", &path)(e).into()),
        }
    }

    /// Names this robot (and its fleet) for downgrade bundles.
    pub fn identify(&self, identity: &Identity) -> Result<(), StoreError> {
        for n in std::iter::once(&identity.robot).chain(identity.fleet.iter()) {
            if n.is_empty() || n.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(StoreError::Refused(format!("{n:?} is not a name: give letters, digits, `-`, `_`, `.`")));
            }
        }
        let _one = self.lock()?;
        let path = self.root.join(".identity.json");
        write_atomic(&path, &serde_json::to_vec_pretty(identity).expect("identity serialises"))?;
        fsync_dir(&self.root)
    }

    fn lock(&self) -> Result<Changing<'_>, StoreError> {
        let thread = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FileError::at("open", &path))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(FileError::new("lock", &path, std::io::Error::last_os_error()).into());
        }
        Ok(Changing { _thread: thread, _file: file })
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join("state.json")
    }

    /// `name` if it can name a skill folder here; anything else (`..`, `/`) is refused before
    /// it reaches a path.
    fn checked<'n>(&self, name: &'n str) -> Result<&'n str, StoreError> {
        if super::manifest::valid_name(name) {
            Ok(name)
        } else {
            Err(StoreError::Refused(format!(
                "{name:?} is not a skill name (letters, digits, `-`, `_`, `.`, not starting with `.`)"
            )))
        }
    }

    /// The folder of an installed version.
    pub fn dir(&self, name: &str, version: &semver::Version) -> PathBuf {
        self.root.join(name).join("versions").join(version.to_string())
    }

    /// The state of skill `name`, if it is installed.
    pub fn state(&self, name: &str) -> Result<Option<State>, StoreError> {
        let path = self.state_path(self.checked(name)?);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StoreError::Refused(format!("{}: {e}; restore it from the versions folder beside it", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError::at("read", &path)(e).into()),
        }
    }

    /// Replaces the state atomically: a new file, synced, renamed over the old, folder synced.
    fn write_state(&self, name: &str, state: &State) -> Result<(), StoreError> {
        let path = self.state_path(name);
        write_atomic(&path, &serde_json::to_vec_pretty(state).expect("state serialises"))?;
        fsync_dir(&self.root.join(name))
    }

    /// Every installed skill.
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(FileError::at("read", &self.root))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let Some(state) = self.state(&name)? else { continue };
            let vdir = self.root.join(&name).join("versions");
            let mut versions: Vec<semver::Version> = std::fs::read_dir(&vdir)
                .map_err(FileError::at("read", &vdir))?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect();
            versions.sort();
            out.push(Entry { name, versions, state });
        }
        Ok(out)
    }

    /// Verifies `bundle` against `trusted`, test-loads it and runs one inference, and installs it
    /// as the active version of its skill (the one active before becomes `previous`). A version
    /// not above the highest ever installed is refused unless the bundle is a downgrade for this
    /// robot that has not expired.
    pub fn install(&self, bundle: &Path, trusted: &[VerifyingKey], limits: Limits) -> Result<Entry, StoreError> {
        self.install_checked(bundle, trusted, limits, &|_, _| Ok(()))
    }

    /// As `install`, with one more check of the unpacked, smoke-tested skill's manifest (and
    /// whether it may be installed as a downgrade here) before anything is committed: a running
    /// node refuses a skill that reads or writes other topics, or one older than what it runs.
    pub fn install_checked(
        &self,
        bundle: &Path,
        trusted: &[VerifyingKey],
        limits: Limits,
        check: &Check<'_>,
    ) -> Result<Entry, StoreError> {
        let _one = self.lock()?;
        let scratch = self.scratch("install");
        let result = self.install_from(bundle, trusted, limits, &scratch, check);
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    /// Unpacks and checks a bundle (in the worker when sandboxed), smoke test included.
    fn unpack_checked(
        &self,
        bundle_path: &Path,
        trusted: &[VerifyingKey],
        limits: Limits,
        scratch: &Path,
    ) -> Result<(bundle::Verified, Manifest), StoreError> {
        match &self.sandbox {
            Some(sandbox) => {
                let v = sandbox.unpack(bundle_path, trusted, scratch, limits)?;
                let manifest = super::read_manifest(&v.dir).map_err(|e| StoreError::Refused(e.to_string()))?;
                Ok((v, manifest))
            }
            None => {
                let (v, mut skill) = bundle::unpack_loaded(bundle_path, trusted, scratch, limits)?;
                skill
                    .smoke_test()
                    .map_err(|e| BundleError::Rejected { path: bundle_path.to_path_buf(), problem: e.to_string() })?;
                Ok((v, skill.manifest))
            }
        }
    }

    fn install_from(
        &self,
        bundle_path: &Path,
        trusted: &[VerifyingKey],
        limits: Limits,
        scratch: &Path,
        check: &Check<'_>,
    ) -> Result<Entry, StoreError> {
        let (v, manifest) = self.unpack_checked(bundle_path, trusted, limits, scratch)?;
        kill_point("unpacked");
        let (name, version) = (v.contents.name.clone(), v.contents.version.clone());
        let state = self.state(&name)?;
        if state.is_none() && self.root.join(&name).exists() {
            // What a first install killed before its state was written left: never active.
            tracing::warn!(skill = %name, "clearing the versions of an interrupted first install");
            let dir = self.root.join(&name);
            std::fs::remove_dir_all(&dir).map_err(FileError::at("clear", &dir))?;
            fsync_dir(&self.root)?;
        }
        let identity = self.identity()?;
        let downgrade =
            v.contents.downgrade_for(&identity.robot, identity.fleet.as_deref(), std::time::SystemTime::now());
        let highest = self.highest(&name, state.as_ref())?;
        if let Some(h) = &highest
            && version <= *h
            && let Err(why) = &downgrade
        {
            let active = state.as_ref().map(|s| format!(" (active {})", s.active)).unwrap_or_default();
            return Err(StoreError::Refused(format!(
                "{name} {version} is not above {h}, the highest version installed here{active}, and {why}; a fleet that means it signs a downgrade for this robot ({}): `skillgraft bundle pack --downgrade --for {} --expires-in 1d`",
                identity.robot, identity.robot
            )));
        }
        let target = self.dir(&name, &version);
        if target.exists() {
            return Err(StoreError::Refused(format!(
                "{name} {version} is already installed; activate it instead, or bump the version"
            )));
        }
        check(&manifest, downgrade.is_ok()).map_err(|e| StoreError::Refused(format!("{name} {version}: {e}")))?;
        let versions = target.parent().expect("a versions folder");
        let new_skill = !versions.exists();
        std::fs::create_dir_all(versions).map_err(FileError::at("create", versions))?;
        if new_skill {
            fsync_dir(&self.root.join(&name))?;
            fsync_dir(&self.root)?;
        }
        sync_tree(&v.dir)?;
        kill_point("smoked");
        std::fs::rename(&v.dir, &target).map_err(FileError::at("install", &target))?;
        fsync_dir(versions)?;
        kill_point("renamed");
        let previous = state.map(|s| s.active);
        let highest = Some(highest.map_or(version.clone(), |h| h.max(version.clone())));
        self.write_state(&name, &State { active: version, previous, highest })?;
        self.entry(&name)
    }

    /// The highest version of `name` ever installed: the state's record, or what the versions
    /// folder and the state name (for stores written before the record was kept).
    fn highest(&self, name: &str, state: Option<&State>) -> Result<Option<semver::Version>, StoreError> {
        let Some(state) = state else { return Ok(None) };
        let vdir = self.root.join(name).join("versions");
        let mut highest =
            std::iter::once(state.active.clone()).chain(state.previous.clone()).chain(state.highest.clone()).max();
        if vdir.is_dir() {
            for e in std::fs::read_dir(&vdir).map_err(FileError::at("read", &vdir))?.filter_map(|e| e.ok()) {
                if let Ok(v) = e.file_name().to_string_lossy().parse::<semver::Version>() {
                    highest = highest.max(Some(v));
                }
            }
        }
        Ok(highest)
    }

    /// Puts a skill's state back to `state` (None: as before its first install, when no version
    /// was active), after a change the node could not follow.
    pub fn restore(&self, name: &str, state: Option<&State>) -> Result<(), StoreError> {
        let name = self.checked(name)?;
        let _one = self.lock()?;
        match state {
            Some(s) => self.write_state(name, s),
            None => {
                let dir = self.root.join(name);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => fsync_dir(&self.root),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(FileError::at("clear", &dir)(e).into()),
                }
            }
        }
    }

    fn entry(&self, name: &str) -> Result<Entry, StoreError> {
        self.list()?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| StoreError::Refused(format!("no skill {name:?} is installed")))
    }

    /// Makes an installed version active (the active one becomes `previous`).
    pub fn activate(&self, name: &str, version: &semver::Version) -> Result<Entry, StoreError> {
        let _one = self.lock()?;
        self.make_active(name, version)
    }

    fn make_active(&self, name: &str, version: &semver::Version) -> Result<Entry, StoreError> {
        let name = self.checked(name)?;
        let state = self.state(name)?.ok_or_else(|| StoreError::Refused(format!("no skill {name:?} is installed")))?;
        if !self.dir(name, version).is_dir() {
            return Err(StoreError::Refused(format!("{name} {version} is not installed; install its bundle first")));
        }
        if &state.active != version {
            let highest = state.highest.clone();
            self.write_state(name, &State { active: version.clone(), previous: Some(state.active), highest })?;
        }
        self.entry(name)
    }

    /// The version `rollback` would return to, or why there is none.
    pub fn rollback_target(&self, name: &str) -> Result<semver::Version, StoreError> {
        let state = self.state(name)?.ok_or_else(|| StoreError::Refused(format!("no skill {name:?} is installed")))?;
        state.previous.ok_or_else(|| StoreError::Refused(format!("{name} has no previous version to roll back to")))
    }

    /// Returns to the version active before the current one.
    pub fn rollback(&self, name: &str) -> Result<Entry, StoreError> {
        let _one = self.lock()?;
        let previous = self.rollback_target(name)?;
        self.make_active(name, &previous)
    }
}

/// Writes `path` atomically: a new file, synced, renamed over the old.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, bytes).map_err(FileError::at("write", &tmp))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(FileError::at("sync", &tmp))?;
    kill_point("state-written");
    std::fs::rename(&tmp, path).map_err(FileError::at("rename", &tmp))?;
    kill_point("state-renamed");
    Ok(())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if ok && !h.is_empty() => h.to_string(),
        _ => "robot".to_string(),
    }
}

/// A process's start time (clock ticks after boot, /proc/PID/stat field 22), None when it is
/// gone or a zombie: a zombie holds its PID but will never finish its work.
fn started(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | Some(&"x")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Removes what processes that are gone left in the scratch folder `dir` (entries named
/// `PID_START-...`, [`scratch_owner`]); a running process's entries stay.
pub(crate) fn clear_scratch(dir: &Path) -> Result<(), FileError> {
    for entry in std::fs::read_dir(dir).map_err(FileError::at("read", dir))?.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if !owner_alive(&name, age) {
            let path = entry.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            // Another process starting at the same moment may have cleared it first.
            match removed {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(FileError::at("clear", &path)(e)),
                _ => {}
            }
        }
    }
    Ok(())
}

/// `PID_START_HOST`: this process, told apart from a later one that reuses its PID, and from
/// processes of other machines or containers (HOST) that share the folder.
pub(crate) fn scratch_owner() -> String {
    let pid = std::process::id() as i32;
    format!("{pid}_{}_{}", started(pid).unwrap_or(0), this_host())
}

/// How long another host's scratch entries are kept: its processes cannot be seen from here, so
/// only age tells a leftover (an upload or install takes far less).
const FOREIGN_SCRATCH: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// This machine and process namespace, as 8 hex digits: its boot, its host name, its PID
/// namespace (two containers on one kernel differ in the last two).
fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for file in ["/proc/sys/kernel/random/boot_id", "/proc/sys/kernel/hostname"] {
            h.update(std::fs::read(file).unwrap_or_default());
        }
        h.update(std::fs::read_link("/proc/self/ns/pid").unwrap_or_default().as_os_str().as_encoded_bytes());
        hex::encode(&h.finalize()[..4])
    })
}

/// Whether the process that named a scratch entry `PID_START_HOST-...` still runs (this one
/// counts as gone: an open clears what this process left before); another host's counts as
/// running until it is older than [`FOREIGN_SCRATCH`]. A name of another form is anyone's
/// leftover.
fn owner_alive(name: &str, age: Option<std::time::Duration>) -> bool {
    let owner = name.split('-').next().unwrap_or_default();
    let mut parts = owner.splitn(3, '_');
    let (pid, start, host) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
    let Ok(pid) = pid.parse::<i32>() else { return false };
    if host.is_some_and(|h| h != this_host()) {
        return age.is_none_or(|a| a < FOREIGN_SCRATCH);
    }
    if pid <= 0 || pid == std::process::id() as i32 {
        return false;
    }
    match (started(pid), start.parse::<u64>()) {
        (Some(now), Ok(then)) => then == 0 || now == then,
        (Some(_), Err(_)) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn scratch_of_gone_processes_is_cleared_and_another_hosts_only_once_old() {
        let me = scratch_owner();
        let (pid, rest) = me.split_once('_').unwrap();
        let (start, host) = rest.split_once('_').unwrap();
        assert_eq!((pid.parse::<u32>().unwrap(), host), (std::process::id(), this_host()));
        let young = Some(Duration::from_secs(60));
        let old = Some(FOREIGN_SCRATCH + Duration::from_secs(1));
        assert!(!owner_alive(&format!("{me}-upload-1"), young), "this process's own: an open clears it");
        // PID 1 runs everywhere: on this host only its own start time keeps its entries.
        assert!(owner_alive(&format!("1_0_{host}-x"), young));
        assert!(!owner_alive(&format!("999999999_{start}_{host}-x"), young), "a process that is gone");
        // PID 1 of another container or machine: not judged by this host's PID 1.
        assert!(owner_alive("1_5_00000000-upload-0", young));
        assert!(!owner_alive("1_5_00000000-upload-0", old));
        assert!(!owner_alive("leftover", young));
    }
}
