//! `skill.toml`: what a skill is, where it came from, and how its policy's tensors map onto this
//! robot's topics. The reference for users is `docs/skill-format.md`; keep the two in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ros::names;
use crate::ros::schema::{self, MessageSchema, Selector};

/// The manifest's file name inside a skill folder.
pub const MANIFEST_FILE: &str = "skill.toml";

/// A skill manifest, as written in `skill.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Skill name; also its folder name in the skill store.
    pub name: String,
    /// Semantic version; the store refuses to install an older one over a newer one.
    pub version: semver::Version,
    /// What the skill does, for people.
    pub description: String,
    /// Where the skill came from.
    pub provenance: Provenance,
    /// The ONNX model and its tensor names.
    pub model: ModelSection,
    /// Control-loop settings.
    pub control: Control,
    /// Observation inputs, concatenated in this order into one frame.
    #[serde(rename = "observation")]
    pub observations: Vec<ObservationInput>,
    /// Where and how actions are published.
    pub action: ActionOutput,
}

/// Where a skill came from and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The robot the policy was made on.
    pub source_robot: String,
    /// How it was made: `trained`, `imported`, `adapted-ridge`, `adapted-finetune`, ...
    pub method: String,
    /// Digest (`sha256:<hex>`) of the skill this one was derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// When it was made, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Method-specific facts (hyper-parameters, data used, metrics).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, toml::Value>,
}

/// The model file and the names of its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// ONNX file, relative to the skill folder.
    pub file: String,
    /// Name of the graph input the observation fills.
    pub input: String,
    /// Name of the graph output that holds the action.
    pub output: String,
    /// Tensor that splits the frozen backbone from the adaptable head.
    pub features: String,
}

/// Control-loop settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Control rate in Hz.
    pub rate_hz: f64,
    /// Number of observation frames stacked into the policy input, oldest first.
    #[serde(default = "one")]
    pub history: usize,
}

fn one() -> usize {
    1
}

/// One observation input: a topic and the numbers taken from each of its messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationInput {
    /// Topic to subscribe to.
    pub topic: String,
    /// ROS message type, `pkg/msg/Name`.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// Field selectors, in order.
    pub fields: Vec<String>,
    /// Joint names, for per-joint fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joints: Vec<String>,
    /// Normalisation: the policy sees `(value - mean) / std`.
    pub mean: Vec<f64>,
    /// Normalisation scale, one per value.
    pub std: Vec<f64>,
    /// Oldest message the control loop still accepts, in milliseconds.
    pub max_age_ms: f64,
}

/// What the robot does when it cannot trust the policy's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafeAction {
    /// Repeat the last action that passed the safety filter.
    Hold,
    /// Publish zeros.
    Zero,
}

/// The action output: topic, message layout, de-normalisation and safety limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionOutput {
    /// Topic to publish on.
    pub topic: String,
    /// ROS message type, `pkg/msg/Name`.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// Field selectors the action vector is written into, in order.
    pub fields: Vec<String>,
    /// Joint names, for per-joint fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joints: Vec<String>,
    /// De-normalisation: the robot gets `raw * std + mean`.
    pub mean: Vec<f64>,
    /// De-normalisation scale, one per value.
    pub std: Vec<f64>,
    /// Lowest allowed value, per element (may be `-inf` until set for a robot).
    pub lower: Vec<f64>,
    /// Highest allowed value, per element (may be `inf` until set for a robot).
    pub upper: Vec<f64>,
    /// Largest change per control tick, per element (`inf`: no rate limit).
    pub max_delta: Vec<f64>,
    /// Action used when inputs are stale, the policy fails or the e-stop is engaged.
    pub safe: SafeAction,
}

/// A manifest problem: which file, which field, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: `{field}`: {problem}", file.display())]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// Dotted path of the field, e.g. `observation[1].std[2]`.
    pub field: String,
    /// What is wrong, and the fix.
    pub problem: String,
}

/// Where an input or output width comes from, for messages that explain a mismatch.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// Topic name.
    pub topic: String,
    /// Parsed selectors with their widths.
    pub selectors: Vec<(Selector, usize)>,
}

impl Slot {
    /// Number of values.
    pub fn width(&self) -> usize {
        self.selectors.iter().map(|(_, w)| w).sum()
    }

    /// One label per value, e.g. `position[elbow]` or `data[3]`.
    pub fn labels(&self, joints: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(self.width());
        for (sel, _) in &self.selectors {
            match sel {
                Selector::Scalar(p) => out.push(p.clone()),
                Selector::Slice { field, start, end } => {
                    out.extend((*start..*end).map(|i| format!("{field}[{i}]")))
                }
                Selector::PerJoint(f) => out.extend(joints.iter().map(|j| format!("{f}[{j}]"))),
            }
        }
        out
    }
}

impl Manifest {
    /// Reads and validates `skill.toml` (structure only; the model is checked by `Skill::load`).
    pub fn read(path: &Path) -> Result<Manifest, crate::skill::SkillError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| crate::skill::SkillError::Io {
                path: path.to_path_buf(),
                action: "read the manifest",
                source,
            })?;
        let manifest = Manifest::parse(&text, path)?;
        Ok(manifest)
    }

    /// Parses and validates manifest text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| syntax_error(file, text, &e))?;
        manifest.validate(file)?;
        Ok(manifest)
    }

    /// The manifest as TOML text, with a header comment pointing at the reference.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a manifest always serialises to TOML");
        format!(
            "# skillgraft skill manifest; the format is described in docs/skill-format.md\n{body}"
        )
    }

    /// Width of one observation frame (all inputs concatenated).
    pub fn frame_width(&self) -> usize {
        self.observation_slots().iter().map(Slot::width).sum()
    }

    /// Width of the policy input: frames times history.
    pub fn input_width(&self) -> usize {
        self.frame_width() * self.control.history
    }

    /// Width of the action vector.
    pub fn action_width(&self) -> usize {
        self.action_slot().width()
    }

    /// Parsed selectors of every observation input.
    pub fn observation_slots(&self) -> Vec<Slot> {
        self.observations
            .iter()
            .map(|o| slot(&o.topic, &o.msg_type, &o.fields, o.joints.len()))
            .collect()
    }

    /// Parsed selectors of the action output.
    pub fn action_slot(&self) -> Slot {
        let a = &self.action;
        slot(&a.topic, &a.msg_type, &a.fields, a.joints.len())
    }

    /// One label per value of the policy input, oldest frame first (`t-1:...` for older frames).
    pub fn input_labels(&self) -> Vec<String> {
        let frame: Vec<String> = self
            .observation_slots()
            .iter()
            .zip(&self.observations)
            .flat_map(|(s, o)| {
                s.labels(&o.joints)
                    .into_iter()
                    .map(|l| format!("{}:{l}", o.topic))
            })
            .collect();
        let h = self.control.history;
        (0..h)
            .rev()
            .flat_map(|age| {
                frame.iter().map(move |l| {
                    if age == 0 {
                        l.clone()
                    } else {
                        format!("t-{age} {l}")
                    }
                })
            })
            .collect()
    }

    /// One label per action value.
    pub fn action_labels(&self) -> Vec<String> {
        self.action_slot().labels(&self.action.joints)
    }

    /// Normalisation of the full policy input (per frame, repeated for each history step).
    pub fn input_normalisation(&self) -> (Vec<f64>, Vec<f64>) {
        let mean: Vec<f64> = self
            .observations
            .iter()
            .flat_map(|o| o.mean.iter().copied())
            .collect();
        let std: Vec<f64> = self
            .observations
            .iter()
            .flat_map(|o| o.std.iter().copied())
            .collect();
        let h = self.control.history;
        (mean.repeat(h), std.repeat(h))
    }

    fn validate(&self, file: &Path) -> Result<(), ManifestError> {
        let err = |field: &str, problem: String| ManifestError {
            file: file.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        if self.name.is_empty()
            || self.name.starts_with('.')
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err(
                "name",
                format!(
                    "{:?} is not a valid skill name; use letters, digits, `-`, `_` and `.`, not starting with `.` (it becomes a folder name)",
                    self.name
                ),
            ));
        }
        let p = &self.provenance;
        if let Some(parent) = &p.parent {
            let hex = parent.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(
                    "provenance.parent",
                    format!(
                        "{parent:?} is not a skill digest; write `sha256:` and 64 hex digits, as `skillgraft inspect` prints it"
                    ),
                ));
            }
        }
        if let Some(created) = &p.created
            && created.parse::<toml::value::Datetime>().is_err()
        {
            return Err(err(
                "provenance.created",
                format!(
                    "{created:?} is not an RFC 3339 date-time; write e.g. \"2026-11-29T18:00:00Z\""
                ),
            ));
        }
        for (field, value) in [
            ("model.file", &self.model.file),
            ("model.input", &self.model.input),
            ("model.output", &self.model.output),
            ("model.features", &self.model.features),
        ] {
            if value.is_empty() {
                return Err(err(field, "is empty; name the file or tensor (`skillgraft inspect MODEL.onnx` lists the tensors)".into()));
            }
        }
        if Path::new(&self.model.file).is_absolute()
            || self.model.file.split(['/', '\\']).any(|c| c == "..")
        {
            return Err(err(
                "model.file",
                format!(
                    "{:?} leaves the skill folder; give a path relative to the folder, e.g. \"policy.onnx\"",
                    self.model.file
                ),
            ));
        }
        let rate = self.control.rate_hz;
        if !(rate.is_finite() && rate > 0.0 && rate <= 10_000.0) {
            return Err(err(
                "control.rate_hz",
                format!(
                    "{rate} is not a usable control rate; give a rate in Hz between 0 and 10000"
                ),
            ));
        }
        if self.control.history == 0 {
            return Err(err(
                "control.history",
                "is 0; give the number of stacked frames, at least 1".into(),
            ));
        }
        if self.observations.is_empty() {
            return Err(err(
                "observation",
                "no observation inputs; add at least one [[observation]] table".into(),
            ));
        }
        for (i, o) in self.observations.iter().enumerate() {
            let at = |f: &str| format!("observation[{i}].{f}");
            let width = check_selectors(&o.topic, &o.msg_type, &o.fields, &o.joints, false)
                .map_err(|(f, m)| err(&at(f), m))?;
            check_vector(&o.mean, width, VectorRule::Finite)
                .map_err(|(j, m)| err(&index(&at("mean"), j), m))?;
            check_vector(&o.std, width, VectorRule::Positive)
                .map_err(|(j, m)| err(&index(&at("std"), j), m))?;
            if !(o.max_age_ms.is_finite() && o.max_age_ms > 0.0) {
                return Err(err(
                    &at("max_age_ms"),
                    format!(
                        "{} is not a usable age; give the oldest acceptable message age in milliseconds, above 0",
                        o.max_age_ms
                    ),
                ));
            }
        }
        let a = &self.action;
        let at = |f: &str| format!("action.{f}");
        let width = check_selectors(&a.topic, &a.msg_type, &a.fields, &a.joints, true)
            .map_err(|(f, m)| err(&at(f), m))?;
        check_vector(&a.mean, width, VectorRule::Finite)
            .map_err(|(j, m)| err(&index(&at("mean"), j), m))?;
        check_vector(&a.std, width, VectorRule::Positive)
            .map_err(|(j, m)| err(&index(&at("std"), j), m))?;
        check_vector(&a.lower, width, VectorRule::Limit)
            .map_err(|(j, m)| err(&index(&at("lower"), j), m))?;
        check_vector(&a.upper, width, VectorRule::Limit)
            .map_err(|(j, m)| err(&index(&at("upper"), j), m))?;
        check_vector(&a.max_delta, width, VectorRule::Rate)
            .map_err(|(j, m)| err(&index(&at("max_delta"), j), m))?;
        for (j, (lo, hi)) in a.lower.iter().zip(&a.upper).enumerate() {
            if lo >= hi {
                return Err(err(
                    &index(&at("lower"), Some(j)),
                    format!(
                        "lower limit {lo} is not below upper limit {hi}; make lower[{j}] < upper[{j}]"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn index(field: &str, j: Option<usize>) -> String {
    match j {
        Some(j) => format!("{field}[{j}]"),
        None => field.to_string(),
    }
}

fn slot(topic: &str, msg_type: &str, fields: &[String], joints: usize) -> Slot {
    let schema = schema::schema(msg_type).expect("validated manifests name known types");
    Slot {
        topic: topic.to_string(),
        selectors: fields
            .iter()
            .map(|f| {
                let s = schema
                    .selector(f)
                    .expect("validated manifests have valid selectors");
                let w = s.width(joints);
                (s, w)
            })
            .collect(),
    }
}

/// Checks topic, type, selectors and joints; returns the width or (field, message).
fn check_selectors(
    topic: &str,
    msg_type: &str,
    fields: &[String],
    joints: &[String],
    is_action: bool,
) -> Result<usize, (&'static str, String)> {
    names::check_topic(topic).map_err(|m| ("topic", m))?;
    let schema: &MessageSchema = schema::schema(msg_type).ok_or_else(|| {
        let known: Vec<&str> = schema::SCHEMAS
            .iter()
            .filter(|s| {
                if is_action {
                    s.actuatable
                } else {
                    s.observable
                }
            })
            .map(|s| s.name)
            .collect();
        (
            "type",
            format!(
                "{msg_type:?} is not a supported message type; use one of {}",
                known.join(", ")
            ),
        )
    })?;
    let (allowed, role) = if is_action {
        (schema.actuatable, "action")
    } else {
        (schema.observable, "observation")
    };
    if !allowed {
        return Err((
            "type",
            format!("{} cannot carry an {role}; pick another type", schema.name),
        ));
    }
    if fields.is_empty() {
        return Err((
            "fields",
            "is empty; list the fields to use, e.g. [\"position\"] or [\"data[0..6]\"]".into(),
        ));
    }
    let mut width = 0;
    let mut per_joint = false;
    let mut used: Vec<(String, usize)> = Vec::new();
    for f in fields {
        let sel = schema.selector(f).map_err(|m| ("fields", m))?;
        let covered: Vec<(String, usize)> = match &sel {
            Selector::Scalar(p) => vec![(p.clone(), 0)],
            Selector::Slice { field, start, end } => {
                (*start..*end).map(|i| (field.clone(), i)).collect()
            }
            Selector::PerJoint(p) => {
                per_joint = true;
                (0..joints.len()).map(|i| (p.clone(), i)).collect()
            }
        };
        if let Some(dup) = covered.iter().find(|c| used.contains(c)) {
            return Err((
                "fields",
                format!(
                    "`{f}` selects `{}` element {} a second time; list each value once",
                    dup.0, dup.1
                ),
            ));
        }
        used.extend(covered);
        width += sel.width(joints.len());
    }
    if per_joint && joints.is_empty() {
        return Err((
            "joints",
            format!(
                "{} fields are selected by joint name; list the joints, e.g. joints = [\"shoulder\", \"elbow\"]",
                schema.name
            ),
        ));
    }
    if !per_joint && !joints.is_empty() {
        return Err((
            "joints",
            "is only used with per-joint fields (such as JointState `position`); remove it".into(),
        ));
    }
    for (k, j) in joints.iter().enumerate() {
        if j.is_empty() || joints[..k].contains(j) {
            return Err((
                "joints",
                format!("joint {j:?} is empty or listed twice; give each joint once"),
            ));
        }
    }
    Ok(width)
}

#[derive(Clone, Copy)]
enum VectorRule {
    Finite,
    Positive,
    Limit,
    Rate,
}

fn check_vector(v: &[f64], width: usize, rule: VectorRule) -> Result<(), (Option<usize>, String)> {
    if v.len() != width {
        return Err((
            None,
            format!(
                "has {} values but the fields select {width}; give one value per selected element",
                v.len()
            ),
        ));
    }
    for (j, &x) in v.iter().enumerate() {
        let bad = match rule {
            VectorRule::Finite => (!x.is_finite()).then_some("a finite number"),
            VectorRule::Positive => {
                (!(x.is_finite() && x > 0.0)).then_some("a finite number above 0")
            }
            VectorRule::Limit => x
                .is_nan()
                .then_some("a number (or inf / -inf for no limit)"),
            VectorRule::Rate => {
                (x.is_nan() || x <= 0.0).then_some("a number above 0 (or inf for no limit)")
            }
        };
        if let Some(want) = bad {
            return Err((Some(j), format!("is {x}; it must be {want}")));
        }
    }
    Ok(())
}

fn syntax_error(file: &Path, text: &str, e: &toml::de::Error) -> ManifestError {
    let message = e.message().trim().to_string();
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|r| r.split('`').next())
            .map(str::to_string)
    };
    let (field, fix) = if let Some(f) = quoted("unknown field `") {
        (
            f,
            "remove it or fix its spelling (docs/skill-format.md lists every field)",
        )
    } else if let Some(f) = quoted("missing field `") {
        (f, "add it (docs/skill-format.md lists every field)")
    } else {
        (
            "(syntax)".to_string(),
            "fix the TOML (docs/skill-format.md has an example)",
        )
    };
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
    let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
    ManifestError {
        file: file.to_path_buf(),
        field,
        problem: format!("{message}{at}; {fix}"),
    }
}
