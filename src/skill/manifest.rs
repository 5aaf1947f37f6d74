//! `skill.toml`: what a skill is, where it came from, and how its policy's tensors map onto this
//! robot's topics. The reference for users is `docs/skill-format.md`; keep the two in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::msg::names;
use crate::msg::schema::{self, MessageSchema, Selector};

/// The manifest's file name inside a skill folder.
pub const MANIFEST_FILE: &str = "skill.toml";

/// Whether `name` may name a skill: letters, digits, `-`, `_` and `.`, not starting with `.`. It
/// becomes a folder name in the store and a path segment in URLs, so nothing else is allowed.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Most frames a policy input may stack.
pub const MAX_HISTORY: usize = 1000;
/// Most values a policy input (frame × history) or an action may have: they size the buffers of
/// every tick.
pub const MAX_VALUES: usize = 1 << 20;

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
    /// Camera inputs, each feeding an image input of the model of its own.
    #[serde(rename = "image", default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageInput>,
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

/// The image message types an `[[image]]` input may name.
pub const IMAGE_TYPES: [&str; 2] = ["sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"];
/// Most camera inputs a skill may have (the control tick feeds them from a fixed array).
pub const MAX_IMAGES: usize = 7;
/// Largest model image side, pixels.
pub const MAX_IMAGE_SIDE: usize = 4096;
/// Default for the largest camera image accepted, pixels (an 8K frame is 33 MP).
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// One camera input: a topic of images, and how each becomes the tensor of one model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// Topic to subscribe to.
    pub topic: String,
    /// `sensor_msgs/msg/Image` or `sensor_msgs/msg/CompressedImage` (JPEG or PNG).
    #[serde(rename = "type")]
    pub msg_type: String,
    /// Name of the graph input this image feeds.
    pub input: String,
    /// Width the model takes, pixels.
    pub width: usize,
    /// Height the model takes, pixels.
    pub height: usize,
    /// Channels the model takes, in order: `rgb`, `bgr`, `mono` or `depth`.
    pub channels: Channels,
    /// Camera encodings accepted (`rgb8`, `bgr8`, `mono8`, `16UC1`, `32FC1`, `jpeg`, `png`); empty:
    /// every encoding that converts to `channels`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encodings: Vec<String>,
    /// How the camera image is scaled to the model's size.
    #[serde(default)]
    pub resize: Resize,
    /// Whether the largest centred region of the model's aspect ratio is cut out first.
    #[serde(default)]
    pub crop: Crop,
    /// Each value is multiplied by this first (1/255 for 8-bit images to 0..1, 0.001 for 16UC1
    /// depth in mm to metres).
    #[serde(default = "one_f64")]
    pub scale: f64,
    /// Per channel: the model sees `(value × scale - mean) / std`.
    pub mean: Vec<f64>,
    /// Per channel normalisation scale.
    pub std: Vec<f64>,
    /// Tensor layout of the model input: `nchw` (PyTorch) or `nhwc` (TensorFlow).
    #[serde(default)]
    pub layout: ImageLayout,
    /// Oldest image the control loop still accepts, in milliseconds.
    pub max_age_ms: f64,
    /// Largest camera image accepted (width × height); bigger ones are refused unread.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn one_f64() -> f64 {
    1.0
}

fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}

/// The channels a model's image input holds, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (OpenCV's order).
    Bgr,
    /// One grey channel (ITU-R BT.601 luma of a colour image).
    Mono,
    /// One depth channel (`16UC1`, `32FC1`; non-finite and zero readings become 0).
    Depth,
}

impl Channels {
    /// Channels in the tensor.
    pub fn count(self) -> usize {
        match self {
            Channels::Rgb | Channels::Bgr => 3,
            Channels::Mono | Channels::Depth => 1,
        }
    }

    /// Camera encodings that convert to these channels.
    pub fn encodings(self) -> &'static [&'static str] {
        match self {
            Channels::Rgb | Channels::Bgr | Channels::Mono => &["rgb8", "bgr8", "mono8", "jpeg", "png"],
            Channels::Depth => &["16UC1", "mono16", "32FC1", "png"],
        }
    }
}

/// How an image is scaled to the model's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Bilinear interpolation (as OpenCV's INTER_LINEAR, half-pixel centres).
    #[default]
    Bilinear,
    /// The mean of the source pixels each model pixel covers (OpenCV's INTER_AREA), for shrinking.
    Area,
}

/// Whether the image is cropped before resizing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// The whole image, stretched to the model's aspect ratio.
    #[default]
    None,
    /// The largest centred region with the model's aspect ratio.
    #[serde(alias = "center")]
    Centre,
}

/// Tensor layout of an image input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageLayout {
    /// `[1, channels, height, width]`.
    #[default]
    Nchw,
    /// `[1, height, width, channels]`.
    Nhwc,
}

impl ImageInput {
    /// The model input's dims for one image (batch axis first, of size 1).
    pub fn dims(&self) -> [usize; 4] {
        let c = self.channels.count();
        match self.layout {
            ImageLayout::Nchw => [1, c, self.height, self.width],
            ImageLayout::Nhwc => [1, self.height, self.width, c],
        }
    }

    /// Values in the model's tensor for one image.
    pub fn tensor_len(&self) -> usize {
        self.width * self.height * self.channels.count()
    }
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

/// Normalisation between the robot's units and the policy's: observations in, actions out.
#[derive(Debug, Clone, PartialEq)]
pub struct Normaliser {
    in_mean: Vec<f32>,
    in_inv_std: Vec<f32>,
    out_mean: Vec<f64>,
    out_std: Vec<f64>,
}

impl Normaliser {
    /// Policy input from the raw stacked observation: `(value - mean) / std`. Allocates nothing.
    pub fn input(&self, raw: &[f32], out: &mut [f32]) {
        for (i, (o, &r)) in out.iter_mut().zip(raw).enumerate() {
            *o = (r - self.in_mean[i]) * self.in_inv_std[i];
        }
    }

    /// The robot's action from the policy's output: `raw * std + mean`. Allocates nothing.
    pub fn action_to_robot(&self, policy: &[f32], out: &mut [f64]) {
        for (i, (o, &p)) in out.iter_mut().zip(policy).enumerate() {
            *o = p as f64 * self.out_std[i] + self.out_mean[i];
        }
    }

    /// How much one unit of the policy's output `i` moves the robot's action `i`.
    pub fn action_scale(&self, i: usize) -> f64 {
        self.out_std[i].abs()
    }

    /// The policy's output for a robot action (what a demonstration teaches the policy).
    pub fn action_to_policy(&self, robot: &[f64], out: &mut [f32]) {
        for (i, (o, &r)) in out.iter_mut().zip(robot).enumerate() {
            *o = ((r - self.out_mean[i]) / self.out_std[i]) as f32;
        }
    }

    /// Width of the policy input.
    pub fn input_width(&self) -> usize {
        self.in_mean.len()
    }

    /// Width of the action.
    pub fn action_width(&self) -> usize {
        self.out_mean.len()
    }
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
                Selector::Slice { field, start, end } => out.extend((*start..*end).map(|i| format!("{field}[{i}]"))),
                Selector::PerJoint(f) => out.extend(joints.iter().map(|j| format!("{f}[{j}]"))),
            }
        }
        out
    }
}

impl Manifest {
    /// Parses and validates manifest text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| syntax_error(file, text, &e))?;
        manifest.validate(file)?;
        Ok(manifest)
    }

    /// The manifest as TOML text, with a header comment pointing at the reference.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a manifest always serialises to TOML");
        format!("# skillgraft skill manifest; the format is described in docs/skill-format.md\n{body}")
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
        self.observations.iter().map(|o| slot(&o.topic, &o.msg_type, &o.fields, o.joints.len())).collect()
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
            .flat_map(|(s, o)| s.labels(&o.joints).into_iter().map(|l| format!("{}:{l}", o.topic)))
            .collect();
        let h = self.control.history;
        (0..h)
            .rev()
            .flat_map(|age| frame.iter().map(move |l| if age == 0 { l.clone() } else { format!("t-{age} {l}") }))
            .collect()
    }

    /// One label per action value.
    pub fn action_labels(&self) -> Vec<String> {
        self.action_slot().labels(&self.action.joints)
    }

    /// The skill's normalisation, in the one form the control loop, `step` and the dataset use.
    pub fn normaliser(&self) -> Normaliser {
        let mean: Vec<f32> = self.observations.iter().flat_map(|o| o.mean.iter().map(|&v| v as f32)).collect();
        let inv_std: Vec<f32> =
            self.observations.iter().flat_map(|o| o.std.iter().map(|&v| (1.0 / v) as f32)).collect();
        let h = self.control.history;
        Normaliser {
            in_mean: mean.repeat(h),
            in_inv_std: inv_std.repeat(h),
            out_mean: self.action.mean.clone(),
            out_std: self.action.std.clone(),
        }
    }

    fn validate(&self, file: &Path) -> Result<(), ManifestError> {
        let err = |field: &str, problem: String| ManifestError {
            file: file.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        if !valid_name(&self.name) {
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
                format!("{created:?} is not an RFC 3339 date-time; write e.g. \"2026-11-29T18:00:00Z\""),
            ));
        }
        for (field, value) in [
            ("model.file", &self.model.file),
            ("model.input", &self.model.input),
            ("model.output", &self.model.output),
            ("model.features", &self.model.features),
        ] {
            if value.is_empty() {
                return Err(err(
                    field,
                    "is empty; name the file or tensor (`skillgraft inspect MODEL.onnx` lists the tensors)".into(),
                ));
            }
        }
        if Path::new(&self.model.file).is_absolute() || self.model.file.split(['/', '\\']).any(|c| c == "..") {
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
                format!("{rate} is not a usable control rate; give a rate in Hz between 0 and 10000"),
            ));
        }
        if self.control.history == 0 || self.control.history > MAX_HISTORY {
            return Err(err(
                "control.history",
                format!("is {}; give the number of stacked frames, 1 to {MAX_HISTORY}", self.control.history),
            ));
        }
        if self.observations.is_empty() {
            return Err(err("observation", "no observation inputs; add at least one [[observation]] table".into()));
        }
        for (i, o) in self.observations.iter().enumerate() {
            let at = |f: &str| format!("observation[{i}].{f}");
            let width =
                check_selectors(&o.topic, &o.msg_type, &o.fields, &o.joints, false).map_err(|(f, m)| err(&at(f), m))?;
            check_vector(&o.mean, width, VectorRule::Finite).map_err(|(j, m)| err(&index(&at("mean"), j), m))?;
            check_vector(&o.std, width, VectorRule::Positive).map_err(|(j, m)| err(&index(&at("std"), j), m))?;
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
        if self.images.len() > MAX_IMAGES {
            return Err(err(
                "image",
                format!("{} camera inputs; a skill may have at most {MAX_IMAGES}", self.images.len()),
            ));
        }
        for (i, im) in self.images.iter().enumerate() {
            let at = |f: &str| format!("image[{i}].{f}");
            check_image(im).map_err(|(f, j, m)| err(&index(&at(f), j), m))?;
            if im.input == self.model.input || self.images[..i].iter().any(|o| o.input == im.input) {
                return Err(err(
                    &at("input"),
                    format!(
                        "`{}` is fed already (by model.input or an earlier [[image]]); each graph input is fed by one source",
                        im.input
                    ),
                ));
            }
        }
        let frame = self.frame_width();
        if frame.checked_mul(self.control.history).is_none_or(|w| w > MAX_VALUES) {
            return Err(err(
                "control.history",
                format!(
                    "{} frames of {frame} values make an input over {MAX_VALUES} values; stack fewer frames or select fewer fields",
                    self.control.history
                ),
            ));
        }
        let a = &self.action;
        let at = |f: &str| format!("action.{f}");
        let width =
            check_selectors(&a.topic, &a.msg_type, &a.fields, &a.joints, true).map_err(|(f, m)| err(&at(f), m))?;
        check_vector(&a.mean, width, VectorRule::Finite).map_err(|(j, m)| err(&index(&at("mean"), j), m))?;
        check_vector(&a.std, width, VectorRule::Positive).map_err(|(j, m)| err(&index(&at("std"), j), m))?;
        check_vector(&a.lower, width, VectorRule::Limit).map_err(|(j, m)| err(&index(&at("lower"), j), m))?;
        check_vector(&a.upper, width, VectorRule::Limit).map_err(|(j, m)| err(&index(&at("upper"), j), m))?;
        check_vector(&a.max_delta, width, VectorRule::Rate).map_err(|(j, m)| err(&index(&at("max_delta"), j), m))?;
        for (j, (lo, hi)) in a.lower.iter().zip(&a.upper).enumerate() {
            if lo >= hi {
                return Err(err(
                    &index(&at("lower"), Some(j)),
                    format!("lower limit {lo} is not below upper limit {hi}; make lower[{j}] < upper[{j}]"),
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
                let s = schema.selector(f).expect("validated manifests have valid selectors");
                let w = s.width(joints);
                (s, w)
            })
            .collect(),
    }
}

/// Checks one `[[image]]` table; on error (field, element, message).
fn check_image(im: &ImageInput) -> Result<(), (&'static str, Option<usize>, String)> {
    names::check_topic(&im.topic).map_err(|m| ("topic", None, m.to_string()))?;
    let full = schema::full_type_name(&im.msg_type);
    if !IMAGE_TYPES.contains(&full.as_str()) {
        return Err((
            "type",
            None,
            format!("{:?} is not an image type; use one of {}", im.msg_type, IMAGE_TYPES.join(", ")),
        ));
    }
    if im.input.is_empty() {
        return Err((
            "input",
            None,
            "is empty; name the graph input this image feeds (`skillgraft inspect MODEL.onnx` lists them)".into(),
        ));
    }
    for (f, v) in [("width", im.width), ("height", im.height)] {
        if v == 0 || v > MAX_IMAGE_SIDE {
            return Err((f, None, format!("is {v}; give the model's image size in pixels, 1 to {MAX_IMAGE_SIDE}")));
        }
    }
    let known = im.channels.encodings();
    for e in &im.encodings {
        if !known.contains(&e.as_str()) {
            return Err((
                "encodings",
                None,
                format!("{e:?} does not convert to {:?} channels; use some of {}", im.channels, known.join(", ")),
            ));
        }
    }
    let compressed = full == IMAGE_TYPES[1];
    if compressed && im.encodings.iter().any(|e| e != "jpeg" && e != "png") {
        return Err(("encodings", None, "a CompressedImage is `jpeg` or `png`; list only those".into()));
    }
    if compressed && im.channels == Channels::Depth && im.encodings.iter().any(|e| e == "jpeg") {
        return Err(("encodings", None, "JPEG cannot carry depth; use `png` (16-bit)".into()));
    }
    if !(im.scale.is_finite() && im.scale > 0.0) {
        return Err(("scale", None, format!("is {}; it must be a finite number above 0", im.scale)));
    }
    let c = im.channels.count();
    check_vector(&im.mean, c, VectorRule::Finite).map_err(|(j, m)| ("mean", j, channels_hint(m, c)))?;
    check_vector(&im.std, c, VectorRule::Positive).map_err(|(j, m)| ("std", j, channels_hint(m, c)))?;
    if !(im.max_age_ms.is_finite() && im.max_age_ms > 0.0) {
        return Err((
            "max_age_ms",
            None,
            format!(
                "{} is not a usable age; give the oldest acceptable image age in milliseconds, above 0",
                im.max_age_ms
            ),
        ));
    }
    if im.max_pixels == 0 {
        return Err(("max_pixels", None, "is 0; give the largest camera image to accept, width × height".into()));
    }
    Ok(())
}

fn channels_hint(m: String, c: usize) -> String {
    m.replace("the fields select", &format!("the image has {c} channel(s) and needs"))
}

/// Checks topic, type, selectors and joints; returns the width or (field, message).
fn check_selectors(
    topic: &str,
    msg_type: &str,
    fields: &[String],
    joints: &[String],
    is_action: bool,
) -> Result<usize, (&'static str, String)> {
    names::check_topic(topic).map_err(|m| ("topic", m.to_string()))?;
    if IMAGE_TYPES.contains(&schema::full_type_name(msg_type).as_str()) {
        return Err((
            "type",
            format!(
                "{msg_type} is a camera topic; declare it in an [[image]] table, which says how images become a tensor"
            ),
        ));
    }
    let schema: &MessageSchema = schema::schema(msg_type).ok_or_else(|| {
        let known: Vec<&str> = schema::SCHEMAS
            .iter()
            .filter(|s| if is_action { s.actuatable } else { s.observable })
            .map(|s| s.name)
            .collect();
        ("type", format!("{msg_type:?} is not a supported message type; use one of {}", known.join(", ")))
    })?;
    let (allowed, role) = if is_action { (schema.actuatable, "action") } else { (schema.observable, "observation") };
    if !allowed {
        return Err(("type", format!("{} cannot carry an {role}; pick another type", schema.name)));
    }
    if fields.is_empty() {
        return Err(("fields", "is empty; list the fields to use, e.g. [\"position\"] or [\"data[0..6]\"]".into()));
    }
    let mut width = 0;
    let mut per_joint = false;
    let mut used: Vec<(String, usize)> = Vec::new();
    for f in fields {
        let sel = schema.selector(f).map_err(|m| ("fields", m.to_string()))?;
        let covered: Vec<(String, usize)> = match &sel {
            Selector::Scalar(p) => vec![(p.clone(), 0)],
            Selector::Slice { field, start, end } => (*start..*end).map(|i| (field.clone(), i)).collect(),
            Selector::PerJoint(p) => {
                per_joint = true;
                (0..joints.len()).map(|i| (p.clone(), i)).collect()
            }
        };
        if let Some(dup) = covered.iter().find(|c| used.contains(c)) {
            return Err((
                "fields",
                format!("`{f}` selects `{}` element {} a second time; list each value once", dup.0, dup.1),
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
        return Err(("joints", "is only used with per-joint fields (such as JointState `position`); remove it".into()));
    }
    for (k, j) in joints.iter().enumerate() {
        if j.is_empty() || joints[..k].contains(j) {
            return Err(("joints", format!("joint {j:?} is empty or listed twice; give each joint once")));
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
            format!("has {} values but the fields select {width}; give one value per selected element", v.len()),
        ));
    }
    for (j, &x) in v.iter().enumerate() {
        let bad = match rule {
            VectorRule::Finite => (!x.is_finite()).then_some("a finite number"),
            VectorRule::Positive => (!(x.is_finite() && x > 0.0)).then_some("a finite number above 0"),
            VectorRule::Limit => x.is_nan().then_some("a number (or inf / -inf for no limit)"),
            VectorRule::Rate => (x.is_nan() || x <= 0.0).then_some("a number above 0 (or inf for no limit)"),
        };
        if let Some(want) = bad {
            return Err((Some(j), format!("is {x}; it must be {want}")));
        }
    }
    Ok(())
}

fn syntax_error(file: &Path, text: &str, e: &toml::de::Error) -> ManifestError {
    let message = e.message().trim().to_string();
    let quoted = |prefix: &str| message.strip_prefix(prefix).and_then(|r| r.split('`').next()).map(str::to_string);
    let (field, fix) = if let Some(f) = quoted("unknown field `") {
        (f, "remove it or fix its spelling (docs/skill-format.md lists every field)")
    } else if let Some(f) = quoted("missing field `") {
        (f, "add it (docs/skill-format.md lists every field)")
    } else {
        ("(syntax)".to_string(), "fix the TOML (docs/skill-format.md has an example)")
    };
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
    ManifestError { file: file.to_path_buf(), field, problem: format!("{message}{at}; {fix}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARM: &str = r#"
name = "reach"
version = "1.2.0"
description = "Reach a point"

[provenance]
source_robot = "arm-a"
method = "trained"
parent = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
created = "2026-11-29T18:00:00Z"

[provenance.details]
epochs = 40

[model]
file = "policy.onnx"
input = "obs"
output = "action"
features = "feat"

[control]
rate_hz = 100.0
history = 2

[[observation]]
topic = "/joint_states"
type = "sensor_msgs/JointState"
fields = ["position", "velocity"]
joints = ["shoulder", "elbow"]
mean = [0.0, 0.0, 0.0, 0.0]
std = [1.0, 1.0, 2.0, 2.0]
max_age_ms = 50.0

[[observation]]
topic = "/target"
type = "geometry_msgs/msg/Point"
fields = ["x", "y"]
mean = [0.5, 0.0]
std = [0.25, 0.25]
max_age_ms = 500.0

[action]
topic = "/arm/cmd"
type = "std_msgs/msg/Float64MultiArray"
fields = ["data[0..2]"]
mean = [0.0, 0.0]
std = [0.5, 0.5]
lower = [-1.0, -1.0]
upper = [1.0, 1.0]
max_delta = [0.1, inf]
safe = "hold"
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("skill.toml"))
    }

    #[test]
    fn widths_labels_and_normalisation_follow_the_fields() {
        let m = parse(ARM).unwrap();
        assert_eq!(m.frame_width(), 6);
        assert_eq!(m.input_width(), 12);
        assert_eq!(m.action_width(), 2);
        let labels = m.input_labels();
        assert_eq!(labels[0], "t-1 /joint_states:position[shoulder]");
        assert_eq!(labels[3], "t-1 /joint_states:velocity[elbow]");
        assert_eq!(labels[6], "/joint_states:position[shoulder]");
        assert_eq!(labels[11], "/target:y");
        assert_eq!(m.action_labels(), vec!["data[0]", "data[1]"]);
        let n = m.normaliser();
        assert_eq!((n.input_width(), n.action_width()), (12, 2));
        let raw: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut x = vec![0.0; 12];
        n.input(&raw, &mut x);
        assert_eq!(x[2..6], [1.0, 1.5, (4.0 - 0.5) / 0.25, 20.0], "velocity std 2; target mean 0.5, std 0.25");
        assert_eq!(x[10], (10.0 - 0.5) / 0.25, "the newest frame is normalised like the oldest");
        let mut robot = [0.0; 2];
        n.action_to_robot(&[1.0, -2.0], &mut robot);
        assert_eq!(robot, [0.5, -1.0]);
        let mut policy = [0.0f32; 2];
        n.action_to_policy(&robot, &mut policy);
        assert_eq!(policy, [1.0, -2.0]);
        assert_eq!(m.action.safe, SafeAction::Hold);
        assert_eq!(m.action.max_delta[1], f64::INFINITY);
    }

    #[test]
    fn written_toml_reads_back_equal() {
        let m = parse(ARM).unwrap();
        let again = parse(&m.to_toml()).unwrap();
        assert_eq!(again, m);
        assert!(m.to_toml().starts_with("# skillgraft skill manifest"));
    }

    fn problem(edit: (&str, &str)) -> ManifestError {
        assert!(ARM.contains(edit.0), "{}", edit.0);
        parse(&ARM.replacen(edit.0, edit.1, 1)).unwrap_err()
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases: &[((&str, &str), &str, &str)] = &[
            (("name = \"reach\"", "name = \"re ach\""), "name", "not a valid skill name"),
            (("sha256:0123", "sha1:0123"), "provenance.parent", "64 hex digits"),
            (("2026-11-29T18:00:00Z", "yesterday"), "provenance.created", "RFC 3339"),
            (("history = 2", "history = 0"), "control.history", "1 to 1000"),
            (("history = 2", "history = 2305843009213693953"), "control.history", "1 to 1000"),
            (
                ("fields = [\"x\", \"y\"]", "fields = [\"x\", \"data[0..18446744073709551615]\"]"),
                "observation[1].fields",
                "",
            ),
            (("joints = [\"shoulder\", \"elbow\"]", "joints = []"), "observation[0].joints", "list the joints"),
            (
                ("joints = [\"shoulder\", \"elbow\"]", "joints = [\"elbow\", \"elbow\"]"),
                "observation[0].joints",
                "listed twice",
            ),
            (("fields = [\"x\", \"y\"]", "fields = [\"x\", \"w\"]"), "observation[1].fields", "valid fields: x, y, z"),
            (("fields = [\"x\", \"y\"]", "fields = [\"x\", \"x\"]"), "observation[1].fields", "a second time"),
            (("std = [0.25, 0.25]", "std = [0.25, 0.0]"), "observation[1].std[1]", "above 0"),
            (("max_age_ms = 500.0", "max_age_ms = 0.0"), "observation[1].max_age_ms", "above 0"),
            (
                ("type = \"sensor_msgs/JointState\"", "type = \"trajectory_msgs/msg/JointTrajectory\""),
                "observation[0].type",
                "cannot carry an observation",
            ),
            (("max_delta = [0.1, inf]", "max_delta = [0.1, 0.0]"), "action.max_delta[1]", "above 0"),
            (("lower = [-1.0, -1.0]", "lower = [-1.0, nan]"), "action.lower[1]", "is NaN"),
            (("safe = \"hold\"", "safe = \"brake\""), "(syntax)", "unknown variant `brake`"),
            (
                ("[[observation]]\ntopic = \"/target\"", "[[observation]]\ntopic = \"target//x\""),
                "observation[1].topic",
                "empty part",
            ),
        ];
        for (edit, field, text) in cases {
            let e = problem(*edit);
            assert_eq!(&e.field, field, "{e}");
            assert!(e.problem.contains(text), "{e}");
            assert!(e.to_string().starts_with("skill.toml: `"), "{e}");
        }
    }

    #[test]
    fn the_input_size_is_bounded_before_anything_is_sized_by_it() {
        let ones = vec!["1.0"; 2000].join(", ");
        let text = ARM.replacen("history = 2", "history = 1000", 1).replacen(
            "fields = [\"x\", \"y\"]\nmean = [0.5, 0.0]\nstd = [0.25, 0.25]",
            &format!("fields = [\"x\", \"y\"]\nmean = [0.5, 0.0]\nstd = [0.25, 0.25]\nmax_age_ms = 500.0\n\n[[observation]]\ntopic = \"/big\"\ntype = \"std_msgs/msg/Float64MultiArray\"\nfields = [\"data[0..2000]\"]\nmean = [{ones}]\nstd = [{ones}]"),
            1,
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, "control.history", "{e}");
        assert!(e.problem.contains("over 1048576 values"), "{e}");
    }

    #[test]
    fn observations_are_required() {
        let text = ARM.split("[[observation]]").next().unwrap().to_string() + &ARM[ARM.find("[action]").unwrap()..];
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, "observation");
    }
    const CAMERA: &str = r#"
[[image]]
topic = "/camera/image_raw"
type = "sensor_msgs/msg/Image"
input = "image"
width = 64
height = 48
channels = "rgb"
crop = "center"
scale = 0.00392156862745098
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
max_age_ms = 100.0
"#;

    fn with_camera(edit: (&str, &str)) -> Result<Manifest, ManifestError> {
        let at = ARM.find("[action]").unwrap();
        assert!(CAMERA.contains(edit.0), "{}", edit.0);
        parse(&format!("{}{}\n{}", &ARM[..at], CAMERA.replacen(edit.0, edit.1, 1), &ARM[at..]))
    }

    #[test]
    fn an_image_table_reads_with_defaults_and_round_trips() {
        let m = with_camera(("", "")).unwrap();
        let im = &m.images[0];
        assert_eq!((im.resize, im.crop, im.layout), (Resize::Bilinear, Crop::Centre, ImageLayout::Nchw));
        assert_eq!((im.dims(), im.tensor_len(), im.max_pixels), ([1, 3, 48, 64], 3 * 48 * 64, DEFAULT_MAX_PIXELS));
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn each_image_mistake_names_its_field() {
        let cases: &[((&str, &str), &str, &str)] = &[
            (("sensor_msgs/msg/Image", "sensor_msgs/msg/JointState"), "image[0].type", "not an image type"),
            (("input = \"image\"", "input = \"obs\""), "image[0].input", "fed already"),
            (("input = \"image\"", "input = \"\""), "image[0].input", "is empty"),
            (("width = 64", "width = 0"), "image[0].width", "1 to 4096"),
            (("height = 48", "height = 5000"), "image[0].height", "1 to 4096"),
            (("channels = \"rgb\"", "channels = \"rgba\""), "(syntax)", "unknown variant"),
            (
                ("channels = \"rgb\"", "channels = \"rgb\"\nencodings = [\"32FC1\"]"),
                "image[0].encodings",
                "does not convert",
            ),
            (("mean = [0.5, 0.5, 0.5]", "mean = [0.5]"), "image[0].mean", "3 channel(s)"),
            (("std = [0.25, 0.25, 0.25]", "std = [0.25, 0.0, 0.25]"), "image[0].std[1]", "above 0"),
            (("scale = 0.00392156862745098", "scale = -1.0"), "image[0].scale", "above 0"),
            (("max_age_ms = 100.0", "max_age_ms = nan"), "image[0].max_age_ms", "usable age"),
        ];
        for (edit, field, text) in cases {
            let e = with_camera(*edit).unwrap_err();
            assert_eq!(&e.field, field, "{e}");
            assert!(e.problem.contains(text), "{e}");
        }
    }

    #[test]
    fn a_camera_declared_as_numbers_is_pointed_at_the_image_table() {
        let e = problem(("type = \"geometry_msgs/msg/Point\"", "type = \"sensor_msgs/msg/CompressedImage\""));
        assert_eq!(e.field, "observation[1].type");
        assert!(e.problem.contains("[[image]]"), "{e}");
    }
}
