//! Which ROS 2 distribution the robot runs, chosen at run time: the DDS transport announces the
//! node in that distro's graph layout (`rmw_dds_common`'s Gid is 24 bytes up to Humble and 16
//! from Iron on), so one binary serves a Humble robot and a Jazzy one.

use std::fmt;
use std::str::FromStr;

/// A ROS 2 distribution, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RosDistro {
    /// Foxy Fitzroy (2020, end of life).
    Foxy,
    /// Galactic Geochelone (2021, end of life).
    Galactic,
    /// Humble Hawksbill (2022, LTS).
    Humble,
    /// Iron Irwini (2023, end of life).
    Iron,
    /// Jazzy Jalisco (2024, LTS).
    Jazzy,
    /// Kilted Kaiju (2025).
    Kilted,
    /// Lyrical Luth (2026, LTS).
    Lyrical,
    /// Rolling Ridley: the development line, laid out as the newest release.
    Rolling,
}

/// Every distribution by its `ROS_DISTRO` name.
pub const DISTROS: [(&str, RosDistro); 8] = [
    ("foxy", RosDistro::Foxy),
    ("galactic", RosDistro::Galactic),
    ("humble", RosDistro::Humble),
    ("iron", RosDistro::Iron),
    ("jazzy", RosDistro::Jazzy),
    ("kilted", RosDistro::Kilted),
    ("lyrical", RosDistro::Lyrical),
    ("rolling", RosDistro::Rolling),
];

/// A `ROS_DISTRO` (or `ros_distro` parameter) value that names no distribution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{source_name} is {value:?}, which is not a ROS 2 distribution skillgraft knows ({}); set it to the robot's distro (e.g. `export ROS_DISTRO=jazzy`, or -p ros_distro:=jazzy)",
    DISTROS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
)]
pub struct DistroError {
    /// Where the value came from.
    pub source_name: String,
    /// The value.
    pub value: String,
}

impl RosDistro {
    /// What the node assumes when nothing says: Humble, the oldest distribution still supported.
    pub const DEFAULT: RosDistro = RosDistro::Humble;

    /// The lower-case name `ROS_DISTRO` uses.
    pub fn name(self) -> &'static str {
        DISTROS.iter().find(|(_, d)| *d == self).map_or("humble", |(n, _)| n)
    }

    /// Bytes of a Gid in `ros_discovery_info`: 24 up to Humble, 16 from Iron on.
    pub fn gid_len(self) -> usize {
        if self <= RosDistro::Humble { 24 } else { 16 }
    }

    /// The distribution from an explicit setting (`-p ros_distro:=...`), else `ROS_DISTRO`,
    /// else [`RosDistro::DEFAULT`]. An empty `ROS_DISTRO` counts as unset.
    pub fn choose(setting: Option<&str>) -> Result<RosDistro, DistroError> {
        if let Some(v) = setting {
            return parse(v, "parameter `ros_distro`");
        }
        match std::env::var("ROS_DISTRO") {
            Ok(v) if !v.trim().is_empty() => parse(&v, "ROS_DISTRO"),
            _ => Ok(RosDistro::DEFAULT),
        }
    }
}

fn parse(value: &str, source_name: &str) -> Result<RosDistro, DistroError> {
    let v = value.trim().to_ascii_lowercase();
    DISTROS
        .iter()
        .find(|(n, _)| *n == v)
        .map(|(_, d)| *d)
        .ok_or_else(|| DistroError { source_name: source_name.into(), value: value.into() })
}

impl FromStr for RosDistro {
    type Err = DistroError;

    fn from_str(s: &str) -> Result<RosDistro, DistroError> {
        parse(s, "the distro")
    }
}

impl fmt::Display for RosDistro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_layout_changes_at_iron() {
        assert_eq!(RosDistro::Humble.gid_len(), 24);
        assert_eq!(RosDistro::Galactic.gid_len(), 24);
        assert_eq!(RosDistro::Iron.gid_len(), 16);
        assert_eq!(RosDistro::Jazzy.gid_len(), 16);
        assert_eq!(RosDistro::Kilted.gid_len(), 16);
        assert_eq!(RosDistro::Rolling.gid_len(), 16);
    }

    #[test]
    fn names_round_trip_and_unknown_names_say_what_to_write() {
        for (name, d) in DISTROS {
            assert_eq!(name.parse::<RosDistro>().unwrap(), d);
            assert_eq!(d.name(), name);
        }
        assert_eq!(" Jazzy ".parse::<RosDistro>().unwrap(), RosDistro::Jazzy);
        let e = RosDistro::choose(Some("noetic")).unwrap_err().to_string();
        assert!(e.contains("\"noetic\"") && e.contains("ros_distro") && e.contains("humble, iron, jazzy"), "{e}");
    }
}
