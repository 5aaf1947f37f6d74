//! The Debian packages as a robot installs them (README: "Install on a robot"). For each `.deb`
//! named in SKILLGRAFT_DEB (comma-separated; `.ci/run` makes them with cargo-deb from release
//! builds, which `cargo test` does not do): what `dpkg-deb` shows (files, conffiles, Depends held
//! against the binary's ELF needs and glibc symbol versions) and the installed binary run on the
//! shipped skills; then `dpkg --root` into a scratch root, maintainer scripts included, and
//! skillgraft.service started the way systemd starts it: the unit's command line, user, groups,
//! capabilities, environment file, working folder, umask and state folders, with the package's
//! files at their real paths (overlay mounts in a private mount namespace) and DDS in a private
//! network namespace. systemd's sandboxing directives are not emulated; `systemd-analyze verify`
//! checks the unit where it is installed. An arm64 package runs here under qemu-user (binfmt_misc
//! and QEMU_LD_PREFIX, which CI sets up). It needs root, as CI has: mount namespaces, overlay
//! mounts, `dpkg --root`. The tests are `#[ignore]`d (listed as not run by a plain `cargo test`):
//! `SKILLGRAFT_DEB=a.deb,b.deb cargo test --test suite -- --ignored deb::` runs them.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The glibc of JetPack 6 (Ubuntu 22.04): the newest symbol version the binary may need.
const JETPACK_GLIBC: (u32, u32) = (2, 35);

/// The packages to test; fails when none is named, since these tests only run when asked for.
fn packages() -> Vec<PathBuf> {
    match std::env::var("SKILLGRAFT_DEB") {
        Ok(list) if !list.trim().is_empty() => list.split(',').map(|p| PathBuf::from(p.trim())).collect(),
        _ => panic!(
            "SKILLGRAFT_DEB names no .deb: build them with cargo-deb as .ci/run does (README: Install on a robot)"
        ),
    }
}

/// Runs a command that must succeed; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A control field of a package.
fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name)).trim().to_string()
}

fn version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("not a version: {v}")));
    (parts.next().unwrap(), parts.next().unwrap_or(0))
}

/// The libc6 version the package's Depends asks for.
fn depends_libc(depends: &str) -> (u32, u32) {
    let dep = depends
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with("libc6 "))
        .unwrap_or_else(|| panic!("Depends does not name libc6: {depends}"));
    let v = dep.trim_start_matches("libc6").trim().trim_start_matches("(>=").trim_end_matches(')').trim();
    version(v)
}

/// The shared libraries an ELF file needs and the newest GLIBC_ symbol version among its needs.
fn elf_needs(bin: &Path) -> (Vec<String>, (u32, u32)) {
    let dynamic = run(Command::new("readelf").args(["-d", "-W"]).arg(bin));
    let needed = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1).map(|s| s.trim_end_matches(']').to_string()))
        .collect();
    let versions = run(Command::new("readelf").args(["-V", "-W"]).arg(bin));
    let glibc = versions
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(version)
        .max()
        .expect("no GLIBC_ symbol versions");
    (needed, glibc)
}

/// The ELF machine a Debian architecture runs.
fn machine(arch: &str) -> u16 {
    match arch {
        "arm64" => 0xb7,
        "amd64" => 0x3e,
        other => panic!("no test for architecture {other}"),
    }
}

#[test]
#[ignore = "needs packages built by cargo-deb: SKILLGRAFT_DEB=a.deb,b.deb cargo test --test suite -- --ignored deb::"]
fn each_package_holds_the_binary_skills_launch_files_unit_and_configuration() {
    for deb in packages() {
        let arch = field(&deb, "Architecture");
        assert_eq!(field(&deb, "Package"), "skillgraft");
        let depends = field(&deb, "Depends");
        assert!(
            depends.contains("systemd | systemd-standalone-sysusers"),
            "the postinst runs systemd-sysusers: {depends}"
        );

        let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
        for path in [
            "./usr/bin/skillgraft",
            "./usr/share/skillgraft/skills/reach-arm-a/skill.toml",
            "./usr/share/skillgraft/skills/reach-arm-a/policy.onnx",
            "./usr/share/skillgraft/skills/reach-arm-a-vision/skill.toml",
            "./usr/share/skillgraft/skills/reach-arm-a-vision/policy.onnx",
            "./usr/share/skillgraft/skills/example-arm6/skill.toml",
            "./usr/share/skillgraft/skills/example-arm6/policy.onnx",
            "./usr/share/skillgraft/launch/skillgraft.launch.xml",
            "./usr/share/skillgraft/launch/skillgraft.launch.py",
            "./usr/share/skillgraft/launch/params.yaml",
            "./usr/share/skillgraft/package.xml",
            "./usr/share/ament_index/resource_index/packages/skillgraft",
            "./usr/lib/skillgraft/skillgraft -> ../../bin/skillgraft",
            "./usr/lib/systemd/system/skillgraft.service",
            "./usr/lib/sysusers.d/skillgraft.conf",
            "./usr/lib/tmpfiles.d/skillgraft.conf",
            "./etc/skillgraft/params.yaml",
            "./etc/skillgraft/skillgraft.env",
            "./usr/share/doc/skillgraft/README.md",
        ] {
            assert!(listing.lines().any(|l| l.ends_with(path)), "{} lacks {path}:\n{listing}", deb.display());
        }

        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("DEBIAN");
        run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
        let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
        let mut conffiles: Vec<&str> = conffiles.lines().collect();
        conffiles.sort();
        assert_eq!(conffiles, ["/etc/skillgraft/params.yaml", "/etc/skillgraft/skillgraft.env"]);

        let root = dir.path().join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        let bin = root.join("usr/bin/skillgraft");
        let elf = std::fs::read(&bin).unwrap();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([elf[18], elf[19]]),
            machine(&arch),
            "{}: the binary is not {arch}",
            deb.display()
        );

        // What the binary needs, the package must depend on, and a JetPack 6 board must have.
        let (needed, glibc) = elf_needs(&bin);
        for lib in &needed {
            let package = match lib.as_str() {
                "libc.so.6" | "libm.so.6" | "libdl.so.2" | "libpthread.so.0" | "librt.so.1" => "libc6",
                l if l.starts_with("ld-linux") => "libc6",
                "libgcc_s.so.1" => "libgcc-s1",
                other => panic!("the binary needs {other}, which no Depends entry provides: {depends}"),
            };
            assert!(
                depends.split(',').any(|d| d.trim().starts_with(package)),
                "{lib} needs {package} in Depends: {depends}"
            );
        }
        assert!(
            glibc <= depends_libc(&depends),
            "the binary needs GLIBC_{}.{}, Depends says {depends}",
            glibc.0,
            glibc.1
        );
        assert!(glibc <= JETPACK_GLIBC, "the binary needs GLIBC_{}.{}: newer than JetPack 6's 2.35", glibc.0, glibc.1);

        // What `ros2 launch skillgraft ...` looks up with /usr in AMENT_PREFIX_PATH: the package in
        // the ament index, its executable in <prefix>/lib/skillgraft/, its launch files in the share
        // folder (ament_index_python from the ROS 2 wheels in the peers' venv).
        let lookup = r#"
import os
from ament_index_python.packages import get_package_prefix, get_package_share_directory
prefix = get_package_prefix("skillgraft")
share = get_package_share_directory("skillgraft")
exe = os.path.join(prefix, "lib", "skillgraft", "skillgraft")
assert os.access(exe, os.X_OK), exe
assert os.path.realpath(exe) == os.path.realpath(os.path.join(prefix, "bin", "skillgraft")), exe
for f in ("skillgraft.launch.py", "skillgraft.launch.xml", "params.yaml"):
    assert os.path.isfile(os.path.join(share, "launch", f)), f
print(prefix)
"#;
        let usr = root.join("usr");
        let found = run(Command::new(common::ros_python()).arg("-c").arg(lookup).env("AMENT_PREFIX_PATH", &usr));
        assert_eq!(found.trim(), usr.to_str().unwrap());

        // The installed binary runs and loads the skills it ships (tract plans on this architecture).
        let upstream = field(&deb, "Version").split('-').next().unwrap().to_string();
        let shown = run(Command::new(&bin).arg("--version"));
        assert_eq!(shown.trim(), format!("skillgraft {upstream}"));
        for skill in ["reach-arm-a", "reach-arm-a-vision", "example-arm6"] {
            let folder = root.join("usr/share/skillgraft/skills").join(skill);
            let out = run(Command::new(&bin).arg("inspect").arg(&folder));
            assert!(out.contains(skill), "{out}");
        }
    }
}

/// The `[Service]` settings of a unit file, in order (a key may repeat).
fn service_section(unit: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(unit).unwrap();
    let mut in_service = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not a setting: {line}"));
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// An account from the scratch root's passwd (made by the postinst): uid, gid, home.
fn account(root: &Path, user: &str) -> (u32, u32, String) {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let f: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == user)
        .unwrap_or_else(|| panic!("the postinst made no user {user}: {passwd}"));
    (f[2].parse().unwrap(), f[3].parse().unwrap(), f[5].to_string())
}

/// Groups of the scratch root: name to (gid, members).
fn groups(root: &Path) -> BTreeMap<String, (u32, Vec<String>)> {
    std::fs::read_to_string(root.join("etc/group"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect();
            (f[0].to_string(), (f[2].parse().unwrap(), members))
        })
        .collect()
}

/// KEY=VALUE lines of a systemd environment file.
fn environment_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// `${VAR}` and `$VAR` in a command-line word, as systemd expands them.
fn expand(word: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = word.to_string();
    for (k, v) in env {
        out = out.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
    }
    assert!(!out.contains('$'), "{word}: a variable the unit's environment does not set");
    out
}

/// Capability names for setpriv (`CAP_SYS_NICE` -> `+sys_nice`), after dropping all.
fn caps(list: &str) -> String {
    let mut s = "-all".to_string();
    for c in list.split_whitespace() {
        s.push_str(&format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()));
    }
    s
}

/// skillgraft.service of a scratch root, started as systemd would start it.
struct Service {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(root: &Path, work: &Path) -> Service {
        let unit = service_section(&root.join("usr/lib/systemd/system/skillgraft.service"));
        let get = |k: &str| unit.iter().filter(|(key, _)| key == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        let one = |k: &str| get(k).pop().unwrap_or_else(|| panic!("the unit sets no {k}"));
        let (uid, gid, home) = account(root, &one("User"));
        let groups = groups(root);
        assert_eq!(groups[&one("Group")].0, gid, "Group= is the user's own group");
        // initgroups(3): the user's own group and those that list it.
        let mut member_of = vec![gid.to_string()];
        member_of.extend(groups.values().filter(|(_, m)| m.contains(&one("User"))).map(|(g, _)| g.to_string()));

        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".to_string());
        env.insert("HOME".to_string(), home);
        env.insert("USER".to_string(), one("User"));
        env.insert("LOGNAME".to_string(), one("User"));
        for file in get("EnvironmentFile") {
            env.extend(environment_file(&root.join(file.trim_start_matches('/'))));
        }
        for assignments in get("Environment") {
            for a in assignments.split_whitespace() {
                let (k, v) = a.split_once('=').unwrap();
                env.insert(k.to_string(), v.to_string());
            }
        }
        // State and cache folders, made and handed to the user as systemd does before the start.
        let mode = |k: &str| get(k).pop().map(|m| u32::from_str_radix(&m, 8).unwrap()).unwrap_or(0o755);
        for (key, base, mode) in [
            ("StateDirectory", "var/lib", mode("StateDirectoryMode")),
            ("CacheDirectory", "var/cache", mode("CacheDirectoryMode")),
        ] {
            for name in get(key).iter().flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>()) {
                let dir = root.join(base).join(name);
                std::fs::create_dir_all(&dir).unwrap();
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        // /etc gets the package's folder only (the scratch root's passwd stays out of the way).
        let etc = work.join("etc-layer");
        let _ = std::fs::remove_dir_all(&etc);
        std::fs::create_dir_all(&etc).unwrap();
        run(Command::new("cp").arg("-a").arg(root.join("etc/skillgraft")).arg(&etc));
        for d in ["lib", "cache"] {
            let _ = std::fs::remove_dir_all(work.join(d));
            std::fs::create_dir_all(work.join(d)).unwrap();
        }
        std::fs::create_dir_all(root.join("var/cache")).unwrap();

        let exec: Vec<String> = one("ExecStart").split_whitespace().map(|w| expand(w, &env)).collect();
        let mut setpriv = vec![
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            format!("--groups={}", member_of.join(",")),
            format!("--inh-caps={}", caps(&get("AmbientCapabilities").join(" "))),
            format!("--ambient-caps={}", caps(&get("AmbientCapabilities").join(" "))),
        ];
        if let Some(bounding) = get("CapabilityBoundingSet").pop() {
            setpriv.push(format!("--bounding-set={}", caps(&bounding)));
        }
        if get("NoNewPrivileges").pop().as_deref() == Some("yes") {
            setpriv.push("--no-new-privs".into());
        }
        // Mounts and folder in a mount namespace of the service's own; then its user, umask, command.
        let script = r#"set -e
root=$1 etc=$2 work=$3 cwd=$4 umask=$5; shift 5
mount -t overlay overlay -o "lowerdir=$root/usr:/usr" /usr
mount -t overlay overlay -o "lowerdir=$etc:/etc" /etc
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$root/var/lib,workdir=$work/lib" /var/lib
mount -t overlay overlay -o "lowerdir=/var/cache,upperdir=$root/var/cache,workdir=$work/cache" /var/cache
cd "$cwd"
exec "$@""#;
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--", "sh", "-c", script, "sh"])
            .arg(root)
            .arg(&etc)
            .arg(work)
            .arg(one("WorkingDirectory"))
            .arg(get("UMask").pop().unwrap_or_else(|| "0022".into()))
            .arg("setpriv")
            .args(&setpriv)
            .args(["--", "sh", "-c", "umask \"$0\"; exec \"$@\""])
            .arg(get("UMask").pop().unwrap_or_else(|| "0022".into()))
            .args(&exec)
            .env_clear()
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The emulator's loader prefix for an arm64 binary on another machine; not the unit's.
        if let Some(prefix) = std::env::var_os("QEMU_LD_PREFIX") {
            cmd.env("QEMU_LD_PREFIX", prefix);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Service { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a line of the service's log that contains `text`.
    fn wait_for(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.lines.lock().unwrap().iter().any(|l| l.contains(text)) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the service exited ({status}) before logging `{text}`:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no `{text}` within {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The (policy, priority) of every thread of the service's process.
    fn scheduling(&self) -> Vec<(u32, u32)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|d| {
                d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                    .filter_map(|stat| {
                        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                        Some((f.get(38)?.parse().ok()?, f.get(37)?.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for the service to exit on its own.
    fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the service still runs after {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as `systemctl stop` sends it; the service must exit 0 within 30 s.
    fn stop(mut self) {
        // SAFETY: a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the service did not stop within 30 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "SIGTERM must stop the service cleanly ({status}):\n{}", self.log());
    }
}

/// `dpkg --root` on a scratch root, running the maintainer scripts outside a chroot (they honour
/// DPKG_ROOT). The scratch root has no libc6 or systemd package, hence --force-depends; an arm64
/// package on another machine needs --force-architecture.
fn dpkg(root: &Path, args: &[&str], deb: Option<&Path>) -> String {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends", "--force-architecture"])
        .args(args);
    if let Some(d) = deb {
        cmd.arg(d);
    }
    run(&mut cmd)
}

#[test]
#[ignore = "needs packages built by cargo-deb: SKILLGRAFT_DEB=a.deb,b.deb cargo test --test suite -- --ignored deb::"]
fn each_package_installs_into_a_scratch_root_and_its_service_runs_the_store_with_the_inbox_on() {
    if !common::isolated("each_package_installs_into_a_scratch_root_and_its_service_runs_the_store_with_the_inbox_on") {
        return;
    }
    for deb in packages() {
        let dir = tempfile::tempdir().unwrap();
        // The service user must reach the scratch root, as it reaches / on a robot.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("root");
        let work = dir.path().join("work");
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
        dpkg(&root, &["-i"], Some(&deb));

        // The postinst made the user with its groups, the state folders and the inbox's token.
        let (uid, gid, home) = account(&root, "skillgraft");
        assert_eq!(home, "/var/lib/skillgraft");
        let groups = groups(&root);
        for g in ["dialout", "video"] {
            assert!(groups[g].1.contains(&"skillgraft".to_string()), "skillgraft is not in {g}: {groups:?}");
        }
        for d in ["", "store", "episodes", "adapted"] {
            let m = std::fs::metadata(root.join("var/lib/skillgraft").join(d)).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (uid, gid, 0o750), "/var/lib/skillgraft/{d}");
        }
        let tokens = root.join("etc/skillgraft/inbox.tokens");
        let m = std::fs::metadata(&tokens).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, gid, 0o640), "the token: root's, readable by the service");

        if Path::new("/usr/bin/systemd-analyze").exists() {
            let script = "mount -t overlay overlay -o \"lowerdir=$0/usr:/usr\" /usr && \
                          exec systemd-analyze verify /usr/lib/systemd/system/skillgraft.service";
            let out = Command::new("unshare").args(["-m", "--", "sh", "-c", script]).arg(&root).output().unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && !said.contains("skillgraft"), "systemd-analyze verify: {said}");
        } else {
            eprintln!("systemd-analyze is not installed: the unit is not verified");
        }

        // Until the admin puts the fleet's key in place the service refuses to start (systemd
        // tries again, then gives up), naming the file it lacks; the store stays empty.
        let mut service = Service::start(&root, &work);
        let status = service.exit_status(Duration::from_secs(120));
        assert_eq!(status.code(), Some(1), "{}", service.log());
        assert!(service.log().contains("/etc/skillgraft/fleet.pub"), "{}", service.log());
        assert!(
            std::fs::read_dir(root.join("var/lib/skillgraft/store"))
                .unwrap()
                .all(|e| { e.unwrap().file_name().to_string_lossy().starts_with('.') })
        );

        // What README tells the admin: the fleet's public key in /etc/skillgraft. The fleet side
        // (keys, bundle, push) is this machine's own build.
        let (key, public) = common::bundles::keys(dir.path(), "fleet");
        std::fs::copy(&public, root.join("etc/skillgraft/fleet.pub")).unwrap();

        let mut service = Service::start(&root, &work);
        service.wait_for("runs skill reach-arm-a 1.0.0", Duration::from_secs(120));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !service.scheduling().contains(&(libc::SCHED_FIFO as u32, 50)) {
            assert!(
                Instant::now() < deadline,
                "no thread runs SCHED_FIFO 50 (rt_priority in /etc/skillgraft/params.yaml): {:?}\n{}",
                service.scheduling(),
                service.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!service.log().contains("cannot run the control thread with SCHED_FIFO"), "{}", service.log());

        // The fleet pushes a new version to the inbox the unit turned on, with the token the
        // postinst made; the node takes it into the store and swaps it in.
        let newer = dir.path().join("reach-arm-a-1.1.0");
        common::copy_tree(&root.join("usr/share/skillgraft/skills/reach-arm-a"), &newer);
        let manifest = newer.join("skill.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, text.replace("version = \"1.0.0\"", "version = \"1.1.0\"")).unwrap();
        let bundle = common::bundles::pack_dir(&newer, &key, &dir.path().join("reach-arm-a-1.1.0.skill"), &[]);
        let robots = dir.path().join("robots.toml");
        std::fs::write(
            &robots,
            format!(
                "[[robot]]\nname = \"orin\"\nurl = \"http://127.0.0.1:8740\"\ntoken_file = \"{}\"\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = common::succeeds(&["fleet", "push", bundle.to_str().unwrap(), "--robots", robots.to_str().unwrap()]);
        assert!(out.contains("| orin | installed reach-arm-a 1.1.0 | yes |"), "{out}\n{}", service.log());
        let installed = root.join("var/lib/skillgraft/store/reach-arm-a/versions/1.1.0");
        assert_eq!(std::fs::metadata(installed.join("skill.toml")).unwrap().uid(), uid, "the service user's store");
        service.stop();

        // After a reboot the unit runs what the fleet last installed.
        let mut service = Service::start(&root, &work);
        service.wait_for("runs skill reach-arm-a 1.1.0", Duration::from_secs(120));
        service.stop();

        // Purge removes the package, its configuration and token; the robot's store stays.
        dpkg(&root, &["--purge", "skillgraft"], None);
        assert!(!root.join("usr/bin/skillgraft").exists());
        assert!(!tokens.exists() && !root.join("etc/skillgraft/params.yaml").exists());
        assert!(installed.join("policy.onnx").exists(), "purge must keep the skill store");
    }
}
