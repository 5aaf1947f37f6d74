//! Linking the `rcl` transport against a ROS 2 installed from the PyPI wheels (what CI and
//! `tools/ros2-env.sh` use). A ROS 2 from apt or a source build needs none of this: every step
//! below checks for the wheels' layout first and does nothing otherwise.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AMENT_PREFIX_PATH");
    if std::env::var_os("CARGO_FEATURE_RCL").is_none() {
        return;
    }
    let prefixes: Vec<PathBuf> = std::env::var("AMENT_PREFIX_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    for prefix in prefixes.iter().filter(|p| p.join("pyvenv.cfg").is_file()) {
        wheels(prefix);
    }
}

/// A ROS prefix that is a Python venv: the ROS 2 wheels from PyPI.
fn wheels(prefix: &Path) {
    // The wheels' librcl loads the message packages' Python extensions, which need libpython's
    // symbols: link the venv's own libpython, and find it at run time without LD_LIBRARY_PATH.
    let cfg = std::fs::read_to_string(prefix.join("pyvenv.cfg")).unwrap_or_default();
    let field = |key: &str| {
        cfg.lines().find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string()))
    };
    let (Some(home), Some(version)) = (field("home"), field("version")) else {
        println!(
            "cargo:warning={} has no home or version: libpython is not linked",
            prefix.join("pyvenv.cfg").display()
        );
        return;
    };
    let minor: Vec<&str> = version.split('.').take(2).collect();
    let name = format!("python{}", minor.join("."));
    let libdir = Path::new(&home).parent().map(|p| p.join("lib")).filter(|d| d.join(format!("lib{name}.so")).exists());
    if let Some(dir) = &libdir {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-l{name}");
}
