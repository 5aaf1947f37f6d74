//! The robot's skill store: every installed version of every skill, which one is active and
//! which ran before it. A version is installed from a signed bundle by unpacking it into a
//! scratch folder, checking it (signature, files, a smoke inference), and renaming it into
//! place; only then does the skill's `state.json` (replaced atomically) point at it. A crash at
//! any point leaves either the old or the new version active, never neither.
//!
//! ```text
//! ROOT/.lock                  flock()ed while a change is made, so processes take turns
//! ROOT/.incoming/             scratch (PID-...), cleared of dead processes' leftovers on open
//! ROOT/NAME/versions/VERSION/ installed skill folders, never changed once there
//! ROOT/NAME/state.json        {"active": VERSION, "previous": VERSION or null}
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::Skill;
use super::bundle::{self, BundleError, Limits};

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bundle is not to be trusted.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A file of the store could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The request does not fit what is installed; the message says what would.
    #[error("{0}")]
    Refused(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { action, path: path.to_path_buf(), source }
}

/// Which version of a skill runs, and which ran before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The active version.
    pub active: semver::Version,
    /// The version active before it, for rollback.
    pub previous: Option<semver::Version>,
}

/// One installed skill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io("sync", dir))
}

/// Syncs a folder and every folder under it, so a renamed version is whole after a power cut.
fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    for e in std::fs::read_dir(dir).map_err(io("read", dir))?.filter_map(|e| e.ok()) {
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
        std::fs::create_dir_all(&incoming).map_err(io("create", &incoming))?;
        for entry in std::fs::read_dir(&incoming).map_err(io("read", &incoming))?.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
            if owner.is_none_or(|pid| pid == std::process::id() as i32 || !alive(pid)) {
                let path = entry.path();
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                removed.map_err(io("clear", &path))?;
            }
        }
        Ok(Store { root: root.to_path_buf(), changing: Mutex::new(()) })
    }

    /// A fresh path in the store's scratch folder (same file system as the versions, so an
    /// upload spooled there costs no copy); `open` removes it if this process dies.
    pub fn scratch(&self, what: &str) -> PathBuf {
        self.root.join(".incoming").join(format!("{}-{what}-{}", std::process::id(), super::bundle::unique()))
    }

    fn lock(&self) -> Result<Changing<'_>, StoreError> {
        let thread = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io("lock", &path)(std::io::Error::last_os_error()));
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
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Replaces the state atomically: a new file, synced, renamed over the old, folder synced.
    fn write_state(&self, name: &str, state: &State) -> Result<(), StoreError> {
        let path = self.state_path(name);
        let tmp = path.with_extension("json.part");
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io("sync", &tmp))?;
        kill_point("state-written");
        std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        kill_point("state-renamed");
        fsync_dir(&self.root.join(name))
    }

    /// Every installed skill.
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(io("read", &self.root))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let Some(state) = self.state(&name)? else { continue };
            let vdir = self.root.join(&name).join("versions");
            let mut versions: Vec<semver::Version> = std::fs::read_dir(&vdir)
                .map_err(io("read", &vdir))?
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
    /// not above the active one is refused unless the bundle was signed with `downgrade`.
    pub fn install(&self, bundle: &Path, trusted: &[VerifyingKey], limits: Limits) -> Result<Entry, StoreError> {
        self.install_checked(bundle, trusted, limits, &|_, _| Ok(()))
    }

    /// As `install`, with one more check of the unpacked, smoke-tested skill (and whether it was
    /// signed for a downgrade) before anything is committed: a running node refuses a skill that
    /// reads or writes other topics, or one older than what it runs.
    pub fn install_checked(
        &self,
        bundle: &Path,
        trusted: &[VerifyingKey],
        limits: Limits,
        check: &dyn Fn(&Skill, bool) -> Result<(), String>,
    ) -> Result<Entry, StoreError> {
        let _one = self.lock()?;
        let scratch = self.scratch("install");
        let result = self.install_from(bundle, trusted, limits, &scratch, check);
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn install_from(
        &self,
        bundle_path: &Path,
        trusted: &[VerifyingKey],
        limits: Limits,
        scratch: &Path,
        check: &dyn Fn(&Skill, bool) -> Result<(), String>,
    ) -> Result<Entry, StoreError> {
        let (v, loaded) = bundle::unpack_loaded(bundle_path, trusted, scratch, limits)?;
        kill_point("unpacked");
        let (name, version) = (v.contents.name.clone(), v.contents.version.clone());
        let state = self.state(&name)?;
        if let Some(s) = &state
            && version <= s.active
            && !v.contents.downgrade
        {
            return Err(StoreError::Refused(format!(
                "{name} {version} is not above the active {}; a fleet that means it signs the bundle with --downgrade",
                s.active
            )));
        }
        let target = self.dir(&name, &version);
        if target.exists() {
            return Err(StoreError::Refused(format!(
                "{name} {version} is already installed; activate it instead, or bump the version"
            )));
        }
        let skill = smoke(loaded).map_err(|e| StoreError::Refused(format!("{}: {e}", bundle_path.display())))?;
        check(&skill, v.contents.downgrade).map_err(|e| StoreError::Refused(format!("{name} {version}: {e}")))?;
        drop(skill);
        let versions = target.parent().expect("a versions folder");
        let new_skill = !versions.exists();
        std::fs::create_dir_all(versions).map_err(io("create", versions))?;
        if new_skill {
            fsync_dir(&self.root.join(&name))?;
            fsync_dir(&self.root)?;
        }
        sync_tree(&v.dir)?;
        kill_point("smoked");
        std::fs::rename(&v.dir, &target).map_err(io("install", &target))?;
        fsync_dir(versions)?;
        kill_point("renamed");
        let previous = state.map(|s| s.active);
        self.write_state(&name, &State { active: version, previous })?;
        self.entry(&name)
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
            self.write_state(name, &State { active: version.clone(), previous: Some(state.active) })?;
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

/// Runs one inference of the loaded skill on its mean observation: the output must be finite.
fn smoke(mut skill: Skill) -> Result<Skill, String> {
    let m = &skill.manifest;
    let frame: Vec<f64> = m.observations.iter().flat_map(|o| o.mean.iter().copied()).collect();
    let obs: Vec<f64> = (0..m.control.history).flat_map(|_| frame.iter().copied()).collect();
    let (_, action) = skill.step(&obs).map_err(|e| format!("the smoke inference failed: {e}"))?;
    if action.iter().all(|v| v.is_finite()) {
        Ok(skill)
    } else {
        Err("the smoke inference gave values that are not finite".into())
    }
}

/// Whether process `pid` exists (EPERM: it does, owned by someone else).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}
