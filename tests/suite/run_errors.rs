//! `skillgraft run` refuses bad parameters and unsafe limits before anything starts, with an error
//! that names the parameter, where it came from and what it must be.

use std::path::Path;

use crate::common::{fails, init_fixture};

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6").display().to_string()
}

#[test]
fn a_parameter_file_with_wrong_types_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("params.yaml");
    std::fs::write(&file, "/**:\n  ros__parameters:\n    rate_hz: fast\n").unwrap();
    let err = fails(&["run", &example(), "--params-file", file.to_str().unwrap()]);
    assert!(
        err.contains("`rate_hz`") && err.contains(file.to_str().unwrap()) && err.contains("must be a double"),
        "{err}"
    );
    std::fs::write(&file, "/**:\n  ros__parameters:\n    action:\n      lower: [1, 2]\n").unwrap();
    let err = fails(&["run", &example(), "--params-file", file.to_str().unwrap()]);
    assert!(err.contains("`action.lower` has 2 values; the action has 6"), "{err}");
    std::fs::write(&file, "skillgraft:\n  ros__parameters:\n    rt_priority: 200\n").unwrap();
    let err = fails(&["run", &example(), "--params-file", file.to_str().unwrap()]);
    assert!(err.contains("`rt_priority` (from") && err.contains("is 200; it must be within [0, 99]"), "{err}");
}

#[test]
fn bad_ros_arguments_are_refused() {
    let err = fails(&["run", &example(), "--ros-args", "-p", "blend_s:=-1.0"]);
    assert!(err.contains("`blend_s`"), "{err}");
    let err = fails(&["run", &example(), "--ros-args", "-p", "colour:=red"]);
    assert!(err.contains("unknown parameter `colour`"), "{err}");
    let err = fails(&["run", &example(), "--ros-args", "-r", "/joint_states:=/bad topic"]);
    assert!(err.contains("not a valid ROS 2 topic name"), "{err}");
    let err = fails(&["record", &example(), "--ros-args", "-p", "record_compression:=gzip"]);
    assert!(
        err.contains("parameter `record_compression`: \"gzip\" is not a chunk compression") && err.contains("lz4"),
        "{err}"
    );
    let err = fails(&["run", &example(), "stray"]);
    assert!(err.contains("unexpected argument `stray`"), "{err}");
    let err = fails(&["run", &example(), "--ros-args", "-p", "action.lower:=[0.1, 0.1, 0.1, 0.1, 0.1, 0.1]"]);
    assert!(err.contains("safe action is zero") && err.contains("hold"), "{err}");
    let err = fails(&["run", &example(), "--ros-args", "-p", "uncertainty.limit:=0.5"]);
    assert!(err.contains("`uncertainty.limit` is 0.5") && err.contains("give 0 (off) or a ratio"), "{err}");
    let err = fails(&["run", &example(), "--ros-args", "-p", "uncertainty.slow:=2.0"]);
    assert!(err.contains("`uncertainty.slow`") && err.contains("within [0, 1]"), "{err}");
}

#[test]
fn a_skill_without_real_limits_does_not_drive_a_robot() {
    let dir = tempfile::tempdir().unwrap();
    let skill = init_fixture(&dir.path().join("s"), "mlp_gemm");
    let err = fails(&["run", skill.to_str().unwrap()]);
    assert!(err.contains("not finite") && err.contains("action.lower"), "{err}");
}
