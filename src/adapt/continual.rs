//! The last layer as Bayesian linear regression on the frozen layers' output (ALPaCA, Harrison et
//! al. 2018), kept as sufficient statistics per demonstration so that each new one costs O(d²)
//! per sample and the head is re-solved in milliseconds, with no pass over old data.
//!
//! Prior: each action's weight row `w ~ N(w₀, σ²/λ · I)` around the source's, the bias free.
//! The posterior mean is then the L2-SP ridge solution `(G + λI)⁻¹(C + λW₀ᵀ)` on centred
//! statistics (what [`super::ridge`] fits), and its covariance `σ²(G + λI)⁻¹`, which gives a
//! predictive variance per action for any input. λ is chosen by leave-one-episode-out error over
//! a log grid, computed from the statistics alone: the squared error of a linear map on a group
//! of rows is a function of that group's sums (see [`Stats::sse`]). With a single episode its two
//! halves (in time) are the groups, so the gate works from the first demonstration.

use std::io::Read;
use std::path::Path;

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::ridge::{self, Stats};

/// The statistics' file in an adapted skill's folder.
pub const STATS_FILE: &str = "continual.stats";

/// With one demonstration, λ is the largest whose held-out error is within this factor of the
/// best λ's.
pub const ONE_DEMO_SLACK: f64 = 2.0;

/// With one demonstration, the gate's margin is at least this: the halves of one reach cannot
/// show how the head does on other reaches, so only a large gain on them is trusted (measured:
/// heads accepted on a 35 % gain from one camera demonstration did worse in closed loop; 84 to 93 %
/// gains did better).
pub const ONE_DEMO_MARGIN: f64 = 0.5;

/// First bytes of a statistics file.
const MAGIC: &[u8; 8] = b"SGSTATS1";

/// One demonstration's statistics: its first and second half in time.
#[derive(Debug, Clone)]
pub struct EpisodeStats {
    /// Episode id, for people (two recordings may share one).
    pub id: String,
    /// SHA-256 of its rows: the same demonstration seen twice is counted once.
    pub digest: String,
    /// The two halves.
    pub halves: [Stats; 2],
}

impl EpisodeStats {
    /// Statistics of the rows `h` (n×d) and targets `y` (n×a) of one episode.
    pub fn of(id: &str, h: &DMatrix<f64>, y: &DMatrix<f64>) -> EpisodeStats {
        let threads = super::compute::Threads::default();
        let mid = h.nrows() / 2;
        let rest = h.nrows() - mid;
        let first = Stats::of(&h.rows(0, mid).into_owned(), &y.rows(0, mid).into_owned(), &threads);
        let second = Stats::of(&h.rows(mid, rest).into_owned(), &y.rows(mid, rest).into_owned(), &threads);
        let mut hash = sha2::Sha256::new();
        for v in h.iter().chain(y.iter()) {
            hash.update(v.to_le_bytes());
        }
        EpisodeStats { id: id.to_string(), digest: hex::encode(hash.finalize()), halves: [first, second] }
    }

    fn whole(&self) -> Stats {
        let mut s = self.halves[0].clone();
        s.add(&self.halves[1]);
        s
    }
}

/// What the statistics belong to: the frozen part of a skill (its inputs, backbone output and
/// every head layer below the last), which a source and all its `bayes`-adapted versions share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// Name of the source skill.
    pub skill: String,
    /// SHA-256 over the model's inputs, its features tensor and the weights of the head layers
    /// below the last: statistics of other features mean nothing here.
    pub frozen: String,
    /// Width of the last layer's input.
    pub inputs: usize,
    /// Width of the action.
    pub outputs: usize,
}

/// The statistics of every demonstration seen so far.
#[derive(Debug, Clone)]
pub struct Continual {
    /// What they belong to.
    pub key: Key,
    /// The source's last-layer weights, `[out, in]`: the prior mean.
    pub w0: DMatrix<f64>,
    /// The source's last-layer bias.
    pub b0: DVector<f64>,
    /// Per demonstration, in arrival order.
    pub episodes: Vec<EpisodeStats>,
}

/// Why statistics could not be read, merged or used.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a statistics file or is damaged.
    #[error("{path}: not a skillgraft statistics file or damaged ({why}); adapt again with --method bayes to write it")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Statistics of another skill or another head.
    #[error(
        "statistics of {theirs} cannot be merged with those of {ours}: merge only statistics of one source skill and its bayes-adapted versions"
    )]
    Mismatch {
        /// Ours, described.
        ours: String,
        /// Theirs, described.
        theirs: String,
    },
}

/// The solved head and how it compares with the source on held-out data.
#[derive(Debug, Clone)]
pub struct Solved {
    /// Weights, `[out, in]`.
    pub weight: DMatrix<f64>,
    /// Bias.
    pub bias: DVector<f64>,
    /// λ (prior precision over noise variance).
    pub lambda: f64,
    /// Held-out squared error per action of the posterior mean (leave one group out).
    pub held_out_sse: Vec<f64>,
    /// The same for the source (the prior mean).
    pub source_sse: Vec<f64>,
    /// Rows the held-out errors are over.
    pub rows: f64,
    /// Held-out groups: episodes, or the halves of the only one.
    pub groups: usize,
    /// Predictive noise variance per action: the held-out mean squared error.
    pub noise: Vec<f64>,
    /// `(G + λI)⁻¹` on centred inputs: the posterior covariance over the noise variance.
    pub covariance: DMatrix<f64>,
    /// Mean of the inputs.
    pub mean: DVector<f64>,
    /// Σ y² over every row and action.
    pub target_energy: f64,
}

impl Solved {
    /// `1 - held-out / source` over all actions.
    pub fn improvement(&self) -> f64 {
        let (a, s): (f64, f64) = (self.held_out_sse.iter().sum(), self.source_sse.iter().sum());
        if s > 0.0 { 1.0 - a / s } else { 0.0 }
    }
}

impl Continual {
    /// The posterior of `skill`'s last layer, from the statistics saved beside it; None when
    /// it has none (it was not adapted by bayes) or they hold too little to solve. Statistics of
    /// another frozen part (a file copied beside the wrong skill) are refused.
    pub fn posterior(skill: &crate::skill::Skill) -> Result<Option<Solved>, StatsError> {
        let file = skill.dir.join(STATS_FILE);
        if !file.exists() {
            return Ok(None);
        }
        let stats = Continual::load(&file)?;
        let key = Key::of(skill);
        if stats.key != key {
            return Err(StatsError::Mismatch { ours: describe(&key), theirs: describe(&stats.key) });
        }
        Ok(stats.solve())
    }

    /// Empty statistics for a last layer with source weights `w0` and bias `b0`.
    pub fn new(key: Key, w0: DMatrix<f64>, b0: DVector<f64>) -> Continual {
        Continual { key, w0, b0, episodes: Vec::new() }
    }

    /// Rows seen.
    pub fn rows(&self) -> f64 {
        self.episodes.iter().map(|e| e.halves[0].n() + e.halves[1].n()).sum()
    }

    /// Adds one demonstration; one seen before (same rows) is not counted twice.
    pub fn add(&mut self, episode: EpisodeStats) {
        match self.episodes.iter_mut().find(|e| e.digest == episode.digest) {
            Some(old) => *old = episode,
            None => self.episodes.push(episode),
        }
    }

    /// Adds another robot's statistics of the same source: sums add.
    pub fn merge(&mut self, other: Continual) -> Result<(), StatsError> {
        if other.key != self.key || other.w0 != self.w0 || other.b0 != self.b0 {
            return Err(StatsError::Mismatch { ours: describe(&self.key), theirs: describe(&other.key) });
        }
        for e in other.episodes {
            self.add(e);
        }
        Ok(())
    }

    /// The held-out groups: whole episodes, or the two halves of the only one.
    fn groups(&self) -> Vec<Stats> {
        match self.episodes.as_slice() {
            [one] => one.halves.to_vec(),
            many => many.iter().map(EpisodeStats::whole).collect(),
        }
    }

    /// Solves the head: λ by leave-one-group-out error on the statistics, then the posterior
    /// on every group. None without at least two groups with rows.
    pub fn solve(&self) -> Option<Solved> {
        let groups: Vec<Stats> = self.groups().into_iter().filter(|g| g.n() > 0.0).collect();
        if groups.len() < 2 {
            return None;
        }
        let (d, a) = (self.key.inputs, self.key.outputs);
        let mut all = Stats::empty(d, a);
        for g in &groups {
            all.add(g);
        }
        let grid = ridge::grid(&all);
        // Groups beyond ten are held out ten folds' worth at a time, as ridge's cross-validation.
        let folds = groups.len().min(10);
        let mut sse = vec![vec![0.0; a]; grid.len()];
        let mut source_sse = vec![0.0; a];
        for f in 0..folds {
            let mut train = all.clone();
            let mut test = Stats::empty(d, a);
            for g in groups.iter().enumerate().filter(|(i, _)| i % folds == f).map(|(_, g)| g) {
                train.sub(g);
                test.add(g);
            }
            if train.n() < 2.0 {
                continue;
            }
            for (c, v) in test.sse(&self.w0, &self.b0).into_iter().enumerate() {
                source_sse[c] += v;
            }
            for (errors, fit) in sse.iter_mut().zip(ridge::fits(&train, &self.w0, &grid)) {
                for (c, v) in test.sse(&fit.weight, &fit.bias).into_iter().enumerate() {
                    errors[c] += v;
                }
            }
        }
        let total = |v: &Vec<f64>| v.iter().sum::<f64>();
        let mut best = (0..grid.len()).min_by(|&x, &y| total(&sse[x]).total_cmp(&total(&sse[y])))?;
        if self.episodes.len() == 1 {
            // The halves of one reach share its target, so their held-out error rewards fitting
            // that reach closely; the strongest pull toward the source that still predicts the
            // second half nearly as well generalises to other reaches (measured: 1 demonstration
            // on arm-b, 95 % success against 19 % with the best λ).
            let limit = total(&sse[best]) * ONE_DEMO_SLACK;
            best = (best..grid.len()).rev().find(|&i| total(&sse[i]) <= limit).unwrap_or(best);
        }
        let lambda = grid[best];
        let fit = ridge::fit(&all, &self.w0, lambda);
        let (g, _, mean, _) = all.centred();
        let lhs = g + DMatrix::identity(d, d) * lambda;
        let covariance = lhs.clone().try_inverse().unwrap_or_else(|| {
            let e = lhs.symmetric_eigen();
            let inv = e.eigenvalues.map(|v| if v > 1e-12 { 1.0 / v } else { 0.0 });
            &e.eigenvectors * DMatrix::from_diagonal(&inv) * e.eigenvectors.transpose()
        });
        let rows = all.n();
        let noise = sse[best].iter().map(|s| s / rows).collect();
        Some(Solved {
            weight: fit.weight,
            bias: fit.bias,
            lambda,
            held_out_sse: sse[best].clone(),
            source_sse,
            rows,
            groups: groups.len(),
            noise,
            covariance,
            mean,
            target_energy: all.target_energy(),
        })
    }

    /// Writes the statistics to `path` (replaced whole: written beside it, then renamed).
    pub fn save(&self, path: &Path) -> Result<(), StatsError> {
        crate::file::write_atomic(path, &self.to_bytes())
            .map_err(|e| StatsError::Io { path: path.display().to_string(), source: e.source })
    }

    /// The file's bytes: a magic, a JSON header, then the sums as little-endian f64.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = Header {
            key: self.key.clone(),
            episodes: self
                .episodes
                .iter()
                .map(|e| (e.id.clone(), e.digest.clone(), [e.halves[0].n(), e.halves[1].n()]))
                .collect(),
        };
        let head = serde_json::to_vec(&header).expect("plain data");
        let mut bytes = Vec::with_capacity(MAGIC.len() + 8 + head.len() + 8 * self.numbers());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(head.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&head);
        let mut put = |v: &[f64]| v.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
        put(self.w0.as_slice());
        put(self.b0.as_slice());
        for e in &self.episodes {
            for s in &e.halves {
                s.each_part(&mut put);
            }
        }
        bytes
    }

    fn numbers(&self) -> usize {
        let (d, a) = (self.key.inputs, self.key.outputs);
        a * d + a + self.episodes.len() * 2 * Stats::numbers(d, a)
    }

    /// Reads statistics written by [`Continual::save`].
    pub fn load(path: &Path) -> Result<Continual, StatsError> {
        let shown = path.display().to_string();
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| StatsError::Io { path: shown.clone(), source })?;
        Continual::from_bytes(&bytes, &shown)
    }

    /// Reads the bytes of a statistics file (`shown` names it in errors); refuses anything it
    /// cannot account for before allocating by the sizes the file claims.
    pub fn from_bytes(bytes: &[u8], shown: &str) -> Result<Continual, StatsError> {
        let bad = |why: &str| StatsError::Format { path: shown.to_string(), why: why.to_string() };
        if bytes.get(..8) != Some(MAGIC.as_slice()) {
            return Err(bad("it does not start with SGSTATS1"));
        }
        let len =
            bytes.get(8..16).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).ok_or_else(|| bad("short"))?;
        let end = usize::try_from(len).ok().and_then(|l| l.checked_add(16)).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| bad("its header runs past the end"))?;
        let header: Header = serde_json::from_slice(&bytes[16..end]).map_err(|e| bad(&format!("header: {e}")))?;
        let (d, a) = (header.key.inputs, header.key.outputs);
        if d == 0 || a == 0 || d > 1 << 14 || a > 1 << 10 {
            return Err(bad(&format!("a {a}×{d} layer")));
        }
        let want = header
            .episodes
            .len()
            .checked_mul(2 * Stats::numbers(d, a))
            .and_then(|n| n.checked_add(a * d + a))
            .and_then(|n| n.checked_mul(8));
        let body = &bytes[end..];
        if want != Some(body.len()) {
            return Err(bad(&format!(
                "{} bytes of numbers where its header needs {}",
                body.len(),
                want.map_or("more".into(), |w| w.to_string())
            )));
        }
        let mut numbers = body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")));
        let mut take = |n: usize| -> Vec<f64> { numbers.by_ref().take(n).collect() };
        let w0 = DMatrix::from_vec(a, d, take(a * d));
        let b0 = DVector::from_vec(take(a));
        let mut episodes = Vec::with_capacity(header.episodes.len());
        for (id, digest, n) in header.episodes {
            let first = Stats::from_parts(d, a, &take(Stats::numbers(d, a)), n[0]);
            let second = Stats::from_parts(d, a, &take(Stats::numbers(d, a)), n[1]);
            episodes.push(EpisodeStats { id, digest, halves: [first, second] });
        }
        if episodes.iter().flat_map(|e| e.halves.iter()).any(|s| !s.is_finite())
            || !w0.iter().chain(b0.iter()).all(|v| v.is_finite())
        {
            return Err(bad("numbers that are not finite"));
        }
        Ok(Continual { key: header.key, w0, b0, episodes })
    }
}

fn describe(k: &Key) -> String {
    format!(
        "{} (frozen layers {}, last layer {}→{})",
        k.skill,
        &k.frozen[..k.frozen.len().min(12)],
        k.inputs,
        k.outputs
    )
}

impl Key {
    /// The key of `skill`'s last layer.
    pub fn of(skill: &crate::skill::Skill) -> Key {
        let model = &skill.model;
        let head = &model.head;
        let last = head.layers.len() - 1;
        let mut hash = sha2::Sha256::new();
        for feed in &model.feeds {
            hash.update(feed.name.as_bytes());
            hash.update(format!("{:?}", feed.shape).as_bytes());
        }
        hash.update(head.features.as_bytes());
        for (layer, p) in head.layers[..last].iter().zip(&head.params) {
            hash.update(format!("{}:{}:{}", layer.in_dim, layer.out_dim, layer.activation).as_bytes());
            for v in p.weight.iter().chain(p.bias.iter().flat_map(|b| b.iter())) {
                hash.update(v.to_le_bytes());
            }
        }
        let w = &head.params[last].weight;
        Key {
            skill: skill.manifest.name.clone(),
            frozen: hex::encode(hash.finalize()),
            inputs: w.ncols(),
            outputs: w.nrows(),
        }
    }
}

/// What a statistics file says about itself before the numbers.
#[derive(Serialize, Deserialize)]
struct Header {
    key: Key,
    /// Episode ids, digests and the rows of their halves.
    episodes: Vec<(String, String, [f64; 2])>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u64, n: usize, d: usize) -> DMatrix<f64> {
        let v = crate::rng::seeded(seed, n * d);
        DMatrix::from_fn(n, d, |i, j| v[i * d + j] as f64)
    }

    fn key(d: usize, a: usize) -> Key {
        Key { skill: "s".into(), frozen: "0123456789abcdef".into(), inputs: d, outputs: a }
    }

    /// Episodes of y = h W + b + noise, h around `centre`.
    fn episode(seed: u64, rows: usize, w: &DMatrix<f64>, centre: f64) -> (DMatrix<f64>, DMatrix<f64>) {
        let h = data(seed, rows, w.ncols()).add_scalar(centre);
        let y = &h * w.transpose() + data(seed + 100, rows, w.nrows()) * 0.05;
        (h, y)
    }

    #[test]
    fn the_committed_statistics_file_reads_back_byte_for_byte_and_belongs_to_the_source() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(root.join("tests/fixtures/continual/reach-arm-a-on-arm-b.stats")).unwrap();
        let c = Continual::from_bytes(&bytes, "fixture").unwrap();
        assert_eq!(c.to_bytes(), bytes, "the format is stable");
        assert_eq!(c.episodes.len(), 2);
        let source = crate::skill::Skill::load(&root.join("skills/reach-arm-a")).unwrap();
        assert_eq!(c.key, Key::of(&source), "what the key covers is stable");
        let s = c.solve().unwrap();
        assert!(s.improvement() > 0.5, "{}", s.improvement());
        for cut in [0, 7, 16, 100, bytes.len() - 1] {
            assert!(Continual::from_bytes(&bytes[..cut], "cut").is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Continual::from_bytes(&huge, "huge").unwrap_err().to_string().contains("runs past the end"));
    }

    #[test]
    fn held_out_errors_from_statistics_equal_refitting_on_the_rows() {
        let w = data(1, 2, 4);
        let w0 = data(2, 2, 4);
        let eps: Vec<_> = (0..3).map(|i| episode(10 + i, 40, &w, 0.0)).collect();
        let mut c = Continual::new(key(4, 2), w0.clone(), DVector::zeros(2));
        for (i, (h, y)) in eps.iter().enumerate() {
            c.add(EpisodeStats::of(&format!("e{i}"), h, y));
        }
        let s = c.solve().unwrap();
        // Refit by hand at the chosen λ, leaving each episode out, and sum the errors on its rows.
        let mut slow = 0.0;
        for k in 0..3 {
            let mut train = Stats::empty(4, 2);
            for (i, (h, y)) in eps.iter().enumerate().filter(|(i, _)| *i != k) {
                let _ = i;
                train.add(&Stats::of(h, y, &Default::default()));
            }
            let fit = ridge::fit(&train, &w0, s.lambda);
            slow += (fit.predict(&eps[k].0) - &eps[k].1).norm_squared();
        }
        let fast: f64 = s.held_out_sse.iter().sum();
        assert!((fast - slow).abs() < 1e-8 * slow, "{fast} vs {slow}");
        assert!((s.weight - &w).abs().max() < 0.05, "recovers the map");
    }

    #[test]
    fn one_demonstration_is_judged_on_its_second_half() {
        let w = data(3, 3, 5);
        let (h, y) = episode(20, 60, &w, 0.0);
        let mut c = Continual::new(key(5, 3), DMatrix::zeros(3, 5), DVector::zeros(3));
        assert!(c.solve().is_none(), "nothing to judge without data");
        c.add(EpisodeStats::of("only", &h, &y));
        let s = c.solve().unwrap();
        assert_eq!(s.groups, 2);
        assert!(s.improvement() > 0.9, "a zero source is far worse: {}", s.improvement());
    }

    #[test]
    fn merged_statistics_equal_one_robot_seeing_everything_and_survive_a_file() {
        let w = data(5, 2, 4);
        let w0 = data(6, 2, 4);
        let eps: Vec<_> = (0..4).map(|i| episode(40 + i, 25, &w, 0.5)).collect();
        let mut one = Continual::new(key(4, 2), w0.clone(), DVector::zeros(2));
        let mut left = one.clone();
        let mut right = one.clone();
        for (i, (h, y)) in eps.iter().enumerate() {
            let e = EpisodeStats::of(&format!("e{i}"), h, y);
            one.add(e.clone());
            if i < 2 { left.add(e) } else { right.add(e) }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("right.stats");
        right.save(&path).unwrap();
        left.merge(Continual::load(&path).unwrap()).unwrap();
        let (a, b) = (one.solve().unwrap(), left.solve().unwrap());
        assert_eq!(a.lambda, b.lambda);
        assert!((a.weight - b.weight).abs().max() < 1e-12);
        left.add(EpisodeStats::of("again", &eps[0].0, &eps[0].1));
        assert_eq!(left.episodes.len(), 4, "an episode seen again is counted once");
        left.add(EpisodeStats::of("e0", &eps[1].0.add_scalar(1.0), &eps[1].1));
        assert_eq!(left.episodes.len(), 5, "another episode with a known id counts");

        let other = Continual::new(Key { frozen: "ffff".into(), ..key(4, 2) }, w0, DVector::zeros(2));
        assert!(matches!(left.merge(other), Err(StatsError::Mismatch { .. })));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        let err = Continual::load(&path).unwrap_err().to_string();
        assert!(err.contains("bytes of numbers"), "{err}");
        std::fs::write(&path, b"hello").unwrap();
        assert!(Continual::load(&path).unwrap_err().to_string().contains("SGSTATS1"));
    }
}
