//! The inference cases: every ONNX fixture's control step and batched features. Shared by
//! `skillgraft bench inference` and the criterion bench (`benches/inference.rs` includes this
//! file), which see the library from outside alike.

use std::path::{Path, PathBuf};

use skillgraft::model::Model;
use skillgraft::model::onnx::OnnxFile;

/// Batch size of the feature-extraction measurement.
pub const FEATURE_BATCH: usize = 256;

/// One model to time: its control plan at batch 1 and its backbone plan at a large batch.
pub struct InferenceCase {
    /// Fixture name.
    pub name: String,
    /// The loaded model.
    pub model: Model,
    /// One observation.
    pub single: Vec<f32>,
    /// `FEATURE_BATCH` observations.
    pub batch: Vec<f32>,
}

impl InferenceCase {
    /// One control step.
    pub fn step(&mut self, action: &mut [f32]) {
        self.model.control.step(&[&self.single], action).expect("the benchmark model runs");
    }

    /// Features of the whole batch.
    pub fn features(&self) -> Vec<f32> {
        self.model.backbone.features(&[&self.batch], FEATURE_BATCH, FEATURE_BATCH).expect("the benchmark model runs")
    }
}

#[derive(serde::Deserialize)]
struct FixtureInfo {
    features_tensor: String,
}

/// Loads every `NAME.onnx` in `dir` that has a `NAME.json` naming its features tensor (the
/// layout `tools/make_fixtures.py` writes), with seeded inputs.
pub fn inference_cases(dir: &Path) -> Result<Vec<InferenceCase>, String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}; run from the repository root or pass --fixtures", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.with_extension("onnx").is_file())
        .collect();
    names.sort();
    let mut cases = Vec::new();
    for json in names {
        let info: FixtureInfo = serde_json::from_str(&std::fs::read_to_string(&json).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", json.display()))?;
        let file = OnnxFile::read(&json.with_extension("onnx")).map_err(|e| e.to_string())?;
        let input = file.index().inputs().first().map(|i| i.name.clone()).unwrap_or_default();
        let output = file.graph().output[0].name.clone();
        let model = Model::load(file, &[&input], &output, &info.features_tensor).map_err(|e| e.to_string())?;
        let w = model.input().shape.width();
        let batch = skillgraft::rng::seeded(7, w * FEATURE_BATCH);
        cases.push(InferenceCase {
            name: json.file_stem().unwrap_or_default().to_string_lossy().into_owned(),
            single: batch[..w].to_vec(),
            batch,
            model,
        });
    }
    if cases.is_empty() {
        return Err(format!("no NAME.onnx + NAME.json fixtures in {}", dir.display()));
    }
    Ok(cases)
}
