//! `skillgraft bench inbox-attack`: a node runs its control loop (fed over DDS on loopback) with
//! its inbox on, while the inbox receives a large legitimate install and then each attack of
//! issue 15 in turn. For every phase: the control loop's ticks, tick latency (p50 / p99 / max)
//! and deadline misses, against an idle phase measured in the same run, and what the inbox did.

use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::rig::{Feeder, Rig};
use skillgraft::fleet::auth;
use skillgraft::skill::bundle;
use skillgraft::stats::percentiles;

/// One phase of the run.
#[derive(Debug, Clone, Serialize)]
pub struct AttackRow {
    /// What the inbox received.
    pub phase: String,
    /// Seconds the phase lasted.
    pub seconds: f64,
    /// Control ticks run in it.
    pub ticks: u64,
    /// Ticks per second.
    pub achieved_hz: f64,
    /// Tick latency p50, p99, max, µs.
    pub latency_us: Option<(f64, f64, f64)>,
    /// Deadlines missed.
    pub misses: u64,
    /// What the inbox answered.
    pub outcome: String,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    /// `name version` of the running skill.
    pub skill: String,
    /// Control rate, Hz.
    pub rate_hz: f64,
    /// The phases, idle first.
    pub rows: Vec<AttackRow>,
}

struct Target {
    addr: String,
    token: String,
}

impl Target {
    /// One request; the status line and body of the answer, or why none came.
    fn send(&self, head: &str, body: &[u8]) -> String {
        let Ok(mut s) = TcpStream::connect(&self.addr) else { return "no connection".into() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        let status = text.lines().next().unwrap_or("no answer").trim_start_matches("HTTP/1.1 ").to_string();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let error = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(|e| e.chars().take(70).collect::<String>()));
        match error {
            Some(e) => format!("{status}: {e}"),
            None => status,
        }
    }

    fn upload(&self, file: &[u8]) -> String {
        let head = format!(
            "POST /skills HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            file.len()
        );
        self.send(&head, file)
    }
}

/// A zstd-compressed tar of raw entries (name, type, declared size, data written).
fn archive(entries: &[(&str, tar::EntryType, u64, &[u8])]) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, declared, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(*declared);
        h.set_mode(0o644);
        h.set_path(name).map_err(|e| e.to_string())?;
        h.set_cksum();
        b.append(&h, *data).map_err(|e| e.to_string())?;
    }
    let tar = b.into_inner().map_err(|e| e.to_string())?;
    zstd::encode_all(tar.as_slice(), 3).map_err(|e| e.to_string())
}

/// `bundle.json` and `bundle.sig` for files (path, bytes), signed with `key`, without loading them
/// (a bundle whose model is too big to load must not be loaded here to be made).
fn signed_parts(key: &SigningKey, name: &str, files: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let list: Vec<serde_json::Value> = files
        .iter()
        .map(|(p, b)| serde_json::json!({"path": p, "sha256": hex::encode(Sha256::digest(b)), "size": b.len()}))
        .collect();
    let json = serde_json::to_vec(&serde_json::json!({
        "format": bundle::FORMAT, "name": name, "version": "9.0.0",
        "digest": format!("sha256:{}", "0".repeat(64)), "files": list,
    }))
    .expect("serialises");
    let sig = serde_json::to_vec(&serde_json::json!({
        "key": bundle::key_id(&key.verifying_key()),
        "signature": base64::engine::general_purpose::STANDARD.encode(key.sign(&json).to_bytes()),
    }))
    .expect("serialises");
    (json, sig)
}

/// The skill's model with a branch that makes 4 GiB of zeros and adds their sum to the input.
fn memory_hog(model: &[u8], input: &str) -> Result<Vec<u8>, String> {
    use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto, attribute_proto, tensor_proto::DataType};
    let mut m = tract_onnx::pb::ModelProto::decode(model).map_err(|e| e.to_string())?;
    let g = m.graph.as_mut().ok_or("no graph")?;
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| *i == input) {
            *i = "hog_input".into();
        }
    }
    g.initializer.push(TensorProto {
        name: "hog_shape".into(),
        dims: vec![1],
        data_type: DataType::Int64 as i32,
        int64_data: vec![1 << 30],
        ..Default::default()
    });
    let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("hog_{output}"),
        ..Default::default()
    };
    let mut zeros = node("ConstantOfShape", &["hog_shape"], "hog_zeros");
    zeros.attribute.push(AttributeProto {
        name: "value".into(),
        r#type: attribute_proto::AttributeType::Tensor as i32,
        t: Some(TensorProto {
            dims: vec![1],
            data_type: DataType::Float as i32,
            float_data: vec![0.0],
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = vec![zeros, node("ReduceSum", &["hog_zeros"], "hog_sum"), node("Add", &[input, "hog_sum"], "hog_input")];
    g.node.splice(0..0, hog);
    Ok(m.encode_to_vec())
}

/// Runs the node on `skill_dir` at `rate_hz` and each phase against its inbox; `big_mib` sizes
/// the legitimate install. `dir` holds keys, tokens and the store.
pub fn inbox_attack(skill_dir: &Path, rate_hz: f64, big_mib: u64, dir: &Path) -> Result<AttackReport, String> {
    let (secret, public) = bundle::new_key(&dir.join("fleet")).map_err(|e| e.to_string())?;
    let key = bundle::read_secret(&secret).map_err(|e| e.to_string())?;
    let tokens = dir.join("robot.token");
    auth::new_token(&tokens).map_err(|e| e.to_string())?;
    let token = auth::read_token(&tokens).map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
    let addr = port.to_string();
    let params = vec![
        format!("rate_hz:={rate_hz:?}"),
        "blend_s:=0.0".into(),
        format!("store_dir:={}", dir.join("store").display()),
        format!("inbox_tokens:={}", tokens.display()),
        format!("inbox_trust:=['{}']", public.display()),
        format!("inbox_address:={addr}"),
    ];
    let rig = Rig::start(skill_dir, &params, 170)?;
    let streams = rig.inputs.iter().map(|(e, topic)| rig.stream(topic, e, 1)).collect::<Result<Vec<_>, _>>()?;
    let feeder = Feeder::start(streams, rate_hz.min(1000.0));
    std::thread::sleep(Duration::from_secs(2));
    let target = Target { addr: addr.clone(), token };
    let s = rig.node.stats.clone();
    let mut rows = Vec::new();
    let mut phase = |name: &str, work: &mut dyn FnMut() -> String| {
        let (_, from) = s.latency.since(0);
        let (t0, m0, at0) =
            (s.ticks.load(Ordering::Relaxed), s.deadline_misses.load(Ordering::Relaxed), Instant::now());
        let outcome = work();
        // At least a second measured, so a phase refused in microseconds still has ticks.
        if let Some(rest) = Duration::from_secs(1).checked_sub(at0.elapsed()) {
            std::thread::sleep(rest);
        }
        let (lat, _) = s.latency.since(from);
        let (t1, m1, dt) =
            (s.ticks.load(Ordering::Relaxed), s.deadline_misses.load(Ordering::Relaxed), at0.elapsed().as_secs_f64());
        rows.push(AttackRow {
            phase: name.to_string(),
            seconds: dt,
            ticks: t1 - t0,
            achieved_hz: (t1 - t0) as f64 / dt,
            latency_us: percentiles(lat),
            misses: m1 - m0,
            outcome,
        });
    };
    phase("idle", &mut || {
        std::thread::sleep(Duration::from_secs(3));
        "-".into()
    });
    let big = super::push::big_skill(dir, big_mib)?;
    let big_file = dir.join("big.skill");
    bundle::pack(&big, &key, &big_file, None).map_err(|e| e.to_string())?;
    let big_bytes = std::fs::read(&big_file).map_err(|e| e.to_string())?;
    phase(&format!("install of a {:.0} MiB bundle", big_bytes.len() as f64 / (1 << 20) as f64), &mut || {
        target.upload(&big_bytes)
    });

    let (json, sig) = signed_parts(&key, "example-arm6", &[("skill.toml", b"x")]);
    let r = tar::EntryType::Regular;
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "a long name of 1 GiB (136 KiB sent)",
            archive(&[("long", tar::EntryType::GNULongName, 1 << 30, &vec![b'a'; 136 << 10])])?,
        ),
        ("a PAX header of 1 GiB", archive(&[("pax", tar::EntryType::XHeader, 1 << 30, &vec![b'9'; 64 << 10])])?),
        (
            "a folder entry carrying 64 GiB",
            archive(&[
                ("bundle.json", r, json.len() as u64, &json),
                ("bundle.sig", r, sig.len() as u64, &sig),
                ("skill/d/", tar::EntryType::Directory, 64 << 30, &vec![0; 1 << 20]),
            ])?,
        ),
        ("3000 folder entries", {
            let names: Vec<String> = (0..3000).map(|i| format!("skill/d{i}/")).collect();
            let mut e: Vec<(&str, tar::EntryType, u64, &[u8])> =
                vec![("bundle.json", r, json.len() as u64, &json), ("bundle.sig", r, sig.len() as u64, &sig)];
            e.extend(names.iter().map(|n| (n.as_str(), tar::EntryType::Directory, 0, &[][..])));
            archive(&e)?
        }),
    ];
    for (name, file) in &attacks {
        phase(name, &mut || target.upload(file));
    }
    let skill_dir_files = skillgraft::skill::Skill::load(skill_dir).map_err(|e| e.to_string())?;
    let model = std::fs::read(skill_dir.join(&skill_dir_files.manifest.model.file)).map_err(|e| e.to_string())?;
    let manifest = std::fs::read(skill_dir.join(skillgraft::skill::MANIFEST_FILE)).map_err(|e| e.to_string())?;
    let model_file = skill_dir_files.manifest.model.file.clone();
    let hog = memory_hog(&model, &skill_dir_files.manifest.model.input)?;
    drop(skill_dir_files);
    let (json, sig) = signed_parts(&key, "example-arm6", &[("skill.toml", &manifest), (model_file.as_str(), &hog)]);
    let hog_file = archive(&[
        ("bundle.json", r, json.len() as u64, &json),
        ("bundle.sig", r, sig.len() as u64, &sig),
        ("skill/skill.toml", r, manifest.len() as u64, &manifest),
        (&format!("skill/{model_file}"), r, hog.len() as u64, &hog),
    ])?;
    phase("a signed model that needs 4 GiB", &mut || target.upload(&hog_file));
    phase("200 unfinished request heads, held 3 s", &mut || {
        let held: Vec<TcpStream> = (0..200)
            .filter_map(|_| {
                let mut c = TcpStream::connect(&addr).ok()?;
                let _ = c.write_all(b"POST /skills HTTP/1.1\r\nHost: x\r\n");
                Some(c)
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        format!("{} connected; /health: {}", held.len(), target.send(&health(&target), b""))
    });
    phase("4 uploads at 1 byte/s", &mut || {
        let slow: Vec<_> = (0..4)
            .map(|_| {
                let (addr, token) = (target.addr.clone(), target.token.clone());
                std::thread::spawn(move || {
                    let Ok(mut c) = TcpStream::connect(&addr) else { return "no connection".to_string() };
                    let head = format!(
                        "POST /skills HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\n"
                    );
                    let _ = c.write_all(head.as_bytes());
                    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                    let started = Instant::now();
                    let mut buf = [0u8; 512];
                    while started.elapsed() < Duration::from_secs(60) {
                        if c.write_all(b"x").is_err() {
                            break;
                        }
                        if let Ok(n) = c.read(&mut buf) {
                            return String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("closed").to_string();
                        }
                    }
                    "no answer".into()
                })
            })
            .collect();
        let answers: Vec<String> = slow.into_iter().map(|h| h.join().unwrap_or_default()).collect();
        answers.first().cloned().unwrap_or_default().trim_start_matches("HTTP/1.1 ").to_string()
    });
    phase("100 bodies of 2 MB without a token", &mut || {
        let body = vec![b'x'; 2_000_000];
        let mut last = String::new();
        for _ in 0..100 {
            let head = format!(
                "POST /skills/example-arm6/activate HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            last = target.send(&head, &body);
        }
        last
    });
    drop(feeder);
    let label = rig.skill.clone();
    rig.node.stop();
    Ok(AttackReport { skill: label, rate_hz, rows })
}

fn health(t: &Target) -> String {
    format!(
        "GET /health HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        t.addr, t.token
    )
}

impl fmt::Display for AttackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "skill {} at {} Hz, inbox in the node; bundles checked in a worker process",
            self.skill, self.rate_hz
        )?;
        writeln!(
            f,
            "| phase | seconds | ticks | achieved (Hz) | latency p50 / p99 / max (µs) | deadline misses | inbox answered |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---|")?;
        for r in &self.rows {
            let lat = match r.latency_us {
                Some((a, b, c)) => format!("{a:.1} / {b:.1} / {c:.1}"),
                None => "n/a".into(),
            };
            writeln!(
                f,
                "| {} | {:.1} | {} | {:.1} | {lat} | {} | {} |",
                r.phase, r.seconds, r.ticks, r.achieved_hz, r.misses, r.outcome
            )?;
        }
        if let Some(idle) = self.rows.first().and_then(|r| r.latency_us) {
            let worst = self.rows.iter().skip(1).filter_map(|r| r.latency_us.map(|l| l.1)).fold(0.0, f64::max);
            writeln!(f, "worst p99 under attack / idle p99: {:.2}", worst / idle.1.max(1e-9))?;
        }
        Ok(())
    }
}
