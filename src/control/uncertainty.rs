//! The running skill's doubt. A skill adapted by `bayes` carries a posterior over its last layer;
//! each tick the control plan hands over that layer's input and the posterior turns it into a
//! predictive standard deviation per action, in d² operations and without allocating. Its ratio
//! to the held-out error (about 1 on inputs like the demonstrations', growing away from them) is
//! what the safety filter, `/diagnostics`, `~/uncertainty` and the recorder's marks use.

use std::time::SystemTime;

use nalgebra::{DMatrix, DVector};

use crate::adapt::continual::Solved;
use crate::record::Stretch;

/// The posterior over the running skill's last layer, with the buffers one tick needs.
pub struct Posterior {
    mean: DVector<f64>,
    covariance: DMatrix<f64>,
    /// `1 + 1/n`: the spread of the predictive variance at the demonstrations' mean input.
    base: f64,
    /// Held-out standard deviation of each action element, in the robot's units.
    held_out_std: Vec<f64>,
    centred: DVector<f64>,
    product: DVector<f64>,
}

impl Posterior {
    /// The posterior of a solved head; `scale[i]` turns action `i` from policy into robot units.
    pub fn new(solved: &Solved, scale: &[f64]) -> Posterior {
        let d = solved.mean.len();
        Posterior {
            mean: solved.mean.clone(),
            covariance: solved.covariance.clone(),
            base: 1.0 + 1.0 / solved.rows.max(1.0),
            held_out_std: solved.noise.iter().enumerate().map(|(i, v)| v.max(0.0).sqrt() * scale[i]).collect(),
            centred: DVector::zeros(d),
            product: DVector::zeros(d),
        }
    }

    /// Width of the last layer's input the posterior reads.
    pub fn width(&self) -> usize {
        self.mean.len()
    }

    /// Action elements.
    pub fn actions(&self) -> usize {
        self.held_out_std.len()
    }

    /// The predicted standard deviation at last-layer input `h` over the held-out one:
    /// `sqrt(1 + 1/n + (h - h̄)ᵀ(G + λI)⁻¹(h - h̄))`. Allocates nothing.
    pub fn ratio(&mut self, h: &[f32]) -> f64 {
        for ((c, &v), m) in self.centred.iter_mut().zip(h).zip(self.mean.iter()) {
            *c = v as f64 - m;
        }
        self.product.gemv(1.0, &self.covariance, &self.centred, 0.0);
        (self.base + self.centred.dot(&self.product).max(0.0)).sqrt()
    }

    /// The predicted standard deviation of each action element at `ratio`, in robot units.
    pub fn std(&self, ratio: f64, out: &mut [f64]) {
        for (o, s) in out.iter_mut().zip(&self.held_out_std) {
            *o = s * ratio;
        }
    }
}

/// A stretch ends once the ratio falls below this share of the mark, so a ratio hovering at
/// the mark gives one stretch rather than one per tick.
const HYSTERESIS: f64 = 0.9;

/// Finds the stretches where the ratio rose above a mark, from the actions as they go out.
#[derive(Debug, Default)]
pub struct Marker {
    open: Option<Stretch>,
}

impl Marker {
    /// One action's ratio (NaN: no policy action, e.g. the safe action) at `now`, with the
    /// observation it came from; returns the stretch this ends, if any.
    pub fn tick(&mut self, ratio: f64, mark: f64, now: SystemTime, observation: &[f32]) -> Option<Stretch> {
        match &mut self.open {
            Some(s) if ratio >= mark * HYSTERESIS => {
                s.ticks += 1;
                s.seconds = now.duration_since(s.start).unwrap_or_default().as_secs_f64();
                if ratio > s.peak_ratio {
                    s.peak_ratio = ratio;
                    s.observation.clear();
                    s.observation.extend_from_slice(observation);
                }
                None
            }
            Some(_) => self.open.take(),
            None => {
                if ratio > mark {
                    self.open = Some(Stretch {
                        start: now,
                        seconds: 0.0,
                        ticks: 1,
                        peak_ratio: ratio,
                        observation: observation.to_vec(),
                    });
                }
                None
            }
        }
    }

    /// The stretch still open (at shutdown).
    pub fn finish(&mut self) -> Option<Stretch> {
        self.open.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::continual::{Continual, EpisodeStats, Key};

    #[test]
    fn the_std_is_the_posterior_predictive_one_and_grows_away_from_the_data() {
        let d = 3;
        let key = Key { skill: "s".into(), frozen: "f".into(), inputs: d, outputs: 2 };
        let mut c = Continual::new(key, DMatrix::zeros(2, d), DVector::zeros(2));
        let mut rng = crate::rng::SplitMix(4);
        for e in 0..3 {
            let h = DMatrix::from_fn(40, d, |_, _| rng.unit() * 0.1);
            let y = DMatrix::from_fn(40, 2, |i, j| h[(i, j)] + 0.01 * rng.unit());
            c.add(EpisodeStats::of(&format!("e{e}"), &h, &y));
        }
        let solved = c.solve().unwrap();
        let mut p = Posterior::new(&solved, &[2.0, 0.5]);
        let near: Vec<f32> = solved.mean.iter().map(|&v| v as f32).collect();
        let far: Vec<f32> = near.iter().map(|v| v + 5.0).collect();
        for h in [&near, &far] {
            // The predictive variance as the posterior defines it: noise × (1 + 1/n + xᵀ(G + λI)⁻¹x).
            let x = DVector::from_iterator(d, h.iter().map(|&v| v as f64)) - &solved.mean;
            let spread = 1.0 + 1.0 / solved.rows + (x.transpose() * &solved.covariance * &x)[(0, 0)];
            let want: Vec<f64> = solved.noise.iter().map(|n| n * spread).collect();
            let r = p.ratio(h);
            let mut std = [0.0; 2];
            p.std(r, &mut std);
            assert!((std[0] - want[0].sqrt() * 2.0).abs() < 1e-6 * std[0].max(1.0), "{std:?} {want:?}");
            assert!((std[1] - want[1].sqrt() * 0.5).abs() < 1e-6 * std[1].max(1.0), "{std:?} {want:?}");
        }
        assert!(p.ratio(&near) < 1.1);
        assert!(p.ratio(&far) > 5.0 * p.ratio(&near));
    }

    #[test]
    fn a_stretch_runs_from_above_the_mark_to_below_it_and_keeps_the_peak() {
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let mut m = Marker::default();
        assert_eq!(m.tick(1.5, 2.0, at(0), &[0.0]), None);
        assert_eq!(m.tick(2.5, 2.0, at(10), &[1.0]), None);
        assert_eq!(m.tick(3.5, 2.0, at(20), &[2.0]), None);
        assert_eq!(m.tick(1.9, 2.0, at(30), &[3.0]), None, "within the hysteresis: still open");
        let s = m.tick(f64::NAN, 2.0, at(40), &[4.0]).expect("the safe action ends it");
        assert_eq!((s.start, s.ticks, s.peak_ratio, s.observation.clone()), (at(10), 3, 3.5, vec![2.0]));
        assert!((s.seconds - 0.02).abs() < 1e-9);
        assert_eq!(m.tick(1.0, 2.0, at(50), &[0.0]), None);
        m.tick(9.0, 2.0, at(60), &[5.0]);
        assert_eq!(m.finish().map(|s| s.peak_ratio), Some(9.0));
    }
}
