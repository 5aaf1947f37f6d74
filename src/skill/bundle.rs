//! Signed skill bundles: one file per skill version (`.skill`, a zstd-compressed tar) holding
//! the skill folder, `bundle.json` (the skill's name and version and every file with its SHA-256
//! digest and size) and `bundle.sig` (an ed25519 signature over `bundle.json`, which covers the
//! manifest through its digest). Nothing is trusted until the whole archive has been read into a
//! fresh folder, every file matches the list, and the signature is by a trusted key.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Skill;

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
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
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

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io { action, path: path.to_path_buf(), source }
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
    /// Whether the signer allows installing this over a newer version.
    #[serde(default)]
    pub downgrade: bool,
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

/// Makes a new signing key and writes `stem.key` (the secret, readable by its owner only) and
/// `stem.pub` (the public key to give robots); refuses to overwrite either.
pub fn new_key(stem: &Path) -> Result<(PathBuf, PathBuf), BundleError> {
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
    let (secret, public) = (with("key"), with("pub"));
    for p in [&secret, &public] {
        if p.exists() {
            return Err(BundleError::Key {
                path: p.clone(),
                problem: "already exists; choose another name (a key is never overwritten)".into(),
            });
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| BundleError::Key { path: secret.clone(), problem: e.to_string() })?;
    let key = SigningKey::from_bytes(&seed);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&secret).map_err(io("create", &secret))?;
    writeln!(f, "ed25519-secret:{}", B64.encode(seed)).map_err(io("write", &secret))?;
    std::fs::write(&public, format!("{} {}\n", key_id(&key.verifying_key()), stem.display()))
        .map_err(io("write", &public))?;
    Ok((secret, public))
}

/// Reads a secret key written by [`new_key`].
pub fn read_secret(path: &Path) -> Result<SigningKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    let bad = |problem: &str| BundleError::Key { path: path.to_path_buf(), problem: problem.into() };
    let b64 = text.trim().strip_prefix("ed25519-secret:").ok_or_else(|| {
        bad("not a secret key (it starts with `ed25519-secret:`); make one with `skillgraft keys new NAME`")
    })?;
    let seed: [u8; 32] = B64
        .decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("the secret key is not 32 base64 bytes"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads trusted public keys: each file holds lines `ed25519:BASE64 [comment]` (blank lines and
/// `#` comments are skipped), as `.pub` files do.
pub fn read_trusted(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>, BundleError> {
    let mut keys = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(io("read", path))?;
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
            let bytes: [u8; 32] = word
                .strip_prefix("ed25519:")
                .and_then(|b| B64.decode(b).ok())
                .and_then(|v| v.try_into().ok())
                .ok_or_else(bad)?;
            keys.push(VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?);
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
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(io("read", dir))?.collect::<Result<Vec<_>, _>>().map_err(io("read", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let kind = e.file_type().map_err(io("read", &path))?;
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
    builder.append_data(&mut header, name, bytes).map_err(io("write", out))
}

/// Packs the skill folder `dir` into `out`, signed with `key`; `downgrade` lets robots install
/// it over a newer version. The folder must load as a skill. Written atomically.
pub fn pack(dir: &Path, key: &SigningKey, out: &Path, downgrade: bool) -> Result<Contents, BundleError> {
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
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        files.push(FileEntry { path: rel.clone(), sha256: sha256(&bytes), size: bytes.len() as u64 });
        blobs.push((rel, bytes));
    }
    let contents = Contents {
        format: FORMAT,
        name: skill.manifest.name.clone(),
        version: skill.manifest.version.clone(),
        digest: skill.digest.clone(),
        downgrade,
        files,
    };
    let json = serde_json::to_vec_pretty(&contents).expect("contents serialise");
    let sig = SignatureFile { key: key_id(&key.verifying_key()), signature: B64.encode(key.sign(&json).to_bytes()) };
    let sig = serde_json::to_vec_pretty(&sig).expect("signature serialises");
    let part = PathBuf::from(format!("{}.part", out.display()));
    let file = File::create(&part).map_err(io("create", &part))?;
    let written = (|| {
        // Level 3: a model's float weights barely compress at any level (1 % between 3 and 19 on
        // a trained policy), and 19 takes half a second per MB.
        let encoder = zstd::Encoder::new(file, 3).map_err(io("compress", &part))?;
        let mut builder = tar::Builder::new(encoder);
        tar_file(&mut builder, CONTENTS, &json, &part)?;
        tar_file(&mut builder, SIGNATURE, &sig, &part)?;
        for (rel, bytes) in &blobs {
            tar_file(&mut builder, &format!("{SKILL_DIR}/{rel}"), bytes, &part)?;
        }
        let encoder = builder.into_inner().map_err(io("write", &part))?;
        let file = encoder.finish().map_err(io("compress", &part))?;
        file.sync_all().map_err(io("sync", &part))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, out).map_err(io("rename", &part))?;
    Ok(contents)
}

/// Limits on what a bundle may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bundle file and largest unpacked content, bytes.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 512 << 20 }
    }
}

/// A bundle whose every file matched its list and whose signature is by a trusted key.
#[derive(Debug, Clone)]
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
            Component::ParentDir => return Err(format!("entry `{}` climbs out with `..`", raw.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry `{}` is an absolute path", raw.display()));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("an entry has an empty path".into());
    }
    Ok(out)
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

fn unpack_into(
    bundle: &Path,
    trusted: &[VerifyingKey],
    dest: &Path,
    limits: Limits,
) -> Result<(Verified, Skill), BundleError> {
    let reject = |problem: String| BundleError::Rejected { path: bundle.to_path_buf(), problem };
    let file = File::open(bundle).map_err(io("open", bundle))?;
    let size = file.metadata().map_err(io("read", bundle))?.len();
    if size > limits.max_bytes {
        return Err(reject(format!("the bundle is {size} bytes, over the limit of {}", limits.max_bytes)));
    }
    let mut magic = [0u8; 4];
    let mut file = file;
    let head = file.read(&mut magic).map_err(io("read", bundle))?;
    if head < 4 || magic != [0x28, 0xB5, 0x2F, 0xFD] {
        return Err(reject("not a skillgraft bundle: it does not start as a zstd stream".into()));
    }
    let decoder = zstd::Decoder::new(std::io::Read::chain(&magic[..], file)).map_err(io("read", bundle))?;
    let mut archive = tar::Archive::new(decoder);
    let skill_dir = dest.join(SKILL_DIR);
    std::fs::create_dir_all(&skill_dir).map_err(io("create", &skill_dir))?;
    let (mut contents, mut signature): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    let mut found: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut total = 0u64;
    let entries = archive.entries().map_err(|e| reject(format!("not a skillgraft bundle: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| reject(format!("the archive is damaged or truncated: {e}")))?;
        let kind = entry.header().entry_type();
        let raw = entry.path().map_err(|e| reject(format!("an entry has an unreadable path: {e}")))?.into_owned();
        if kind.is_dir() {
            safe_path(&raw).map_err(&reject)?;
            continue;
        }
        if kind != tar::EntryType::Regular {
            return Err(reject(format!(
                "entry `{}` is a {kind:?}, not a regular file; bundles hold regular files only",
                raw.display()
            )));
        }
        let rel = safe_path(&raw).map_err(&reject)?;
        let name = rel.to_string_lossy().replace('\\', "/");
        if name == CONTENTS || name == SIGNATURE {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(META_LIMIT + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| reject(format!("the archive is damaged or truncated: {e}")))?;
            if bytes.len() as u64 > META_LIMIT {
                return Err(reject(format!("{name} is over {META_LIMIT} bytes")));
            }
            let slot = if name == CONTENTS { &mut contents } else { &mut signature };
            if slot.replace(bytes).is_some() {
                return Err(reject(format!("{name} appears twice")));
            }
            continue;
        }
        let inner = name
            .strip_prefix(&format!("{SKILL_DIR}/"))
            .ok_or_else(|| reject(format!("entry `{name}` is outside the skill folder")))?;
        if found.contains_key(inner) {
            return Err(reject(format!("entry `{name}` appears twice")));
        }
        let target = skill_dir.join(inner);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mut out = File::create(&target).map_err(io("create", &target))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut written = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(|e| reject(format!("the archive is damaged or truncated: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limits.max_bytes {
                return Err(reject(format!("the unpacked skill is over the limit of {} bytes", limits.max_bytes)));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io("write", &target))?;
            written += n as u64;
        }
        out.sync_all().map_err(io("sync", &target))?;
        found.insert(inner.to_string(), (hex::encode(hasher.finalize()), written));
    }
    let json = contents.ok_or_else(|| reject(format!("no {CONTENTS}; this is not a skillgraft bundle")))?;
    let sig = signature.ok_or_else(|| {
        reject(format!("no {SIGNATURE}: the bundle is not signed; pack it with `skillgraft bundle pack --key`"))
    })?;
    let sig: SignatureFile =
        serde_json::from_slice(&sig).map_err(|e| reject(format!("{SIGNATURE} is malformed: {e}")))?;
    let signer = trusted.iter().find(|k| key_id(k) == sig.key).ok_or_else(|| {
        reject(format!(
            "signed by {}, which is not a trusted key; add its .pub file to --trust if you trust it",
            sig.key
        ))
    })?;
    let bytes: [u8; 64] = B64
        .decode(&sig.signature)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| reject(format!("{SIGNATURE} holds no 64-byte signature")))?;
    signer.verify(&json, &Signature::from_bytes(&bytes)).map_err(|_| {
        reject(format!("the signature does not match {CONTENTS}: the bundle was altered after signing"))
    })?;
    let contents: Contents =
        serde_json::from_slice(&json).map_err(|e| reject(format!("{CONTENTS} is malformed: {e}")))?;
    if contents.format != FORMAT {
        return Err(reject(format!(
            "bundle format {} is not {FORMAT}; use a skillgraft that reads it",
            contents.format
        )));
    }
    let listed: BTreeMap<String, (String, u64)> =
        contents.files.iter().map(|f| (f.path.clone(), (f.sha256.clone(), f.size))).collect();
    for (path, (digest, size)) in &listed {
        match found.get(path) {
            None => return Err(reject(format!("`{path}` is listed but missing"))),
            Some((d, s)) if d != digest || s != size => {
                return Err(reject(format!("`{path}` does not match its digest: it was altered after signing")));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = found.keys().find(|p| !listed.contains_key(*p)) {
        return Err(reject(format!("`{extra}` is in the archive but not in the signed list")));
    }
    let skill = Skill::load(&skill_dir).map_err(|e| reject(format!("the skill does not load: {e}")))?;
    if skill.manifest.name != contents.name
        || skill.manifest.version != contents.version
        || skill.digest != contents.digest
    {
        return Err(reject(format!(
            "the manifest says {} {} ({}), the signed list {} {} ({})",
            skill.manifest.name, skill.manifest.version, skill.digest, contents.name, contents.version, contents.digest
        )));
    }
    Ok((Verified { contents, signer: sig.key, dir: skill_dir }, skill))
}

/// What a bundle says it holds, read without checking anything: for labels and reports only,
/// never for a decision to trust it.
pub fn peek(bundle: &Path) -> Result<Contents, BundleError> {
    let reject = |problem: String| BundleError::Rejected { path: bundle.to_path_buf(), problem };
    let file = File::open(bundle).map_err(io("open", bundle))?;
    let decoder = zstd::Decoder::new(file).map_err(|e| reject(format!("not a skillgraft bundle: {e}")))?;
    let mut archive = tar::Archive::new(decoder);
    for entry in archive.entries().map_err(|e| reject(format!("not a skillgraft bundle: {e}")))? {
        let entry = entry.map_err(|e| reject(format!("the archive is damaged or truncated: {e}")))?;
        if entry.path().is_ok_and(|p| p == Path::new(CONTENTS)) {
            let mut bytes = Vec::new();
            entry
                .take(META_LIMIT)
                .read_to_end(&mut bytes)
                .map_err(|e| reject(format!("the archive is damaged or truncated: {e}")))?;
            return serde_json::from_slice(&bytes).map_err(|e| reject(format!("{CONTENTS} is malformed: {e}")));
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
