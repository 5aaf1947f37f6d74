//! Signed channels: what a robot following a channel (`stable`, `canary`, one per robot model)
//! may install, as an index signed by a fleet key, with an expiry and a serial; and the fleet
//! keys themselves, listed in a document signed by a root key kept offline. This is the part of
//! The Update Framework a skill fleet needs (its root, targets and timestamp roles folded into
//! two documents), against the attacks TUF names:
//!
//! - **tampering**: every document is checked against its signature before it is read;
//! - **rollback**: a robot remembers the highest serial (and key-list version) it accepted, and
//!   refuses anything older, so a mirror cannot hand it an index from before a fix;
//! - **freeze**: an index expires (days, not months), so a man in the middle who keeps serving
//!   the last one is found out when it runs out;
//! - **key compromise**: the root key, offline, signs a new key list (a higher version) without
//!   the lost key; robots take it on their next poll and refuse the lost key's indexes.
//!
//! Signatures cover the payload bytes exactly as sent (a JSON text inside the envelope), so no
//! canonical form of JSON is needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::FleetError;
use crate::file::FileError;
use crate::skill::bundle::{key_id, parse_key};

/// The `kind` of a key list.
pub const KEYS_KIND: &str = "skillgraft-keys";
/// The `kind` of a channel index.
pub const INDEX_KIND: &str = "skillgraft-channel";

/// A signed document: the payload as sent, and signatures over exactly its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The document, a JSON text.
    pub payload: String,
    /// Signatures over the payload's UTF-8 bytes.
    pub signatures: Vec<Sig>,
}

/// One signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sig {
    /// The signer's public key, `ed25519:BASE64`.
    pub key: String,
    /// The signature, base64.
    pub signature: String,
}

/// The fleet keys that may sign channel indexes, signed by the root key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// [`KEYS_KIND`].
    pub kind: String,
    /// Raised with every new list; a robot refuses a lower one.
    pub version: u64,
    /// After this (RFC 3339) the list is refused.
    pub expires: String,
    /// The fleet keys, `ed25519:BASE64`.
    pub keys: Vec<String>,
}

/// What a channel offers: the skills a robot following it should run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// [`INDEX_KIND`].
    pub kind: String,
    /// The channel's name.
    pub channel: String,
    /// Raised with every new index; a robot refuses a lower one.
    pub serial: u64,
    /// After this (RFC 3339) the index is refused.
    pub expires: String,
    /// One bundle per skill.
    pub skills: Vec<Entry>,
}

/// One bundle an index offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Skill name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// `sha256:HEX` of the bundle file: what is downloaded must hash to it.
    pub digest: String,
    /// The bundle's size, bytes: a download never reads past it.
    pub bytes: u64,
}

/// Why a key list or an index is refused. Each says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChannelError {
    /// Not the document it should be.
    #[error("the {what} is not a signed skillgraft {what}: {why}")]
    Format {
        /// "key list" or "channel index".
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// No valid signature by a key it must be signed with.
    #[error(
        "the {what} is not signed by {by}: it was changed after signing, or signed with another key; nothing from it is used"
    )]
    Signature {
        /// "key list" or "channel index".
        what: &'static str,
        /// Which keys were accepted.
        by: &'static str,
    },
    /// Past its expiry.
    #[error(
        "the {what} expired at {expires}: a server that still serves it has stopped updating (or is being held back); the fleet must publish a new one"
    )]
    Expired {
        /// "key list" or "channel index".
        what: &'static str,
        /// When.
        expires: String,
    },
    /// Older than one already accepted.
    #[error(
        "the {what} has {field} {got}, but this robot already accepted {field} {seen}: an older document (a replay, or a stale mirror) is refused"
    )]
    Rollback {
        /// "key list" or "channel index".
        what: &'static str,
        /// "version" or "serial".
        field: &'static str,
        /// What was offered.
        got: u64,
        /// The highest accepted.
        seen: u64,
    },
    /// The same serial as an accepted index, with other contents.
    #[error(
        "the channel index has serial {serial}, which this robot accepted with other contents; the fleet must publish changes under a higher serial"
    )]
    Reused {
        /// The serial.
        serial: u64,
    },
    /// An index of another channel.
    #[error("the index is for channel `{got}`, not `{want}` which this robot follows")]
    Channel {
        /// Followed.
        want: String,
        /// Offered.
        got: String,
    },
}

/// Signs `doc` with `key`.
pub fn sign<T: Serialize>(doc: &T, key: &SigningKey) -> Envelope {
    let payload = serde_json::to_string(doc).expect("the documents serialise");
    let signature = key.sign(payload.as_bytes());
    Envelope {
        signatures: vec![Sig { key: key_id(&key.verifying_key()), signature: B64.encode(signature.to_bytes()) }],
        payload,
    }
}

/// Whether one signature of `env` is valid and by one of `trusted`.
fn signed_by(env: &Envelope, trusted: &[VerifyingKey]) -> bool {
    env.signatures.iter().any(|s| {
        let Some(key) = parse_key(&s.key).filter(|k| trusted.contains(k)) else { return false };
        let Some(sig) = B64.decode(&s.signature).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
            return false;
        };
        key.verify(env.payload.as_bytes(), &Signature::from_bytes(&sig)).is_ok()
    })
}

/// The document inside `env`, once a signature by one of `trusted` checks.
fn open<T: DeserializeOwned>(
    env: &Envelope,
    trusted: &[VerifyingKey],
    what: &'static str,
    by: &'static str,
) -> Result<T, ChannelError> {
    if !signed_by(env, trusted) {
        return Err(ChannelError::Signature { what, by });
    }
    serde_json::from_str(&env.payload).map_err(|e| ChannelError::Format { what, why: e.to_string() })
}

fn expired(what: &'static str, expires: &str, now: SystemTime) -> Result<(), ChannelError> {
    let at = humantime::parse_rfc3339(expires)
        .map_err(|e| ChannelError::Format { what, why: format!("expires `{expires}`: {e}") })?;
    if now > at { Err(ChannelError::Expired { what, expires: expires.to_string() }) } else { Ok(()) }
}

/// `sha256:HEX` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The root public key in `path`: exactly one, as a robot pins it.
pub fn pinned_root(path: &Path) -> Result<VerifyingKey, FleetError> {
    let pinned =
        crate::skill::bundle::read_trusted(&[path.to_path_buf()]).map_err(|e| FleetError::Config(e.to_string()))?;
    match pinned.as_slice() {
        [key] => Ok(*key),
        _ => Err(FleetError::Config(format!(
            "{} holds {} keys; a robot pins exactly one root key",
            path.display(),
            pinned.len()
        ))),
    }
}

/// A robot's place in a staged rollout of `channel`: 0 to 99 from a hash of its name, the same
/// on every server and every run; a wave of p % holds the robots below p.
pub fn wave_bucket(channel: &str, robot: &str) -> u8 {
    let h = Sha256::digest(format!("{channel}/{robot}").as_bytes());
    (u16::from_be_bytes([h[0], h[1]]) % 100) as u8
}

/// What a robot remembers of the documents it accepted, so that older ones are refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seen {
    /// The highest key-list version accepted.
    pub keys_version: u64,
    /// Per channel: the highest serial accepted and the digest of that index's payload.
    pub channels: BTreeMap<String, (u64, String)>,
}

impl Seen {
    /// The state saved in `path`; none yet is a robot that has accepted nothing.
    pub fn load(path: &Path) -> Result<Seen, FleetError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                FleetError::Config(format!(
                    "{}: {e}; skillgraft writes this file: restore it from a backup rather than edit it (deleting it makes the robot accept any unexpired index again)",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Seen::default()),
            Err(e) => Err(FileError::at("read", path)(e).into()),
        }
    }

    /// Saves the state to `path` (a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<(), FleetError> {
        Ok(crate::file::write_atomic(path, serde_json::to_string_pretty(self).expect("serialises").as_bytes())?)
    }
}

/// A key list and an index that passed every check, and what to remember of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The fleet keys.
    pub keys: Keys,
    /// The channel's index.
    pub index: Index,
    /// The state after accepting them.
    pub seen: Seen,
}

/// A key list read without checking its signature: what a server that holds no root key can
/// know of it (its version, the keys it lists); a robot checks it against its pinned root.
pub fn read_keys(env: &Envelope) -> Result<Keys, ChannelError> {
    let k: Keys = serde_json::from_str(&env.payload)
        .map_err(|e| ChannelError::Format { what: "key list", why: e.to_string() })?;
    if k.kind != KEYS_KIND {
        return Err(ChannelError::Format {
            what: "key list",
            why: format!("its kind is `{}`, not `{KEYS_KIND}`", k.kind),
        });
    }
    Ok(k)
}

/// A key list checked against `root` (a server given the root key refuses others).
pub fn read_root_signed(env: &Envelope, root: &VerifyingKey) -> Result<Keys, ChannelError> {
    if !signed_by(env, std::slice::from_ref(root)) {
        return Err(ChannelError::Signature { what: "key list", by: "the root key" });
    }
    read_keys(env)
}

/// An index checked against the fleet keys `keys` lists and its expiry at `now`, for `channel`.
pub fn read_index(keys: &Keys, env: &Envelope, channel: &str, now: SystemTime) -> Result<Index, ChannelError> {
    const CI: &str = "channel index";
    let fleet: Vec<VerifyingKey> = keys
        .keys
        .iter()
        .map(|s| {
            parse_key(s).ok_or_else(|| ChannelError::Format { what: "key list", why: format!("`{s}` is not a key") })
        })
        .collect::<Result<_, _>>()?;
    let i: Index = open(env, &fleet, CI, "a fleet key of the key list")?;
    if i.kind != INDEX_KIND {
        return Err(ChannelError::Format { what: CI, why: format!("its kind is `{}`, not `{INDEX_KIND}`", i.kind) });
    }
    if i.channel != channel {
        return Err(ChannelError::Channel { want: channel.to_string(), got: i.channel });
    }
    expired(CI, &i.expires, now)?;
    Ok(i)
}

/// Checks a key list against the pinned `root` key and an index against the keys it lists, both
/// against their expiry at `now` and against what the robot already accepted (`seen`), for
/// `channel`. Nothing is accepted in part.
pub fn verify(
    root: &VerifyingKey,
    keys: &Envelope,
    index: &Envelope,
    channel: &str,
    seen: &Seen,
    now: SystemTime,
) -> Result<Accepted, ChannelError> {
    const KL: &str = "key list";
    let k = read_root_signed(keys, root)?;
    expired(KL, &k.expires, now)?;
    if k.version < seen.keys_version {
        return Err(ChannelError::Rollback { what: KL, field: "version", got: k.version, seen: seen.keys_version });
    }
    let i = read_index(&k, index, channel, now)?;
    let payload = digest(index.payload.as_bytes());
    match seen.channels.get(channel) {
        Some((serial, _)) if i.serial < *serial => {
            return Err(ChannelError::Rollback {
                what: "channel index",
                field: "serial",
                got: i.serial,
                seen: *serial,
            });
        }
        Some((serial, d)) if i.serial == *serial && *d != payload => {
            return Err(ChannelError::Reused { serial: *serial });
        }
        _ => {}
    }
    let mut next = seen.clone();
    next.keys_version = k.version;
    next.channels.insert(channel.to_string(), (i.serial, payload));
    Ok(Accepted { keys: k, index: i, seen: next })
}

/// A key list of `keys` at `version`, valid for `valid` from `now`, signed by `root`.
pub fn key_list(root: &SigningKey, keys: &[VerifyingKey], version: u64, valid: Duration, now: SystemTime) -> Envelope {
    let doc = Keys {
        kind: KEYS_KIND.into(),
        version,
        expires: humantime::format_rfc3339_seconds(now + valid).to_string(),
        keys: keys.iter().map(key_id).collect(),
    };
    sign(&doc, root)
}

/// An index of `skills` for `channel` at `serial`, valid for `valid` from `now`, signed by `key`.
pub fn index(
    key: &SigningKey,
    channel: &str,
    serial: u64,
    skills: Vec<Entry>,
    valid: Duration,
    now: SystemTime,
) -> Envelope {
    let doc = Index {
        kind: INDEX_KIND.into(),
        channel: channel.into(),
        serial,
        expires: humantime::format_rfc3339_seconds(now + valid).to_string(),
        skills,
    };
    sign(&doc, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn entry(version: &str) -> Entry {
        Entry { name: "reach".into(), version: version.parse().unwrap(), digest: digest(version.as_bytes()), bytes: 3 }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    struct Fleet {
        root: SigningKey,
        fleet: SigningKey,
        now: SystemTime,
        keys: Envelope,
    }

    fn fleet() -> Fleet {
        let (root, fleet) = (key(1), key(2));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let keys = key_list(&root, &[fleet.verifying_key()], 1, 365 * DAY, now);
        Fleet { root, fleet, now, keys }
    }

    #[test]
    fn a_robot_accepts_a_fresh_index_and_remembers_it() {
        let f = fleet();
        let idx = index(&f.fleet, "stable", 5, vec![entry("1.2.0")], 7 * DAY, f.now);
        let a = verify(&f.root.verifying_key(), &f.keys, &idx, "stable", &Seen::default(), f.now).unwrap();
        assert_eq!(a.index.skills, vec![entry("1.2.0")]);
        assert_eq!(a.seen.keys_version, 1);
        assert_eq!(a.seen.channels["stable"].0, 5);
        let again = verify(&f.root.verifying_key(), &f.keys, &idx, "stable", &a.seen, f.now).unwrap();
        assert_eq!(again.seen, a.seen, "the same index polled again changes nothing");
    }

    #[test]
    fn tampered_replayed_frozen_reused_and_foreign_documents_are_refused() {
        let f = fleet();
        let root = f.root.verifying_key();
        let new = index(&f.fleet, "stable", 5, vec![entry("1.2.0")], 7 * DAY, f.now);
        let seen = verify(&root, &f.keys, &new, "stable", &Seen::default(), f.now).unwrap().seen;

        let mut tampered = new.clone();
        tampered.payload = tampered.payload.replace("1.2.0", "1.1.0");
        let e = verify(&root, &f.keys, &tampered, "stable", &seen, f.now).unwrap_err();
        assert!(matches!(e, ChannelError::Signature { what: "channel index", .. }), "{e}");

        let old = index(&f.fleet, "stable", 4, vec![entry("1.1.0")], 7 * DAY, f.now);
        let e = verify(&root, &f.keys, &old, "stable", &seen, f.now).unwrap_err();
        assert_eq!(e, ChannelError::Rollback { what: "channel index", field: "serial", got: 4, seen: 5 });
        assert!(e.to_string().contains("replay"), "{e}");

        let later = f.now + 8 * DAY;
        let e = verify(&root, &f.keys, &new, "stable", &seen, later).unwrap_err();
        assert!(matches!(e, ChannelError::Expired { what: "channel index", .. }), "a frozen index runs out: {e}");

        let reused = index(&f.fleet, "stable", 5, vec![entry("1.3.0")], 7 * DAY, f.now);
        assert_eq!(verify(&root, &f.keys, &reused, "stable", &seen, f.now), Err(ChannelError::Reused { serial: 5 }));

        let canary = index(&f.fleet, "canary", 9, vec![entry("2.0.0")], 7 * DAY, f.now);
        let e = verify(&root, &f.keys, &canary, "stable", &seen, f.now).unwrap_err();
        assert!(matches!(e, ChannelError::Channel { .. }), "{e}");

        let stranger = index(&key(9), "stable", 6, vec![entry("6.6.6")], 7 * DAY, f.now);
        let e = verify(&root, &f.keys, &stranger, "stable", &seen, f.now).unwrap_err();
        assert!(matches!(e, ChannelError::Signature { what: "channel index", .. }), "{e}");

        let forged_keys = key_list(&key(9), &[key(9).verifying_key()], 2, DAY, f.now);
        let e = verify(&root, &forged_keys, &stranger, "stable", &seen, f.now).unwrap_err();
        assert!(matches!(e, ChannelError::Signature { what: "key list", .. }), "{e}");

        let garbage = Envelope { payload: "[1, 2]".into(), ..f.keys.clone() };
        assert!(matches!(verify(&root, &garbage, &new, "stable", &seen, f.now), Err(ChannelError::Signature { .. })));
    }

    #[test]
    fn the_root_rotates_a_lost_fleet_key_out_and_an_older_key_list_cannot_bring_it_back() {
        let f = fleet();
        let root = f.root.verifying_key();
        let lost = index(&f.fleet, "stable", 5, vec![entry("1.2.0")], 7 * DAY, f.now);
        let seen = verify(&root, &f.keys, &lost, "stable", &Seen::default(), f.now).unwrap().seen;

        let replacement = key(3);
        let rotated = key_list(&f.root, &[replacement.verifying_key()], 2, 365 * DAY, f.now);
        let fresh = index(&replacement, "stable", 6, vec![entry("1.2.1")], 7 * DAY, f.now);
        let seen = verify(&root, &rotated, &fresh, "stable", &seen, f.now).unwrap().seen;
        assert_eq!(seen.keys_version, 2);

        let by_lost_key = index(&f.fleet, "stable", 7, vec![entry("6.6.6")], 7 * DAY, f.now);
        let e = verify(&root, &rotated, &by_lost_key, "stable", &seen, f.now).unwrap_err();
        assert!(matches!(e, ChannelError::Signature { .. }), "the lost key is out: {e}");
        let e = verify(&root, &f.keys, &by_lost_key, "stable", &seen, f.now).unwrap_err();
        assert_eq!(e, ChannelError::Rollback { what: "key list", field: "version", got: 1, seen: 2 });
    }

    #[test]
    fn the_state_survives_a_file_and_a_missing_one_is_a_fresh_robot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channels.json");
        assert_eq!(Seen::load(&path).unwrap(), Seen::default());
        let mut seen = Seen { keys_version: 3, ..Default::default() };
        seen.channels.insert("stable".into(), (7, digest(b"x")));
        seen.save(&path).unwrap();
        assert_eq!(Seen::load(&path).unwrap(), seen);
        std::fs::write(&path, b"{ torn").unwrap();
        assert!(Seen::load(&path).unwrap_err().to_string().contains("restore it from a backup"));
    }
}
