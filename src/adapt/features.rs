//! Features once: every sample of an episode goes through the frozen backbone a single time, and
//! the result is cached on disk under a key made of the skill's digest and the exact backbone
//! inputs, so adapting again (another method, other options) skips the backbone.

use std::io::Write;
use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use sha2::{Digest, Sha256};

use crate::model::ModelError;
use crate::record::dataset::Episode;
use crate::skill::Skill;

/// Bumped when what the cache holds changes meaning.
const CACHE_VERSION: &[u8] = b"skillgraft-features-1";

/// One episode ready for fitting: features of every sample and the targets.
#[derive(Debug, Clone)]
pub struct EpisodeFeatures {
    /// Episode id.
    pub id: String,
    /// Features, one sample per row.
    pub features: DMatrix<f32>,
    /// Targets in policy units, one sample per row.
    pub targets: DMatrix<f32>,
    /// Whether the features came from the cache.
    pub cached: bool,
}

fn key(skill: &Skill, ep: &Episode) -> String {
    let mut h = Sha256::new();
    h.update(CACHE_VERSION);
    h.update(skill.digest.as_bytes());
    h.update(skill.model.head.features.as_bytes());
    for s in &ep.samples {
        for v in &s.observation {
            h.update(v.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

fn read_cache(path: &Path, rows: usize) -> Option<DMatrix<f32>> {
    let bytes = std::fs::read(path).ok()?;
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let f = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?) as usize;
    let body = bytes.get(16..)?;
    if n != rows || body.len() != n * f * 4 {
        return None;
    }
    let v: Vec<f32> = body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Some(DMatrix::from_row_slice(n, f, &v))
}

fn write_cache(path: &Path, m: &DMatrix<f32>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&(m.nrows() as u64).to_le_bytes())?;
    f.write_all(&(m.ncols() as u64).to_le_bytes())?;
    let mut body = Vec::with_capacity(m.len() * 4);
    for r in m.row_iter() {
        for v in r.iter() {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    f.write_all(&body)?;
    std::fs::rename(tmp, path)
}

/// Features and targets of each episode; `cache` is the folder of cached features (None: no
/// cache). `on_episode` is called after each episode.
pub fn features(
    skill: &Skill,
    episodes: &[Episode],
    cache: Option<&Path>,
    on_episode: &mut dyn FnMut(&EpisodeFeatures),
) -> Result<Vec<EpisodeFeatures>, ModelError> {
    let f = skill.model.head.in_dim();
    let a = skill.manifest.action_width();
    let mut out = Vec::new();
    for ep in episodes {
        let n = ep.samples.len();
        let path: Option<PathBuf> = cache.map(|c| c.join(format!("{}.f32", key(skill, ep))));
        let cached = path.as_deref().and_then(|p| read_cache(p, n)).filter(|m| m.ncols() == f);
        let (features, from_cache) = match cached {
            Some(m) => (m, true),
            None => {
                let numeric: Vec<f32> = ep.samples.iter().flat_map(|s| s.observation.iter().copied()).collect();
                let images: Vec<Vec<f32>> = (0..skill.manifest.images.len())
                    .map(|i| ep.samples.iter().flat_map(|s| s.images[i].iter().copied()).collect())
                    .collect();
                let inputs: Vec<&[f32]> =
                    std::iter::once(numeric.as_slice()).chain(images.iter().map(Vec::as_slice)).collect();
                let v = skill.model.backbone.features(&inputs, n, 256)?;
                let m = DMatrix::from_row_slice(n, f, &v);
                if let Some(p) = &path
                    && let Err(e) = write_cache(p, &m)
                {
                    tracing::warn!(
                        "cannot cache features in {}: {e}; they will be computed again next time",
                        p.display()
                    );
                }
                (m, false)
            }
        };
        let t: Vec<f32> = ep.samples.iter().flat_map(|s| s.action.iter().copied()).collect();
        let e = EpisodeFeatures {
            id: ep.id.clone(),
            features,
            targets: DMatrix::from_row_slice(n, a, &t),
            cached: from_cache,
        };
        on_episode(&e);
        out.push(e);
    }
    Ok(out)
}
