//! The firmware bridge end to end, as real processes over DDS inside `unshare -n`: the node runs a
//! skill, `skillgraft bridge` sends its actions over a pseudo-terminal to `skillgraft bridge
//! sim-mcu`, and the controller's feedback comes back as the JointState the node observes. The
//! bridge reports the link on /diagnostics, notices when the controller dies, and reconnects
//! when it comes back under the same path.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use skillgraft::msg::cdr;
use skillgraft::msg::*;
use skillgraft::ros::dds::{DdsConfig, DdsTransport};
use skillgraft::ros::transport::{NodeIdentity, Qos, Transport};

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ROS_DOMAIN_ID", common::dds_domain().to_string())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

/// Starts the simulated controller behind `link`; returns it with the pty path it printed.
fn sim_mcu(link: &Path, log: &Path) -> (Proc, String) {
    let mut p = spawn(&["bridge", "sim-mcu", "--joints", "3", "--link", link.to_str().unwrap()], log);
    // Read on another thread, so a controller that prints nothing fails the wait, not blocks it.
    let mut out = BufReader::new(p.0.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = out.read_line(&mut line).map(|_| tx.send(line));
    });
    let line = common::wait_for("sim-mcu's pty path on its stdout", || rx.try_recv().ok());
    (p, line.trim().to_string())
}

fn value(s: &DiagnosticStatus, key: &str) -> String {
    s.values
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.clone())
        .unwrap_or_else(|| panic!("{key} missing: {s:?}"))
}

/// Waits for a message on `rx` that satisfies `ok`.
fn wait_for<T>(rx: &mpsc::Receiver<T>, limit: Duration, mut ok: impl FnMut(&T) -> bool) -> Option<T> {
    let end = Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(m) if ok(&m) => return Some(m),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn the_node_drives_a_simulated_controller_through_the_bridge_and_its_joint_states_come_back() {
    if !common::isolated("the_node_drives_a_simulated_controller_through_the_bridge_and_its_joint_states_come_back") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("mcu");
    let logs = |name: &str| dir.path().join(format!("{name}.log"));
    let (mcu, pty) = sim_mcu(&link, &logs("sim-mcu"));
    assert!(pty.starts_with("/dev/pts/"), "sim-mcu printed {pty:?}");
    let _bridge = spawn(
        &["bridge", "--port", link.to_str().unwrap(), "--rate", "100", "--diagnostics-period", "0.5"],
        &logs("bridge"),
    );
    let _node = spawn(&["run", "skills/reach-arm-a"], &logs("node"));

    let peer = DdsTransport::new(
        NodeIdentity { name: "peer".into(), namespace: "/".into() },
        &DdsConfig::local(common::dds_domain()).unwrap(),
    )
    .unwrap();
    let (jtx, joints) = mpsc::channel();
    peer.subscribe(
        "/joint_states",
        JointState::TYPE,
        Qos::SENSOR_DATA_DEEP,
        Box::new(move |s| {
            let _ = jtx.send(cdr::decode::<JointState>(&s.cdr, JointState::TYPE).unwrap());
        }),
    )
    .unwrap();
    let (dtx, diagnostics) = mpsc::channel();
    peer.subscribe(
        "/diagnostics",
        DiagnosticArray::TYPE,
        Qos::RELIABLE,
        Box::new(move |s| {
            for st in cdr::decode::<DiagnosticArray>(&s.cdr, DiagnosticArray::TYPE).unwrap().status {
                if st.name.starts_with("skillgraft bridge: ") {
                    let _ = dtx.send(st);
                }
            }
        }),
    )
    .unwrap();
    let mut target = peer.publisher("/target", Point::TYPE, Qos::RELIABLE).unwrap();
    let goal = cdr::encode(&Point { x: 0.45, y: 0.25, z: 0.0 }).unwrap();
    let feed = |target: &mut Box<dyn skillgraft::ros::transport::RawPublisher>| target.publish(&goal).unwrap();

    let show = || {
        ["sim-mcu", "bridge", "node"]
            .iter()
            .map(|n| format!("--- {n}\n{}", std::fs::read_to_string(logs(n)).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The controller's joints arrive, and move under the skill's actions.
    let first = wait_for(&joints, Duration::from_secs(30), |m: &JointState| m.position.len() == 3)
        .unwrap_or_else(|| panic!("no JointState from the bridge\n{}", show()));
    assert_eq!(first.name, vec!["shoulder", "elbow", "wrist"]);
    let mut moved = None;
    let end = Instant::now() + Duration::from_secs(30);
    while moved.is_none() && Instant::now() < end {
        feed(&mut target);
        moved = wait_for(&joints, Duration::from_millis(100), |m: &JointState| {
            m.position.iter().zip(&first.position).any(|(a, b)| (a - b).abs() > 0.02)
        });
    }
    assert!(moved.is_some(), "the skill's actions never moved the controller's joints\n{}", show());

    let ok = wait_for(&diagnostics, Duration::from_secs(10), |s: &DiagnosticStatus| {
        feed(&mut target);
        value(s, "device.state") == "active" && s.values.iter().any(|kv| kv.key == "rtt_p50_us")
    })
    .unwrap_or_else(|| panic!("no active bridge on /diagnostics\n{}", show()));
    assert_eq!(ok.level, DiagnosticStatus::OK, "{ok:?}");
    assert_eq!(value(&ok, "link.connected"), "true");
    assert_eq!(value(&ok, "device.configured"), "true");
    assert!(value(&ok, "actions_received").parse::<u64>().unwrap() > 0);
    assert!(value(&ok, "commands_sent").parse::<u64>().unwrap() > 0);
    assert!(value(&ok, "rtt_p50_us").parse::<u64>().unwrap() > 0);
    for kind in ["cobs", "truncated", "crc", "version", "unknown_kind", "payload", "overflow"] {
        assert_eq!(value(&ok, &format!("rx_errors.{kind}")), "0", "{ok:?}");
    }

    // The controller dies: the bridge says so.
    drop(mcu);
    let lost =
        wait_for(&diagnostics, Duration::from_secs(10), |s: &DiagnosticStatus| value(s, "link.connected") == "false")
            .unwrap_or_else(|| panic!("the bridge never noticed the controller die\n{}", show()));
    assert_eq!(lost.level, DiagnosticStatus::ERROR);
    assert!(lost.message.contains("no link to the controller"), "{}", lost.message);

    // It comes back under the same link: the bridge reconnects and joint states flow again.
    let (_mcu, pty2) = sim_mcu(&link, &logs("sim-mcu"));
    assert!(pty2.starts_with("/dev/pts/"), "sim-mcu printed {pty2:?}");
    let back = wait_for(&diagnostics, Duration::from_secs(20), |s: &DiagnosticStatus| {
        feed(&mut target);
        value(s, "link.connected") == "true" && value(s, "device.state") == "active"
    })
    .unwrap_or_else(|| panic!("no reconnect\n{}", show()));
    assert!(value(&back, "link.connects").parse::<u64>().unwrap() >= 2);
    assert!(value(&back, "link.losses").parse::<u64>().unwrap() >= 1);
    while joints.try_recv().is_ok() {}
    assert!(wait_for(&joints, Duration::from_secs(5), |m: &JointState| m.position.len() == 3).is_some());
}

#[test]
fn the_bridge_without_a_port_or_with_a_bad_one_says_what_to_do() {
    let err = common::fails(&["bridge"]);
    assert!(err.contains("--port PATH") && err.contains("sim-mcu"), "{err}");
    let err = common::fails(&["bridge", "sim-mcu", "--joints", "0"]);
    assert!(err.contains("--joints 0: give 1 to 16"), "{err}");
    let err = common::fails(&["bridge", "--port", "/dev/null", "--baud", "12345"]);
    assert!(err.contains("--baud 12345 is not a supported rate") && err.contains("115200"), "{err}");
    let many: Vec<String> = (0..17).map(|i| format!("j{i}")).collect();
    let err = common::fails(&["bridge", "--port", "/dev/null", "--joints", &many.join(",")]);
    assert!(err.contains("a controller takes 1 to 16"), "{err}");
    let err = common::fails(&["bridge", "--port", "/dev/null", "--joints", "a,,c"]);
    assert!(err.contains("empty name"), "{err}");
}
