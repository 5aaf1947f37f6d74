//! Bearer tokens. A robot's inbox and the fleet server each read a file of the tokens they
//! accept; a client sends one in `Authorization: Bearer ...`. Tokens, not mutual TLS: the
//! bundle signature already proves what a skill is and who made it, so the token only has to
//! say who may ask a robot to change what it runs. A token is one line in a file that can be
//! rotated without a certificate authority, and works through the TLS-terminating proxy or VPN
//! a fleet already runs (plain HTTP must not leave a trusted network: a token sent in clear
//! text can be replayed).

use std::path::Path;

use sha2::{Digest, Sha256};

use super::FleetError;
use crate::file::FileError;

/// Shortest token accepted: 128 bits of base64.
const MIN_LEN: usize = 22;

/// The tokens a server accepts, kept as SHA-256 digests.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} accepted)", self.digests.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The lines of a token file that hold tokens (blank lines and `#` comments skipped).
fn lines(path: &Path) -> Result<Vec<String>, FleetError> {
    let text = std::fs::read_to_string(path).map_err(FileError::at("read", path))?;
    // A token others can read is a token others can use.
    crate::skill::bundle::check_mode(path, true).map_err(|e| FleetError::Config(e.to_string()))?;
    let tokens: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    for t in &tokens {
        if t.len() < MIN_LEN || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FleetError::Config(format!(
                "{}: a token is shorter than {MIN_LEN} characters or holds spaces; make one with `skillgraft keys token FILE`",
                path.display()
            )));
        }
    }
    Ok(tokens)
}

impl Tokens {
    /// Reads a token file: one token per line.
    pub fn load(path: &Path) -> Result<Tokens, FleetError> {
        let tokens = lines(path)?;
        if tokens.is_empty() {
            return Err(FleetError::Config(format!(
                "{} holds no token, so no request could be accepted; add one (`skillgraft keys token FILE`)",
                path.display()
            )));
        }
        Ok(Tokens { digests: tokens.iter().map(|t| digest(t)).collect() })
    }

    /// Whether an `Authorization` header value carries an accepted token. Digests are compared,
    /// so the time a comparison takes tells nothing about the token.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else { return false };
        let d = digest(token.trim());
        self.digests.contains(&d)
    }
}

/// The token a client sends: the first token in `path`.
pub fn read_token(path: &Path) -> Result<String, FleetError> {
    lines(path)?.into_iter().next().ok_or_else(|| {
        FleetError::Config(format!("{} holds no token; make one with `skillgraft keys token FILE`", path.display()))
    })
}

/// Writes a new random token (256 bits, base64url) to `path`, readable by its owner only.
pub fn new_token(path: &Path) -> Result<(), FleetError> {
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
    Ok(writeln!(f, "{token}").map_err(FileError::at("write", path))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_tokens_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        new_token(&path).unwrap();
        let token = read_token(&path).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert!(tokens.accepts(Some(&format!("Bearer {token}"))));
        assert!(!tokens.accepts(Some(&format!("Bearer {token}x"))));
        assert!(!tokens.accepts(Some(&token)));
        assert!(!tokens.accepts(None));
        assert!(new_token(&path).is_err(), "an existing token file is never overwritten");
        std::fs::write(&path, "# none\n").unwrap();
        assert!(
            Tokens::load(&path).is_ok_and(|_| false)
                || Tokens::load(&path).unwrap_err().to_string().contains("holds no token")
        );
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
}
