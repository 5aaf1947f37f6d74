//! The ROS 2 launch integration: what `ros2 launch` passes to the binary (a namespace, a node
//! name, the parameter file) works, and the launch files and package.xml are well formed.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use skillgraft::node::NodeConfig;
use skillgraft::ros::args::RosArgs;
use skillgraft::skill::Skill;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_parameter_file_configures_the_node() {
    let skill = Skill::load(&repo().join("skills/example-arm6")).unwrap();
    let args: Vec<String> =
        ["--ros-args", "-r", "__ns:=/robot1", "--params-file", repo().join("launch/params.yaml").to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let args = RosArgs::parse(&args, &[], "skillgraft").unwrap();
    assert_eq!(args.get::<f64>("blend_s").unwrap(), Some(0.5));
    let cfg = NodeConfig::new(&skill.manifest, &args).unwrap();
    assert_eq!(cfg.estop_topic, "/robot1/estop");
    assert_eq!(cfg.observation_topics[0], "/joint_states", "absolute manifest topics stay absolute");
}

#[test]
fn the_node_starts_the_way_ros2_launch_starts_it() {
    if !common::isolated("the_node_starts_the_way_ros2_launch_starts_it") {
        return;
    }
    let params = repo().join("launch/params.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(["run", repo().join("skills/example-arm6").to_str().unwrap()])
        .args(["--ros-args", "-r", "__node:=pilot", "-r", "__ns:=/robot1", "--params-file", params.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on another thread, so a node that prints nothing fails the wait instead of blocking it.
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || lines.map_while(Result::ok).try_for_each(|l| tx.send(l)));
    let started = common::wait_for("the node's start line", || {
        let line = rx.try_iter().find(|l| l.contains("node /robot1/pilot runs skill example-arm6 0.1.0 at 50 Hz"));
        if line.is_none()
            && let Some(status) = child.try_wait().unwrap()
        {
            panic!("the node exited before starting: {status}");
        }
        line
    });
    assert!(started.contains("/arm/joint_velocity_cmd"), "{started}");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = common::wait_for("the node to stop on SIGINT", || child.try_wait().unwrap());
    assert!(status.success(), "SIGINT must stop the node cleanly: {status}");
}

#[test]
fn launch_files_and_package_xml_are_well_formed() {
    let check = r#"
import xml.etree.ElementTree as ET
launch = ET.parse('launch/skillgraft.launch.xml').getroot()
node = launch.find('node')
assert node.get('pkg') == 'skillgraft' and node.get('exec') == 'skillgraft', node.attrib
assert node.get('args').startswith('run '), node.attrib
assert {a.get('name') for a in launch.findall('arg')} >= {'skill', 'params_file', 'namespace'}
pkg = ET.parse('package.xml').getroot()
assert pkg.findtext('name') == 'skillgraft'
assert pkg.find('export').findtext('build_type') == 'ament_cargo'
src = open('launch/skillgraft.launch.py').read()
compile(src, 'skillgraft.launch.py', 'exec')
assert 'executable="skillgraft"' in src and '"run"' in src
print('ok')
"#;
    let out = Command::new("python3").arg("-c").arg(check).current_dir(repo()).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(cargo.contains("install_to_share = [\"launch\", \"skills\"]"));
}
