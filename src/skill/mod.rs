//! Skills: a folder holding `skill.toml` and the policy's ONNX file. Loading validates the manifest
//! against the graph; writing is atomic (a temporary folder renamed into place).

pub mod bundle;
pub mod inspect;
pub mod manifest;
pub mod sandbox;
pub mod store;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::file::FileError;
use crate::model::onnx::OnnxFile;
use crate::model::{Model, ModelError};
use manifest::{ActionOutput, Control, ModelSection, ObservationInput, Provenance, SafeAction};
pub use manifest::{MANIFEST_FILE, Manifest, ManifestError};

/// What went wrong with a skill, naming the file, the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SkillError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// The path is not a skill folder.
    #[error("{} is not a skill folder: it has no {MANIFEST_FILE}; make one from an ONNX file with `skillgraft skill init --onnx MODEL.onnx --features TENSOR --out DIR`", path.display())]
    NotASkill {
        /// The path given.
        path: PathBuf,
    },
    /// The manifest is invalid, or does not fit the model.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The model named by the manifest is invalid.
    #[error("{}: `{field}`: {source}", manifest.display())]
    Model {
        /// The manifest naming the model.
        manifest: PathBuf,
        /// The manifest field the problem concerns.
        field: &'static str,
        /// The model error.
        #[source]
        source: ModelError,
    },
    /// A model problem outside any skill (a bare ONNX file).
    #[error(transparent)]
    Onnx(#[from] ModelError),
    /// An observation given to `step` does not fit the skill.
    #[error("{0}")]
    Observation(String),
    /// The destination of a write already exists.
    #[error("{} already exists; choose another --out folder or remove it first", path.display())]
    Exists {
        /// The destination.
        path: PathBuf,
    },
}

/// A loaded skill: manifest, model and digest.
pub struct Skill {
    /// The skill folder.
    pub dir: PathBuf,
    /// The validated manifest.
    pub manifest: Manifest,
    /// The loaded model.
    pub model: Model,
    /// `sha256:<hex>` over the manifest and model bytes (see [`digest`]).
    pub digest: String,
}

impl Skill {
    /// Loads a skill from its folder (or its `skill.toml`) and validates it against the model.
    pub fn load(path: &Path) -> Result<Skill, SkillError> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else if path.file_name().is_some_and(|n| n == MANIFEST_FILE) {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            return Err(SkillError::NotASkill { path: path.to_path_buf() });
        };
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Err(SkillError::NotASkill { path: path.to_path_buf() });
        }
        let text = read_manifest_text(&manifest_path)?;
        let manifest = Manifest::parse(&text, &manifest_path)?;
        let model_path = dir.join(&manifest.model.file);
        if !model_path.is_file() {
            return Err(ManifestError {
                file: manifest_path,
                field: "model.file".into(),
                problem: format!(
                    "{} does not exist; put the ONNX file in the skill folder or fix the name",
                    model_path.display()
                ),
            }
            .into());
        }
        let model_bytes = read(&model_path, "read the model")?;
        Skill::from_parts(&dir, manifest, text.as_bytes(), &model_bytes)
    }

    /// Validates a manifest against model bytes; `dir` is where they live (or will).
    fn from_parts(
        dir: &Path,
        manifest: Manifest,
        manifest_bytes: &[u8],
        model_bytes: &[u8],
    ) -> Result<Skill, SkillError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let model_path = dir.join(&manifest.model.file);
        let in_skill = |source: ModelError| SkillError::Model {
            manifest: manifest_path.clone(),
            field: source.manifest_field(),
            source,
        };
        let file = OnnxFile::decode(&model_path, model_bytes).map_err(in_skill)?;
        let m = &manifest.model;
        let feeds: Vec<&str> =
            std::iter::once(m.input.as_str()).chain(manifest.images.iter().map(|i| i.input.as_str())).collect();
        let model = Model::load(file, &feeds, &m.output, &m.features).map_err(in_skill)?;
        let mismatch =
            |field: &str, problem: String| ManifestError { file: manifest_path.clone(), field: field.into(), problem };
        for (i, (im, feed)) in manifest.images.iter().zip(&model.feeds[1..]).enumerate() {
            let want = im.dims();
            let got = &feed.shape.sample;
            if got.as_slice() != &want[1..] {
                return Err(mismatch(
                    &format!("image[{i}]"),
                    format!(
                        "the model input `{}` takes images of {:?} per sample (declared {:?}), but width {}, height {}, {:?} channels and layout {:?} make {:?}; set them to the model's",
                        im.input, got, feed.shape.declared, im.width, im.height, im.channels, im.layout, &want[1..]
                    ),
                )
                .into());
            }
        }
        let model_in = model.input().shape.width();
        if model_in != manifest.input_width() {
            let parts: Vec<String> =
                manifest.observation_slots().iter().map(|s| format!("{} {}", s.topic, s.width())).collect();
            return Err(mismatch(
                "observation",
                format!(
                    "the model input `{}` takes {model_in} values per sample (shape {:?}) but the observations give {} (history {} x frame {} = {}); make the fields select {} values per frame, or fix control.history",
                    m.input,
                    model.input().shape.declared,
                    manifest.input_width(),
                    manifest.control.history,
                    manifest.frame_width(),
                    parts.join(" + "),
                    if model_in % manifest.control.history == 0 { model_in / manifest.control.history } else { model_in },
                ),
            )
            .into());
        }
        let model_out = model.control.output_width();
        if model_out != manifest.action_width() {
            return Err(mismatch(
                "action.fields",
                format!(
                    "the model output `{}` gives {model_out} values but the action fields take {}; select {model_out} values",
                    m.output,
                    manifest.action_width()
                ),
            )
            .into());
        }
        let digest = digest(&[(MANIFEST_FILE, manifest_bytes), (&manifest.model.file, model_bytes)]);
        Ok(Skill { dir: dir.to_path_buf(), manifest, model, digest })
    }

    /// Normalises an observation, runs the control plan and de-normalises the action. `images`
    /// holds one preprocessed tensor per `[[image]]` input (see `observe::image`). Returns the raw
    /// (normalised) and the de-normalised action.
    pub fn step(&mut self, observation: &[f64], images: &[&[f32]]) -> Result<(Vec<f32>, Vec<f64>), SkillError> {
        let want = self.manifest.input_width();
        if observation.len() != want {
            return Err(SkillError::Observation(format!(
                "the skill takes {want} observation values (history {} x frame {}), got {}",
                self.manifest.control.history,
                self.manifest.frame_width(),
                observation.len()
            )));
        }
        if let Some(i) = observation.iter().position(|v| !v.is_finite()) {
            return Err(SkillError::Observation(format!(
                "observation value {i} is {}; give finite numbers",
                observation[i]
            )));
        }
        if images.len() != self.manifest.images.len() {
            return Err(SkillError::Observation(format!(
                "the skill takes {} image(s), got {}",
                self.manifest.images.len(),
                images.len()
            )));
        }
        for (i, (im, t)) in self.manifest.images.iter().zip(images).enumerate() {
            if t.len() != im.tensor_len() {
                return Err(SkillError::Observation(format!(
                    "image {i} ({}) has {} values; the model takes {:?} = {}",
                    im.topic,
                    t.len(),
                    im.dims(),
                    im.tensor_len()
                )));
            }
        }
        let norm = self.manifest.normaliser();
        let raw_obs: Vec<f32> = observation.iter().map(|&v| v as f32).collect();
        let mut obs = vec![0.0f32; raw_obs.len()];
        norm.input(&raw_obs, &mut obs);
        let feeds: Vec<&[f32]> = std::iter::once(obs.as_slice()).chain(images.iter().copied()).collect();
        let mut raw = vec![0.0f32; self.manifest.action_width()];
        self.model.control.step(&feeds, &mut raw)?;
        let mut action = vec![0.0f64; raw.len()];
        norm.action_to_robot(&raw, &mut action);
        Ok((raw, action))
    }
}

/// Largest `skill.toml` read: a manifest is a page of settings, and its size bounds what parsing
/// it may allocate.
pub const MANIFEST_LIMIT: u64 = 1 << 20;

fn read_manifest_text(manifest_path: &Path) -> Result<String, SkillError> {
    let len = std::fs::metadata(manifest_path).map_err(FileError::at("read the manifest", manifest_path))?.len();
    if len > MANIFEST_LIMIT {
        return Err(ManifestError {
            file: manifest_path.to_path_buf(),
            field: "(file)".into(),
            problem: format!("is {len} bytes, over the limit of {MANIFEST_LIMIT}; a manifest is a page of settings"),
        }
        .into());
    }
    let text = read(manifest_path, "read the manifest")?;
    String::from_utf8(text).map_err(|_| {
        ManifestError {
            file: manifest_path.to_path_buf(),
            field: "(file)".into(),
            problem: "is not UTF-8 text; save it as UTF-8".into(),
        }
        .into()
    })
}

/// Reads and validates the manifest of the skill folder `dir` without loading its model.
pub fn read_manifest(dir: &Path) -> Result<Manifest, SkillError> {
    let path = dir.join(MANIFEST_FILE);
    Ok(Manifest::parse(&read_manifest_text(&path)?, &path)?)
}

impl Skill {
    /// Runs one inference on the mean observation: the output must be finite. An install runs
    /// it before anything is committed.
    pub fn smoke_test(&mut self) -> Result<(), SmokeError> {
        let m = &self.manifest;
        let frame: Vec<f64> = m.observations.iter().flat_map(|o| o.mean.iter().copied()).collect();
        let obs: Vec<f64> = (0..m.control.history).flat_map(|_| frame.iter().copied()).collect();
        // Zero tensors: every image at its normalisation mean.
        let images: Vec<Vec<f32>> = m.images.iter().map(|i| vec![0.0; i.tensor_len()]).collect();
        let images: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let (_, action) = self.step(&obs, &images).map_err(|e| SmokeError::Failed(Box::new(e)))?;
        if action.iter().all(|v| v.is_finite()) { Ok(()) } else { Err(SmokeError::NotFinite) }
    }
}

/// Why a skill failed its smoke inference.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    /// The inference itself failed.
    #[error("the smoke inference failed: {0}")]
    Failed(#[source] Box<SkillError>),
    /// It gave NaN or infinite values.
    #[error("the smoke inference gave values that are not finite")]
    NotFinite,
}

/// The digest of a set of named files: SHA-256 over, for each file in the order given, its name,
/// a zero byte, its length as 8 little-endian bytes, and its bytes. Written `sha256:<hex>`.
pub fn digest(files: &[(&str, &[u8])]) -> String {
    let mut h = Sha256::new();
    for (name, bytes) in files {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn read(path: &Path, action: &'static str) -> Result<Vec<u8>, SkillError> {
    Ok(std::fs::read(path).map_err(FileError::at(action, path))?)
}

/// Writes a skill folder atomically: both files go into a temporary sibling folder, are synced,
/// and the folder is renamed to `out`. The skill is validated (loaded) before anything is written.
pub fn write_skill(out: &Path, manifest: &Manifest, model_bytes: &[u8]) -> Result<Skill, SkillError> {
    write_skill_with(out, manifest, model_bytes, &[])
}

/// [`write_skill`] with `extra` files (name, bytes) in the folder beside the manifest and model.
pub fn write_skill_with(
    out: &Path,
    manifest: &Manifest,
    model_bytes: &[u8],
    extra: &[(&str, &[u8])],
) -> Result<Skill, SkillError> {
    if out.exists() {
        return Err(SkillError::Exists { path: out.to_path_buf() });
    }
    let text = manifest.to_toml();
    Manifest::parse(&text, &out.join(MANIFEST_FILE))?;
    let skill = Skill::from_parts(out, manifest.clone(), text.as_bytes(), model_bytes)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(FileError::at("create", &parent))?;
    let leaf = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "skill".into());
    let tmp = parent.join(format!(".{leaf}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(FileError::at("remove the stale temporary folder", &tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(FileError::at("create", &tmp))?;
    let written = (|| {
        let files = [(MANIFEST_FILE, text.as_bytes()), (manifest.model.file.as_str(), model_bytes)];
        for &(name, bytes) in files.iter().chain(extra) {
            let path = tmp.join(name);
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(FileError::at("create", p))?;
            }
            let mut f = std::fs::File::create(&path).map_err(FileError::at("create", &path))?;
            f.write_all(bytes).map_err(FileError::at("write", &path))?;
            f.sync_all().map_err(FileError::at("sync", &path))?;
        }
        std::fs::rename(&tmp, out).map_err(FileError::at("move the new skill into", out))?;
        std::fs::File::open(&parent).and_then(|d| d.sync_all()).map_err(FileError::at("sync", &parent))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    Ok(Skill { dir: out.to_path_buf(), ..skill })
}

/// The graph's numeric observation input and an `[[image]]` skeleton for each image input (rank
/// 4 with 1 or 3 channels, NCHW or NHWC): images on `~/image` (`~/image_1`, ...), 8-bit values
/// scaled to 0..1, identity mean and std.
pub fn split_inputs(file: &OnnxFile) -> Result<(String, Vec<manifest::ImageInput>), SkillError> {
    use manifest::{Channels, Crop, ImageInput, ImageLayout, Resize};
    let ix = file.index();
    let mut numeric = Vec::new();
    let mut images = Vec::new();
    for feed in ix.inputs() {
        let dims: Vec<Option<usize>> =
            crate::model::onnx::declared_shape(feed).iter().map(|d| d.parse().ok()).collect();
        let layout = match dims.as_slice() {
            [_, Some(1 | 3), Some(h), Some(w)] if *h > 4 && *w > 4 => Some((ImageLayout::Nchw, dims[1], *h, *w)),
            [_, Some(h), Some(w), Some(1 | 3)] if *h > 4 && *w > 4 => Some((ImageLayout::Nhwc, dims[3], *h, *w)),
            _ => None,
        };
        match layout {
            Some((layout, c, height, width)) => {
                let channels = if c == Some(3) { Channels::Rgb } else { Channels::Mono };
                let n = channels.count();
                let topic = if images.is_empty() { "~/image".to_string() } else { format!("~/image_{}", images.len()) };
                images.push(ImageInput {
                    topic,
                    msg_type: "sensor_msgs/msg/Image".into(),
                    input: feed.name.clone(),
                    width,
                    height,
                    channels,
                    encodings: vec![],
                    resize: Resize::Bilinear,
                    crop: Crop::None,
                    scale: 1.0 / 255.0,
                    mean: vec![0.0; n],
                    std: vec![1.0; n],
                    layout,
                    max_age_ms: 200.0,
                    max_pixels: manifest::DEFAULT_MAX_PIXELS,
                });
            }
            None => numeric.push(feed.name.clone()),
        }
    }
    match numeric.as_slice() {
        [one] => Ok((one.clone(), images)),
        many => {
            let names: Vec<String> =
                ix.inputs().iter().map(|i| format!("{} {:?}", i.name, crate::model::onnx::declared_shape(i))).collect();
            Err(ModelError::Shape {
                path: file.path.clone(),
                subject: crate::model::Subject::Input,
                problem: format!(
                    "the graph has {} numeric inputs besides its images (inputs: {}); skillgraft feeds one observation vector (rank 1 or 2) and any number of images (rank 4, NCHW or NHWC with 1 or 3 channels): export the policy so",
                    many.len(),
                    names.join(", ")
                ),
            }
            .into())
        }
    }
}

/// A manifest skeleton for any ONNX model: one array observation input and one array action
/// output of the model's widths, identity normalisation, default topics and no limits yet.
pub fn skeleton(onnx: &Path, features: &str, output: Option<&str>) -> Result<(Manifest, Vec<u8>), SkillError> {
    let file = OnnxFile::read(onnx)?;
    let ix = file.index();
    let (input, images) = split_inputs(&file)?;
    let output = match output {
        Some(o) => o.to_string(),
        None => ix.graph.output[0].name.clone(),
    };
    drop(ix);
    let bytes = file.inlined()?;
    let feeds: Vec<&str> = std::iter::once(input.as_str()).chain(images.iter().map(|i| i.input.as_str())).collect();
    let model = Model::load(file, &feeds, &output, features)?;
    let in_width = model.input().shape.width();
    let out_width = model.control.output_width();
    let stem = onnx.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    let mut details = BTreeMap::new();
    details.insert(
        "source_file".to_string(),
        toml::Value::String(onnx.file_name().unwrap_or_default().to_string_lossy().into_owned()),
    );
    let producer = format!("{} {}", model.file.proto.producer_name, model.file.proto.producer_version);
    if !producer.trim().is_empty() {
        details.insert("onnx_producer".to_string(), toml::Value::String(producer.trim().to_string()));
    }
    let manifest = Manifest {
        name: if name.is_empty() || name.starts_with('.') { "skill".into() } else { name },
        version: semver::Version::new(0, 1, 0),
        description: format!("Made by `skillgraft skill init` from {}; describe what the skill does.", onnx.display()),
        provenance: Provenance {
            source_robot: "unknown".into(),
            method: "imported".into(),
            parent: None,
            created: None,
            details,
        },
        model: ModelSection { file: "policy.onnx".into(), input, output, features: features.to_string() },
        control: Control { rate_hz: 50.0, history: 1 },
        images,
        observations: vec![ObservationInput {
            topic: "~/observation".into(),
            msg_type: "std_msgs/msg/Float64MultiArray".into(),
            fields: vec![format!("data[0..{in_width}]")],
            joints: vec![],
            mean: vec![0.0; in_width],
            std: vec![1.0; in_width],
            max_age_ms: 100.0,
        }],
        action: ActionOutput {
            topic: "~/action".into(),
            msg_type: "std_msgs/msg/Float64MultiArray".into(),
            fields: vec![format!("data[0..{out_width}]")],
            joints: vec![],
            mean: vec![0.0; out_width],
            std: vec![1.0; out_width],
            lower: vec![f64::NEG_INFINITY; out_width],
            upper: vec![f64::INFINITY; out_width],
            max_delta: vec![f64::INFINITY; out_width],
            safe: SafeAction::Zero,
        },
    };
    Ok((manifest, bytes))
}
