//! The message types a skill manifest may name, and the numeric fields it can select from them.
//!
//! A field selector is a path into the message: a scalar (`x`, `linear.x`), a slice of a numeric
//! array (`data[0..3]`, `data[2]`), or a per-joint array (`position` of a JointState), whose
//! elements are picked by the joint names the manifest lists.

use std::fmt;

/// How a selectable field of a message holds its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// One number.
    Scalar,
    /// A numeric array indexed by position; selected with a slice.
    Array,
    /// A numeric array parallel to the message's joint-name array; selected by joint name.
    PerJoint,
}

/// A ROS message type a manifest may use, with its selectable numeric fields.
#[derive(Debug)]
pub struct MessageSchema {
    /// Full ROS type name, `pkg/msg/Name`.
    pub name: &'static str,
    /// Selectable fields and their kinds.
    pub fields: &'static [(&'static str, FieldKind)],
    /// Field holding joint names, for types with per-joint arrays.
    pub joint_names: Option<&'static str>,
    /// Whether a skill may read observations from it.
    pub observable: bool,
    /// Whether a skill may publish actions in it.
    pub actuatable: bool,
}

use FieldKind::*;

const XYZ_POINT: &[(&str, FieldKind)] = &[("x", Scalar), ("y", Scalar), ("z", Scalar)];

/// Every message type a manifest may name.
pub static SCHEMAS: &[MessageSchema] = &[
    MessageSchema {
        name: "std_msgs/msg/Float32MultiArray",
        fields: &[("data", Array)],
        joint_names: None,
        observable: true,
        actuatable: true,
    },
    MessageSchema {
        name: "std_msgs/msg/Float64MultiArray",
        fields: &[("data", Array)],
        joint_names: None,
        observable: true,
        actuatable: true,
    },
    MessageSchema {
        name: "sensor_msgs/msg/JointState",
        fields: &[("position", PerJoint), ("velocity", PerJoint), ("effort", PerJoint)],
        joint_names: Some("name"),
        observable: true,
        actuatable: true,
    },
    MessageSchema {
        name: "sensor_msgs/msg/Imu",
        fields: &[
            ("orientation.x", Scalar),
            ("orientation.y", Scalar),
            ("orientation.z", Scalar),
            ("orientation.w", Scalar),
            ("angular_velocity.x", Scalar),
            ("angular_velocity.y", Scalar),
            ("angular_velocity.z", Scalar),
            ("linear_acceleration.x", Scalar),
            ("linear_acceleration.y", Scalar),
            ("linear_acceleration.z", Scalar),
        ],
        joint_names: None,
        observable: true,
        actuatable: false,
    },
    MessageSchema {
        name: "geometry_msgs/msg/Twist",
        fields: &[
            ("linear.x", Scalar),
            ("linear.y", Scalar),
            ("linear.z", Scalar),
            ("angular.x", Scalar),
            ("angular.y", Scalar),
            ("angular.z", Scalar),
        ],
        joint_names: None,
        observable: true,
        actuatable: true,
    },
    MessageSchema {
        name: "geometry_msgs/msg/Vector3",
        fields: XYZ_POINT,
        joint_names: None,
        observable: true,
        actuatable: false,
    },
    MessageSchema {
        name: "geometry_msgs/msg/Point",
        fields: XYZ_POINT,
        joint_names: None,
        observable: true,
        actuatable: false,
    },
    MessageSchema {
        name: "trajectory_msgs/msg/JointTrajectory",
        fields: &[("positions", PerJoint), ("velocities", PerJoint), ("accelerations", PerJoint), ("effort", PerJoint)],
        joint_names: Some("joint_names"),
        observable: false,
        actuatable: true,
    },
];

/// Looks a type up by `pkg/msg/Name` or the short `pkg/Name`.
pub fn schema(type_name: &str) -> Option<&'static MessageSchema> {
    let full = full_type_name(type_name);
    SCHEMAS.iter().find(|s| s.name == full)
}

/// `pkg/Name` becomes `pkg/msg/Name`; anything else is returned unchanged.
pub fn full_type_name(type_name: &str) -> String {
    let parts: Vec<&str> = type_name.split('/').collect();
    match parts.as_slice() {
        [pkg, name] => format!("{pkg}/msg/{name}"),
        _ => type_name.to_string(),
    }
}

/// A parsed field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A scalar field.
    Scalar(String),
    /// Elements `start..end` of a numeric array field.
    Slice {
        /// The array field.
        field: String,
        /// First element.
        start: usize,
        /// One past the last element.
        end: usize,
    },
    /// A per-joint array, one element per joint the manifest lists.
    PerJoint(String),
}

impl Selector {
    /// How many numbers the selector yields, given the manifest's joint count.
    pub fn width(&self, joints: usize) -> usize {
        match self {
            Selector::Scalar(_) => 1,
            Selector::Slice { start, end, .. } => end - start,
            Selector::PerJoint(_) => joints,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Scalar(s) | Selector::PerJoint(s) => f.write_str(s),
            Selector::Slice { field, start, end } if end - start == 1 => {
                write!(f, "{field}[{start}]")
            }
            Selector::Slice { field, start, end } => write!(f, "{field}[{start}..{end}]"),
        }
    }
}

/// A field selector that does not fit its message type; each says what would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// `field[` without its `]`.
    #[error("`{text}` has an unclosed `[`; write `{field}[START..END]` or `{field}[INDEX]`")]
    Unclosed {
        /// The selector given.
        text: String,
        /// The field before the `[`.
        field: String,
    },
    /// The type has no numeric field of that name.
    #[error("{message_type} has no numeric field `{field}`; valid fields: {}", valid.join(", "))]
    NoField {
        /// The message type.
        message_type: &'static str,
        /// The field named.
        field: String,
        /// The fields it has.
        valid: Vec<&'static str>,
    },
    /// An array field without an index.
    #[error("`{0}` is an array; say which elements, e.g. `{0}[0..6]` or `{0}[2]`")]
    NeedsIndex(String),
    /// A scalar field with an index.
    #[error("`{0}` is a scalar and takes no index; write `{0}`")]
    Scalar(String),
    /// A per-joint field with an index.
    #[error("`{0}` is selected by joint name, not by index; write `{0}` and list the joints in `joints`")]
    PerJoint(String),
    /// The index is not `START..END` or `INDEX`.
    #[error("`{field}[{inner}]` is not a valid index; write `{field}[START..END]` (END exclusive) or `{field}[INDEX]`")]
    BadIndex {
        /// The field.
        field: String,
        /// What stood between the brackets.
        inner: String,
    },
    /// The index reaches past [`MAX_INDEX`].
    #[error("`{field}[{inner}]` reaches past index {MAX_INDEX}, the most a selector may name")]
    TooFar {
        /// The field.
        field: String,
        /// What stood between the brackets.
        inner: String,
    },
    /// `START..END` with END not above START.
    #[error("`{field}[{inner}]` selects no elements; END must be greater than START")]
    Empty {
        /// The field.
        field: String,
        /// What stood between the brackets.
        inner: String,
    },
}

impl MessageSchema {
    /// Parses a field selector against this type; the error says what is wrong and what is valid.
    pub fn selector(&self, text: &str) -> Result<Selector, SelectorError> {
        let (field, index) = match text.split_once('[') {
            Some((field, rest)) => {
                let inner = rest
                    .strip_suffix(']')
                    .ok_or_else(|| SelectorError::Unclosed { text: text.to_string(), field: field.to_string() })?;
                (field, Some(inner))
            }
            None => (text, None),
        };
        let kind = self.fields.iter().find(|(name, _)| *name == field).map(|(_, kind)| *kind).ok_or_else(|| {
            SelectorError::NoField {
                message_type: self.name,
                field: field.to_string(),
                valid: self.fields.iter().map(|(n, _)| *n).collect(),
            }
        })?;
        match (kind, index) {
            (Scalar, None) => Ok(Selector::Scalar(field.to_string())),
            (PerJoint, None) => Ok(Selector::PerJoint(field.to_string())),
            (Array, Some(inner)) => parse_slice(field, inner),
            (Array, None) => Err(SelectorError::NeedsIndex(field.to_string())),
            (Scalar, Some(_)) => Err(SelectorError::Scalar(field.to_string())),
            (PerJoint, Some(_)) => Err(SelectorError::PerJoint(field.to_string())),
        }
    }
}

/// Highest array index a selector may name: a selector sizes the buffers it fills.
pub const MAX_INDEX: usize = 65_536;

fn parse_slice(field: &str, inner: &str) -> Result<Selector, SelectorError> {
    let at = || (field.to_string(), inner.to_string());
    let bad = || {
        let (field, inner) = at();
        SelectorError::BadIndex { field, inner }
    };
    let (start, end) = match inner.split_once("..") {
        Some((a, b)) => (a.trim().parse::<usize>().map_err(|_| bad())?, b.trim().parse::<usize>().map_err(|_| bad())?),
        None => {
            let i = inner.trim().parse::<usize>().map_err(|_| bad())?;
            (i, i.saturating_add(1))
        }
    };
    if end > MAX_INDEX {
        let (field, inner) = at();
        return Err(SelectorError::TooFar { field, inner });
    }
    if end <= start {
        let (field, inner) = at();
        return Err(SelectorError::Empty { field, inner });
    }
    Ok(Selector::Slice { field: field.to_string(), start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_report_widths() {
        let arr = schema("std_msgs/Float64MultiArray").unwrap();
        assert_eq!(arr.selector("data[2..5]").unwrap().width(0), 3);
        assert_eq!(arr.selector("data[4]").unwrap().width(0), 1);
        assert!(arr.selector("data").unwrap_err().to_string().contains("data[0..6]"));
        assert!(arr.selector("data[3..3]").unwrap_err().to_string().contains("no elements"));
        assert!(arr.selector("data[a..b]").unwrap_err().to_string().contains("not a valid index"));
        let js = schema("sensor_msgs/msg/JointState").unwrap();
        assert_eq!(js.selector("velocity").unwrap().width(7), 7);
        assert!(js.selector("pos").unwrap_err().to_string().contains("position, velocity, effort"));
        let twist = schema("geometry_msgs/msg/Twist").unwrap();
        assert_eq!(twist.selector("angular.z").unwrap(), Selector::Scalar("angular.z".into()));
        assert_eq!(twist.selector("angular.z").unwrap().to_string(), "angular.z");
        assert_eq!(arr.selector("data[1]").unwrap().to_string(), "data[1]");
    }
}
