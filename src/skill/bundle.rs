//! Signed skill bundles: one file per skill version (`.skill`, a zstd-compressed tar) holding
//! the skill folder, `bundle.json` (the skill's name and version and every file with its SHA-256
//! digest and size) and `bundle.sig` (an ed25519 signature over `bundle.json`, which covers the
//! manifest through its digest). Nothing is trusted until the whole archive has been read into a
//! fresh folder, every file matches the list, and the signature is by a trusted key.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Skill;
use crate::file::FileError;

/// File name extension of bundles.
pub const EXTENSION: &str = "skill";
/// The bundle format this build writes and reads.
pub const FORMAT: u32 = 1;
const CONTENTS: &str = "bundle.json";
const SIGNATURE: &str = "bundle.sig";
const SKILL_DIR: &str = "skill";
/// Largest `bundle.json` or `bundle.sig` read.
const META_LIMIT: u64 = 1 << 20;

/// Why a bundle or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// The archive is not a bundle this build can trust; the message says why and what to do.
    #[error("{}: {problem}", path.display())]
    Rejected {
        /// The bundle.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A key file is malformed.
    #[error("{}: {problem}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The skill folder cannot be packed.
    #[error(transparent)]
    Skill(#[from] super::SkillError),
}

/// One file of the skill folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path inside the skill folder, `/`-separated.
    pub path: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// What `bundle.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    /// Bundle format.
    pub format: u32,
    /// Skill name.
    pub name: String,
    /// Skill version.
    pub version: semver::Version,
    /// The skill's digest (as `Skill::load` computes it).
    pub digest: String,
    /// Whether the signer allows installing this over a newer version (only on the robots in
    /// `targets`, until `expires`).
    #[serde(default)]
    pub downgrade: bool,
    /// The robots (or fleets) a downgrade is for.
    #[serde(default, rename = "for", skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// When a downgrade stops being valid, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Every file of the skill folder.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    key: String,
    signature: String,
}

/// A public key as written in key files: `ed25519:` and its base64.
pub fn key_id(key: &VerifyingKey) -> String {
    format!("ed25519:{}", B64.encode(key.as_bytes()))
}

/// Refuses a file others could read (`private`) or change: a secret key or token file must be
/// its owner's alone, and a trusted key file must not be writable by others, who could add keys.
///
/// A secret owned by root may be readable by its group (PostgreSQL's rule for its TLS key): that
/// is how a package hands a root-managed secret to a service user without giving it the file.
pub fn check_mode(path: &Path, private: bool) -> Result<(), ModeError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).map_err(FileError::at("read", path))?;
    let mode = meta.permissions().mode() & 0o777;
    let mask = match (private, meta.uid()) {
        (true, 0) => 0o037,
        (true, _) => 0o077,
        (false, _) => 0o022,
    };
    let open = mode & mask;
    if open != 0 {
        let fix = match (private, meta.uid()) {
            (true, 0) => "chmod 640",
            (true, _) => "chmod 600",
            (false, _) => "chmod go-w",
        };
        return Err(ModeError::Open {
            path: path.to_path_buf(),
            mode,
            who: if open & 0o007 != 0 { "anyone" } else { "its group" },
            can: if private && open & 0o044 != 0 { "read" } else { "change" },
            fix,
        });
    }
    Ok(())
}

/// A key or token file others can read or change.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    /// Its mode could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// Someone other than its owner (and, for a root-owned secret, its group's readers) can
    /// read it or change it.
    #[error("{} has mode {mode:o}: {who} can {can} it; `{fix} {}`", path.display(), path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Who can: "anyone" or "its group".
        who: &'static str,
        /// What they can do: "read" or "change".
        can: &'static str,
        /// The command that closes it.
        fix: &'static str,
    },
}

/// Makes a new signing key and writes `stem.key` (the secret, readable by its owner only) and
/// `stem.pub` (the public key to give robots); refuses to overwrite either.
pub fn new_key(stem: &Path) -> Result<(PathBuf, PathBuf), BundleError> {
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
    let (secret, public) = (with("key"), with("pub"));
    let create = |p: &Path, mode: u32| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        options.open(p).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => BundleError::Key {
                path: p.to_path_buf(),
                problem: "already exists; choose another name (a key is never overwritten)".into(),
            },
            _ => FileError::at("create", p)(e).into(),
        })
    };
    // Both names are taken (atomically, never over an existing file) before either is written.
    let mut f = create(&secret, 0o600)?;
    let mut p = match create(&public, 0o644) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&secret);
            return Err(e);
        }
    };
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| BundleError::Key { path: secret.clone(), problem: e.to_string() })?;
    let key = SigningKey::from_bytes(&seed);
    writeln!(f, "ed25519-secret:{}", B64.encode(seed)).map_err(FileError::at("write", &secret))?;
    writeln!(p, "{} {}", key_id(&key.verifying_key()), stem.display()).map_err(FileError::at("write", &public))?;
    Ok((secret, public))
}

/// Reads a secret key written by [`new_key`]; refused when others can read the file.
pub fn read_secret(path: &Path) -> Result<SigningKey, BundleError> {
    let bad = |problem: &str| BundleError::Key { path: path.to_path_buf(), problem: problem.into() };
    let text = std::fs::read_to_string(path).map_err(FileError::at("read", path))?;
    let b64 = text.trim().strip_prefix("ed25519-secret:").ok_or_else(|| {
        bad("not a secret key (it starts with `ed25519-secret:`); make one with `skillgraft keys new NAME`")
    })?;
    let seed: [u8; 32] = B64
        .decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("the secret key is not 32 base64 bytes"))?;
    check_mode(path, true).map_err(|e| bad(&e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key written as [`key_id`] writes it.
pub fn parse_key(word: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] =
        word.strip_prefix("ed25519:").and_then(|b| B64.decode(b).ok()).and_then(|v| v.try_into().ok())?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Reads trusted public keys: each file holds lines `ed25519:BASE64 [comment]` (blank lines and
/// `#` comments are skipped), as `.pub` files do.
pub fn read_trusted(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>, BundleError> {
    let mut keys = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(FileError::at("read", path))?;
        check_mode(path, false).map_err(|e| BundleError::Key { path: path.clone(), problem: e.to_string() })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let word = line.split_whitespace().next().unwrap_or_default();
            let bad = || BundleError::Key {
                path: path.clone(),
                problem: format!(
                    "line {}: not a public key; write `ed25519:BASE64` as `skillgraft keys new` does",
                    n + 1
                ),
            };
            keys.push(parse_key(word).ok_or_else(bad)?);
        }
    }
    if keys.is_empty() {
        return Err(BundleError::Key {
            path: paths.first().cloned().unwrap_or_default(),
            problem: "no trusted keys; give the fleet's .pub file with --trust".into(),
        });
    }
    Ok(keys)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The regular files of `dir`, recursively, sorted; anything else is refused.
fn files_of(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), BundleError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(FileError::at("read", dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(FileError::at("read", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let kind = e.file_type().map_err(FileError::at("read", &path))?;
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if kind.is_dir() {
            files_of(&path, &rel, out)?;
        } else if kind.is_file() {
            out.push((rel, path));
        } else {
            return Err(BundleError::Rejected {
                path,
                problem: "only regular files can be packed (no symlinks or devices); copy the file in".into(),
            });
        }
    }
    Ok(())
}

fn tar_file(builder: &mut tar::Builder<impl Write>, name: &str, bytes: &[u8], out: &Path) -> Result<(), BundleError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(builder.append_data(&mut header, name, bytes).map_err(FileError::at("write", out))?)
}

/// Longest a downgrade bundle may stay valid.
pub const MAX_DOWNGRADE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// What makes a bundle a downgrade: the robots (or fleets) it is for, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downgrade {
    /// Robot or fleet names, as the robots' stores know themselves (`store identify`).
    pub targets: Vec<String>,
    /// How long from now it may be installed.
    pub lifetime: std::time::Duration,
}

impl Contents {
    /// Whether this bundle may be installed over a newer version on the robot `robot` of the
    /// fleet `fleet` at `now`; Err says why not.
    pub fn downgrade_for(
        &self,
        robot: &str,
        fleet: Option<&str>,
        now: std::time::SystemTime,
    ) -> Result<(), DowngradeError> {
        if !self.downgrade {
            return Err(DowngradeError::NotSigned);
        }
        let Some(expires) = &self.expires else {
            return Err(DowngradeError::NoExpiry);
        };
        let at = humantime::parse_rfc3339(expires).map_err(|_| DowngradeError::BadExpiry(shown(expires)))?;
        if self.targets.is_empty() {
            return Err(DowngradeError::NoTargets);
        }
        if !self.targets.iter().any(|t| t == robot || Some(t.as_str()) == fleet) {
            let here = match fleet {
                Some(f) => format!("robot {robot:?} of fleet {f:?}"),
                None => format!("robot {robot:?}"),
            };
            let list: Vec<String> = self.targets.iter().map(|t| shown(t)).collect();
            return Err(DowngradeError::NotHere { targets: list.join(", "), here });
        }
        if now > at {
            return Err(DowngradeError::Expired(expires.clone()));
        }
        Ok(())
    }
}

/// Why a bundle may not be installed over a newer version here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DowngradeError {
    /// It is an ordinary bundle.
    #[error("it is not signed as a downgrade")]
    NotSigned,
    /// A downgrade without an expiry.
    #[error("it is a downgrade bundle without an expiry; re-pack it with --for and --expires-in")]
    NoExpiry,
    /// The expiry does not parse (shown escaped).
    #[error("its expiry {0} is not a date")]
    BadExpiry(String),
    /// A downgrade for nobody.
    #[error("it is a downgrade bundle that names no robot; re-pack it with --for and --expires-in")]
    NoTargets,
    /// For other robots.
    #[error("the downgrade is for {targets}, not for this {here}")]
    NotHere {
        /// The robots and fleets it names, escaped.
        targets: String,
        /// This robot (and fleet).
        here: String,
    },
    /// Past its expiry.
    #[error("the downgrade expired at {0}")]
    Expired(String),
}

/// Packs the skill folder `dir` into `out`, signed with `key`; `downgrade` lets the robots it
/// names install it over a newer version until it expires. The folder must load as a skill.
/// Written atomically.
pub fn pack(dir: &Path, key: &SigningKey, out: &Path, downgrade: Option<&Downgrade>) -> Result<Contents, BundleError> {
    if let Some(d) = downgrade {
        let bad = |problem: String| BundleError::Rejected { path: out.to_path_buf(), problem };
        if d.targets.is_empty() || d.targets.iter().any(|t| t.is_empty()) {
            return Err(bad("a downgrade names the robots (or fleets) it is for: give --for NAME".into()));
        }
        if d.lifetime.is_zero() || d.lifetime > MAX_DOWNGRADE_LIFETIME {
            return Err(bad(format!(
                "a downgrade expires within {} days: give --expires-in, e.g. 1d",
                MAX_DOWNGRADE_LIFETIME.as_secs() / 86400
            )));
        }
    }
    let skill = Skill::load(dir)?;
    if out.exists() {
        return Err(BundleError::Rejected {
            path: out.to_path_buf(),
            problem: "already exists; remove it or give another --out".into(),
        });
    }
    let mut listed = Vec::new();
    files_of(dir, "", &mut listed)?;
    let mut blobs = Vec::new();
    let mut files = Vec::new();
    for (rel, path) in listed {
        let bytes = std::fs::read(&path).map_err(FileError::at("read", &path))?;
        files.push(FileEntry { path: rel.clone(), sha256: sha256(&bytes), size: bytes.len() as u64 });
        blobs.push((rel, bytes));
    }
    let contents = Contents {
        format: FORMAT,
        name: skill.manifest.name.clone(),
        version: skill.manifest.version.clone(),
        digest: skill.digest.clone(),
        downgrade: downgrade.is_some(),
        targets: downgrade.map(|d| d.targets.clone()).unwrap_or_default(),
        expires: downgrade
            .map(|d| humantime::format_rfc3339_seconds(std::time::SystemTime::now() + d.lifetime).to_string()),
        files,
    };
    let json = serde_json::to_vec_pretty(&contents).expect("contents serialise");
    let sig = SignatureFile { key: key_id(&key.verifying_key()), signature: B64.encode(key.sign(&json).to_bytes()) };
    let sig = serde_json::to_vec_pretty(&sig).expect("signature serialises");
    let part = PathBuf::from(format!("{}.part", out.display()));
    let file = File::create(&part).map_err(FileError::at("create", &part))?;
    let written = (|| -> Result<(), BundleError> {
        // Level 3: a model's float weights barely compress at any level (1 % between 3 and 19 on
        // a trained policy), and 19 takes half a second per MB.
        let encoder = zstd::Encoder::new(file, 3).map_err(FileError::at("compress", &part))?;
        let mut builder = tar::Builder::new(encoder);
        tar_file(&mut builder, CONTENTS, &json, &part)?;
        tar_file(&mut builder, SIGNATURE, &sig, &part)?;
        for (rel, bytes) in &blobs {
            tar_file(&mut builder, &format!("{SKILL_DIR}/{rel}"), bytes, &part)?;
        }
        let encoder = builder.into_inner().map_err(FileError::at("write", &part))?;
        let file = encoder.finish().map_err(FileError::at("compress", &part))?;
        Ok(file.sync_all().map_err(FileError::at("sync", &part))?)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, out).map_err(FileError::at("rename", &part))?;
    Ok(contents)
}

/// Limits on what a bundle may hold and what reading it may cost. Every one is checked while the
/// archive streams in, before anything it claims is trusted or allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bundle file and largest unpacked content, bytes.
    pub max_bytes: u64,
    /// Most entries in the archive (files, folders, long names) and most files in the list.
    pub max_entries: usize,
    /// Longest the whole read and check may take, seconds.
    pub max_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 512 << 20, max_entries: 1024, max_seconds: 300 }
    }
}

impl Limits {
    /// The default limits with another size limit, in MiB.
    pub fn mib(max_mib: u64) -> Limits {
        Limits { max_bytes: max_mib.saturating_mul(1 << 20), ..Limits::default() }
    }

    /// Bytes the decompressed stream may hold: the content, the two signed files, and a header
    /// and its padding for every entry.
    fn stream_bytes(&self) -> u64 {
        self.max_bytes.saturating_add(2 * META_LIMIT).saturating_add((self.max_entries as u64 + 4).saturating_mul(2048))
    }
}

/// Longest path of an entry or a listed file, bytes.
pub const NAME_LIMIT: usize = 1024;
/// Largest zstd window a bundle may ask the decoder for (2^23 = 8 MiB; `pack` uses 2 MiB).
const WINDOW_LOG_MAX: u32 = 23;

/// A bundle whose every file matched its list and whose signature is by a trusted key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verified {
    /// What it holds.
    pub contents: Contents,
    /// The key that signed it.
    pub signer: String,
    /// The unpacked skill folder.
    pub dir: PathBuf,
}

/// A safe relative path of plain names, or why not.
fn safe_path(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("entry {} climbs out with `..`", shown(&raw.to_string_lossy())));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry {} is an absolute path", shown(&raw.to_string_lossy())));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("an entry has an empty path".into());
    }
    Ok(out)
}

/// A name from an archive as it may appear in a message, a log line or a reply: quoted, control
/// characters escaped, and cut short, so a hostile name cannot make any of them large.
pub fn shown(name: &str) -> String {
    const SHOWN: usize = 96;
    let escaped: String = name.chars().take(SHOWN).flat_map(char::escape_debug).collect();
    if name.chars().nth(SHOWN).is_some() {
        format!("`{escaped}…` ({} bytes)", name.len())
    } else {
        format!("`{escaped}`")
    }
}

/// Why reading stopped early: a limit, not damage. Carried inside an `io::Error` through the
/// zstd and tar readers.
#[derive(Debug)]
struct OverLimit(String);

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverLimit {}

/// The decompressed stream, cut off at a byte count and a deadline: every entry type, headers and
/// data alike, is read through it, including data the reader skips.
struct Capped<R> {
    inner: R,
    left: u64,
    max: u64,
    deadline: std::time::Instant,
    seconds: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if std::time::Instant::now() > self.deadline {
            return Err(std::io::Error::other(OverLimit(format!(
                "reading it took longer than the limit of {} s",
                self.seconds
            ))));
        }
        if self.left == 0 {
            // One byte more than allowed tells a stream that ends exactly here from a longer one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(OverLimit(format!(
                    "it unpacks to more than the limit of {} bytes",
                    self.max
                )))),
            };
        }
        let n = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

/// A read error as a refusal: a limit says which, anything else is damage.
fn read_error(e: std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<OverLimit>()) {
        Some(limit) => format!("refused: {limit}"),
        None => format!("the archive is damaged or truncated: {e}"),
    }
}

/// Opens a bundle's archive: the zstd magic checked, the decoder's window bounded, the stream
/// capped by `limits`.
fn open_archive(bundle: &Path, limits: Limits) -> Result<tar::Archive<impl Read>, BundleError> {
    let reject = |problem: String| BundleError::Rejected { path: bundle.to_path_buf(), problem };
    let mut file = File::open(bundle).map_err(FileError::at("open", bundle))?;
    let size = file.metadata().map_err(FileError::at("read", bundle))?.len();
    if size > limits.max_bytes {
        return Err(reject(format!("the bundle is {size} bytes, over the limit of {}", limits.max_bytes)));
    }
    let mut magic = [0u8; 4];
    let head = file.read(&mut magic).map_err(FileError::at("read", bundle))?;
    if head < 4 || magic != [0x28, 0xB5, 0x2F, 0xFD] {
        return Err(reject("not a skillgraft bundle: it does not start as a zstd stream".into()));
    }
    let mut decoder = zstd::Decoder::new(std::io::Read::chain(std::io::Cursor::new(magic), file))
        .map_err(FileError::at("read", bundle))?;
    decoder.window_log_max(WINDOW_LOG_MAX).map_err(FileError::at("read", bundle))?;
    let max = limits.stream_bytes();
    let capped = Capped {
        inner: decoder,
        left: max,
        max,
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(limits.max_seconds),
        seconds: limits.max_seconds,
    };
    Ok(tar::Archive::new(capped))
}

/// What one raw entry is, once a GNU long name before it has been applied.
enum Item {
    /// A folder (no data).
    Folder,
    /// A regular file at this safe path, `/`-separated, with its size.
    File(String, u64),
}

/// Reads the raw entries of an archive one at a time, applying the GNU long names `pack` writes
/// for long paths (each bounded by [`NAME_LIMIT`]) and refusing every other kind of extension
/// header, link or device.
struct Walker {
    long_name: Option<Vec<u8>>,
    seen: usize,
    max: usize,
}

impl Walker {
    fn new(limits: Limits) -> Walker {
        // The two signed files, and a long name before each listed file.
        Walker { long_name: None, seen: 0, max: limits.max_entries.saturating_mul(2).saturating_add(2) }
    }

    /// The entry as an item, None when it was a long name (applied to the next one).
    fn item<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<Option<Item>, String> {
        self.seen += 1;
        if self.seen > self.max {
            return Err(format!("it has more than {} entries, over the limit", self.max));
        }
        let kind = entry.header().entry_type();
        let size = entry.size();
        if kind.is_gnu_longname() {
            if self.long_name.is_some() {
                return Err("two long names in a row; re-pack the bundle with `skillgraft bundle pack`".into());
            }
            if size > NAME_LIMIT as u64 {
                return Err(format!("a long name of {size} bytes, over the limit of {NAME_LIMIT}"));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            (&mut *entry).take(NAME_LIMIT as u64).read_to_end(&mut bytes).map_err(read_error)?;
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            self.long_name = Some(bytes);
            return Ok(None);
        }
        if kind.is_gnu_longlink() || kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            return Err(format!(
                "it holds a {} header; bundles hold plain entries only: re-pack it with `skillgraft bundle pack`",
                if kind.is_gnu_longlink() { "long-link" } else { "PAX extension" }
            ));
        }
        let bytes = match self.long_name.take() {
            Some(b) => b,
            None => entry.path_bytes().into_owned(),
        };
        if bytes.len() > NAME_LIMIT {
            return Err(format!("an entry name of {} bytes, over the limit of {NAME_LIMIT}", bytes.len()));
        }
        let name = String::from_utf8(bytes).map_err(|_| "an entry name is not UTF-8".to_string())?;
        let rel = safe_path(Path::new(&name))?;
        if kind.is_dir() {
            if size > 0 {
                return Err(format!(
                    "folder entry {} carries {size} bytes of data; folders carry none (it is not signed content)",
                    shown(&name)
                ));
            }
            return Ok(Some(Item::Folder));
        }
        if kind != tar::EntryType::Regular {
            return Err(format!(
                "entry {} is a {kind:?}, not a regular file; bundles hold regular files only",
                shown(&name)
            ));
        }
        Ok(Some(Item::File(rel.to_string_lossy().replace('\\', "/"), size)))
    }

    fn finish(&self) -> Result<(), String> {
        match self.long_name {
            Some(_) => Err("the archive ends with a long name and no entry for it".into()),
            None => Ok(()),
        }
    }
}

/// Reads a signed file's bytes (at most [`META_LIMIT`]).
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str, size: u64) -> Result<Vec<u8>, String> {
    if size > META_LIMIT {
        return Err(format!("{name} is {size} bytes, over the limit of {META_LIMIT}"));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut *entry).take(META_LIMIT).read_to_end(&mut bytes).map_err(read_error)?;
    Ok(bytes)
}

/// What to say of an archive whose signed part is not first.
fn not_first(found: &str) -> String {
    format!(
        "it starts with {} instead of {CONTENTS} and {SIGNATURE}: the signed part must come first, so the signature is checked before anything is unpacked; re-pack it with `skillgraft bundle pack` (which writes them first)",
        shown(found)
    )
}

/// The signed list: each path with its digest and size.
type Listed = BTreeMap<String, (String, u64)>;

/// The signed list as a map, after checking it: canonical safe paths, each once, none both a file
/// and a folder, within the limits.
fn check_list(contents: &Contents, limits: Limits) -> Result<Listed, String> {
    if contents.files.len() > limits.max_entries {
        return Err(format!(
            "the signed list has {} files, over the limit of {}",
            contents.files.len(),
            limits.max_entries
        ));
    }
    let mut total = 0u64;
    let mut listed = BTreeMap::new();
    for f in &contents.files {
        let canonical = safe_path(Path::new(&f.path))
            .ok()
            .filter(|p| p.to_str() == Some(f.path.as_str()) && f.path.len() <= NAME_LIMIT);
        if canonical.is_none() {
            return Err(format!("the signed list names {}, which is not a plain relative path", shown(&f.path)));
        }
        total = total
            .checked_add(f.size)
            .filter(|t| *t <= limits.max_bytes)
            .ok_or_else(|| format!("the signed list adds up to more than the limit of {} bytes", limits.max_bytes))?;
        if listed.insert(f.path.clone(), (f.sha256.clone(), f.size)).is_some() {
            return Err(format!("the signed list names {} twice", shown(&f.path)));
        }
    }
    for path in listed.keys() {
        let mut folder = path.as_str();
        while let Some((parent, _)) = folder.rsplit_once('/') {
            if listed.contains_key(parent) {
                return Err(format!("the signed list has {} both as a file and as a folder", shown(parent)));
            }
            folder = parent;
        }
    }
    Ok(listed)
}

/// Checks the signature over `json` and what it says; returns the contents, the signer and the list.
fn check_signed(
    json: &[u8],
    sig: &[u8],
    trusted: &[VerifyingKey],
    limits: Limits,
) -> Result<(Contents, String, Listed), String> {
    let sig: SignatureFile = serde_json::from_slice(sig).map_err(|e| format!("{SIGNATURE} is malformed: {e}"))?;
    let signer = trusted.iter().find(|k| key_id(k) == sig.key).ok_or_else(|| {
        format!(
            "signed by {}, which is not a trusted key; add its .pub file to --trust if you trust it",
            shown(&sig.key)
        )
    })?;
    let bytes: [u8; 64] = B64
        .decode(&sig.signature)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("{SIGNATURE} holds no 64-byte signature"))?;
    signer
        .verify(json, &Signature::from_bytes(&bytes))
        .map_err(|_| format!("the signature does not match {CONTENTS}: the bundle was altered after signing"))?;
    let contents: Contents = serde_json::from_slice(json).map_err(|e| format!("{CONTENTS} is malformed: {e}"))?;
    if contents.format != FORMAT {
        return Err(format!("bundle format {} is not {FORMAT}; use a skillgraft that reads it", contents.format));
    }
    let listed = check_list(&contents, limits)?;
    Ok((contents, sig.key, listed))
}

/// Reads `bundle` into the new folder `dest` (which must not exist) and checks it: only regular
/// files at safe paths, within `limits`, exactly the listed files with their digests, signed by
/// one of `trusted`, and loading as a skill. On any failure `dest` is removed and nothing else is
/// touched.
pub fn unpack(bundle: &Path, trusted: &[VerifyingKey], dest: &Path, limits: Limits) -> Result<Verified, BundleError> {
    unpack_loaded(bundle, trusted, dest, limits).map(|(v, _)| v)
}

/// As [`unpack`], also handing back the skill loaded while checking it, so a caller that runs
/// it next (the store's smoke test) does not parse and optimise the model a second time.
pub fn unpack_loaded(
    bundle: &Path,
    trusted: &[VerifyingKey],
    dest: &Path,
    limits: Limits,
) -> Result<(Verified, Skill), BundleError> {
    if dest.exists() {
        return Err(BundleError::Rejected {
            path: dest.to_path_buf(),
            problem: "the folder to unpack into already exists".into(),
        });
    }
    let result = unpack_into(bundle, trusted, dest, limits);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

/// The signed part comes first: `bundle.json`, then `bundle.sig`, checked against the trusted
/// keys before any skill file is read; then each file must be on the signed list with the size it
/// gives (known from its header, before its data is read), and match its digest.
fn unpack_into(
    bundle: &Path,
    trusted: &[VerifyingKey],
    dest: &Path,
    limits: Limits,
) -> Result<(Verified, Skill), BundleError> {
    let reject = |problem: String| BundleError::Rejected { path: bundle.to_path_buf(), problem };
    let mut archive = open_archive(bundle, limits)?;
    let skill_dir = dest.join(SKILL_DIR);
    std::fs::create_dir_all(&skill_dir).map_err(FileError::at("create", &skill_dir))?;
    let mut json: Option<Vec<u8>> = None;
    let mut signed: Option<(Contents, String, Listed)> = None;
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut walker = Walker::new(limits);
    let entries =
        archive.entries().map_err(|e| reject(format!("not a skillgraft bundle: {}", read_error(e))))?.raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|e| reject(read_error(e)))?;
        let Some(item) = walker.item(&mut entry).map_err(&reject)? else { continue };
        let Item::File(name, size) = item else { continue };
        let Some((_, _, listed)) = &signed else {
            if json.is_none() {
                if name != CONTENTS {
                    return Err(reject(not_first(&name)));
                }
                json = Some(read_meta(&mut entry, CONTENTS, size).map_err(&reject)?);
                continue;
            }
            if name == CONTENTS {
                return Err(reject(format!("{CONTENTS} appears twice")));
            }
            if name != SIGNATURE {
                return Err(reject(format!(
                    "no {SIGNATURE} after {CONTENTS}: the bundle is not signed; pack it with `skillgraft bundle pack --key`"
                )));
            }
            let sig = read_meta(&mut entry, SIGNATURE, size).map_err(&reject)?;
            let json = json.as_deref().unwrap_or_default();
            signed = Some(check_signed(json, &sig, trusted, limits).map_err(&reject)?);
            continue;
        };
        if name == CONTENTS || name == SIGNATURE {
            return Err(reject(format!("{name} appears twice")));
        }
        let inner = name
            .strip_prefix(&format!("{SKILL_DIR}/"))
            .ok_or_else(|| reject(format!("entry {} is outside the skill folder", shown(&name))))?;
        let Some((digest, listed_size)) = listed.get(inner) else {
            return Err(reject(format!("{} is in the archive but not in the signed list", shown(inner))));
        };
        if !found.insert(inner.to_string()) {
            return Err(reject(format!("entry {} appears twice", shown(&name))));
        }
        if size != *listed_size {
            return Err(reject(format!(
                "{} is {size} bytes in the archive but {listed_size} in the signed list: it was altered after signing",
                shown(inner)
            )));
        }
        let target = skill_dir.join(inner);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(FileError::at("create", parent))?;
        }
        let mut out = File::create(&target).map_err(FileError::at("create", &target))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = entry.read(&mut buf).map_err(|e| reject(read_error(e)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(FileError::at("write", &target))?;
        }
        out.sync_all().map_err(FileError::at("sync", &target))?;
        if hex::encode(hasher.finalize()) != *digest {
            return Err(reject(format!("{} does not match its digest: it was altered after signing", shown(inner))));
        }
    }
    walker.finish().map_err(&reject)?;
    if json.is_none() {
        return Err(reject(format!("no {CONTENTS}; this is not a skillgraft bundle")));
    }
    let (contents, signer, listed) = signed.ok_or_else(|| {
        reject(format!("no {SIGNATURE}: the bundle is not signed; pack it with `skillgraft bundle pack --key`"))
    })?;
    if let Some(missing) = listed.keys().find(|p| !found.contains(*p)) {
        return Err(reject(format!("{} is listed but missing", shown(missing))));
    }
    // Messages name files as the bundle does (`skill.toml`), not by the scratch folder they
    // were unpacked into.
    let inside = format!("{}/", skill_dir.display());
    let skill = Skill::load(&skill_dir)
        .map_err(|e| reject(format!("the skill does not load: {}", e.to_string().replace(&inside, ""))))?;
    if skill.manifest.name != contents.name
        || skill.manifest.version != contents.version
        || skill.digest != contents.digest
    {
        return Err(reject(format!(
            "the manifest says {} {} ({}), the signed list {} {} ({})",
            skill.manifest.name,
            skill.manifest.version,
            skill.digest,
            shown(&contents.name),
            contents.version,
            shown(&contents.digest)
        )));
    }
    Ok((Verified { contents, signer, dir: skill_dir }, skill))
}

/// What a bundle says it holds, read without checking anything: for labels and reports only,
/// never for a decision to trust it.
pub fn peek(bundle: &Path) -> Result<Contents, BundleError> {
    let reject = |problem: String| BundleError::Rejected { path: bundle.to_path_buf(), problem };
    let mut archive = open_archive(bundle, Limits { max_bytes: u64::MAX, ..Limits::default() })?;
    let mut walker = Walker::new(Limits::default());
    let entries = archive.entries().map_err(|e| reject(format!("not a skillgraft bundle: {}", read_error(e))))?;
    for entry in entries.raw(true) {
        let mut entry = entry.map_err(|e| reject(read_error(e)))?;
        match walker.item(&mut entry).map_err(&reject)? {
            None => continue,
            Some(Item::File(name, size)) if name == CONTENTS => {
                let bytes = read_meta(&mut entry, CONTENTS, size).map_err(&reject)?;
                return serde_json::from_slice(&bytes).map_err(|e| reject(format!("{CONTENTS} is malformed: {e}")));
            }
            Some(Item::File(name, _)) => return Err(reject(not_first(&name))),
            Some(Item::Folder) => return Err(reject(not_first("a folder"))),
        }
    }
    Err(reject(format!("not a skillgraft bundle: it has no {CONTENTS}")))
}

/// Checks `bundle` as [`unpack`] does, in a temporary folder removed afterwards.
pub fn verify(bundle: &Path, trusted: &[VerifyingKey], limits: Limits) -> Result<Verified, BundleError> {
    let tmp = std::env::temp_dir().join(format!("skillgraft-verify-{}-{}", std::process::id(), unique()));
    let result = unpack(bundle, trusted, &tmp, limits);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// A number not handed out before in this process, for scratch names.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(downgrade: bool, targets: &[&str], expires: Option<&str>) -> Contents {
        Contents {
            format: FORMAT,
            name: "s".into(),
            version: "1.0.0".parse().unwrap(),
            digest: String::new(),
            downgrade,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            expires: expires.map(str::to_string),
            files: vec![],
        }
    }

    #[test]
    fn a_downgrade_holds_only_for_its_robots_until_it_expires() {
        let now = humantime::parse_rfc3339("2026-12-01T12:00:00Z").unwrap();
        let later = "2026-12-02T12:00:00Z";
        assert!(contents(true, &["arm-1"], Some(later)).downgrade_for("arm-1", None, now).is_ok());
        assert!(contents(true, &["lab"], Some(later)).downgrade_for("arm-1", Some("lab"), now).is_ok());
        let cases: &[(Contents, &str)] = &[
            (contents(false, &["arm-1"], Some(later)), "not signed as a downgrade"),
            (contents(true, &["arm-2"], Some(later)), "is for `arm-2`, not for this robot \"arm-1\""),
            (contents(true, &["arm-1"], Some("2026-12-01T11:59:59Z")), "expired at 2026-12-01T11:59:59Z"),
            (contents(true, &["arm-1"], None), "without an expiry"),
            (contents(true, &[], Some(later)), "names no robot"),
            (contents(true, &["arm-1"], Some("soon")), "is not a date"),
        ];
        for (c, want) in cases {
            let e = c.downgrade_for("arm-1", None, now).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn names_in_messages_are_escaped_and_cut_short() {
        assert_eq!(shown("a\nb"), "`a\\nb`");
        let long = "x".repeat(1 << 20);
        let s = shown(&long);
        assert!(s.len() < 200 && s.ends_with("(1048576 bytes)"), "{s}");
    }
}
