//! The simulated arms' camera, as a user meets it: `skillgraft sim camera` writes a PNG, `sim
//! --demos --camera` records the frames into the episodes, and `skillgraft sim` publishes them as
//! sensor_msgs/Image over DDS.

use std::sync::mpsc;
use std::time::Duration;

use skillgraft::msg::{Image, ImageView, JointState, Point, RosMessage, cdr};
use skillgraft::ros::dds::{DdsConfig, DdsTransport};
use skillgraft::ros::transport::{NodeIdentity, Qos, Transport};

use crate::common;

fn png(path: &std::path::Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

#[test]
fn sim_camera_writes_what_each_robot_sees_as_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(format!("{name}.png"));
    let picture = |robot: &str, extra: &[&str]| {
        let path = out(&format!("{robot}{}", extra.join("")));
        let mut args = vec!["sim", "camera", "--robot", robot, "--out", path.to_str().unwrap()];
        args.extend(extra);
        common::succeeds(&args);
        png(&path)
    };
    let a = picture("arm-a", &["--seed", "4", "--scale", "3"]);
    assert_eq!(a.dimensions(), (288, 288), "96x96 shown 3x");
    // Nearest-neighbour: every 3x3 block is one pixel.
    for (x, y, p) in a.enumerate_pixels() {
        assert_eq!(p, a.get_pixel(x / 3 * 3, y / 3 * 3), "({x}, {y})");
    }
    let small = picture("arm-a", &["--seed", "4"]);
    assert_eq!(small.dimensions(), (96, 96));
    assert_eq!(small.get_pixel(40, 50), a.get_pixel(120, 150));
    // What the library renders for that state, byte for byte.
    let robot = skillgraft::sim::robot("arm-a").unwrap();
    let task = skillgraft::sim::tasks(4, 1, robot.home)[0];
    assert_eq!(small.as_raw(), &robot.camera.image(&robot, &task.start, task.target));
    let moved = picture("arm-a", &["--seed", "4", "--ticks", "30"]);
    assert_ne!(moved.as_raw(), small.as_raw(), "the expert moved the arm");
    let b = picture("arm-b", &["--seed", "4"]);
    let diff = small.as_raw().iter().zip(b.as_raw()).filter(|(x, y)| x.abs_diff(**y) > 8).count();
    assert!(diff > small.as_raw().len() / 4, "arm-b's camera sees the scene otherwise: {diff} bytes differ");

    // The pictures in docs/images are what the CLI draws now.
    for robot in skillgraft::sim::ROBOTS {
        let now = picture(robot, &["--ticks", "10", "--scale", "3", "--seed", "1"]);
        let committed =
            png(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("docs/images/camera-{robot}.png")));
        assert!(
            now == committed,
            "docs/images/camera-{robot}.png is out of date: `skillgraft sim camera --robot {robot} --seed 1 --ticks 10 --scale 3 --out docs/images/camera-{robot}.png`"
        );
    }

    let err = common::fails(&["sim", "camera", "--robot", "arm-z", "--out", out("z").to_str().unwrap()]);
    assert!(err.contains("arm-a, arm-b, arm-c"), "{err}");
    assert!(!out("z").exists(), "nothing is written for a bad request");
    let nowhere = dir.path().join("missing/folder/x.png");
    let err = common::fails(&["sim", "camera", "--robot", "arm-a", "--out", nowhere.to_str().unwrap()]);
    assert!(err.contains("write the picture") && err.contains("missing/folder/x.png"), "{err}");
    let zero = common::skillgraft(&["sim", "camera", "--robot", "arm-a", "--scale", "0", "--out", "x.png"]);
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(!zero.status.success() && stderr.contains("--scale"), "{stderr}");
}

#[test]
fn sim_demos_with_the_camera_record_a_frame_each_tick() {
    let dir = tempfile::tempdir().unwrap();
    let (with, without) = (dir.path().join("with"), dir.path().join("without"));
    let base = ["sim", "--robot", "arm-c", "--demos", "2", "--seed", "5", "--out"];
    common::succeeds(&[&base[..], &[with.to_str().unwrap(), "--camera"]].concat());
    common::succeeds(&[&base[..], &[without.to_str().unwrap()]].concat());
    let robot = skillgraft::sim::robot("arm-c").unwrap();
    for path in skillgraft::record::episode::list(&with).unwrap() {
        let file = skillgraft::record::episode::read(&path).unwrap();
        let ch = file.channels.iter().position(|c| c.role == "image.0").expect("an image channel");
        let info = &file.channels[ch];
        assert_eq!((info.topic.as_str(), info.type_name.as_str()), ("/camera/image_raw", Image::TYPE));
        assert_eq!(info.count, skillgraft::sim::EPISODE_TICKS as u64, "one frame a tick");
        let joints = file.channels.iter().position(|c| c.topic == "/joint_states").unwrap();
        let stamps: Vec<u64> = file.messages.iter().filter(|m| m.channel == joints).map(|m| m.log_time).collect();
        let frames: Vec<_> = file.messages.iter().filter(|m| m.channel == ch).collect();
        for (m, at) in frames.iter().zip(&stamps) {
            let v: ImageView<'_> = cdr::decode_borrowed(&m.data, Image::TYPE).unwrap();
            assert_eq!((v.width, v.height, v.step, v.encoding.as_str()), (96, 96, 288, "rgb8"));
            assert_eq!((v.data.len(), v.header.frame_id.as_str()), (96 * 288, "camera_optical_frame"));
            let stamp = v.header.stamp.sec as u64 * 1_000_000_000 + v.header.stamp.nanosec as u64;
            assert_eq!((stamp, m.log_time), (*at, *at), "each frame is stamped with the state it shows");
        }
        // The first frame is the start of its reach, as the camera renders it.
        let n: usize = file.id().rsplit('-').next().unwrap().parse().unwrap();
        let task = skillgraft::sim::tasks(5, 2, robot.home)[n];
        let first: ImageView<'_> = cdr::decode_borrowed(&frames[0].data, Image::TYPE).unwrap();
        let want = robot.camera.image(&robot, &task.start, task.target);
        let off = first.data.iter().zip(&want).filter(|(x, y)| x.abs_diff(**y) > 1).count();
        assert_eq!(off, 0, "{}: the first frame shows the start of the reach", file.id());
        let last: ImageView<'_> = cdr::decode_borrowed(&frames[frames.len() - 1].data, Image::TYPE).unwrap();
        assert_ne!(last.data, first.data, "the arm moved");
    }
    // The numeric channels are those of a recording without the camera, message for message.
    let manifest = skillgraft::sim::episodes::manifest("sim", "arm-c", &skillgraft::sim::episodes::Scaling::identity());
    let load = |d: &std::path::Path| skillgraft::record::dataset::load(&[d.to_path_buf()], &manifest).unwrap();
    let (a, b) = (load(&with), load(&without));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.samples.len(), y.samples.len());
        assert!(x.samples.iter().zip(&y.samples).all(|(p, q)| p.raw_action == q.raw_action));
    }
    let err = common::skillgraft(&["sim", "--robot", "arm-a", "--camera"]);
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success() && stderr.contains("--demos"), "--camera needs --demos: {stderr}");
}

/// `skillgraft sim` publishes a frame each control period on its (remappable) camera topic,
/// stamped with the sim time of the joint state it shows.
#[test]
fn the_sim_node_publishes_its_camera_over_dds() {
    if !common::isolated("the_sim_node_publishes_its_camera_over_dds") {
        return;
    }
    let domain = common::dds_domain();
    let _sim = common::Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_skillgraft"))
            .args([
                "sim",
                "--robot",
                "arm-b",
                "--seed",
                "3",
                "--",
                "--ros-args",
                "-r",
                "/camera/image_raw:=/arm_b/camera",
            ])
            .env("ROS_DOMAIN_ID", domain.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start skillgraft sim"),
    );
    let peer = DdsTransport::new(
        NodeIdentity { name: "peer".into(), namespace: "/".into() },
        &DdsConfig::local(domain).unwrap(),
    )
    .unwrap();
    let (itx, images) = mpsc::channel();
    peer.subscribe(
        "/arm_b/camera",
        Image::TYPE,
        Qos::SENSOR_DATA_DEEP,
        Box::new(move |s| {
            let _ = itx.send(cdr::decode::<Image>(&s.cdr, Image::TYPE).unwrap());
        }),
    )
    .unwrap();
    let joints = common::collect::<JointState>(&peer, "/joint_states", Qos::SENSOR_DATA_DEEP);
    let targets = common::collect::<Point>(&peer, "/target", Qos::RELIABLE);
    let mut seen: Vec<JointState> = Vec::new();
    let mut target = None;
    let robot = skillgraft::sim::robot("arm-b").unwrap();
    // An image whose stamp is that of a joint state received, and which shows that state.
    let (image, state) = common::wait_for("an image and the joint state it shows", || {
        seen.extend(joints.try_iter());
        target = targets.try_iter().last().or(target);
        let img = images.recv_timeout(Duration::from_millis(50)).ok()?;
        let state = seen.iter().find(|j| j.header.stamp == img.header.stamp)?.clone();
        Some((img, state))
    });
    assert_eq!((image.width, image.height, image.step, image.encoding.as_str()), (96, 96, 288, "rgb8"));
    assert_eq!((image.data.len(), image.header.frame_id.as_str()), (96 * 288, "camera_optical_frame"));
    let goal = common::wait_for("the target", || {
        target = targets.try_iter().last().or(target);
        target
    });
    let mut q = [0.0; skillgraft::sim::JOINTS];
    for (j, v) in q.iter_mut().enumerate() {
        *v = state.position[j] - robot.bias[j];
    }
    let want = robot.camera.image(&robot, &q, [goal.x, goal.y]);
    let off = image.data.iter().zip(&want).filter(|(x, y)| x.abs_diff(**y) > 2).count();
    assert!(off < 10, "the image shows the joint state of its stamp: {off} bytes differ");
}
