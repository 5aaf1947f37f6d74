//! `skillgraft bench vision`: what a camera skill costs. Decoding and preprocessing one frame
//! (the skill's own camera, a VGA frame raw and as JPEG), the model in tract next to onnxruntime
//! on the same file (control step, features at batch 1 and batched, as feature caching runs it),
//! and the node's tick latency with the skill at camera rates.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use skillgraft::msg::cdr;
use skillgraft::msg::{CompressedImage, Image, RosMessage};
use skillgraft::observe::image::ImagePipeline;
use skillgraft::skill::Skill;
use skillgraft::skill::manifest::{ImageInput, Resize};

/// Batch of the batched feature measurement (feature caching's batch).
pub const VISION_BATCH: usize = 64;

/// What to measure and how long.
#[derive(Debug, Clone)]
pub struct VisionOptions {
    /// The vision skill's folder.
    pub skill: PathBuf,
    /// Python with onnxruntime and numpy.
    pub python: String,
    /// Timed runs of each batch-1 measurement (preprocessing, control step, features at batch 1);
    /// the batched features run a fiftieth of them (at least 5).
    pub iters: usize,
    /// Control rates of the tick-latency measurement, Hz (none: skip it).
    pub rates: Vec<f64>,
    /// Seconds measured per rate.
    pub seconds: f64,
}

/// One preprocessing case.
#[derive(Debug, Serialize)]
pub struct PreprocessRow {
    /// The frame and what it becomes.
    pub case: String,
    /// CDR bytes of one message.
    pub message_bytes: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
}

/// One inference measurement, both engines.
#[derive(Debug, Serialize)]
pub struct VisionInferenceRow {
    /// What was timed.
    pub measure: String,
    /// Samples per call.
    pub batch: usize,
    /// tract median per call, µs.
    pub tract_us: f64,
    /// onnxruntime median per call, µs, when it could be run.
    pub ort_us: Option<f64>,
}

/// The vision benchmark.
#[derive(Debug, Serialize)]
pub struct VisionReport {
    /// Skill measured.
    pub skill: String,
    /// Decode and preprocessing, per frame.
    pub preprocess: Vec<PreprocessRow>,
    /// tract and onnxruntime, one thread each.
    pub inference: Vec<VisionInferenceRow>,
    /// onnxruntime version, or the reason it could not be timed.
    pub onnxruntime: Result<String, String>,
    /// The node's tick latency with the skill, fed camera frames over DDS.
    #[cfg(feature = "dds")]
    pub control: Option<super::control::ControlReport>,
    /// Whether this binary was built with optimisations.
    pub optimised: bool,
}

fn err(e: impl fmt::Display) -> String {
    e.to_string()
}

/// Times `f` `iters` times after `iters / 10 + 1` warm-ups: (median, p90) in µs.
fn p50_p90(iters: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..iters / 10 + 1 {
        f();
    }
    let mut t: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// The skill's first camera input, or why the skill is not a vision skill.
fn camera_input(skill: &Skill) -> Result<ImageInput, String> {
    skill.manifest.images.first().cloned().ok_or_else(|| {
        format!(
            "skill {} has no [[image]] input; bench vision measures a camera skill (e.g. --skill skills/reach-arm-a-vision)",
            skill.dir.display()
        )
    })
}

/// Runs every measurement; `dir` (existing, emptied by the caller) holds the backbone file
/// onnxruntime loads.
pub fn vision(opts: &VisionOptions, dir: &Path) -> Result<VisionReport, String> {
    let skill = Skill::load(&opts.skill).map_err(err)?;
    let camera = camera_input(&skill)?;
    let label = format!("{} {}", skill.manifest.name, skill.manifest.version);
    let preprocess = preprocess(&camera, opts.iters)?;
    let (inference, onnxruntime) = inference(&skill, &camera, &opts.python, opts.iters, dir)?;
    drop(skill);
    #[cfg(feature = "dds")]
    let control = match opts.rates.is_empty() {
        true => None,
        false => Some(super::control::control(&opts.skill, &opts.rates, opts.seconds, 0)?),
    };
    Ok(VisionReport {
        skill: label,
        preprocess,
        inference,
        onnxruntime,
        #[cfg(feature = "dds")]
        control,
        optimised: !cfg!(debug_assertions),
    })
}

/// arm-a's camera at `width × height` (its own resolution when `None`), arm at home reaching for
/// a target, as one rgb8 Image message.
fn frame(size: Option<(u32, u32)>) -> Result<Image, String> {
    let robot = skillgraft::sim::robot("arm-a").map_err(err)?;
    let mut cam = robot.camera.clone();
    if let Some((w, h)) = size {
        cam.width = w;
        cam.height = h;
    }
    let mut frame = skillgraft::sim::episodes::camera_image(&cam, 0);
    cam.render(&robot, &robot.home, [0.6, 0.1], &mut frame.data).map_err(err)?;
    Ok(frame)
}

fn preprocess(camera: &ImageInput, iters: usize) -> Result<Vec<PreprocessRow>, String> {
    let own = frame(None)?;
    let vga = frame(Some((640, 480)))?;
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode(&vga.data, vga.width, vga.height, image::ColorType::Rgb8)
        .map_err(err)?;
    let compressed = CompressedImage { header: vga.header.clone(), format: "jpeg".into(), data: jpeg };
    let (w, h) = (camera.width, camera.height);
    let vga_input = |resize| ImageInput { resize, max_pixels: camera.max_pixels.max(640 * 480), ..camera.clone() };
    let jpeg_input =
        ImageInput { msg_type: CompressedImage::TYPE.into(), encodings: Vec::new(), ..vga_input(camera.resize) };
    let resize = |r: Resize| format!("{r:?}").to_lowercase();
    let cases = [
        (
            format!(
                "skill camera {}x{} rgb8 -> {w}x{h} ({}, the skill's [[image]])",
                own.width,
                own.height,
                resize(camera.resize)
            ),
            camera.clone(),
            cdr::encode(&own).map_err(err)?,
        ),
        (format!("640x480 rgb8 -> {w}x{h} bilinear"), vga_input(Resize::Bilinear), cdr::encode(&vga).map_err(err)?),
        (format!("640x480 rgb8 -> {w}x{h} area"), vga_input(Resize::Area), cdr::encode(&vga).map_err(err)?),
        (
            format!("640x480 JPEG q90 -> {w}x{h} {}", resize(camera.resize)),
            jpeg_input,
            cdr::encode(&compressed).map_err(err)?,
        ),
    ];
    let mut rows = Vec::new();
    for (case, input, bytes) in cases {
        let mut pipeline = ImagePipeline::new(&input);
        let mut out = vec![0.0f32; input.tensor_len()];
        pipeline.process_cdr(&bytes, &mut out).map_err(|e| format!("{case}: {e}"))?;
        let (p50_us, p90_us) = p50_p90(iters, || {
            pipeline.process_cdr(&bytes, &mut out).expect("the frame was accepted once");
            std::hint::black_box(&out);
        });
        rows.push(PreprocessRow { case, message_bytes: bytes.len(), p50_us, p90_us });
    }
    Ok(rows)
}

/// The model cut at its features tensor: the features' ancestors, the features as the only
/// output, so onnxruntime runs what tract's backbone plan runs.
fn backbone_onnx(skill: &Skill) -> Vec<u8> {
    let file = &skill.model.file;
    let ix = file.index();
    let keep = ix.ancestors(&skill.model.head.features);
    let mut proto = file.proto.clone();
    if let Some(g) = proto.graph.as_mut() {
        g.node = keep.iter().map(|&i| g.node[i].clone()).collect();
        let used: std::collections::HashSet<&str> =
            g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
        g.initializer.retain(|t| used.contains(t.name.as_str()));
        g.input.retain(|i| used.contains(i.name.as_str()));
        g.value_info.clear();
        g.output =
            vec![tract_onnx::pb::ValueInfoProto { name: skill.model.head.features.clone(), ..Default::default() }];
    }
    skillgraft::model::export::encode(&proto)
}

type Inference = (Vec<VisionInferenceRow>, Result<String, String>);

fn inference(skill: &Skill, camera: &ImageInput, python: &str, iters: usize, dir: &Path) -> Result<Inference, String> {
    let model = &skill.model;
    let widths: Vec<usize> = model.feeds.iter().map(|f| f.shape.width()).collect();
    if model.feeds.len() != 2 || !model.feeds.iter().any(|f| f.name == camera.input) {
        return Err(format!(
            "{}: bench vision measures a model of two inputs (state, image); this one takes {}",
            skill.dir.display(),
            model.feeds.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let few = (iters / 50).max(5);
    let one: Vec<Vec<f32>> =
        widths.iter().enumerate().map(|(k, &w)| skillgraft::rng::seeded(7 + k as u64, w)).collect();
    let many: Vec<Vec<f32>> =
        widths.iter().enumerate().map(|(k, &w)| skillgraft::rng::seeded(17 + k as u64, w * VISION_BATCH)).collect();
    let one_refs: Vec<&[f32]> = one.iter().map(Vec::as_slice).collect();
    let many_refs: Vec<&[f32]> = many.iter().map(Vec::as_slice).collect();
    // A plan of its own, so the skill's stays as loaded.
    let mut control =
        skillgraft::model::plan::ControlPlan::build(&model.file, &model.feeds, &model.output, None).map_err(err)?;
    let mut action = vec![0.0; control.output_width()];
    let step = super::median_us(iters, || control.step(&one_refs, &mut action).expect("the skill's model runs"));
    let features_1 = super::median_us(iters, || {
        std::hint::black_box(model.backbone.features(&one_refs, 1, 1).expect("the skill's model runs"));
    });
    let features_n = super::median_us(few, || {
        std::hint::black_box(
            model.backbone.features(&many_refs, VISION_BATCH, VISION_BATCH).expect("the skill's model runs"),
        );
    });
    let mut rows = vec![
        VisionInferenceRow { measure: "control step (whole model)".into(), batch: 1, tract_us: step, ort_us: None },
        VisionInferenceRow { measure: "features (backbone)".into(), batch: 1, tract_us: features_1, ort_us: None },
        VisionInferenceRow {
            measure: "features (backbone)".into(),
            batch: VISION_BATCH,
            tract_us: features_n,
            ort_us: None,
        },
    ];
    let onnxruntime = run_ort(skill, python, iters, dir).map(|(version, t)| {
        let get = |k: &str| t.get(k).and_then(serde_json::Value::as_f64);
        rows[0].ort_us = get("step_us");
        rows[1].ort_us = get("features_1_us");
        rows[2].ort_us = get("features_batch_us");
        version
    });
    Ok((rows, onnxruntime))
}

fn run_ort(skill: &Skill, python: &str, iters: usize, dir: &Path) -> Result<(String, super::OrtTimings), String> {
    let backbone = dir.join("backbone.onnx");
    std::fs::write(&backbone, backbone_onnx(skill)).map_err(err)?;
    let model = skill.dir.join(&skill.manifest.model.file);
    let args = [OsStr::new("--model"), model.as_os_str(), OsStr::new("--backbone"), backbone.as_os_str()];
    super::bench_ort(python, &args, iters, VISION_BATCH, "timings")
}

impl fmt::Display for VisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.optimised {
            writeln!(f, "warning: this is a debug build; time a release build (cargo run --release -- bench vision)")?;
        }
        writeln!(f, "skill {}\n", self.skill)?;
        writeln!(f, "| frame -> tensor (decode + preprocess) | message (bytes) | median (µs) | p90 (µs) |")?;
        writeln!(f, "|---|---:|---:|---:|")?;
        for r in &self.preprocess {
            writeln!(f, "| {} | {} | {:.1} | {:.1} |", r.case, r.message_bytes, r.p50_us, r.p90_us)?;
        }
        let ort = match &self.onnxruntime {
            Ok(v) => format!("onnxruntime {v}, 1 thread"),
            Err(why) => {
                writeln!(f, "\nonnxruntime not timed: {why}")?;
                "onnxruntime".to_string()
            }
        };
        writeln!(
            f,
            "\n| model | batch | tract {}, 1 thread (µs per call, median) | {ort} (µs per call, median) | tract per sample (µs) | tract / onnxruntime |",
            skillgraft::model::TRACT_VERSION
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|")?;
        for r in &self.inference {
            let (o, ratio) = match r.ort_us {
                Some(o) => (format!("{o:.1}"), format!("{:.2}", r.tract_us / o)),
                None => ("n/a".into(), "n/a".into()),
            };
            writeln!(
                f,
                "| {} | {} | {:.1} | {o} | {:.1} | {ratio} |",
                r.measure,
                r.batch,
                r.tract_us,
                r.tract_us / r.batch as f64
            )?;
        }
        #[cfg(feature = "dds")]
        if let Some(c) = &self.control {
            writeln!(f)?;
            write!(f, "{c}")?;
        }
        Ok(())
    }
}
