//! The bundle reader on arbitrary archives: never a panic, never more memory or time than its
//! limits allow (libFuzzer's -rss_limit_mb and -timeout catch both), and nothing left behind when
//! it refuses. The first byte picks what the rest is: 0, the bundle file as is (a zstd stream);
//! 1, a tar archive, compressed here; 2, a tar archive whose first entry is taken as
//! `bundle.json` and signed here with the trusted key, so the reader's checks after the
//! signature (the signed list, each file against it, the skill's loading) are fuzzed too.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use skillgraft::skill::bundle::{self, Limits};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// A tar entry holding `bundle.sig` for `json`.
fn signature_entry(json: &[u8]) -> Vec<u8> {
    let k = key();
    let sig = format!(
        r#"{{"key": "{}", "signature": "{}"}}"#,
        bundle::key_id(&k.verifying_key()),
        base64::engine::general_purpose::STANDARD.encode(k.sign(json).to_bytes())
    );
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(sig.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append_data(&mut h, "bundle.sig", sig.as_bytes()).expect("in memory");
    let mut out = b.into_inner().expect("in memory");
    out.truncate(out.len() - 1024);
    out
}

/// The tar `rest` with a valid signature of its first entry inserted after it.
fn signed(rest: &[u8]) -> Vec<u8> {
    if rest.len() < 512 {
        return rest.to_vec();
    }
    let size = std::str::from_utf8(&rest[124..136])
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok())
        .unwrap_or(0) as usize;
    let end = 512usize.saturating_add(size.div_ceil(512).saturating_mul(512)).min(rest.len());
    let json = &rest[512..(512 + size).min(rest.len())];
    let mut out = rest[..end].to_vec();
    out.extend(signature_entry(json));
    out.extend(&rest[end..]);
    out
}

static N: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = match mode % 3 {
        0 => rest.to_vec(),
        1 => zstd::encode_all(rest, 1).expect("in memory"),
        _ => zstd::encode_all(signed(rest).as_slice(), 1).expect("in memory"),
    };
    let dir = std::env::temp_dir().join(format!(
        "skillgraft-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    let path = dir.join("b.skill");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(&file)).expect("written");
    let dest: PathBuf = dir.join("out");
    let limits = Limits { max_bytes: 4 << 20, max_entries: 64, max_seconds: 20 };
    let trusted = [key().verifying_key()];
    if bundle::unpack(&path, &trusted, &dest, limits).is_err() {
        assert!(!dest.exists(), "a refused bundle leaves nothing");
    }
    let _ = bundle::peek(&path);
    let _ = std::fs::remove_dir_all(&dir);
});
