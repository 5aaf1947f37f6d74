//! `skillgraft bench push`: one bundle pushed by `skillgraft fleet push` (a child process, whose
//! peak RSS is read from the kernel) to many robot inboxes on loopback at once. The inboxes run
//! in this process, each with a store of its own, and report their install times.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nalgebra::{DMatrix, DVector};
use serde::Serialize;

use skillgraft::fleet::auth;
use skillgraft::fleet::inbox::{Inbox, InboxSettings};
use skillgraft::model::head::{Activation, LayerParams};
use skillgraft::model::{export, mlp};
use skillgraft::skill::bundle;

/// What to measure.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Robot inboxes.
    pub robots: usize,
    /// Bundle sizes, MiB (the model's weights are random, so they barely compress).
    pub mib: Vec<u64>,
    /// The `skillgraft` binary that pushes.
    pub exe: PathBuf,
}

/// One measured push.
#[derive(Debug, Clone, Serialize)]
pub struct PushRow {
    /// Bundle size, MiB.
    pub bundle_mib: f64,
    /// Robots pushed to.
    pub robots: usize,
    /// Robots that installed it.
    pub installed: usize,
    /// Seconds from starting `fleet push` to its exit.
    pub total_s: f64,
    /// Peak resident memory of the `fleet push` process, MiB.
    pub push_peak_rss_mib: f64,
    /// Robot-side install time (verify, smoke inference, commit), median over robots, ms.
    pub install_ms_p50: f64,
    /// The slowest robot's install time, ms.
    pub install_ms_max: f64,
    /// Seconds `bundle pack` took to make the bundle.
    pub pack_s: f64,
}

/// A skill for the simulated arm whose policy weighs about `mib` MiB: two hidden layers of
/// random weights, the second the features.
pub(crate) fn big_skill(dir: &Path, mib: u64) -> Result<PathBuf, String> {
    let mut manifest =
        skillgraft::sim::episodes::manifest("push-bench", "arm-a", &skillgraft::sim::episodes::Scaling::identity());
    let (inputs, outputs) = (manifest.input_width(), manifest.action_width());
    let h = (((mib << 20) / 4) as f64).sqrt().max(8.0) as usize;
    let mut seed = 1;
    let mut layer = |out: usize, inp: usize| {
        seed += 1;
        let w = skillgraft::rng::seeded(seed, out * inp);
        let scale = 1.0 / (inp as f32).sqrt();
        LayerParams {
            weight: DMatrix::from_iterator(out, inp, w.into_iter().map(|v| v * scale)),
            bias: Some(DVector::zeros(out)),
        }
    };
    let layers = vec![
        (layer(h, inputs), Activation::Tanh),
        (layer(h, h), Activation::Tanh),
        (layer(outputs, h), Activation::Identity),
    ];
    let proto = mlp::model(&layers, 1, &[]).map_err(|e| e.to_string())?;
    manifest.model.input = mlp::INPUT.into();
    manifest.model.output = mlp::OUTPUT.into();
    manifest.model.features = mlp::FEATURES.into();
    let out = dir.join(format!("skill-{mib}"));
    skillgraft::skill::write_skill(&out, &manifest, &export::encode(&proto)).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Runs `exe fleet push` and samples its peak memory until it exits.
fn push(exe: &Path, bundle: &Path, robots: &Path) -> Result<(String, f64, f64), String> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["fleet", "push"])
        .arg(bundle)
        .arg("--robots")
        .arg(robots)
        .args(["--json", "--timeout-s", "900"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut peak = 0.0f64;
    loop {
        // The high-water mark only grows, so the last reading before the exit is the peak.
        // From `/proc`, not `wait4`'s `ru_maxrss`, which also counts the forked copy of this
        // process before `exec`.
        if let Some(m) = super::peak_rss_mib(Some(child.id())) {
            peak = peak.max(m);
        }
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for fleet push: {e}")),
        }
    }
    let total = started.elapsed().as_secs_f64();
    let out = reader.join().map_err(|_| "the reader thread failed".to_string())?;
    Ok((out, total, peak))
}

/// Measures each bundle size, with its skills, stores and keys in `dir`.
pub fn run(opts: &PushOptions, dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<Vec<PushRow>, String> {
    if opts.robots == 0 || opts.mib.is_empty() {
        return Err("give at least one robot and one bundle size".into());
    }
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let (secret, public) = bundle::new_key(&dir.join("fleet")).map_err(|x| e(&x))?;
    let key = bundle::read_secret(&secret).map_err(|x| e(&x))?;
    let tokens = dir.join("robot.token");
    auth::new_token(&tokens).map_err(|x| e(&x))?;
    let mut rows = Vec::new();
    for &mib in &opts.mib {
        progress(&format!("{mib} MiB: making the skill"));
        let skill = big_skill(dir, mib)?;
        let file = dir.join(format!("push-bench-{mib}.skill"));
        let t = Instant::now();
        bundle::pack(&skill, &key, &file, None).map_err(|x| e(&x))?;
        let pack_s = t.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(&file).map_err(|x| e(&x))?.len();
        std::fs::remove_dir_all(&skill).map_err(|x| e(&x))?;
        progress(&format!("{mib} MiB: starting {} inboxes", opts.robots));
        let mut inboxes = Vec::new();
        let mut registry = String::new();
        for i in 0..opts.robots {
            let settings = InboxSettings {
                listen: "127.0.0.1:0".into(),
                store: dir.join(format!("robot-{mib}-{i}")),
                trust: vec![public.clone()],
                tokens: tokens.clone(),
                max_mib: mib * 2 + 16,
            };
            let inbox = Inbox::start(&settings, None).map_err(|x| e(&x))?;
            registry.push_str(&format!(
                "[[robot]]\nname = \"robot-{i}\"\nurl = \"http://{}\"\ntoken_file = \"{}\"\n\n",
                inbox.addr(),
                tokens.display()
            ));
            inboxes.push((inbox, settings.store));
        }
        let robots = dir.join(format!("robots-{mib}.toml"));
        std::fs::write(&robots, registry).map_err(|x| e(&x))?;
        progress(&format!("{mib} MiB: pushing to {} robots", opts.robots));
        let (out, total_s, rss) = push(&opts.exe, &file, &robots)?;
        let results: Vec<serde_json::Value> =
            serde_json::from_str(&out).map_err(|x| format!("fleet push printed no results ({x}): {out}"))?;
        let mut install: Vec<f64> = results.iter().filter_map(|r| r["install_ms"].as_f64()).collect();
        install.sort_by(f64::total_cmp);
        let installed = results.iter().filter(|r| r["ok"] == true).count();
        for (inbox, store) in inboxes {
            inbox.stop();
            let _ = std::fs::remove_dir_all(store);
        }
        std::fs::remove_file(&file).map_err(|x| e(&x))?;
        rows.push(PushRow {
            bundle_mib: bytes as f64 / (1u64 << 20) as f64,
            robots: opts.robots,
            installed,
            total_s,
            push_peak_rss_mib: rss,
            install_ms_p50: install.get(install.len() / 2).copied().unwrap_or(f64::NAN),
            install_ms_max: install.last().copied().unwrap_or(f64::NAN),
            pack_s,
        });
    }
    Ok(rows)
}

/// The rows as a markdown table.
pub fn table(rows: &[PushRow]) -> String {
    let mut s = String::from(
        "| bundle (MiB) | robots | installed | total (s) | fleet push peak RSS (MiB) | robot install p50 / max (ms) | pack (s) |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {:.1} | {} | {} | {:.2} | {:.1} | {:.0} / {:.0} | {:.1} |\n",
            r.bundle_mib,
            r.robots,
            r.installed,
            r.total_s,
            r.push_peak_rss_mib,
            r.install_ms_p50,
            r.install_ms_max,
            r.pack_s
        ));
    }
    s
}
