//! The host link against the simulated controller over a real pseudo-terminal: configuration,
//! commands and feedback with round trips, the watchdog taking the controller safe when commands
//! stop, link loss when the controller goes away, and reconnection when it comes back.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firmware_bridge::link::{Link, LinkEvent, LinkOptions};
use firmware_bridge::protocol::{Command, Config, Feedback, JointTarget, Mode};
use firmware_bridge::serial::Port;
use firmware_bridge::sim::{SimMcu, SimOptions};

fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

fn sim(link: &Path) -> SimMcu {
    SimMcu::start(SimOptions {
        joints: 2,
        watchdog_ms: 100,
        feedback_period_ms: 20,
        tick_hz: 1000.0,
        link: Some(link.to_path_buf()),
    })
    .unwrap()
}

fn velocity(v: f32) -> Command {
    Command {
        mode: Mode::Velocity,
        joints: (0..2).map(|_| JointTarget { velocity: v, ..Default::default() }).collect(),
    }
}

#[test]
fn commands_move_the_joints_feedback_returns_and_the_link_survives_a_controller_restart() {
    let dir = std::env::temp_dir().join(format!("fw-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = dir.join("mcu");
    let mcu = sim(&port);
    assert_eq!(std::fs::read_link(&port).unwrap(), mcu.path());

    let latest: Arc<Mutex<Option<Feedback>>> = Arc::default();
    let (l, downs) = (latest.clone(), Arc::new(Mutex::new(Vec::<String>::new())));
    let d = downs.clone();
    let config = Config { joints: 2, watchdog_ms: 60, feedback_period_ms: 10 };
    let link = Link::start(
        LinkOptions {
            port: port.clone(),
            baud: 115_200,
            rate_hz: 200.0,
            heartbeat: Duration::from_millis(50),
            link_timeout: Duration::from_millis(300),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            max_command_age: Duration::from_millis(100),
            config,
        },
        Box::new(move |e| match e {
            LinkEvent::Feedback(f, _) => *l.lock().unwrap() = Some(f.clone()),
            LinkEvent::Down(why) => d.lock().unwrap().push(why.to_string()),
            _ => {}
        }),
    )
    .unwrap();
    let st = link.stats();
    let pos = || latest.lock().unwrap().as_ref().map(|f| f.joints[0].position).unwrap_or(0.0);

    // Commanded at 1 rad/s, the joints move, and the round trips are measured.
    let moving = until(Duration::from_secs(10), || {
        link.command(velocity(1.0));
        pos() > 0.1
    });
    assert!(moving, "the joints never moved; link: {}", st.last_down());
    assert!(st.configured.load(Ordering::Relaxed), "the controller acknowledged the config");
    assert!(mcu.stats().commands > 10);
    assert_eq!(st.link_losses.load(Ordering::Relaxed), 0, "{}", st.last_down());
    assert_eq!(st.device_state.load(Ordering::Relaxed), 2, "active");
    let rtt = st.take_rtt_us();
    assert!(!rtt.is_empty() && rtt.iter().all(|&r| r < 1_000_000), "round trips: {rtt:?}");
    assert_eq!(st.rx_errors.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>(), 0);
    assert!(until(Duration::from_secs(2), || st.device_rx_frames.load(Ordering::Relaxed) > 0), "heartbeats answered");

    // Commands stop: the bridge sends no stale command, and the controller's watchdog takes it safe.
    let stale0 = st.commands_stale.load(Ordering::Relaxed);
    assert!(until(Duration::from_secs(5), || st.device_state.load(Ordering::Relaxed) == 3), "safe after the watchdog");
    assert!(st.commands_stale.load(Ordering::Relaxed) > stale0);
    assert!(mcu.stats().watchdog_trips >= 1);
    assert!(st.faults.load(Ordering::Relaxed) >= 1 && st.last_fault().is_some());

    // The controller goes away: the link is lost and counted.
    drop(mcu);
    assert!(until(Duration::from_secs(5), || !st.connected.load(Ordering::Relaxed)), "loss detected");
    assert!(until(Duration::from_secs(5), || st.link_losses.load(Ordering::Relaxed) >= 1));
    let connects = st.connects.load(Ordering::Relaxed);
    // It comes back under the same link: the bridge reconnects and commands flow again.
    let mcu = sim(&port);
    let before = pos();
    let back = until(Duration::from_secs(10), || {
        link.command(velocity(-1.0));
        st.connected.load(Ordering::Relaxed) && mcu.stats().commands > 5
    });
    assert!(back, "no reconnect; downs: {:?}", downs.lock().unwrap());
    assert!(st.connects.load(Ordering::Relaxed) > connects);
    assert!(st.open_failures.load(Ordering::Relaxed) >= 1 || st.link_losses.load(Ordering::Relaxed) >= 1);
    assert!(!downs.lock().unwrap().is_empty());
    assert!(until(Duration::from_secs(5), || {
        link.command(velocity(-1.0));
        pos() < before - 0.05 || pos() < -0.05
    }));
    drop(link);
    drop(mcu);
    assert!(!port.exists(), "the controller removes its link");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_port_that_cannot_be_opened_says_why_and_what_to_do() {
    let dir = std::env::temp_dir().join(format!("fw-port-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = Port::open(&dir.join("ttyACM9"), 115_200).err().unwrap().to_string();
    assert!(missing.contains("cannot open") && missing.contains("plugged in"), "{missing}");
    let file = dir.join("plain");
    std::fs::write(&file, b"x").unwrap();
    let plain = Port::open(&file, 115_200).err().unwrap().to_string();
    assert!(plain.contains("is not a serial port"), "{plain}");
    let baud = Port::open(&file, 12345).err().unwrap().to_string();
    assert!(baud.contains("--baud 12345") && baud.contains("115200"), "{baud}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_controller_that_stops_answering_is_a_lost_link_and_the_port_is_reopened() {
    // A pty whose controller end is held open but never answers: the port opens fine, and only
    // the silence shows the link is gone.
    let pty = firmware_bridge::serial::Pty::open().unwrap();
    let downs = Arc::new(Mutex::new(Vec::<String>::new()));
    let d = downs.clone();
    let link = Link::start(
        LinkOptions {
            port: pty.path.clone(),
            baud: 115_200,
            rate_hz: 100.0,
            heartbeat: Duration::from_millis(20),
            link_timeout: Duration::from_millis(100),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            max_command_age: Duration::from_millis(100),
            config: Config { joints: 2, watchdog_ms: 60, feedback_period_ms: 10 },
        },
        Box::new(move |e| {
            if let LinkEvent::Down(why) = e {
                d.lock().unwrap().push(why.to_string());
            }
        }),
    )
    .unwrap();
    let st = link.stats();
    assert!(until(Duration::from_secs(5), || st.link_losses.load(Ordering::Relaxed) >= 2));
    assert!(st.connects.load(Ordering::Relaxed) >= 2, "the port is reopened after each loss");
    assert!(!st.connected.load(Ordering::Relaxed));
    assert!(st.frames_sent.load(Ordering::Relaxed) > 0, "heartbeats and the config went out");
    let why = downs.lock().unwrap()[0].clone();
    assert!(why.contains("no valid frame from the controller") && why.contains("100 ms"), "{why}");
}
