//! The `skillgraft` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skillgraft::skill::{self, Skill, inspect};

#[global_allocator]
static ALLOCATOR: skillgraft::alloc::TickAllocator = skillgraft::alloc::TickAllocator;

#[derive(Parser)]
#[command(name = "skillgraft", version, about = "Run, inspect and adapt robot skills (ONNX policy + manifest)")]
struct Cli {
    /// More log output (-v: info, -vv: debug). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a skill folder or an ONNX file holds: I/O mapping, backbone and head.
    Inspect {
        /// A skill folder (or its skill.toml), or a bare .onnx file.
        path: PathBuf,
        /// For a bare ONNX file: the tensor that splits backbone from head. Without it, the
        /// possible splits are listed.
        #[arg(long)]
        features: Option<String>,
        /// For a bare ONNX file with several outputs: the one holding the action.
        #[arg(long)]
        output: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create skill folders.
    #[command(subcommand)]
    Skill(SkillCommand),
    /// Run one inference: normalise the observation, run the policy, de-normalise the action.
    Step {
        /// The skill folder.
        skill: PathBuf,
        /// Observation values, comma-separated, in the order `inspect` lists them (raw, before
        /// normalisation).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true, required = true)]
        obs: Vec<f64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a skill as a ROS 2 node until Ctrl-C (or SIGTERM).
    Run {
        /// The skill folder.
        skill: PathBuf,
        /// ROS 2 parameter file(s) (`node: {ros__parameters: ...}`); -p in --ros-args wins.
        #[arg(long = "params-file")]
        params_file: Vec<PathBuf>,
        /// `--ros-args -p NAME:=VALUE -r FROM:=TO ...`, as ros2 launch passes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ros_args: Vec<String>,
    },
    /// Run a recorder-only node (no policy): episodes are started and stopped on ~/demo/control.
    Record {
        /// The skill the demonstrations are for.
        skill: PathBuf,
        /// ROS 2 parameter file(s).
        #[arg(long = "params-file")]
        params_file: Vec<PathBuf>,
        /// `--ros-args ...`, as for `run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ros_args: Vec<String>,
    },
    /// Look at, export and recover recorded episodes.
    #[command(subcommand)]
    Episodes(EpisodesCommand),
    /// Benchmarks that print a table of medians and ratios.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum EpisodesCommand {
    /// The episodes in a folder: status, label, duration, messages.
    List {
        /// Folder of episode files.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One episode: metadata, topics with counts and rates, drops, and samples for its skill.
    Show {
        /// The episode file.
        file: PathBuf,
        /// The skill to pair it for (default: the skill folder it was recorded with, if present).
        #[arg(long)]
        skill: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The episode's training samples as CSV (robot units), for a quick look.
    Export {
        /// The episode file.
        file: PathBuf,
        /// Write CSV (the only format).
        #[arg(long, required = true)]
        csv: bool,
        /// The skill to pair it for (default: the skill folder it was recorded with).
        #[arg(long)]
        skill: Option<PathBuf>,
    },
    /// Rewrites every unfinished `.mcap.part` in a folder from its complete chunks.
    Recover {
        /// Folder of episode files.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Sustained recording (1 kHz joint states, 500 Hz commands) with the control loop running:
    /// messages lost, recorder CPU, tick latency while recording against not.
    #[cfg(feature = "dds")]
    Record {
        /// Skill to run.
        #[arg(long, default_value = "skills/example-arm6")]
        skill: PathBuf,
        /// Seconds per phase.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// The node's observation_reliability: best_effort (its default) or reliable.
        #[arg(long, default_value = "best_effort")]
        observation_reliability: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The node's tick latency (p50/p99/max), deadline misses and peak memory at several rates,
    /// fed over DDS on loopback.
    #[cfg(feature = "dds")]
    Control {
        /// Skill to run.
        #[arg(long, default_value = "skills/example-arm6")]
        skill: PathBuf,
        /// Control rates in Hz.
        #[arg(long, value_delimiter = ',', default_value = "100,500,1000")]
        rates: Vec<f64>,
        /// Seconds measured per rate (after 2 s of warm-up).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// SCHED_FIFO priority for the control thread (0: normal scheduling).
        #[arg(long, default_value_t = 0)]
        rt_priority: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// tract (control step at batch 1, feature extraction at batch 256) next to onnxruntime on
    /// the same ONNX files.
    Inference {
        /// Folder of NAME.onnx + NAME.json fixtures (tools/make_fixtures.py).
        #[arg(long, default_value = "tests/fixtures/onnx")]
        fixtures: PathBuf,
        /// Python with onnxruntime (tools/requirements-bench.txt) for the comparison.
        #[arg(long, env = "SKILLGRAFT_PYTHON", default_value = "python3")]
        python: String,
        /// Timed control steps per model (feature extraction runs a fiftieth of them).
        #[arg(long, default_value_t = 2000)]
        iters: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SkillCommand {
    /// Write a skill folder from any ONNX model, with a manifest skeleton to edit.
    Init {
        /// The exported ONNX model.
        #[arg(long)]
        onnx: PathBuf,
        /// The tensor that splits backbone from head (`skillgraft inspect MODEL.onnx` lists them).
        #[arg(long)]
        features: String,
        /// The folder to create.
        #[arg(long)]
        out: PathBuf,
        /// The graph output holding the action, when the model has several.
        #[arg(long)]
        output: Option<String>,
        /// Skill name (default: the ONNX file's name).
        #[arg(long)]
        name: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ros_level = match &cli.command {
        Command::Run { ros_args, .. } | Command::Record { ros_args, .. } => {
            ros_args.iter().skip_while(|a| *a != "--log-level").nth(1).cloned()
        }
        _ => None,
    };
    let level = match (ros_level, cli.verbose) {
        (Some(l), _) => l.to_lowercase(),
        (None, 0) => "warn".into(),
        (None, 1) => "info".into(),
        (None, _) => "debug".into(),
    };
    // RustDDS logs routine discovery and shutdown events as warnings and errors; transport
    // failures reach skillgraft as errors of their own. RUST_LOG=rustdds=info shows them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},rustdds=off,ros2_client=error")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Inspect { path, features, output, json } => {
            let is_onnx = path.is_file() && path.file_name().is_none_or(|n| n != skill::MANIFEST_FILE);
            if is_onnx {
                match inspect::onnx_report(&path, features.as_deref(), output.as_deref())? {
                    Ok(model) => print(&model, json),
                    Err(splits) => print(&splits, json),
                }
            } else {
                if features.is_some() || output.is_some() {
                    return Err(
                        "--features and --output apply to a bare ONNX file; a skill names them in its skill.toml"
                            .into(),
                    );
                }
                let skill = Skill::load(&path)?;
                print(&inspect::skill_report(&skill), json)
            }
        }
        Command::Skill(SkillCommand::Init { onnx, features, out, output, name }) => {
            let (mut manifest, bytes) = skill::skeleton(&onnx, &features, output.as_deref())?;
            if let Some(name) = name {
                manifest.name = name;
            }
            let skill = skill::write_skill(&out, &manifest, &bytes)?;
            println!("wrote skill `{}` {} to {}", manifest.name, manifest.version, out.display());
            println!("digest {}", skill.digest);
            println!(
                "next: edit {} (topics, normalisation, joint limits), then `skillgraft inspect {}`",
                out.join(skill::MANIFEST_FILE).display(),
                out.display()
            );
            Ok(())
        }
        Command::Step { skill, obs, json } => {
            let mut skill = Skill::load(&skill)?;
            let (raw, action) = skill.step(&obs)?;
            let labels = skill.manifest.action_labels();
            if json {
                let out = serde_json::json!({
                    "skill": skill.manifest.name,
                    "version": skill.manifest.version.to_string(),
                    "observation": obs,
                    "raw_action": raw,
                    "action": action,
                    "labels": labels,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{:<28} {:>14} {:>14}", "action", "raw", "de-normalised");
                for ((l, r), a) in labels.iter().zip(&raw).zip(&action) {
                    println!("{l:<28} {r:>14.6} {a:>14.6}");
                }
            }
            Ok(())
        }
        Command::Run { skill, params_file, ros_args } => serve(&skill, &params_file, &ros_args, true),
        Command::Record { skill, params_file, ros_args } => serve(&skill, &params_file, &ros_args, false),
        Command::Episodes(cmd) => episodes(cmd),
        #[cfg(feature = "dds")]
        Command::Bench(BenchCommand::Record { skill, seconds, observation_reliability, json }) => {
            // SAFETY: set before any thread is started; the bench keeps DDS on this host.
            unsafe { std::env::set_var("ROS_LOCALHOST_ONLY", "1") };
            let dir = tempfile_dir()?;
            let report = skillgraft::bench::record::record(&skill, &dir, seconds, &observation_reliability);
            let _ = std::fs::remove_dir_all(&dir);
            print(&report?, json)
        }
        #[cfg(feature = "dds")]
        Command::Bench(BenchCommand::Control { skill, rates, seconds, rt_priority, json }) => {
            // SAFETY: set before any thread is started; the bench keeps DDS on this host.
            unsafe { std::env::set_var("ROS_LOCALHOST_ONLY", "1") };
            let report = skillgraft::bench::control::control(&skill, &rates, seconds, rt_priority)?;
            print(&report, json)
        }
        Command::Bench(BenchCommand::Inference { fixtures, python, iters, json }) => {
            let report = skillgraft::bench::inference(&fixtures, &python, iters)?;
            print(&report, json)
        }
    }
}

/// A fresh folder under the system's temporary folder, for a benchmark's episodes.
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("skillgraft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the node until Ctrl-C or SIGTERM.
fn serve(
    skill: &std::path::Path,
    params_file: &[PathBuf],
    ros_args: &[String],
    policy: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    // The handler goes in first: a signal that arrives while the node starts must still stop
    // it cleanly (and finish an episode being recorded).
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })?;
    let (node, summary) = skillgraft::control::launch(skill, params_file, ros_args, policy)?;
    eprintln!("skillgraft: {summary}; Ctrl-C to stop");
    let _ = rx.recv();
    eprintln!("skillgraft: stopping");
    node.stop();
    Ok(())
}

/// The skill an episode is paired for: the one given, or the folder it was recorded with.
fn episode_skill(
    file: &std::path::Path,
    skill: Option<PathBuf>,
) -> Result<Option<skillgraft::skill::manifest::Manifest>, Box<dyn std::error::Error>> {
    let dir = match skill {
        Some(d) => Some(d),
        None => {
            let f = skillgraft::record::episode::read(file)?;
            f.metadata.get("skill_dir").map(PathBuf::from).filter(|d| d.join(skill::MANIFEST_FILE).is_file())
        }
    };
    Ok(match dir {
        Some(d) => Some(Skill::load(&d)?.manifest),
        None => None,
    })
}

fn episodes(cmd: EpisodesCommand) -> Result<(), Box<dyn std::error::Error>> {
    use skillgraft::record::{dataset, episode, summary};
    match cmd {
        EpisodesCommand::List { dir, json } => {
            let rows = summary::list(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no episodes in {}", dir.display());
            } else {
                print!("{}", summary::table(&rows));
            }
        }
        EpisodesCommand::Show { file, skill, json } => {
            let m = episode_skill(&file, skill)?;
            print(&summary::summarise(&file, m.as_ref())?, json)?;
        }
        EpisodesCommand::Export { file, csv: _, skill } => {
            let m = episode_skill(&file, skill)?
                .ok_or("this episode names no skill folder that exists here; give one with --skill DIR")?;
            let ep = dataset::load_episode(&file, &m)?;
            let mut out = String::from("t");
            let labels =
                m.input_labels().into_iter().chain(m.action_labels().into_iter().map(|l| format!("action:{l}")));
            for l in labels {
                out.push(',');
                out.push_str(&l.replace(',', ";"));
            }
            out.push('\n');
            for s in &ep.samples {
                out.push_str(&format!("{:.6}", s.t));
                for v in s.raw_observation.iter().chain(&s.raw_action) {
                    out.push_str(&format!(",{v}"));
                }
                out.push('\n');
            }
            print!("{out}");
            eprintln!("{} samples ({} actions dropped for a stale observation)", ep.samples.len(), ep.stale);
        }
        EpisodesCommand::Recover { dir } => {
            let parts: Vec<PathBuf> = episode::list(&dir)?
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with(episode::PART_SUFFIX))
                .collect();
            if parts.is_empty() {
                println!("no unfinished episodes in {}", dir.display());
            }
            for p in parts {
                let r = episode::recover(&p)?;
                println!(
                    "recovered {} -> {}: kept {} messages, dropped {} bytes of the unfinished last chunk",
                    r.from.display(),
                    r.to.display(),
                    r.messages,
                    r.dropped_bytes
                );
            }
        }
    }
    Ok(())
}

fn print<T: serde::Serialize + std::fmt::Display>(report: &T, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
