//! The `skillgraft` command line: parses arguments and calls the library.

mod bench;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skillgraft::adapt::finetune::Settings;
use skillgraft::adapt::{self, Options, Progress};
use skillgraft::skill::{self, Skill, inspect};

/// Writes to stdout like `print!`, but returns a closed stdout as an error (`print!` panics).
macro_rules! out {
    ($($t:tt)*) => { emit(format_args!($($t)*))? };
}

/// Writes a line to stdout like `println!`, but returns a closed stdout as an error.
macro_rules! outln {
    ($($t:tt)*) => { emit(format_args!("{}\n", format_args!($($t)*)))? };
}

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
    /// Follow a signed channel of the fleet server (a robot that pulls): poll with jitter,
    /// check the key list and index against the pinned root key, download (resuming) and
    /// install what the index names into the skill store.
    Agent {
        #[command(flatten)]
        at: FleetAt,
        /// The channel to follow.
        #[arg(long)]
        channel: String,
        /// The root key's public file, pinned on this robot.
        #[arg(long)]
        root: PathBuf,
        /// Public keys whose bundles the store installs.
        #[arg(long, required = true)]
        trust: Vec<PathBuf>,
        /// The skill store.
        #[arg(long)]
        store: PathBuf,
        /// Time between polls (each one moved by up to ±20 %, so a fleet does not poll in step).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        interval: std::time::Duration,
        /// Longest time between two reports when nothing changes (a poll that changes the
        /// serial, the skills or the error is reported at once); an --auto rollout's --soak
        /// should be at least this.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        report_every: std::time::Duration,
        /// Poll once and exit (non-zero when the poll failed).
        #[arg(long)]
        once: bool,
        /// Largest bundle, and largest unpacked skill, MiB.
        #[arg(long, default_value_t = 512)]
        max_mib: u64,
        /// The running node's inbox on this robot (http://127.0.0.1:8740): installs and
        /// activations go through it, so the node swaps them in; the store must be the node's.
        #[arg(long, requires = "inbox_token_file")]
        inbox: Option<String>,
        /// File holding the token the node's inbox accepts.
        #[arg(long)]
        inbox_token_file: Option<PathBuf>,
        /// Print each poll as JSON.
        #[arg(long)]
        json: bool,
    },
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
        /// A PNG or JPEG picture for each [[image]] input, in the manifest's order (repeat the
        /// option); it goes through the input's preprocessing as a camera frame would.
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Adapt a skill's head to demonstration episodes; writes a new skill only if it beats the
    /// source on held-out episodes (exit code 3 when it does not).
    Adapt {
        /// The source skill folder.
        skill: PathBuf,
        /// Episode files, or folders of them (at least 2 episodes; 1 with --method bayes, none
        /// when --merge brings statistics).
        #[arg(required_unless_present = "merge")]
        episodes: Vec<PathBuf>,
        #[command(flatten)]
        how: adapt::args::MethodArgs,
        /// Folder of the adapted skill (default: next to the source, named NAME-VERSION).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Version of the adapted skill (default: the source's with the minor number raised).
        #[arg(long)]
        version: Option<semver::Version>,
        /// Folder of cached backbone features (default: .features in the first episodes folder).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Do not read or write cached features.
        #[arg(long, conflicts_with = "cache")]
        no_cache: bool,
        /// Print JSON instead of a table.
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
    /// Signing keys for skill bundles.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Signed skill bundles: pack a skill folder, verify a bundle.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// The robot's skill store: install signed bundles, list, activate, roll back.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The robot's HTTP inbox on its own, without a node (the node runs it with `store_dir`).
    Inbox {
        /// Address to listen on.
        #[arg(long, default_value = skillgraft::fleet::inbox::DEFAULT_LISTEN)]
        listen: String,
        #[command(flatten)]
        intake: Intake,
        /// Memory cap of the worker that checks each bundle, MiB (default: 1024 + 4 x --max-mib).
        #[arg(long)]
        worker_mib: Option<u64>,
    },
    /// The worker that checks one bundle for an inbox, a store or a fleet server, under the
    /// limits its parent set (see skill::sandbox); not for people.
    #[command(name = "__check-bundle", hide = true)]
    CheckBundle {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        dest: PathBuf,
        #[arg(long = "key")]
        keys: Vec<String>,
        #[arg(long)]
        max_bytes: u64,
        #[arg(long)]
        max_entries: usize,
        #[arg(long)]
        max_seconds: u64,
    },
    /// The fleet: serve a catalog, push bundles to robots, upload adapted skills.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// The transfer demo, over DDS on this host: the simulated target arm, the node with a skill
    /// learnt on another arm, and the expert. Scores the skill, records demonstrations, adapts
    /// live, and scores it again.
    #[cfg(feature = "dds")]
    Demo {
        /// The source skill [default: skills/reach-arm-a, or skills/reach-arm-a-vision with
        /// --vision].
        #[arg(long)]
        skill: Option<PathBuf>,
        /// Run the vision skill: the node reads the simulated arm's camera.
        #[arg(long, conflicts_with = "skill")]
        vision: bool,
        /// The simulated target robot.
        #[arg(long, default_value = "arm-b")]
        robot: String,
        /// Demonstrations to record.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..))]
        demos: u16,
        /// Reaches scored before and after.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
        reaches: u16,
        /// What the node is sent on ~/adapt.
        #[arg(long, default_value = "ridge")]
        request: String,
        /// The before/after plot is written to PLOT.png and PLOT.svg.
        #[arg(long, default_value = "demo")]
        plot: PathBuf,
        /// Keep the episodes and the adapted skill in this folder (default: a temporary one).
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Score a skill closed loop on a simulated arm as the node runs it: success, final distance
    /// and the safety filter's interventions.
    Eval {
        /// The skill folder.
        skill: PathBuf,
        /// The simulated robot (arm-a, arm-b, arm-c).
        #[arg(long, default_value = "arm-a")]
        robot: String,
        /// Reaches to score.
        #[arg(long, default_value_t = 20)]
        reaches: usize,
        /// Seed of the reaches (start poses and targets); 0 is the set the benchmarks and the
        /// demo score, and no seed below 1000 gives reaches that `sim --demos` demonstrates.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A simulated arm (arm-a, arm-b, arm-c) as a ROS 2 node, its expert's demonstrations
    /// recorded without ROS (--demos), or what its camera sees (`sim camera`).
    Sim(SimCli),
    /// The simulated arm's expert as a teleoperator: records demonstrations through a running
    /// node's ~/demo/control, resetting the arm (its ~/reset) before each.
    #[cfg(feature = "dds")]
    Teleop {
        /// The simulated robot (the expert knows its true parameters).
        #[arg(long)]
        robot: String,
        /// Demonstrations to record.
        #[arg(long, default_value_t = 5)]
        episodes: usize,
        /// The skillgraft node.
        #[arg(long, default_value = "/skillgraft")]
        node: String,
        /// The simulated arm's node.
        #[arg(long, default_value = "/sim")]
        sim: String,
        /// Seconds per demonstration.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Train a whole MLP policy from scratch on demonstrations and write it as a skill.
    Train {
        /// Episode files, or folders of them.
        #[arg(required = true)]
        episodes: Vec<PathBuf>,
        /// The simulated robot the episodes come from: the skill drives its topics.
        #[arg(long, conflicts_with = "like")]
        robot: Option<String>,
        /// A skill whose manifest (topics, fields, limits) the new skill takes.
        #[arg(long)]
        like: Option<PathBuf>,
        /// The skill folder to write.
        #[arg(long)]
        out: PathBuf,
        /// The skill's name (default: the folder's).
        #[arg(long)]
        name: Option<String>,
        /// Hidden layer widths (tanh).
        #[arg(long, value_delimiter = ',', default_value = "128,128,64")]
        hidden: Vec<usize>,
        /// The hidden layer (from 0) whose output is the features; the layers after it are the head.
        #[arg(long, default_value_t = 1)]
        features_after: usize,
        /// Most epochs.
        #[arg(long, default_value_t = 300)]
        epochs: usize,
        /// Samples per mini-batch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Adam learning rate.
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        /// Epochs without a better held-out loss before stopping.
        #[arg(long, default_value_t = 30)]
        patience: usize,
        /// Seed of the initial weights and the batch order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Threads (1 keeps the result bit-for-bit the same on every machine).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
        /// cpu (the same bits on every machine), cuda, or auto (the GPU when CUDA works).
        #[arg(long, default_value = "cpu")]
        device: adapt::device::Device,
    },
    /// Benchmarks that print a table of medians and ratios.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The firmware bridge: the action topic to a motor controller over a serial link, its
    /// feedback back as sensor_msgs/JointState, link statistics on /diagnostics; or `bridge
    /// sim-mcu`, a simulated controller behind a pseudo-terminal.
    Bridge(BridgeCli),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct SimCli {
    #[command(subcommand)]
    sub: Option<SimSub>,
    /// The simulated robot.
    #[arg(long, required = true)]
    robot: Option<String>,
    /// Record this many expert reaches into --out, in simulated time, and exit.
    #[arg(long, requires = "out")]
    demos: Option<usize>,
    /// Seed of the reaches (start poses and targets).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Noise added to the executed commands, rad/s (the recorded ones stay the expert's), so
    /// the demonstrations also show recoveries.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Folder of the episodes (created).
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --demos: also record the arm's camera each tick (sensor_msgs/Image on
    /// /camera/image_raw, role image.0).
    #[arg(long, requires = "demos")]
    camera: bool,
    /// How the recorded episodes' chunks are compressed: zstd, lz4 or none.
    #[arg(long, default_value = "zstd", requires = "demos")]
    compression: skillgraft::record::episode::Compression,
    /// ROS arguments of the node (`--ros-args -r __ns:=/robot1 ...`).
    #[arg(last = true)]
    ros_args: Vec<String>,
}

#[derive(Subcommand)]
enum SimSub {
    /// Writes what a simulated arm's camera sees as a PNG: the robot at the start of a reach of
    /// --seed, after --ticks of its expert.
    Camera {
        /// The simulated robot.
        #[arg(long)]
        robot: String,
        /// Seed of the reach (start pose and target), as `sim --demos` takes it.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Ticks of the expert's reach to run first (50 a second).
        #[arg(long, default_value_t = 0)]
        ticks: usize,
        /// Each pixel becomes a square this many pixels wide.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        scale: u32,
        /// The PNG file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BridgeCli {
    #[command(subcommand)]
    sim: Option<BridgeSub>,
    /// The controller's serial port (a UART or USB CDC tty, or the pty `bridge sim-mcu` prints).
    #[arg(long)]
    port: Option<PathBuf>,
    /// Baud rate of the port.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Commands per second (the control rate).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Joint names in the controller's order; the action holds one value per joint, in this order.
    #[arg(long, value_delimiter = ',', default_value = "shoulder,elbow,wrist")]
    joints: Vec<String>,
    /// The action topic (std_msgs/Float64MultiArray), as the skill's manifest names it.
    #[arg(long, default_value = "/arm/cmd")]
    action_topic: String,
    /// What the action's values are.
    #[arg(long, value_enum, default_value = "velocity")]
    mode: ModeArg,
    /// Where the controller's feedback is published (sensor_msgs/JointState).
    #[arg(long, default_value = "/joint_states")]
    joint_states: String,
    /// The controller goes to its safe state this long after the last valid command, ms.
    #[arg(long, default_value_t = 100)]
    watchdog_ms: u16,
    /// The controller sends feedback at least this often, ms (and after every command).
    #[arg(long, default_value_t = 10)]
    feedback_ms: u16,
    /// No valid frame for this long: the link is lost, and the port reopened with backoff, ms.
    #[arg(long, default_value_t = 500)]
    link_timeout_ms: u64,
    /// An action older than this is not sent on, ms (the controller's watchdog then takes it safe).
    #[arg(long, default_value_t = 100)]
    max_action_age_ms: u64,
    /// `/diagnostics` period, s.
    #[arg(long, default_value_t = 1.0)]
    diagnostics_period: f64,
}

#[derive(Subcommand)]
enum BridgeSub {
    /// A simulated motor controller: the device half and a motor model behind a pseudo-terminal.
    /// Prints the pty's path; `skillgraft bridge --port PATH` opens it.
    SimMcu {
        /// Joints.
        #[arg(long, default_value_t = 3)]
        joints: u8,
        /// Also make this symlink to the pty (replaced atomically), so a bridge keeps one --port
        /// across restarts of the simulated controller.
        #[arg(long)]
        link: Option<PathBuf>,
        /// Watchdog until the bridge configures its own, ms.
        #[arg(long, default_value_t = 100)]
        watchdog_ms: u16,
        /// Feedback period until the bridge configures its own, ms.
        #[arg(long, default_value_t = 10)]
        feedback_ms: u16,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Position,
    Velocity,
    Effort,
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
enum KeysCommand {
    /// Make a signing key: NAME.key (secret, owner-only) and NAME.pub (give it to robots).
    New {
        /// Path of the key files, without extension.
        name: PathBuf,
    },
    /// Make a bearer token file (owner-only) for an inbox or the fleet server.
    Token {
        /// The file to write (never overwritten).
        file: PathBuf,
        /// The robot the token is for: prints the line that accepts it as that robot's in the
        /// fleet server's --tokens file (it may then only poll and report as that robot).
        #[arg(long)]
        robot: Option<String>,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Serve the catalog, the channels, rollouts and reports over HTTP, kept in an object store
    /// (any number of servers can serve one store).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = skillgraft::fleet::server::DEFAULT_LISTEN)]
        listen: String,
        /// Folder where uploads are received and checked (default: the store folder's
        /// .incoming, or a scratch folder for an S3 store).
        #[arg(long)]
        spool: Option<PathBuf>,
        /// Seconds a channel's index and rollout answer polls before they are read from the
        /// store again (this server's own changes show at once).
        #[arg(long, default_value_t = 1.0)]
        cache_s: f64,
        /// Seconds a failing store request is retried before the client hears of it.
        #[arg(long, default_value_t = 10.0)]
        store_retry_s: f64,
        /// The root key's public file: a key list is stored only when it signed it (without it,
        /// the robots' own check is the only one).
        #[arg(long)]
        channel_root: Option<PathBuf>,
        #[command(flatten)]
        intake: Intake,
    },
    /// Push a bundle to every robot of a registry at once; prints one line per robot.
    Push {
        /// The bundle.
        bundle: PathBuf,
        /// The robot registry ([[robot]] name, url, token_file).
        #[arg(long)]
        robots: PathBuf,
        /// Robots pushed to at once (default: all).
        #[arg(long)]
        parallel: Option<usize>,
        /// Further tries after a failure that may pass on another try (no answer, 502-504).
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// Seconds a whole upload and install may take, per try.
        #[arg(long, default_value_t = 300.0)]
        timeout_s: f64,
        /// Seconds a connection may take to open.
        #[arg(long, default_value_t = 5.0)]
        connect_timeout_s: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Upload a bundle (an adapted skill, say) to the fleet server's catalog.
    Upload {
        /// The bundle.
        bundle: PathBuf,
        #[command(flatten)]
        at: FleetAt,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the fleet server's catalog, with each skill's provenance.
    Catalog {
        #[command(flatten)]
        at: FleetAt,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What every robot of a registry runs and has installed.
    Status {
        /// The robot registry.
        #[arg(long)]
        robots: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make an installed version active on one robot (its node swaps to it).
    Activate {
        /// The robot, as the registry names it.
        robot: String,
        /// Skill name.
        name: String,
        /// Version.
        version: semver::Version,
        /// The robot registry.
        #[arg(long)]
        robots: PathBuf,
    },
    /// Return one robot's skill to the version active before.
    Rollback {
        /// The robot, as the registry names it.
        robot: String,
        /// Skill name.
        name: String,
        /// The robot registry.
        #[arg(long)]
        robots: PathBuf,
    },
    /// Staged rollouts of a channel: robots get the new index wave by wave (by a stable hash of
    /// their name), or all go back.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Each robot's last report (what `skillgraft agent` says after a poll): its channel, the
    /// serial it accepted, its active versions, and why a poll failed.
    Reports {
        #[command(flatten)]
        at: FleetAt,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Signed channels that robots follow: the root-signed list of fleet keys, a channel's
    /// signed index, and the checks a robot makes of them.
    #[command(subcommand)]
    Channel(ChannelCommand),
}

/// A fleet server and the token to send it.
#[derive(clap::Args, Debug, Clone)]
struct FleetAt {
    /// The fleet server, http://host:port.
    #[arg(long)]
    fleet: String,
    /// File holding the token to send.
    #[arg(long)]
    token_file: PathBuf,
}

impl FleetAt {
    fn token(&self) -> Result<String, skillgraft::fleet::FleetError> {
        skillgraft::fleet::auth::read_token(&self.token_file)
    }

    /// One request to the server, within `timeout`, and its answer whatever its status.
    fn ask(
        &self,
        rt: &tokio::runtime::Runtime,
        (method, path): (hyper::Method, &str),
        body: &skillgraft::fleet::client::Upload,
        timeout: std::time::Duration,
    ) -> Result<skillgraft::fleet::client::Reply, Box<dyn std::error::Error>> {
        let fleet = &self.fleet;
        Ok(rt.block_on(skillgraft::fleet::push::call(fleet, fleet, method, path, &self.token()?, body, timeout))?)
    }

    /// [`FleetAt::ask`] within a minute, with an answer other than a success (2xx) turned into
    /// an error.
    fn call(
        &self,
        rt: &tokio::runtime::Runtime,
        method: hyper::Method,
        path: &str,
        body: &skillgraft::fleet::client::Upload,
    ) -> Result<skillgraft::fleet::client::Reply, Box<dyn std::error::Error>> {
        let r = self.ask(rt, (method, path), body, std::time::Duration::from_secs(60))?;
        if !r.status.is_success() {
            return Err(format!("{} refused ({}): {}", self.fleet, r.status, r.error()).into());
        }
        Ok(r)
    }
}

/// Where a staged rollout is sent.
#[derive(clap::Args, Debug, Clone)]
struct RolloutTarget {
    #[command(flatten)]
    at: FleetAt,
    /// The channel.
    #[arg(long)]
    channel: String,
}

/// What `fleet rollout start` is given.
#[derive(clap::Args)]
struct RolloutStart {
    #[command(flatten)]
    target: RolloutTarget,
    /// The skill to roll out: the new index is the channel's with it at VERSION, the back
    /// index the channel's as it is, under the next two serials.
    #[arg(requires_all = ["version", "key", "root", "trust"], conflicts_with_all = ["new", "back"])]
    skill: Option<String>,
    /// The version to roll out, already in the catalog (`fleet upload`).
    version: Option<semver::Version>,
    /// A fleet key's secret, listed in the key list, that signs both indexes (with SKILL
    /// VERSION).
    #[arg(long, requires = "skill")]
    key: Option<PathBuf>,
    /// The root public key the robots pin: the channel's index is read, and the bundle
    /// hashed, here, and checked against it before anything is signed (with SKILL VERSION).
    #[arg(long, requires = "skill")]
    root: Option<PathBuf>,
    /// Keys (.pub) the robots trust for bundles: the bundle downloaded must be signed by one of
    /// them before its digest is signed into the index (with SKILL VERSION).
    #[arg(long, requires = "skill")]
    trust: Vec<PathBuf>,
    /// How long both indexes are valid (with SKILL VERSION).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    valid: std::time::Duration,
    /// The new index (`fleet channel sign`, a serial above the channel's).
    #[arg(long, required_unless_present = "skill", requires = "back")]
    new: Option<PathBuf>,
    /// The index every robot gets if the rollout halts: the channel's skills now, under a
    /// serial above the new one (signed ahead, so a halt needs no key).
    #[arg(long, required_unless_present = "skill", requires = "new")]
    back: Option<PathBuf>,
    /// Shares of the robots per wave, %, rising to 100 (`1,10,50,100` or `1%,10%,50%,100%`).
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100", value_parser = percent)]
    waves: Vec<u8>,
    /// Advance and halt on the robots' reports: each wave runs at least --soak and needs
    /// --min-robots on the new index; it halts when they do worse than the robots still on
    /// the old one by --threshold.
    #[arg(long)]
    auto: bool,
    /// How long each wave runs before it may advance (with --auto).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    soak: std::time::Duration,
    /// Interventions per tick on the new index, over those on the old one, that halt the
    /// rollout (with --auto).
    #[arg(long, default_value_t = 2.0)]
    threshold: f64,
    /// Robots of a wave that must report on the new index before it advances (with --auto).
    #[arg(long, default_value_t = 1)]
    min_robots: usize,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Start: robots of the first wave get the new index; the others keep the channel's. Give
    /// SKILL VERSION (from the catalog) with --key and --root, and both indexes are made and
    /// signed here; or give --new and --back signed ahead (`fleet channel sign`).
    Start(Box<RolloutStart>),
    /// The next wave (after the last, the new index becomes the channel's).
    Advance {
        #[command(flatten)]
        target: RolloutTarget,
    },
    /// Every robot gets the back index.
    Halt {
        #[command(flatten)]
        target: RolloutTarget,
    },
    /// The rollout's state, and per wave its robots, how many run the new index and how many
    /// failed their last poll.
    Status {
        #[command(flatten)]
        target: RolloutTarget,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ChannelCommand {
    /// Sign the list of fleet keys that may sign channel indexes, with the root key (kept
    /// offline); a new list needs a higher --version and replaces the old on every robot.
    Keys {
        /// The root key's secret (`skillgraft keys new root`).
        #[arg(long)]
        root: PathBuf,
        /// A fleet key's public file (.pub); repeat for several.
        #[arg(long = "fleet-key", required = true)]
        fleet_keys: Vec<PathBuf>,
        /// The list's version, above the one robots have.
        #[arg(long)]
        version: u64,
        /// How long the list is valid (e.g. 365d).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "365d")]
        valid: std::time::Duration,
        /// Where to write the signed list.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a channel's index: the bundles a robot following it should run.
    Sign {
        /// A fleet key's secret, listed in the key list.
        #[arg(long)]
        key: PathBuf,
        /// The channel (stable, canary, a robot model...).
        #[arg(long)]
        channel: String,
        /// The index's serial, above the last one published for the channel.
        #[arg(long)]
        serial: u64,
        /// How long the index is valid (e.g. 7d): a robot refuses it afterwards, so a server
        /// that stops updating it is found out.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        valid: std::time::Duration,
        /// Where to write the signed index.
        #[arg(long)]
        out: PathBuf,
        /// The bundles (.skill), one per skill.
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
    },
    /// Publish a key list, a channel index or both to the fleet server, where robots poll them;
    /// the server refuses an index its key list does not sign, and anything older than it has.
    Publish {
        #[command(flatten)]
        at: FleetAt,
        /// A signed key list (sent first).
        #[arg(long, required_unless_present = "index")]
        keys: Option<PathBuf>,
        /// A signed channel index.
        #[arg(long)]
        index: Option<PathBuf>,
    },
    /// Check a key list and an index as a robot does; with --state, refuse anything older than
    /// what the state file accepted, and record what passes.
    Verify {
        /// The root key's public file, pinned on the robot.
        #[arg(long)]
        root: PathBuf,
        /// The signed key list.
        #[arg(long)]
        keys: PathBuf,
        /// The channel the robot follows.
        #[arg(long)]
        channel: String,
        /// What the robot accepted before (created when missing, updated on success).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The signed index.
        index: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Pack a skill folder into a signed bundle.
    Pack {
        /// The skill folder.
        dir: PathBuf,
        /// The secret key to sign with (NAME.key from `keys new`).
        #[arg(long)]
        key: PathBuf,
        /// The bundle to write (default: NAME-VERSION.skill here).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Allow the robots named by --for to install it over a newer version, until it expires.
        #[arg(long, requires_all = ["targets", "expires_in"])]
        downgrade: bool,
        /// A robot (or fleet) the downgrade is for, as its store names itself (`store identify`);
        /// repeat for several.
        #[arg(long = "for", value_name = "ROBOT", requires = "downgrade")]
        targets: Vec<String>,
        /// How long the downgrade stays valid (e.g. 2h, 1d; at most 30 days).
        #[arg(long, value_parser = humantime::parse_duration, requires = "downgrade")]
        expires_in: Option<std::time::Duration>,
    },
    /// Check a bundle: every file against the signed list, the signature against trusted keys,
    /// and that the skill loads.
    Verify {
        /// The bundle.
        file: PathBuf,
        /// Files of trusted public keys (.pub).
        #[arg(long, required = true)]
        trust: Vec<PathBuf>,
        /// Largest bundle, and largest unpacked skill, in MiB.
        #[arg(long, default_value_t = 512)]
        max_mib: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What the robot's inbox and the fleet server take in: where bundles go, whose they take, from
/// whom, how large.
#[derive(clap::Args, Debug, Clone)]
struct Intake {
    /// The robot's skill store folder; for `fleet serve`, the fleet's object store: a folder,
    /// file:///PATH or s3://BUCKET/PREFIX (S3 settings from AWS_* variables, README).
    #[arg(long)]
    store: PathBuf,
    /// Files of trusted public keys (.pub): the fleet's, and for the fleet server its robots'.
    #[arg(long, required = true)]
    trust: Vec<PathBuf>,
    /// File of accepted bearer tokens (`keys token FILE`); the fleet server's may also accept
    /// robots' tokens, each for its robot only (`keys token FILE --robot NAME`).
    #[arg(long)]
    tokens: PathBuf,
    /// Largest bundle (and, on a robot, largest unpacked skill), MiB.
    #[arg(long, default_value_t = 512)]
    max_mib: u64,
    #[command(flatten)]
    http: HttpArgs,
}

/// What an HTTP server allows each client (inbox and fleet server).
#[derive(clap::Args, Debug, Clone)]
struct HttpArgs {
    /// Connections open at once; more are closed on arrival.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Seconds a client may take to send a request's head.
    #[arg(long, default_value_t = 10.0)]
    header_timeout_s: f64,
    /// Slowest upload accepted, KiB/s on average (after a 5 s start).
    #[arg(long, default_value_t = 64)]
    min_rate_kib: u64,
    /// Uploads received at once.
    #[arg(long, default_value_t = 4)]
    uploads: usize,
}

impl HttpArgs {
    fn limits(&self) -> Result<skillgraft::fleet::http::HttpLimits, String> {
        if !(self.header_timeout_s.is_finite() && self.header_timeout_s > 0.0)
            || self.max_connections == 0
            || self.uploads == 0
        {
            return Err("--header-timeout-s, --max-connections and --uploads must be above 0".into());
        }
        Ok(skillgraft::fleet::http::HttpLimits {
            max_connections: self.max_connections,
            header_timeout: std::time::Duration::from_secs_f64(self.header_timeout_s),
            min_rate: self.min_rate_kib.saturating_mul(1024),
            uploads: self.uploads,
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Verify a bundle, test it, and install it as the active version of its skill.
    Install {
        /// The bundle.
        bundle: PathBuf,
        /// The store folder.
        #[arg(long)]
        store: PathBuf,
        /// Files of trusted public keys (.pub).
        #[arg(long, required = true)]
        trust: Vec<PathBuf>,
        /// Largest bundle, and largest unpacked skill, in MiB.
        #[arg(long, default_value_t = 512)]
        max_mib: u64,
        /// Memory cap of the worker that checks the bundle, MiB (default: 1024 + 4 x --max-mib).
        #[arg(long)]
        worker_mib: Option<u64>,
    },
    /// Name this robot (and its fleet): downgrade bundles must name one of them.
    Identify {
        /// The store folder.
        #[arg(long)]
        store: PathBuf,
        /// The robot's name (default until set: the host name).
        #[arg(long)]
        robot: String,
        /// The fleet it belongs to.
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Installed skills, their versions, the active and the previous one.
    List {
        /// The store folder.
        #[arg(long)]
        store: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make an installed version active.
    Activate {
        /// Skill name.
        name: String,
        /// Version.
        version: semver::Version,
        /// The store folder.
        #[arg(long)]
        store: PathBuf,
    },
    /// Return to the version active before the current one.
    Rollback {
        /// Skill name.
        name: String,
        /// The store folder.
        #[arg(long)]
        store: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Chunk compressions (none, lz4, zstd) on a stream with a 50 Hz camera: bytes on disk, CPU,
    /// writer latency; then sustained recording (1 kHz joint states, 500 Hz commands) with the
    /// control loop running: messages lost, recorder CPU, tick latency while recording against not.
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
        /// Seconds of camera stream per compression run.
        #[arg(long, default_value_t = 10.0)]
        compression_seconds: f64,
        /// Runs per compression (the table gives medians).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Only compare the chunk compressions; no node.
        #[arg(long)]
        compression_only: bool,
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
    /// The node's tick latency while its inbox installs a large bundle and while it receives
    /// each attack of issue 15 (hostile archives, a model needing 4 GiB, unfinished request
    /// heads, uploads at 1 byte/s, bodies without a token), against an idle phase.
    #[cfg(feature = "dds")]
    InboxAttack {
        /// Skill the node runs.
        #[arg(long, default_value = "skills/example-arm6")]
        skill: PathBuf,
        /// Control rate, Hz.
        #[arg(long, default_value_t = 500.0)]
        rate_hz: f64,
        /// Size of the legitimate bundle installed, MiB.
        #[arg(long, default_value_t = 64)]
        big_mib: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Adaptation next to its references in one run (ridge against scikit-learn, finetune of a
    /// 512→256→6 head against PyTorch), then the node's tick latency while it adapts.
    Adapt {
        /// Python with scikit-learn and PyTorch (tools/requirements-bench.txt); a missing one
        /// leaves its rows without a reference.
        #[arg(long, env = "SKILLGRAFT_PYTHON", default_value = "python3")]
        python: String,
        /// Threads each side may use (the references are limited to the same number).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
        /// Timed runs per row.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
        repeats: u16,
        /// Training rows (split into 20 episodes; a fifth as many are held out).
        #[arg(long, default_value_t = skillgraft::adapt::synthetic::ROWS as u32, value_parser = clap::value_parser!(u32).range(20..))]
        rows: u32,
        /// Skill the node runs for the latency measurement.
        #[cfg(feature = "dds")]
        #[arg(long, default_value = "skills/example-arm6")]
        skill: PathBuf,
        /// Control rate of the latency measurement, Hz.
        #[cfg(feature = "dds")]
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds measured idle, then adapting (0: skip the latency measurement).
        #[cfg(feature = "dds")]
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// What the node is sent on ~/adapt, again and again while measured.
        #[cfg(feature = "dds")]
        #[arg(long, default_value = "finetune epochs=200 patience=200")]
        request: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fine-tuning on the CPU against the GPU (the `cuda` feature) for heads of 100k to 10M
    /// parameters and 1k to 100k samples; the CPU figures always, the GPU's where one works.
    Gpu {
        /// The smaller grid (heads up to 1M parameters, up to 10k samples).
        #[arg(long)]
        quick: bool,
        /// CPU threads.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
        /// Timed runs per cell (a run over 5 s is timed once).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        repeats: u16,
        /// Epochs per fine-tune.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        epochs: u16,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Learning curves of transfer on the simulated arms: the source skill unadapted, adapted
    /// (ridge, finetune) and the same MLP trained from scratch, for several numbers of
    /// demonstrations and seeds.
    Transfer {
        /// The source skill [default: skills/reach-arm-a, or skills/reach-arm-a-vision with
        /// --vision].
        #[arg(long)]
        source: Option<PathBuf>,
        /// Transfer the vision skill (camera and joint state): demonstrations record the camera.
        #[arg(long, conflicts_with = "source")]
        vision: bool,
        /// Target robots.
        #[arg(long, value_delimiter = ',', default_value = "arm-b,arm-c")]
        robots: Vec<String>,
        /// Numbers of demonstrations.
        #[arg(long, value_delimiter = ',', default_value = "1,2,5,10,20")]
        demos: Vec<usize>,
        /// Seeds per point.
        #[arg(long, default_value_t = 3)]
        seeds: usize,
        /// Reaches each policy is scored on.
        #[arg(long, default_value_t = 50)]
        reaches: usize,
        /// Noise the arm adds to the demonstrator's commands while it demonstrates, rad/s
        /// (DART: the demonstrations then show recoveries); what is recorded is the
        /// demonstrator's command.
        #[arg(long, default_value_t = 0.0, value_parser = adapt::args::non_negative)]
        dart: f64,
        /// The learning-curve plot is written to PLOT.png and PLOT.svg.
        #[arg(long, default_value = "transfer-curves")]
        plot: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// One bundle pushed by `fleet push` to many robot inboxes on loopback at once: total time,
    /// the pushing process's peak RSS, and the robots' install times.
    Push {
        /// Robot inboxes (in this process, each with its own store).
        #[arg(long, default_value_t = 20)]
        robots: usize,
        /// Bundle sizes, MiB.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        mib: Vec<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The firmware bridge: frames encoded and decoded per second, and the round trip of a
    /// command to its echo over a pseudo-terminal to the simulated controller.
    Bridge {
        /// Joints per frame.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=16))]
        joints: u8,
        /// Command rates, Hz.
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        rates: Vec<f64>,
        /// Seconds measured per rate (after the link is up).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Print JSON instead of tables.
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
    /// A camera skill's costs: decoding and preprocessing a frame (its camera, 640x480 raw and
    /// JPEG), its model in tract next to onnxruntime (control step, features at batch 1 and 64),
    /// and the node's tick latency with it at camera rates.
    Vision {
        /// The vision skill.
        #[arg(long, default_value = "skills/reach-arm-a-vision")]
        skill: PathBuf,
        /// Python with onnxruntime [default: target/venv-ros/bin/python if it exists, else
        /// python3].
        #[arg(long, env = "SKILLGRAFT_PYTHON")]
        python: Option<String>,
        /// Timed runs per batch-1 measurement (the batch-64 features run a fiftieth of them).
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
        iters: u32,
        /// Control rates of the tick-latency measurement, Hz (with the dds feature).
        #[arg(long, value_delimiter = ',', default_value = "30,100")]
        rates: Vec<f64>,
        /// Seconds of tick latency measured per rate (after 2 s of warm-up; 0: skip it).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// A smoke run: 20 timed runs each, 0.5 s per rate.
        #[arg(long)]
        quick: bool,
        /// Print JSON instead of tables.
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
    if cli.command.on_this_host() {
        // SAFETY: set before any thread is started.
        unsafe { std::env::set_var("ROS_LOCALHOST_ONLY", "1") };
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader has what it wanted (`skillgraft inspect SKILL | head -1`).
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) if e.is::<Rejected>() => {
            eprintln!("{e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// The benchmarks and the demo run a node and its peers on this host: their DDS traffic
    /// stays on it.
    fn on_this_host(&self) -> bool {
        match self {
            #[cfg(feature = "dds")]
            Command::Demo { .. }
            | Command::Bench(
                BenchCommand::Record { .. }
                | BenchCommand::InboxAttack { .. }
                | BenchCommand::Control { .. }
                | BenchCommand::Vision { .. },
            ) => true,
            Command::Bench(BenchCommand::Adapt { .. }) => cfg!(feature = "dds"),
            _ => false,
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
            outln!("wrote skill `{}` {} to {}", manifest.name, manifest.version, out.display());
            outln!("digest {}", skill.digest);
            outln!(
                "next: edit {} (topics, normalisation, joint limits), then `skillgraft inspect {}`",
                out.join(skill::MANIFEST_FILE).display(),
                out.display()
            );
            Ok(())
        }
        Command::Step { skill, obs, images, json } => {
            let mut skill = Skill::load(&skill)?;
            let cameras = &skill.manifest.images;
            if images.len() != cameras.len() {
                let topics: Vec<&str> = cameras.iter().map(|c| c.topic.as_str()).collect();
                return Err(format!(
                    "the skill has {} camera input(s) ({}); give one --image PICTURE.png for each, in that order",
                    cameras.len(),
                    if topics.is_empty() { "none".to_string() } else { topics.join(", ") }
                )
                .into());
            }
            let tensors = cameras
                .iter()
                .zip(&images)
                .map(|(c, p)| skillgraft::observe::image_file_tensor(c, p))
                .collect::<Result<Vec<_>, _>>()?;
            let feeds: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
            let (raw, action) = skill.step(&obs, &feeds)?;
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
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                outln!("{:<28} {:>14} {:>14}", "action", "raw", "de-normalised");
                for ((l, r), a) in labels.iter().zip(&raw).zip(&action) {
                    outln!("{l:<28} {r:>14.6} {a:>14.6}");
                }
            }
            Ok(())
        }
        Command::Adapt { skill, episodes, how, out, version, cache, no_cache, json } => {
            let cache = match (cache, no_cache) {
                (_, true) => None,
                (Some(c), false) => Some(c),
                (None, false) => episodes.first().map(|p| {
                    let dir = if p.is_dir() { p.clone() } else { p.parent().map(PathBuf::from).unwrap_or_default() };
                    dir.join(".features")
                }),
            };
            let threads = std::thread::available_parallelism().map_or(1, usize::from);
            let opts = how.options(threads, adapt::device::Device::Auto, cache)?;
            adapt_cli(&skill, &episodes, &opts, out, version, json)
        }
        Command::Run { skill, params_file, ros_args } => serve(&skill, &params_file, &ros_args, true),
        Command::Record { skill, params_file, ros_args } => serve(&skill, &params_file, &ros_args, false),
        Command::Episodes(cmd) => episodes(cmd),
        Command::Store(cmd) => store(cmd),
        Command::Agent {
            at: FleetAt { fleet, token_file },
            channel,
            root,
            trust,
            store,
            interval,
            report_every,
            once,
            max_mib,
            inbox,
            inbox_token_file,
            json,
        } => {
            let inbox = match (inbox, inbox_token_file) {
                (Some(url), Some(file)) => Some(skillgraft::fleet::push::Robot {
                    name: "the node's inbox".into(),
                    url,
                    token: skillgraft::fleet::auth::read_token(&file)?,
                }),
                _ => None,
            };
            agent(fleet, token_file, channel, root, trust, store, (interval, report_every), once, max_mib, inbox, json)
        }
        Command::Keys(KeysCommand::Token { file, robot: None }) => {
            skillgraft::fleet::auth::new_token(&file)?;
            outln!("wrote a bearer token to {} (owner-only); give it to the server and to its clients", file.display());
            Ok(())
        }
        Command::Keys(KeysCommand::Token { file, robot: Some(robot) }) => {
            if !skillgraft::skill::manifest::valid_name(&robot) {
                return Err(format!("--robot {robot:?}: a robot name is letters, digits, `-`, `_` and `.`").into());
            }
            let token = skillgraft::fleet::auth::new_token(&file)?;
            // The line alone on stdout, so that `>> fleet.tokens` adds it to the server's file.
            eprintln!(
                "wrote robot {robot}'s bearer token to {} (owner-only, for its agent); add this line to the fleet server's --tokens file:",
                file.display()
            );
            outln!("{}", skillgraft::fleet::auth::robot_line(&robot, &token));
            Ok(())
        }
        Command::CheckBundle { bundle, dest, keys, max_bytes, max_entries, max_seconds } => {
            let args = skillgraft::skill::sandbox::WorkerArgs {
                bundle,
                dest,
                keys,
                limits: skillgraft::skill::bundle::Limits { max_bytes, max_entries, max_seconds },
            };
            match skillgraft::skill::sandbox::worker_main(&args) {
                0 => Ok(()),
                _ => Err("the bundle check worker could not write its answer".into()),
            }
        }
        Command::Inbox { listen, intake: Intake { store, trust, tokens, max_mib, http }, worker_mib } => {
            let limits = skillgraft::fleet::inbox::InboxLimits { http: http.limits()?, worker_mib };
            let rx = interrupted()?;
            let settings = skillgraft::fleet::inbox::InboxSettings { listen, store, trust, tokens, max_mib };
            let inbox = skillgraft::fleet::inbox::Inbox::start_with(&settings, &limits, None)?;
            eprintln!(
                "skillgraft: inbox on http://{} for store {}; Ctrl-C to stop",
                inbox.addr(),
                settings.store.display()
            );
            let _ = rx.recv();
            inbox.stop();
            Ok(())
        }
        Command::Fleet(cmd) => fleet(cmd),
        Command::Keys(KeysCommand::New { name }) => {
            let (secret, public) = skillgraft::skill::bundle::new_key(&name)?;
            outln!(
                "wrote {} (secret: keep it on the fleet server) and {} (give it to robots)",
                secret.display(),
                public.display()
            );
            Ok(())
        }
        Command::Bundle(BundleCommand::Pack { dir, key, out, downgrade, targets, expires_in }) => {
            let downgrade = downgrade
                .then(|| skillgraft::skill::bundle::Downgrade { targets, lifetime: expires_in.unwrap_or_default() });
            let key = skillgraft::skill::bundle::read_secret(&key)?;
            let out = match out {
                Some(o) => o,
                None => {
                    let m = skillgraft::skill::Skill::load(&dir)?.manifest;
                    PathBuf::from(format!("{}-{}.{}", m.name, m.version, skillgraft::skill::bundle::EXTENSION))
                }
            };
            let c = skillgraft::skill::bundle::pack(&dir, &key, &out, downgrade.as_ref())?;
            outln!(
                "packed {} {} ({} files) into {}, signed by {}",
                c.name,
                c.version,
                c.files.len(),
                out.display(),
                skillgraft::skill::bundle::key_id(&key.verifying_key())
            );
            Ok(())
        }
        Command::Bundle(BundleCommand::Verify { file, trust, max_mib, json }) => {
            let trusted = skillgraft::skill::bundle::read_trusted(&trust)?;
            let limits = skillgraft::skill::bundle::Limits::mib(max_mib);
            let v = skillgraft::skill::bundle::verify(&file, &trusted, limits)?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"contents": v.contents, "signer": v.signer}))?
                );
            } else {
                outln!(
                    "{}: {} {} ({}), signed by {}",
                    file.display(),
                    v.contents.name,
                    v.contents.version,
                    v.contents.digest,
                    v.signer
                );
                for f in &v.contents.files {
                    outln!("  {}  {:>10} bytes  sha256 {}", f.path, f.size, f.sha256);
                }
            }
            Ok(())
        }
        Command::Sim(cli) => sim(cli),
        Command::Eval { skill, robot, reaches, seed, json } => {
            if reaches == 0 {
                return Err("--reaches 0 scores nothing; give the number of reaches, e.g. --reaches 20".into());
            }
            let mut skill = Skill::load(&skill)?;
            let robot = skillgraft::sim::robot(&robot)?;
            let tasks = skillgraft::sim::tasks(seed, reaches, robot.home);
            let e = skillgraft::sim::score::evaluate(&mut skill, &robot, &tasks)?;
            if json {
                let out = serde_json::json!({
                    "skill": skill.manifest.name,
                    "version": skill.manifest.version.to_string(),
                    "robot": robot.name,
                    "seed": seed,
                    "success_m": skillgraft::sim::SUCCESS_M,
                    "evaluation": e,
                });
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let s = &e.score;
                outln!(
                    "{} {} on the simulated {}, {} reaches (seed {seed}; success: tip within {:.0} cm after {:.0} s)",
                    skill.manifest.name,
                    skill.manifest.version,
                    robot.name,
                    s.reaches,
                    skillgraft::sim::SUCCESS_M * 100.0,
                    skillgraft::sim::EPISODE_TICKS as f64 / skillgraft::sim::RATE_HZ
                );
                outln!(
                    "success {:.0} %, mean final distance {:.1} cm",
                    s.success_rate * 100.0,
                    s.mean_distance * 100.0
                );
                if let Some(u) = &e.uncertainty {
                    let mut sorted = u.ratio.clone();
                    sorted.sort_by(f64::total_cmp);
                    outln!(
                        "predicted error of the bayes head over its held-out error, per reach: median {:.2}, range {:.2} to {:.2}; rank correlation with the final distance {:+.2}",
                        sorted[sorted.len() / 2],
                        sorted[0],
                        sorted[sorted.len() - 1],
                        u.correlation
                    );
                }
                let acted: Vec<String> =
                    e.interventions.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
                outln!(
                    "safety filter interventions: {}",
                    if acted.is_empty() { "none".to_string() } else { acted.join(", ") }
                );
                let refused: Vec<String> =
                    e.rejected.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
                if !refused.is_empty() {
                    outln!("inputs refused: {}", refused.join(", "));
                }
            }
            Ok(())
        }
        #[cfg(feature = "dds")]
        Command::Teleop { robot, episodes, node, sim, seconds } => {
            teleop(&skillgraft::sim::teleop::TeleopOptions { robot, episodes, node, sim, seconds })
        }
        #[cfg(feature = "dds")]
        Command::Demo { skill, vision, robot, demos, reaches, request, plot, keep, json } => {
            let skill = skill.unwrap_or_else(|| {
                PathBuf::from(if vision { "skills/reach-arm-a-vision" } else { "skills/reach-arm-a" })
            });
            demo(skill, robot, demos, reaches, request, &plot, keep, json)
        }
        Command::Train {
            episodes,
            robot,
            like,
            out,
            name,
            hidden,
            features_after,
            epochs,
            batch,
            lr,
            patience,
            seed,
            threads,
            device,
        } => {
            let name = name.unwrap_or_else(|| out.file_name().unwrap_or_default().to_string_lossy().into_owned());
            let template = skillgraft::sim::episodes::template(robot.as_deref(), like.as_deref(), &name)?;
            let eps = skillgraft::record::dataset::load(&episodes, &template)?;
            let settings = Settings { epochs, batch, lr, pull: 0.0, patience, seed };
            let opts = skillgraft::adapt::train::TrainOptions {
                hidden,
                features_after,
                settings,
                init_seed: seed,
                threads: usize::from(threads),
                device,
            };
            let t = skillgraft::adapt::train::train(&template, &eps, &opts)?;
            let skill = skillgraft::skill::write_skill(&out, &t.manifest, &t.model)?;
            let held = t.curve.get(t.best_epoch.saturating_sub(1)).and_then(|e| e.held_out);
            outln!(
                "trained {} on {} episodes ({} samples): best epoch {} of {}{}",
                name,
                eps.len(),
                t.samples,
                t.best_epoch,
                t.curve.len(),
                held.map(|h| format!(", held-out MSE {h:.3e} (policy units)")).unwrap_or_default()
            );
            outln!("wrote skill `{}` {} to {} (digest {})", name, skill.manifest.version, out.display(), skill.digest);
            Ok(())
        }
        #[cfg(feature = "dds")]
        Command::Bench(BenchCommand::Record {
            skill,
            seconds,
            observation_reliability,
            compression_seconds,
            repeats,
            compression_only,
            json,
        }) => {
            let dir = tempfile_dir()?;
            let compression = bench::record::compression(&dir, compression_seconds, repeats);
            let live = match (&compression, compression_only) {
                (Ok(_), false) => Some(bench::record::record(&skill, &dir, seconds, &observation_reliability)),
                _ => None,
            };
            let _ = std::fs::remove_dir_all(&dir);
            let (compression, live) = (compression?, live.transpose()?);
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"compression": compression, "live": live}))?
                );
            } else {
                out!("{compression}");
                if let Some(live) = live {
                    out!("\n{live}");
                }
            }
            Ok(())
        }
        #[cfg(feature = "dds")]
        #[cfg(feature = "dds")]
        Command::Bench(BenchCommand::InboxAttack { skill, rate_hz, big_mib, json }) => {
            let dir = tempfile_dir()?;
            let report = bench::inbox_attack::inbox_attack(&skill, rate_hz, big_mib, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            print(&report?, json)
        }
        Command::Bench(BenchCommand::Control { skill, rates, seconds, rt_priority, json }) => {
            let report = bench::control::control(&skill, &rates, seconds, rt_priority)?;
            print(&report, json)
        }
        Command::Bench(BenchCommand::Adapt {
            python,
            threads,
            repeats,
            rows,
            #[cfg(feature = "dds")]
            skill,
            #[cfg(feature = "dds")]
            rate,
            #[cfg(feature = "dds")]
            seconds,
            #[cfg(feature = "dds")]
            request,
            json,
        }) => {
            let dir = tempfile_dir()?;
            let (repeats, threads) = (usize::from(repeats), usize::from(threads));
            let rows = bench::adapt::compute(&python, threads, repeats, rows as usize, &dir);
            #[cfg(feature = "dds")]
            let latency = match rows.is_ok() && seconds > 0.0 {
                true => Some(bench::adapt_latency::latency(&skill, &dir, rate, seconds, &request, 3, 5.0)),
                false => None,
            };
            let _ = std::fs::remove_dir_all(&dir);
            let report = bench::adapt::AdaptReport {
                rows: rows?,
                threads,
                repeats,
                optimised: !cfg!(debug_assertions),
                #[cfg(feature = "dds")]
                latency: latency.transpose()?,
            };
            print(&report, json)
        }
        Command::Bench(BenchCommand::Gpu { quick, threads, repeats, epochs, json }) => {
            let opts = bench::gpu::GpuOptions {
                quick,
                threads: usize::from(threads),
                repeats: usize::from(repeats),
                epochs: usize::from(epochs),
            };
            if !json {
                eprintln!("{}", bench::gpu::HEADER);
            }
            let report = bench::gpu::gpu(&opts, &mut |cell| {
                if !json {
                    eprintln!("{}", cell.line());
                }
            })?;
            print(&report, json)
        }
        Command::Bench(BenchCommand::Transfer { source, vision, robots, demos, seeds, reaches, dart, plot, json }) => {
            let source = source.unwrap_or_else(|| {
                PathBuf::from(if vision { "skills/reach-arm-a-vision" } else { "skills/reach-arm-a" })
            });
            let opts = bench::transfer::TransferOptions { source, robots, demos, seeds, reaches, dart };
            let dir = tempfile_dir()?;
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            let report = bench::transfer::transfer(&opts, &dir, &mut |what| bar.set_message(what.to_string()));
            bar.finish_and_clear();
            let _ = std::fs::remove_dir_all(&dir);
            let report = report?;
            print(&report, json)?;
            match report.plot(&plot) {
                Ok((png, svg)) => eprintln!("learning curves: {} {}", png.display(), svg.display()),
                Err(e) => eprintln!("warning: no plot: {e}"),
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Push { robots, mib, json }) => {
            let opts = bench::push::PushOptions { robots, mib, exe: std::env::current_exe()? };
            let dir = tempfile_dir()?;
            let rows = bench::push::run(&opts, &dir, &mut |s| eprintln!("bench push: {s}"));
            let _ = std::fs::remove_dir_all(&dir);
            let rows = rows?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                out!("{}", bench::push::table(&rows));
            }
            Ok(())
        }
        Command::Bridge(cli) => bridge(cli),
        Command::Bench(BenchCommand::Bridge { joints, rates, seconds, json }) => {
            if let Some(r) = rates.iter().find(|r| !(r.is_finite() && **r > 0.0 && **r <= 10_000.0)) {
                return Err(format!("--rates: {r} is not a rate in Hz above 0, at most 10000").into());
            }
            let report = bench::bridge::bridge(joints, &rates, seconds)?;
            print(&report, json)
        }
        Command::Bench(BenchCommand::Inference { fixtures, python, iters, json }) => {
            let report = bench::inference(&fixtures, &python, iters)?;
            print(&report, json)
        }
        Command::Bench(BenchCommand::Vision { skill, python, iters, rates, seconds, quick, json }) => {
            if let Some(r) = rates.iter().find(|r| !(r.is_finite() && **r > 0.0 && **r <= 10_000.0)) {
                return Err(format!("--rates: {r} is not a rate in Hz above 0, at most 10000").into());
            }
            let python = python.unwrap_or_else(|| {
                let venv = std::path::Path::new("target/venv-ros/bin/python");
                if venv.exists() { venv.display().to_string() } else { "python3".into() }
            });
            let (iters, seconds) = if quick { (20, 0.5) } else { (iters as usize, seconds) };
            let rates = if seconds > 0.0 { rates } else { Vec::new() };
            let opts = bench::vision::VisionOptions { skill, python, iters, rates, seconds };
            let dir = tempfile_dir()?;
            let report = bench::vision::vision(&opts, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            print(&report?, json)
        }
    }
}

/// stdout was closed by its reader: the command ends quietly. Only stdout's writes make it, so a
/// broken pipe elsewhere (a socket, the bundle worker) is still an error.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
struct StdoutClosed;

/// Writes to stdout; a broken pipe becomes [`StdoutClosed`].
fn emit(args: std::fmt::Arguments<'_>) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    match std::io::stdout().lock().write_fmt(args) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Box::new(StdoutClosed)),
        r => Ok(r?),
    }
}

/// The work ran but its result was refused: the adapted skill did not pass the gate, or robots refused a push.
#[derive(Debug)]
struct Rejected(String);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejected {}

/// Progress bars on stderr (hidden when it is not a terminal).
#[derive(Default)]
struct Bars(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl Progress for Bars {
    fn phase(&self, name: &str, total: u64) {
        let style = indicatif::ProgressStyle::with_template("{prefix:>15} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}")
            .expect("a valid template")
            .progress_chars("=> ");
        let bar = indicatif::ProgressBar::new(total).with_style(style).with_prefix(name.to_string());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }

    fn step(&self, message: &str) {
        if let Some(bar) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            bar.set_message(message.to_string());
            bar.inc(1);
        }
    }

    fn done(&self) {
        if let Some(bar) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

/// `skillgraft adapt`: adapts, prints the table, plots the loss curve and writes an accepted skill.
fn adapt_cli(
    skill_dir: &std::path::Path,
    episodes: &[PathBuf],
    opts: &Options,
    out: Option<PathBuf>,
    version: Option<semver::Version>,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let source = Skill::load(skill_dir)?;
    let version = version.unwrap_or_else(|| adapt::next_version(&source.manifest.version));
    let out = out.unwrap_or_else(|| adapt::default_out(&source, &version));
    // Refused before the work, not after it.
    if out.exists() {
        return Err(format!("{} already exists; choose another --out or remove it", out.display()).into());
    }
    // Merging statistics alone (a fleet's robots into one head) reads no episode.
    let eps =
        if episodes.is_empty() { Vec::new() } else { skillgraft::record::dataset::load(episodes, &source.manifest)? };
    let adapted = adapt::adapt(&source, &eps, opts, &Bars::default())?;
    let r = &adapted.report;
    let plot = match adapt::plot_loss(&source, &version, r, &out) {
        Some(Ok(paths)) => Some(paths),
        Some(Err(e)) => {
            tracing::warn!("no loss-curve plot: {e}");
            None
        }
        None => None,
    };
    let written = if r.accepted {
        Some(adapt::write(&source, &adapted, &out, Some(version.clone()), adapt::robot_of(&eps).as_deref())?)
    } else {
        None
    };
    if json {
        let v = serde_json::json!({
            "report": r,
            "skill_dir": written.as_ref().map(|s| s.dir.display().to_string()),
            "digest": written.as_ref().map(|s| s.digest.clone()),
            "plot": plot.as_ref().map(|(p, s)| [p.display().to_string(), s.display().to_string()]),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!("{} {} -> {version}", source.manifest.name, source.manifest.version);
        out!("{r}");
        if let Some((png, svg)) = &plot {
            outln!("loss curve: {} {}", png.display(), svg.display());
        }
        if let Some(s) = &written {
            outln!(
                "wrote skill `{}` {} to {} (digest {})",
                s.manifest.name,
                s.manifest.version,
                s.dir.display(),
                s.digest
            );
            if let Some(stats) = &adapted.stats {
                outln!(
                    "statistics of {} demonstration(s): {} (continue or merge them with --merge)",
                    stats.episodes.len(),
                    s.dir.join(adapt::continual::STATS_FILE).display()
                );
            }
        }
    }
    match written {
        Some(_) => Ok(()),
        None => Err(Box::new(Rejected(format!(
            "rejected: {}; nothing written (a lower --margin, more episodes or --method finetune may help)",
            r.reasons.join("; ")
        )))),
    }
}

/// The fleet commands.
fn fleet(cmd: FleetCommand) -> Result<(), Box<dyn std::error::Error>> {
    use skillgraft::fleet::{push, server};
    use std::time::Duration;
    let rt = skillgraft::fleet::http::runtime(2)?;
    let seconds = |s: f64, what: &str| -> Result<Duration, String> {
        if s.is_finite() && s > 0.0 { Ok(Duration::from_secs_f64(s)) } else { Err(format!("--{what} must be above 0")) }
    };
    let timeout = Duration::from_secs(60);
    match cmd {
        FleetCommand::Serve {
            listen,
            spool,
            cache_s,
            store_retry_s,
            channel_root,
            intake: Intake { store, trust, tokens, max_mib, http },
        } => {
            let http = http.limits()?;
            let store = store.to_str().ok_or("--store must be valid UTF-8")?.to_string();
            if !(cache_s.is_finite() && cache_s >= 0.0) {
                return Err("--cache-s must be 0 or above".into());
            }
            let store_times = skillgraft::fleet::bucket::StoreTimes {
                retries: seconds(store_retry_s, "store-retry-s")?,
                ..Default::default()
            };
            let rx = interrupted()?;
            let settings = server::ServerSettings {
                store,
                spool,
                listen,
                trust,
                tokens,
                max_mib,
                http,
                channel_root,
                cache: Duration::from_secs_f64(cache_s),
                store_times,
            };
            rt.block_on(server::serve(
                &settings,
                async {
                    let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
                },
                |addr| eprintln!("skillgraft: fleet server on http://{addr} for {}; Ctrl-C to stop", settings.store),
            ))?;
        }
        FleetCommand::Push { bundle, robots, parallel, retries, timeout_s, connect_timeout_s, json } => {
            let registry = push::Robots::load(&robots)?;
            let opts = push::PushOptions {
                timeout: seconds(timeout_s, "timeout-s")?,
                connect_timeout: seconds(connect_timeout_s, "connect-timeout-s")?,
                retries,
                parallel: parallel.unwrap_or(registry.robots.len()).max(1),
            };
            let started = std::time::Instant::now();
            let results = rt.block_on(push::push(&bundle, &registry, &opts))?;
            let failed = results.iter().filter(|r| !r.ok).count();
            if json {
                outln!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                outln!("| robot | result | swapped | attempts | seconds | robot install (ms) |");
                outln!("|---|---|---|---:|---:|---:|");
                for r in &results {
                    outln!(
                        "| {} | {} | {} | {} | {:.2} | {} |",
                        r.robot,
                        r.outcome.replace('|', "/"),
                        if r.swapped { "yes" } else { "no" },
                        r.attempts,
                        r.seconds,
                        r.install_ms.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
                    );
                }
                outln!(
                    "{} of {} robots installed it in {:.2} s",
                    results.len() - failed,
                    results.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            if failed > 0 {
                return Err(Box::new(Rejected(format!(
                    "{failed} of {} robots did not install the bundle",
                    results.len()
                ))));
            }
        }
        FleetCommand::Upload { bundle, at, json } => {
            let fleet = &at.fleet;
            let entry = rt.block_on(push::upload(&bundle, fleet, &at.token()?, Duration::from_secs(600)))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&entry)?);
            } else {
                outln!(
                    "{fleet} has {} {} (digest {}, signed by {})",
                    entry.name,
                    entry.version,
                    entry.digest,
                    entry.signer
                );
            }
        }
        FleetCommand::Catalog { at, json } => {
            let fleet = &at.fleet;
            let list = rt.block_on(push::catalog(fleet, &at.token()?, timeout))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.bundles.is_empty() {
                outln!("the catalog of {fleet} is empty");
            } else {
                out!("{list}");
            }
        }
        FleetCommand::Status { robots, json } => {
            let registry = push::Robots::load(&robots)?;
            let list = rt.block_on(push::status(&registry, Duration::from_secs(10)));
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                outln!("| robot | url | running | installed |");
                outln!("|---|---|---|---|");
                for s in &list {
                    let installed = match &s.error {
                        Some(e) => format!("unreachable: {e}"),
                        None => s.installed.join(", "),
                    };
                    outln!(
                        "| {} | {} | {} | {} |",
                        s.robot,
                        s.url,
                        s.running.as_deref().unwrap_or("-"),
                        installed.replace('|', "/")
                    );
                }
            }
        }
        FleetCommand::Activate { robot, name, version, robots } => {
            let registry = push::Robots::load(&robots)?;
            changed(rt.block_on(push::change(registry.find(&robot)?, &name, Some(&version), timeout)))?;
        }
        FleetCommand::Rollback { robot, name, robots } => {
            let registry = push::Robots::load(&robots)?;
            changed(rt.block_on(push::change(registry.find(&robot)?, &name, None, timeout)))?;
        }
        FleetCommand::Channel(c) => channel(c)?,
        FleetCommand::Rollout(r) => rollout(&rt, r)?,
        FleetCommand::Reports { at, json } => {
            let r = at.call(&rt, hyper::Method::GET, "/reports", &skillgraft::fleet::client::Upload::Empty)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r.body)?);
            } else {
                outln!("| robot | channel | serial | active | last poll | received |");
                outln!("|---|---|---:|---|---|---|");
                for x in r.body["reports"].as_array().into_iter().flatten() {
                    let active: Vec<String> = x["active"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
                        .collect();
                    outln!(
                        "| {} | {} | {} | {} | {} | {} |",
                        x["robot"].as_str().unwrap_or("?"),
                        x["channel"].as_str().unwrap_or("?"),
                        x["serial"].as_u64().map_or("-".into(), |s| s.to_string()),
                        active.join(", "),
                        x["error"].as_str().unwrap_or("ok"),
                        x["received"].as_str().unwrap_or("?")
                    );
                }
            }
        }
    }
    Ok(())
}

fn rollout(rt: &tokio::runtime::Runtime, cmd: RolloutCommand) -> Result<(), Box<dyn std::error::Error>> {
    use skillgraft::fleet::client::Upload;
    let (target, method, path, body, json) = match cmd {
        RolloutCommand::Start(start) => {
            let RolloutStart {
                target,
                skill,
                version,
                key,
                root,
                trust,
                valid,
                new,
                back,
                waves,
                auto,
                soak,
                threshold,
                min_robots,
            } = *start;
            let auto = auto.then(
                || serde_json::json!({ "soak_s": soak.as_secs(), "threshold": threshold, "min_robots": min_robots }),
            );
            let (new, back) = match (skill, version, key, root, new, back) {
                (Some(skill), Some(version), Some(key), Some(root), _, _) => {
                    rollout_indexes(rt, &target, (&skill, &version), (&key, &root, &trust), valid)?
                }
                (_, _, _, _, Some(new), Some(back)) => (envelope(&new)?, envelope(&back)?),
                _ => return Err("give SKILL VERSION with --key and --root, or --new and --back".into()),
            };
            let body = serde_json::json!({ "new": new, "back": back, "waves": waves, "auto": auto });
            let path = format!("/rollouts/{}", target.channel);
            (target, hyper::Method::POST, path, Upload::Json(body), false)
        }
        RolloutCommand::Advance { target } => {
            let path = format!("/rollouts/{}/advance", target.channel);
            (target, hyper::Method::POST, path, Upload::Empty, false)
        }
        RolloutCommand::Halt { target } => {
            let path = format!("/rollouts/{}/halt", target.channel);
            (target, hyper::Method::POST, path, Upload::Empty, false)
        }
        RolloutCommand::Status { target, json } => {
            let path = format!("/rollouts/{}", target.channel);
            (target, hyper::Method::GET, path, Upload::Empty, json)
        }
    };
    let r = target.at.call(rt, method, &path, &body)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&r.body)?);
        return Ok(());
    }
    let ro = r.body.get("rollout").unwrap_or(&r.body);
    let waves: Vec<String> = ro["waves"].as_array().into_iter().flatten().map(|w| format!("{w} %")).collect();
    outln!(
        "channel {}: {} at wave {} of {} ({}); new serial {}, back serial {}",
        ro["channel"].as_str().unwrap_or("?"),
        ro["state"].as_str().unwrap_or("?"),
        ro["stage"].as_u64().unwrap_or(0) + 1,
        waves.len(),
        waves.join(", "),
        ro["new_serial"],
        ro["back_serial"]
    );
    if let Some(why) = ro["reason"].as_str() {
        outln!("last change: {why}");
    }
    if let Some(w) = r.body.get("waves").and_then(|w| w.as_array()) {
        outln!("| wave | robots | on the new index | last poll failed |");
        outln!("|---|---:|---:|---:|");
        for x in w {
            outln!(
                "| up to {} % | {} | {} | {} |",
                x["up_to_percent"],
                x["robots"],
                x["on_new"],
                x["last_poll_failed"]
            );
        }
    }
    Ok(())
}

/// The two indexes a rollout of `skill` `version` starts with, signed here with `key`: the
/// channel's index with that version (new) and as it is (back), under the next two serials.
/// Nothing is signed on the server's word: the channel's index is checked against the key list
/// and that against `root`, as a robot checks them, and the bundle is downloaded from the
/// catalog, checked against `trust` and hashed here.
fn rollout_indexes(
    rt: &tokio::runtime::Runtime,
    target: &RolloutTarget,
    (skill, version): (&str, &semver::Version),
    (key, root, trust): (&std::path::Path, &std::path::Path, &[PathBuf]),
    valid: std::time::Duration,
) -> Result<(skillgraft::fleet::channel::Envelope, skillgraft::fleet::channel::Envelope), Box<dyn std::error::Error>> {
    use skillgraft::fleet::channel as ch;
    use skillgraft::fleet::client::{Client, Upload, join};
    use skillgraft::skill::bundle;
    let (at, channel) = (&target.at, target.channel.as_str());
    let secret = bundle::read_secret(key)?;
    let root = ch::pinned_root(root)?;
    let signed = |path: &str| -> Result<ch::Envelope, Box<dyn std::error::Error>> {
        let r = at.call(rt, hyper::Method::GET, path, &Upload::Empty)?;
        Ok(serde_json::from_value(r.body).map_err(|e| format!("{}{path}: not a signed document: {e}", at.fleet))?)
    };
    let keys = ch::read_root_signed(&signed("/keys")?, &root)?;
    let signer = bundle::key_id(&secret.verifying_key());
    if !keys.keys.contains(&signer) {
        return Err(format!(
            "{}: this fleet key ({signer}) is not in the fleet's key list (version {}), so robots would refuse what it signs; sign with a listed key, or publish a key list that lists it",
            key.display(),
            keys.version
        )
        .into());
    }
    let now = std::time::SystemTime::now();
    let current = ch::read_index(&keys, &signed(&format!("/channels/{channel}"))?, channel, now)?;
    if current.skills.iter().any(|e| e.name == skill && e.version == *version) {
        return Err(format!("channel {channel} offers {skill} {version} already (serial {})", current.serial).into());
    }
    let token = at.token()?;
    let timeout = std::time::Duration::from_secs(600);
    let catalog = rt.block_on(skillgraft::fleet::push::catalog(&at.fleet, &token, timeout))?;
    let Some(listed) = catalog.bundles.iter().find(|b| b.name == skill && b.version == *version) else {
        return Err(format!(
            "{skill} {version} is not in the catalog of {}; upload it first (`fleet upload`)",
            at.fleet
        )
        .into());
    };
    let scratch = Scratch::new(&format!("rollout-{skill}-{version}.skill"))
        .map_err(|e| format!("no scratch file for the download in {}: {e}", std::env::temp_dir().display()))?;
    let uri = join(&at.fleet, &format!("/catalog/{skill}/{version}"))?;
    let status = rt.block_on(Client::new(std::time::Duration::from_secs(10)).resume(
        uri,
        &token,
        &scratch.0,
        listed.bytes,
        timeout,
    ))?;
    if let Some(status) = status {
        return Err(format!("{}: the download of {skill} {version} was answered {status}", at.fleet).into());
    }
    let bytes = std::fs::read(&scratch.0).map_err(skillgraft::file::FileError::at("read", &scratch.0))?;
    // Signed by a key the robots trust, whole, and within the limits a robot applies.
    let trusted = bundle::read_trusted(trust)?;
    let contents = bundle::verify(&scratch.0, &trusted, bundle::Limits::mib(512))?.contents;
    if (contents.name.as_str(), &contents.version) != (skill, version) || bytes.len() as u64 != listed.bytes {
        return Err(format!(
            "{}: what the catalog serves as {skill} {version} is {} {} of {} bytes, not the {} bytes it lists; ask whoever runs the server",
            at.fleet,
            contents.name,
            contents.version,
            bytes.len(),
            listed.bytes
        )
        .into());
    }
    let entry = ch::Entry {
        name: skill.to_string(),
        version: version.clone(),
        digest: ch::digest(&bytes),
        bytes: listed.bytes,
    };
    let mut skills = current.skills.clone();
    match skills.iter_mut().find(|e| e.name == skill) {
        Some(e) => *e = entry,
        None => skills.push(entry),
    }
    // Above the channel's serial and any an earlier rollout used (a withdrawn one's too: robots
    // may have fetched it).
    let minute = std::time::Duration::from_secs(60);
    let status = at.ask(rt, (hyper::Method::GET, &format!("/rollouts/{channel}")), &Upload::Empty, minute)?;
    let used = status.body["serials_used"].as_u64().unwrap_or(0).max(current.serial);
    let (Some(new_serial), Some(back_serial)) = (used.checked_add(1), used.checked_add(2)) else {
        return Err(format!("channel {channel}'s serial {used} leaves no room above it").into());
    };
    let offered = |skills: &[ch::Entry]| skills.iter().map(|e| format!("{} {}", e.name, e.version)).collect::<Vec<_>>();
    eprintln!(
        "channel {channel} serial {} offers {:?}: new index serial {new_serial} offers {:?}, back index serial {back_serial} the same as now",
        current.serial,
        offered(&current.skills),
        offered(&skills)
    );
    let new = ch::index(&secret, channel, new_serial, skills, valid, now);
    let back = ch::index(&secret, channel, back_serial, current.skills, valid, now);
    Ok((new, back))
}

/// Reads a signed document written by `fleet channel keys` or `sign`.
fn envelope(path: &std::path::Path) -> Result<skillgraft::fleet::channel::Envelope, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(skillgraft::file::FileError::at("read", path))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a signed document ({e}); write one with `skillgraft fleet channel keys` or `sign`",
            path.display()
        )
        .into()
    })
}

fn write_envelope(
    path: &std::path::Path,
    env: &skillgraft::fleet::channel::Envelope,
) -> Result<(), Box<dyn std::error::Error>> {
    let text = serde_json::to_string_pretty(env)?;
    Ok(skillgraft::file::write_atomic(path, text.as_bytes())?)
}

fn channel(cmd: ChannelCommand) -> Result<(), Box<dyn std::error::Error>> {
    use skillgraft::fleet::channel::{self as ch, Entry, Seen};
    use skillgraft::skill::bundle;
    let now = std::time::SystemTime::now();
    match cmd {
        ChannelCommand::Keys { root, fleet_keys, version, valid, out } => {
            let root = bundle::read_secret(&root)?;
            let keys = bundle::read_trusted(&fleet_keys)?;
            if keys.is_empty() {
                return Err("the --fleet-key files hold no key; give the .pub files `skillgraft keys new` wrote".into());
            }
            write_envelope(&out, &ch::key_list(&root, &keys, version, valid, now))?;
            outln!(
                "wrote {}: {} fleet key(s), version {version}, valid {}",
                out.display(),
                keys.len(),
                humantime::format_duration(valid)
            );
        }
        ChannelCommand::Sign { key, channel, serial, valid, out, bundles } => {
            let key = bundle::read_secret(&key)?;
            let mut skills: Vec<Entry> = Vec::new();
            for path in &bundles {
                let contents = bundle::peek(path)?;
                let bytes = std::fs::read(path).map_err(skillgraft::file::FileError::at("read", path))?;
                let (name, version) = (contents.name.clone(), contents.version.clone());
                if skills.iter().any(|e| e.name == name) {
                    return Err(
                        format!("two bundles of skill `{name}`: a channel offers one version of each skill").into()
                    );
                }
                skills.push(Entry { name, version, digest: ch::digest(&bytes), bytes: bytes.len() as u64 });
            }
            write_envelope(&out, &ch::index(&key, &channel, serial, skills, valid, now))?;
            outln!(
                "wrote {}: channel {channel}, serial {serial}, {} skill(s), valid {}",
                out.display(),
                bundles.len(),
                humantime::format_duration(valid)
            );
        }
        ChannelCommand::Publish { at, keys, index } => {
            use skillgraft::fleet::client::Upload;
            let fleet = &at.fleet;
            let rt = skillgraft::fleet::http::runtime(1)?;
            let mut docs = Vec::new();
            if let Some(k) = &keys {
                docs.push(("/keys".to_string(), envelope(k)?, "key list".to_string()));
            }
            if let Some(i) = &index {
                let env = envelope(i)?;
                let doc: ch::Index = serde_json::from_str(&env.payload)
                    .map_err(|e| format!("{}: not a channel index ({e})", i.display()))?;
                let what = format!("channel {} serial {}", doc.channel, doc.serial);
                docs.push((format!("/channels/{}", doc.channel), env, what));
            }
            for (path, env, what) in docs {
                let body = Upload::Json(serde_json::to_value(env)?);
                let r = at.ask(&rt, (hyper::Method::PUT, &path), &body, std::time::Duration::from_secs(30))?;
                match r.status.as_u16() {
                    201 => outln!("{fleet} now serves the {what}"),
                    200 => outln!("{fleet} already served the {what}"),
                    _ => return Err(format!("{fleet} refused the {what} ({}): {}", r.status, r.error()).into()),
                }
            }
        }
        ChannelCommand::Verify { root, keys, channel, state, index, json } => {
            let root_key = &ch::pinned_root(&root)?;
            let seen = match &state {
                Some(p) => Seen::load(p)?,
                None => Seen::default(),
            };
            let accepted = ch::verify(root_key, &envelope(&keys)?, &envelope(&index)?, &channel, &seen, now)?;
            if let Some(p) = &state {
                accepted.seen.save(p)?;
            }
            let i = &accepted.index;
            if json {
                outln!("{}", serde_json::to_string_pretty(&serde_json::json!({"keys": accepted.keys, "index": i}))?);
            } else {
                outln!(
                    "channel {} serial {} (key list version {}), valid until {}",
                    i.channel,
                    i.serial,
                    accepted.keys.version,
                    i.expires
                );
                for e in &i.skills {
                    outln!("  {} {}  {}  {} bytes", e.name, e.version, e.digest, e.bytes);
                }
            }
        }
    }
    Ok(())
}

/// Prints a robot's answer to an activation or rollback; a refusal exits with 3.
fn changed(
    r: Result<skillgraft::fleet::push::Changed, skillgraft::fleet::FleetError>,
) -> Result<(), Box<dyn std::error::Error>> {
    match r {
        Ok(c) => {
            outln!("{c}");
            Ok(())
        }
        Err(e @ skillgraft::fleet::FleetError::Refused { .. }) => Err(Box::new(Rejected(e.to_string()))),
        Err(e) => Err(e.into()),
    }
}

/// The skill store commands.
fn store(cmd: StoreCommand) -> Result<(), Box<dyn std::error::Error>> {
    use skillgraft::skill::store::{Entry, Store};
    let show = |e: &Entry| -> Result<(), Box<dyn std::error::Error>> {
        let versions: Vec<String> = e.versions.iter().map(|v| v.to_string()).collect();
        let previous = e.state.previous.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "none".into());
        outln!("{}: active {}, previous {previous}, installed {}", e.name, e.state.active, versions.join(", "));
        Ok(())
    };
    match cmd {
        StoreCommand::Install { bundle, store, trust, max_mib, worker_mib } => {
            let trusted = skillgraft::skill::bundle::read_trusted(&trust)?;
            let limits = skillgraft::skill::bundle::Limits::mib(max_mib);
            let mut sandbox = skillgraft::skill::sandbox::Sandbox::current(max_mib)?;
            sandbox.memory_mib = worker_mib.unwrap_or(sandbox.memory_mib);
            show(&Store::open(&store)?.sandboxed(sandbox).install(&bundle, &trusted, limits)?)?;
        }
        StoreCommand::Identify { store, robot, fleet } => {
            let identity = skillgraft::skill::store::Identity { robot, fleet };
            Store::open(&store)?.identify(&identity)?;
            match &identity.fleet {
                Some(f) => outln!("this robot is {} of fleet {f}", identity.robot),
                None => outln!("this robot is {}", identity.robot),
            }
        }
        StoreCommand::List { store, json } => {
            let list = Store::open(&store)?.list()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                outln!("no skills installed in {}", store.display());
            } else {
                for e in &list {
                    show(e)?;
                }
            }
        }
        StoreCommand::Activate { name, version, store } => show(&Store::open(&store)?.activate(&name, &version)?)?,
        StoreCommand::Rollback { name, store } => show(&Store::open(&store)?.rollback(&name)?)?,
    }
    Ok(())
}

/// The transport of the node `args` names, on the domain of `ROS_DOMAIN_ID`.
fn connect(
    args: &skillgraft::ros::args::RosArgs,
) -> Result<std::sync::Arc<dyn skillgraft::ros::transport::Transport>, Box<dyn std::error::Error>> {
    Ok(std::sync::Arc::from(skillgraft::ros::transport::connect(args)?))
}

/// `skillgraft sim`: a camera picture, demonstrations, or the node.
fn sim(cli: SimCli) -> Result<(), Box<dyn std::error::Error>> {
    use skillgraft::sim;
    if let Some(SimSub::Camera { robot, seed, ticks, scale, out }) = cli.sub {
        let robot = sim::robot(&robot)?;
        let task = sim::tasks(seed, 1, robot.home)[0];
        let (q, target) = sim::camera::after_ticks(&robot, &task, ticks);
        let png = robot.camera.png(&robot.camera.image(&robot, &q, target), scale)?;
        std::fs::write(&out, &png).map_err(skillgraft::file::FileError::at("write the picture", &out))?;
        eprintln!(
            "wrote what {}'s camera sees ({}x{}, shown {scale}x) to {}",
            robot.name,
            robot.camera.width,
            robot.camera.height,
            out.display()
        );
        return Ok(());
    }
    let robot = cli.robot.ok_or("say which simulated robot: --robot arm-a, arm-b or arm-c")?;
    match (cli.demos, cli.out) {
        (Some(demos), Some(out)) => {
            let robot = sim::robot(&robot)?;
            let tasks = sim::tasks(cli.seed, demos, robot.home);
            let options =
                sim::episodes::RecordOptions { noise: cli.noise, camera: cli.camera, compression: cli.compression };
            let files = sim::episodes::record_with(&robot, &tasks, &out, &format!("sim-{}", robot.name), &options)?;
            eprintln!("wrote {} episode(s) of {}'s expert to {}", files.len(), robot.name, out.display());
            Ok(())
        }
        _ => sim_node(&robot, cli.seed, &cli.ros_args),
    }
}

/// Runs a simulated arm as a node until Ctrl-C.
fn sim_node(robot: &str, seed: u64, ros_args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let rx = interrupted()?;
    let robot = skillgraft::sim::robot(robot)?;
    let args = skillgraft::ros::args::RosArgs::parse(ros_args, &[], "sim")?;
    let transport = connect(&args)?;
    let _node = skillgraft::sim::node::SimNode::start(transport, &args, robot.clone(), seed)?;
    eprintln!(
        "simulated {} as node {}: joints on {}, target on {}, commands on {}, ~/reset, ~/tip; Ctrl-C to stop",
        robot.name,
        args.fully_qualified_name(),
        args.resolve_topic(skillgraft::sim::episodes::JOINT_TOPIC)?,
        args.resolve_topic(skillgraft::sim::episodes::TARGET_TOPIC)?,
        args.resolve_topic(skillgraft::sim::episodes::COMMAND_TOPIC)?
    );
    let _ = rx.recv();
    Ok(())
}

/// `skillgraft bridge` and `skillgraft bridge sim-mcu`, until Ctrl-C.
fn bridge(cli: BridgeCli) -> Result<(), Box<dyn std::error::Error>> {
    use firmware_bridge::protocol::Mode;
    let rx = interrupted()?;
    if let Some(BridgeSub::SimMcu { joints, link, watchdog_ms, feedback_ms }) = cli.sim {
        let mcu = firmware_bridge::sim::SimMcu::start(firmware_bridge::sim::SimOptions {
            joints,
            watchdog_ms,
            feedback_period_ms: feedback_ms.max(1),
            tick_hz: 1000.0,
            link: link.clone(),
        })?;
        // The path alone on stdout, for scripts; the rest on stderr.
        outln!("{}", mcu.path().display());
        let via = link.map(|l| format!(" (and {})", l.display())).unwrap_or_default();
        eprintln!(
            "simulated controller, {joints} joints, on {}{via}: `skillgraft bridge --port {}`; Ctrl-C to stop",
            mcu.path().display(),
            mcu.path().display()
        );
        let failed = loop {
            match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(e) = mcu.failure() {
                        break Some(e);
                    }
                }
                _ => break None,
            }
        };
        let s = mcu.stats();
        eprintln!(
            "sim-mcu: {} frames received, {} dropped as invalid, {} commands applied, {} refused, {} watchdog trips, {} frames unsent",
            s.decode.frames,
            s.decode.total_errors(),
            s.commands,
            s.rejected,
            s.watchdog_trips,
            mcu.tx_dropped()
        );
        return match failed {
            Some(e) => Err(format!("the simulated controller stopped: {e}").into()),
            None => Ok(()),
        };
    }
    let port = cli.port.ok_or("give the controller's serial port with --port PATH (e.g. /dev/ttyACM0), or run `skillgraft bridge sim-mcu` for a simulated one")?;
    if !(cli.diagnostics_period.is_finite() && cli.diagnostics_period > 0.0) {
        return Err(format!("--diagnostics-period {}: give seconds above 0", cli.diagnostics_period).into());
    }
    let opts = skillgraft::bridge::BridgeOptions {
        port: port.clone(),
        baud: cli.baud,
        rate_hz: cli.rate,
        joints: cli.joints,
        mode: match cli.mode {
            ModeArg::Position => Mode::Position,
            ModeArg::Velocity => Mode::Velocity,
            ModeArg::Effort => Mode::Effort,
        },
        action_topic: cli.action_topic.clone(),
        joint_state_topic: cli.joint_states.clone(),
        watchdog_ms: cli.watchdog_ms,
        feedback_period_ms: cli.feedback_ms,
        link_timeout_ms: cli.link_timeout_ms,
        max_action_age_ms: cli.max_action_age_ms,
        diagnostics_period: std::time::Duration::from_secs_f64(cli.diagnostics_period),
    };
    opts.check()?;
    let args = skillgraft::ros::args::RosArgs::parse(&[], &[], "bridge")?;
    let transport = connect(&args)?;
    let _bridge = skillgraft::bridge::Bridge::start(transport, opts)?;
    eprintln!(
        "bridge on {}: {} -> controller -> {}, link statistics on /diagnostics; Ctrl-C to stop",
        port.display(),
        cli.action_topic,
        cli.joint_states
    );
    let _ = rx.recv();
    Ok(())
}

/// Records demonstrations of the simulated arm's expert through a running node.
#[cfg(feature = "dds")]
fn teleop(opts: &skillgraft::sim::teleop::TeleopOptions) -> Result<(), Box<dyn std::error::Error>> {
    let args = skillgraft::ros::args::RosArgs::parse(&[], &[], "teleop")?;
    let n = opts.episodes;
    skillgraft::sim::teleop::teleop(connect(&args)?, &args, opts, &mut |k| eprintln!("demonstration {k} of {n} done"))?;
    Ok(())
}

/// The transfer demo.
#[cfg(feature = "dds")]
#[allow(clippy::too_many_arguments)]
fn demo(
    skill: PathBuf,
    robot: String,
    demos: u16,
    reaches: u16,
    request: String,
    plot: &std::path::Path,
    keep: Option<PathBuf>,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = match &keep {
        Some(k) => {
            std::fs::create_dir_all(k)?;
            k.clone()
        }
        None => tempfile_dir()?,
    };
    let opts = demo::DemoOptions {
        skill,
        robot,
        demos: usize::from(demos),
        reaches: usize::from(reaches),
        request,
        domain: 90 + (std::process::id() % 40) as u16,
        dir: dir.clone(),
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let report = demo::run(&opts, &mut |what| bar.set_message(what.to_string()));
    bar.finish_and_clear();
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = report?;
    print(&report, json)?;
    match report.plot(plot) {
        Ok((png, svg)) => eprintln!("plot: {} {}", png.display(), svg.display()),
        Err(e) => eprintln!("warning: no plot: {e}"),
    }
    Ok(())
}

/// A file in the system's temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// A new empty file, owner-only, under a name nobody could have made ahead (a file or link
    /// planted there would be taken for a part download, or written through).
    fn new(what: &str) -> std::io::Result<Scratch> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut salt = [0u8; 8];
        getrandom::fill(&mut salt).map_err(std::io::Error::other)?;
        let path = std::env::temp_dir().join(format!("skillgraft-{}-{}-{what}", std::process::id(), hex::encode(salt)));
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh folder under the system's temporary folder, for a benchmark's files.
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("skillgraft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `skillgraft agent`: polls the channel, brings the store to its index, reports.
#[allow(clippy::too_many_arguments)]
fn agent(
    fleet: String,
    token_file: PathBuf,
    channel: String,
    root: PathBuf,
    trust: Vec<PathBuf>,
    store: PathBuf,
    (interval, report_every): (std::time::Duration, std::time::Duration),
    once: bool,
    max_mib: u64,
    inbox: Option<skillgraft::fleet::push::Robot>,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use skillgraft::fleet::agent::{AgentSettings, follow};
    use skillgraft::skill::bundle;
    let root_key = &skillgraft::fleet::channel::pinned_root(&root)?;
    if !skillgraft::skill::manifest::valid_name(&channel) {
        return Err(format!("{channel:?} is not a channel name").into());
    }
    let store = skillgraft::skill::store::Store::open(&store)?;
    let settings = AgentSettings {
        token: skillgraft::fleet::auth::read_token(&token_file)?,
        fleet,
        channel,
        root: *root_key,
        trusted: bundle::read_trusted(&trust)?,
        limits: bundle::Limits::mib(max_mib),
        timeout: std::time::Duration::from_secs(600),
        inbox,
        robot: store.identity()?.robot,
    };
    // `--once`: one round, reported whatever it found; its error is the command's.
    let (_keep, stop) = match once {
        true => {
            let (tx, rx) = std::sync::mpsc::channel();
            (Some(tx), rx)
        }
        false => (None, interrupted()?),
    };
    let report = if once { std::time::Duration::ZERO } else { report_every };
    let every = skillgraft::fleet::agent::Every { poll: interval, report };
    let mut failed: Option<Box<dyn std::error::Error>> = None;
    follow(&settings, &store, every, stop, |polled| {
        let said = match polled {
            Ok(p) if json => serde_json::to_string(&p).map_err(Into::into).and_then(|t| emit(format_args!("{t}\n"))),
            Ok(p) => {
                let done: Vec<String> = p
                    .changes
                    .iter()
                    .filter(|c| c.action != "unchanged")
                    .map(|c| format!("{} {} {}", c.action, c.name, c.version))
                    .collect();
                let what = if done.is_empty() { "up to date".to_string() } else { done.join(", ") };
                emit(format_args!("channel {} serial {}: {what}\n", settings.channel, p.serial))
            }
            Err(e) if once => Err(e.to_string().into()),
            Err(e) => {
                tracing::error!("{e}");
                Ok(())
            }
        };
        failed = said.err();
        !once && failed.is_none()
    })?;
    failed.map_or(Ok(()), Err)
}

/// A share of the robots, `10` or `10%`.
fn percent(text: &str) -> Result<u8, String> {
    text.trim().trim_end_matches('%').trim().parse().map_err(|_| {
        format!("{text:?} is not a share of the robots: give a whole number from 1 to 100, e.g. 10 or 10%")
    })
}

/// Ctrl-C or SIGTERM (ctrlc's `termination` feature), as a channel that receives once per
/// signal; set up before the work starts, so a signal during start-up still stops it cleanly.
fn interrupted() -> Result<std::sync::mpsc::Receiver<()>, ctrlc::Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })?;
    Ok(rx)
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
    let rx = interrupted()?;
    let (node, summary) = skillgraft::node::launch(skill, params_file, ros_args, policy)?;
    eprintln!("skillgraft: {summary}; Ctrl-C to stop");
    let _ = rx.recv();
    eprintln!("skillgraft: stopping");
    node.stop();
    Ok(())
}

fn episodes(cmd: EpisodesCommand) -> Result<(), Box<dyn std::error::Error>> {
    use skillgraft::record::{dataset, episode, summary};
    match cmd {
        EpisodesCommand::List { dir, json } => {
            let rows = summary::list(&dir)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                outln!("no episodes in {}", dir.display());
            } else {
                out!("{}", summary::table(&rows));
            }
        }
        EpisodesCommand::Show { file, skill, json } => {
            let m = dataset::paired_manifest(&file, skill.as_deref())?;
            print(&summary::summarise(&file, m.as_ref())?, json)?;
        }
        EpisodesCommand::Export { file, csv: _, skill } => {
            let m = dataset::paired_manifest(&file, skill.as_deref())?
                .ok_or("this episode names no skill folder that exists here; give one with --skill DIR")?;
            let ep = dataset::load_episode(&file, &m)?;
            out!("{}", dataset::csv(&ep, &m));
            eprintln!("{} samples ({} actions dropped for a stale observation)", ep.samples.len(), ep.stale);
        }
        EpisodesCommand::Recover { dir } => {
            let parts: Vec<PathBuf> = episode::list(&dir)?
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with(episode::PART_SUFFIX))
                .collect();
            if parts.is_empty() {
                outln!("no unfinished episodes in {}", dir.display());
            }
            for p in parts {
                let r = episode::recover(&p)?;
                outln!(
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
        outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        out!("{report}");
    }
    Ok(())
}
