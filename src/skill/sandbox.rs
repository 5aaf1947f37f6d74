//! Checking a bundle in a worker process of its own, so that no bundle can take the process that
//! receives it down: the robot's node runs its control loop beside the inbox. The worker is this
//! executable again (`skillgraft __check-bundle`), started with its own limits before it runs
//! anything: address space (`RLIMIT_AS`), CPU time, file size, open files, no core dumps, the
//! `SCHED_IDLE` scheduling class and the idle I/O class (it only runs when nothing else wants the
//! CPU or the disk), and it dies with the thread that started it. It unpacks and checks the
//! bundle (signature, files, limits), loads the skill and runs the smoke inference, and answers
//! with one JSON line. Whatever it costs stays in it: running out of memory, CPU or time is a
//! refusal of that bundle, never a crash of the caller.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::bundle::{self, BundleError, Limits, Verified};
use crate::file::FileError;

/// The hidden subcommand the worker runs as.
pub const WORKER_COMMAND: &str = "__check-bundle";
/// Largest answer read from a worker: the signed list is at most 1 MiB.
const ANSWER_LIMIT: u64 = 4 << 20;
/// Last bytes of the worker's stderr kept for the message when it dies.
const STDERR_TAIL: usize = 16 << 10;

/// Where and under which limits bundles are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The `skillgraft` executable.
    pub exe: PathBuf,
    /// Address space the worker may map, MiB.
    pub memory_mib: u64,
}

impl Sandbox {
    /// This executable as the worker, with a memory cap that fits bundles of `max_mib`: room for
    /// the unpacked files, the model tract builds from them and the program itself.
    pub fn current(max_mib: u64) -> Result<Sandbox, BundleError> {
        let exe = std::env::current_exe()
            .map_err(|source| FileError::new("find the executable for", "the bundle check worker", source))?;
        Ok(Sandbox { exe, memory_mib: default_memory_mib(max_mib) })
    }

    /// Unpacks and checks `bundle` into the new folder `dest` as [`bundle::unpack`] does, and
    /// smoke-tests the skill, all in a worker process; `dest` is removed on any failure.
    pub fn unpack(
        &self,
        bundle_path: &Path,
        trusted: &[VerifyingKey],
        dest: &Path,
        limits: Limits,
    ) -> Result<Verified, BundleError> {
        let result = self.run(bundle_path, trusted, dest, limits);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dest);
        }
        result
    }

    fn run(
        &self,
        bundle_path: &Path,
        trusted: &[VerifyingKey],
        dest: &Path,
        limits: Limits,
    ) -> Result<Verified, BundleError> {
        let reject = |problem: String| BundleError::Rejected { path: bundle_path.to_path_buf(), problem };
        let mut cmd = Command::new(&self.exe);
        cmd.arg(WORKER_COMMAND)
            .arg("--bundle")
            .arg(bundle_path)
            .arg("--dest")
            .arg(dest)
            .args(["--max-bytes", &limits.max_bytes.to_string()])
            .args(["--max-entries", &limits.max_entries.to_string()])
            .args(["--max-seconds", &limits.max_seconds.to_string()])
            // One malloc arena: each extra one reserves 64 MiB of address space, which the cap counts.
            .env("MALLOC_ARENA_MAX", "1")
            .env_remove("SKILLGRAFT_STORE_KILL_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for k in trusted {
            cmd.args(["--key", &bundle::key_id(k)]);
        }
        let memory = self.memory_mib.saturating_mul(1 << 20);
        let cpu = limits.max_seconds.max(1);
        let file = limits.max_bytes.saturating_add(1 << 20);
        // SAFETY: between fork and exec only async-signal-safe system calls run, on values
        // computed before the fork; nothing allocates.
        unsafe {
            cmd.pre_exec(move || confine(memory, cpu, file));
        }
        let mut child = cmd.spawn().map_err(FileError::at("start the bundle check worker", &self.exe))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let out_reader = std::thread::spawn(move || {
            let mut answer = Vec::new();
            let _ = stdout.take(ANSWER_LIMIT).read_to_end(&mut answer);
            let _ = tx.send(());
            answer
        });
        let err_reader = std::thread::spawn(move || tail(stderr));
        // The worker's own reading stops at the limit; this catches one that hangs elsewhere.
        let wall = Duration::from_secs(limits.max_seconds.saturating_add(10));
        let timed_out = rx.recv_timeout(wall).is_err_and(|e| e == std::sync::mpsc::RecvTimeoutError::Timeout);
        if timed_out {
            let _ = child.kill();
        }
        let status = child.wait().map_err(FileError::at("wait for the bundle check worker", &self.exe))?;
        let answer = out_reader.join().unwrap_or_default();
        let last_words = err_reader.join().unwrap_or_default();
        if timed_out {
            return Err(reject(format!("checking it took longer than {} s; the worker was stopped", wall.as_secs())));
        }
        if let Ok(a) = serde_json::from_slice::<Answer>(&answer)
            && status.success()
        {
            return match a {
                Answer::Verified(v) => Ok(v),
                // tract turns a failed allocation into an error: the cap, not the bundle's
                // wording, is what the reader needs to know.
                Answer::Rejected(problem) if problem.contains("failed to allocate") => Err(reject(format!(
                    "{problem}: checking it needed more than the worker's memory limit of {} MiB",
                    self.memory_mib
                ))),
                Answer::Rejected(problem) => Err(reject(problem)),
                Answer::Io { action, path, message, os } => Err(FileError::new(
                    action,
                    path,
                    match os {
                        Some(code) => std::io::Error::from_raw_os_error(code),
                        None => std::io::Error::other(message),
                    },
                )
                .into()),
            };
        }
        Err(reject(death(status, &last_words, self.memory_mib, cpu, limits.max_bytes)))
    }
}

/// The memory cap for bundles of `max_mib`.
pub fn default_memory_mib(max_mib: u64) -> u64 {
    max_mib.saturating_mul(4).saturating_add(1024)
}

/// What a worker that gave no answer died of.
fn death(status: std::process::ExitStatus, last_words: &str, memory_mib: u64, cpu: u64, max_bytes: u64) -> String {
    if last_words.contains("memory allocation of") || status.signal() == Some(libc::SIGABRT) {
        return format!("checking it needed more than the worker's memory limit of {memory_mib} MiB");
    }
    match status.signal() {
        Some(libc::SIGXCPU) => format!("checking it used more than {cpu} s of CPU"),
        Some(libc::SIGKILL) => format!(
            "the bundle check worker was killed: it used more than {cpu} s of CPU, or the system ran out of memory"
        ),
        Some(libc::SIGXFSZ) => format!("it unpacks a file larger than the limit of {max_bytes} bytes"),
        _ => {
            let words = last_words.lines().last().unwrap_or_default();
            format!("the bundle check worker stopped ({status}) without an answer: {}", bundle::shown(words))
        }
    }
}

fn tail(mut r: impl Read) -> String {
    let mut keep: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        keep.extend_from_slice(&buf[..n]);
        if keep.len() > 2 * STDERR_TAIL {
            keep.drain(..keep.len() - STDERR_TAIL);
        }
    }
    String::from_utf8_lossy(&keep).into_owned()
}

/// Runs in the forked child before exec: limits, scheduling class, death with the parent.
fn confine(memory: u64, cpu: u64, file: u64) -> std::io::Result<()> {
    let set = |resource, soft: u64, hard: u64| {
        let lim = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: setrlimit with a valid pointer to a local.
        if unsafe { libc::setrlimit(resource, &lim) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    };
    set(libc::RLIMIT_AS, memory, memory)?;
    // SIGXCPU at the soft limit, SIGKILL a little later.
    set(libc::RLIMIT_CPU, cpu, cpu.saturating_add(5))?;
    set(libc::RLIMIT_FSIZE, file, file)?;
    set(libc::RLIMIT_NOFILE, 64, 64)?;
    set(libc::RLIMIT_CORE, 0, 0)?;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system calls on this process.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The idle I/O class (3 << 13): the worker's reads and writes wait for everyone else's.
        // Not every kernel has it; the CPU class and the limits hold regardless.
        libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have died before the line above: then nobody waits for this answer.
        if libc::getppid() == 1 {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// The worker's answer: one JSON document on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Verified(Verified),
    Rejected(String),
    Io { action: String, path: PathBuf, message: String, os: Option<i32> },
}

/// What `skillgraft __check-bundle` was asked to do.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The bundle.
    pub bundle: PathBuf,
    /// The folder to unpack into.
    pub dest: PathBuf,
    /// Trusted keys, as `ed25519:BASE64`.
    pub keys: Vec<String>,
    /// The reader's limits.
    pub limits: Limits,
}

/// The worker's body: unpack, check, load and smoke-test, and print the answer. Returns the exit
/// code (0 whenever an answer was printed).
pub fn worker_main(args: &WorkerArgs) -> i32 {
    let answer = match check(args) {
        Ok(v) => Answer::Verified(v),
        Err(BundleError::File(FileError { action, path, source })) => {
            Answer::Io { action: action.into_owned(), path, message: source.to_string(), os: source.raw_os_error() }
        }
        Err(BundleError::Rejected { problem, .. }) => Answer::Rejected(problem),
        Err(e) => Answer::Rejected(e.to_string()),
    };
    match serde_json::to_string(&answer) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(_) => 1,
    }
}

fn check(args: &WorkerArgs) -> Result<Verified, BundleError> {
    let trusted: Vec<VerifyingKey> = args.keys.iter().filter_map(|k| bundle::parse_key(k)).collect();
    let (v, mut skill) = bundle::unpack_loaded(&args.bundle, &trusted, &args.dest, args.limits)?;
    skill.smoke_test().map_err(|e| BundleError::Rejected { path: args.bundle.clone(), problem: e.to_string() })?;
    Ok(v)
}
