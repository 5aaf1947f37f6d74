//! Bearer tokens. A robot's inbox and the fleet server each read a file of the tokens they
//! accept; a client sends one in `Authorization: Bearer ...`. Tokens, not mutual TLS: the
//! bundle signature already proves what a skill is and who made it, so the token only has to
//! say who may ask a robot to change what it runs. A token is one line in a file that can be
//! rotated without a certificate authority, and works through the TLS-terminating proxy or VPN
//! a fleet already runs (plain HTTP must not leave a trusted network: a token sent in clear
//! text can be replayed).
//!
//! The fleet server's file may also name robots: `robot NAME sha256:HEX` accepts the token with
//! that digest as robot NAME's, which may only poll (keys, channels, the catalog) and report as
//! NAME. One robot's token, taken from its disk, then cannot report as another, publish,
//! upload, or advance or halt a rollout by asking (its own report stays one voice among its
//! wave's); and the server's file holds digests, not tokens a reader could use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::FleetError;
use crate::file::FileError;

/// Shortest token accepted: 128 bits of base64.
const MIN_LEN: usize = 22;

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An operator's (or a lab's shared) token: every request.
    Operator,
    /// Robot NAME's token: polls, and its own reports.
    Robot(String),
}

/// The tokens a server accepts, kept as SHA-256 digests, each with whom it speaks for. The file
/// is read again when it changes (looked at once a second at most), so a robot is added or
/// revoked without a restart; a changed file that does not read is logged and the tokens
/// accepted before stay.
pub struct Tokens {
    path: PathBuf,
    robots: bool,
    state: Mutex<Loaded>,
}

struct Loaded {
    accepted: Arc<Vec<([u8; 32], Caller)>>,
    /// What the file looked like when read: modified time, change time (a `chmod` that fixes
    /// a mode refused before changes only that), size, inode.
    stamp: Option<(SystemTime, (i64, i64), u64, u64)>,
    checked: Instant,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({})", self.path.display())
    }
}

/// How often a token file is looked at for a change.
const RECHECK: Duration = Duration::from_secs(1);

fn stamp(path: &Path) -> Option<(SystemTime, (i64, i64), u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, (m.ctime(), m.ctime_nsec()), m.len(), m.ino()))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The digest line that accepts `token` as robot `name`'s in a fleet server's token file.
pub fn robot_line(name: &str, token: &str) -> String {
    format!("robot {name} sha256:{}", hex::encode(digest(token)))
}

/// The lines of a token file that say something (blank lines and `#` comments skipped), each
/// with its line number.
fn lines(path: &Path) -> Result<Vec<(usize, String)>, FleetError> {
    let text = std::fs::read_to_string(path).map_err(FileError::at("read", path))?;
    // A token others can read is a token others can use.
    crate::skill::bundle::check_mode(path, true).map_err(|e| FleetError::Config(e.to_string()))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i, l.to_string()))
        .collect())
}

/// A token as a client sends it: long enough, one word.
fn plain(path: &Path, line: usize, token: &str) -> Result<String, FleetError> {
    if token.len() < MIN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FleetError::Config(format!(
            "{}:{line}: a token is shorter than {MIN_LEN} characters or holds spaces; make one with `skillgraft keys token FILE`",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// One accepted token: `TOKEN`, `sha256:HEX`, or either after `robot NAME`.
fn entry(path: &Path, line: usize, text: &str) -> Result<([u8; 32], Caller), FleetError> {
    let bad = |why: &str| FleetError::Config(format!("{}:{line}: {why}", path.display()));
    let words: Vec<&str> = text.split_whitespace().collect();
    let (caller, credential) = match words.as_slice() {
        [credential] => (Caller::Operator, *credential),
        ["robot", name, credential] if crate::skill::manifest::valid_name(name) => {
            (Caller::Robot(name.to_string()), *credential)
        }
        ["robot", name, _] => {
            return Err(bad(&format!("{name:?} is not a robot name (letters, digits, `-`, `_`, `.`)")));
        }
        _ => {
            return Err(bad(
                "a line is a token, `sha256:HEX` of one, or `robot NAME` before either; make a robot's with `skillgraft keys token FILE --robot NAME`",
            ));
        }
    };
    let digest = match credential.strip_prefix("sha256:") {
        Some(h) => hex::decode(h)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(|| bad("`sha256:` takes the 64 hex digits of a token's SHA-256"))?,
        None => digest(&plain(path, line, credential)?),
    };
    Ok((digest, caller))
}

impl Tokens {
    /// Reads a token file of an inbox: one token per line, every one an operator's (a robot's
    /// token has nothing to ask of another robot).
    pub fn load(path: &Path) -> Result<Tokens, FleetError> {
        Tokens::open(path, false)
    }

    /// Reads the fleet server's token file: operators' tokens, and robots' (`robot NAME ...`).
    pub fn load_with_robots(path: &Path) -> Result<Tokens, FleetError> {
        Tokens::open(path, true)
    }

    fn open(path: &Path, robots: bool) -> Result<Tokens, FleetError> {
        let stamp = stamp(path);
        let accepted = Arc::new(read(path, robots)?);
        let state = Mutex::new(Loaded { accepted, stamp, checked: Instant::now() });
        Ok(Tokens { path: path.to_path_buf(), robots, state })
    }

    /// Whom an `Authorization` header value speaks for, if it carries an accepted token.
    /// Digests are compared, so the time a comparison takes tells nothing about the token.
    pub fn caller(&self, authorization: Option<&str>) -> Option<Caller> {
        let token = authorization.and_then(|h| h.strip_prefix("Bearer "))?;
        let d = digest(token.trim());
        self.current().iter().find(|(a, _)| *a == d).map(|(_, c)| c.clone())
    }

    /// The tokens accepted now, the file read again if it changed.
    fn current(&self) -> Arc<Vec<([u8; 32], Caller)>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = stamp(&self.path);
            if now != state.stamp {
                state.stamp = now;
                match read(&self.path, self.robots) {
                    Ok(accepted) => {
                        tracing::info!("{}: {} token(s) accepted from now on", self.path.display(), accepted.len());
                        state.accepted = Arc::new(accepted);
                    }
                    Err(e) => tracing::error!("{e}; the tokens accepted before stay until the file is fixed"),
                }
            }
        }
        state.accepted.clone()
    }
}

/// The accepted tokens in `path`; `robots`: whether `robot NAME` lines may be among them.
fn read(path: &Path, robots: bool) -> Result<Vec<([u8; 32], Caller)>, FleetError> {
    let accepted = lines(path)?.iter().map(|(i, l)| entry(path, *i, l)).collect::<Result<Vec<_>, _>>()?;
    if accepted.is_empty() {
        return Err(FleetError::Config(format!(
            "{} holds no token, so no request could be accepted; add one (`skillgraft keys token FILE`)",
            path.display()
        )));
    }
    if !robots && accepted.iter().any(|(_, c)| *c != Caller::Operator) {
        return Err(FleetError::Config(format!(
            "{}: `robot NAME` lines are for the fleet server's --tokens; an inbox takes the tokens of those who push to it",
            path.display()
        )));
    }
    Ok(accepted)
}

/// The token a client sends: the first token of `path` (digest lines, which a server accepts
/// tokens by, are passed over).
pub fn read_token(path: &Path) -> Result<String, FleetError> {
    let lines = lines(path)?;
    let digest_only = |l: &str| l.starts_with("robot ") || l.starts_with("sha256:");
    match lines.iter().find(|(_, l)| !digest_only(l)) {
        Some((line, first)) => plain(path, *line, first),
        None if !lines.is_empty() => Err(FleetError::Config(format!(
            "{}: its lines are digests, what a server accepts tokens by, not a token to send; give the file `skillgraft keys token` wrote",
            path.display()
        ))),
        None => Err(FleetError::Config(format!(
            "{} holds no token; make one with `skillgraft keys token FILE`",
            path.display()
        ))),
    }
}

/// Writes a new random token (256 bits, base64url) to `path`, readable by its owner only, and
/// returns it.
pub fn new_token(path: &Path) -> Result<String, FleetError> {
    use base64::Engine;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| FleetError::Config(format!("no randomness for a token: {e}")))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(FileError::at("create", path))?;
    writeln!(f, "{token}").map_err(FileError::at("write", path))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_tokens_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let written = new_token(&path).unwrap();
        let token = read_token(&path).unwrap();
        assert_eq!(written, token);
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.caller(Some(&format!("Bearer {token}"))), Some(Caller::Operator));
        assert_eq!(tokens.caller(Some(&format!("Bearer {token}x"))), None);
        assert_eq!(tokens.caller(Some(&token)), None);
        assert_eq!(tokens.caller(None), None);
        assert!(new_token(&path).is_err(), "an existing token file is never overwritten");
        std::fs::write(&path, "# none\n").unwrap();
        assert!(Tokens::load(&path).unwrap_err().to_string().contains("holds no token"));
        std::fs::write(&path, "short\n").unwrap();
        assert!(Tokens::load(&path).unwrap_err().to_string().contains("shorter"));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let e = Tokens::load(&path).unwrap_err().to_string();
        assert!(e.contains("anyone can read it") && e.contains("chmod"), "{e}");
        // A root-owned token may be read by its group (how the package hands it to the service
        // user); anyone else's may not.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let uid = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
        let e = Tokens::load(&path).err().map(|e| e.to_string());
        match uid {
            0 => assert!(e.is_none(), "{e:?}"),
            _ => assert!(e.is_some_and(|e| e.contains("its group can read it") && e.contains("chmod 600"))),
        }
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o660)).unwrap();
        let e = Tokens::load(&path).unwrap_err().to_string();
        assert!(e.contains("its group can"), "{e}");
    }

    #[test]
    fn a_robot_line_accepts_that_robots_token_as_its_own_and_nothing_else_as_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let (robot, operator, server) = (dir.path().join("r"), dir.path().join("o"), dir.path().join("server"));
        let r = new_token(&robot).unwrap();
        let o = new_token(&operator).unwrap();
        let write = |text: String| {
            std::fs::write(&server, text).unwrap();
            std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        };
        write(format!("# the lab\n{o}\n{}\n", robot_line("arm-b-01", &r)));
        let tokens = Tokens::load_with_robots(&server).unwrap();
        assert_eq!(tokens.caller(Some(&format!("Bearer {o}"))), Some(Caller::Operator));
        assert_eq!(tokens.caller(Some(&format!("Bearer {r}"))), Some(Caller::Robot("arm-b-01".into())));
        // The digest itself is not a token: a reader of the server's file cannot use it.
        let line = robot_line("arm-b-01", &r);
        let hex = line.rsplit(':').next().unwrap();
        assert_eq!(tokens.caller(Some(&format!("Bearer sha256:{hex}"))), None);
        assert_eq!(tokens.caller(Some(&format!("Bearer {hex}"))), None);
        let e = Tokens::load(&server).unwrap_err().to_string();
        assert!(e.contains("robot NAME") && e.contains("fleet server"), "{e}");
        assert_eq!(read_token(&server).unwrap(), o, "a client sends the first token");
        // An operator's token may be given by its digest too.
        write(format!("sha256:{}\n", hex::encode(digest(&o))));
        let by_digest = Tokens::load(&server).unwrap();
        assert_eq!(by_digest.caller(Some(&format!("Bearer {o}"))), Some(Caller::Operator));
        write(format!("{line}\n"));
        let e = read_token(&server).unwrap_err().to_string();
        assert!(e.contains("not a token to send"), "{e}");
        for (text, says) in [
            (format!("robot ../x {r}\n"), "not a robot name"),
            ("robot arm-b-01 sha256:abc\n".to_string(), "64 hex digits"),
            (format!("robot arm-b-01\n{o}\n"), ":1: a line is a token"),
            (format!("{o}\nrobot arm-b-01 short\n"), ":2: a token is shorter"),
            (format!("{o} {r}\n"), "a line is a token"),
        ] {
            write(text.clone());
            let e = Tokens::load_with_robots(&server).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
