//! The safety filter between the policy and the action topic. It clamps to the joint limits,
//! limits the change per tick, replaces actions that are not finite, gives the safe action when
//! inputs are stale, the e-stop is engaged or inference fails, and blends the policy back in
//! from the safe action after start, resume or a skill swap. Every intervention is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::skill::manifest::SafeAction;

/// Why the filter stepped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intervention {
    /// An input was older than its max age (or the history was still filling).
    Stale = 0,
    /// The e-stop was engaged (or its topic went quiet, when a timeout is set).
    EStop = 1,
    /// The policy's action had a NaN or infinite value.
    NonFinite = 2,
    /// Inference failed.
    Failure = 3,
    /// A value was clamped to its limits.
    Clamped = 4,
    /// A change was limited to max_delta.
    RateLimited = 5,
    /// The policy's predicted error was above `uncertainty.limit`: the action was slowed.
    Uncertain = 6,
}

/// Names of the interventions, by their value.
pub const INTERVENTIONS: [&str; 7] =
    ["stale_input", "estop", "non_finite", "inference_failure", "clamped", "rate_limited", "uncertain"];

/// Intervention counters, shared with diagnostics.
#[derive(Debug, Default)]
pub struct Counters(pub [AtomicU64; 7]);

impl Counters {
    /// The count of one kind.
    pub fn get(&self, kind: Intervention) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }

    fn bump(&self, kind: Intervention) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// What the filter enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyConfig {
    /// Lowest value per element.
    pub lower: Vec<f64>,
    /// Highest value per element.
    pub upper: Vec<f64>,
    /// Largest change per tick per element.
    pub max_delta: Vec<f64>,
    /// The safe action.
    pub safe: SafeAction,
    /// Ticks over which the policy blends in from the safe action.
    pub blend_ticks: u32,
    /// Predicted std over held-out std above which the action is slowed (0: never).
    pub uncertainty_limit: f64,
    /// The share of the way from the safe action to the policy's action kept while slowed.
    pub uncertainty_slow: f64,
}

/// Limits that cannot drive a robot; each says which element and what to set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitsError {
    /// The three vectors differ in length.
    #[error(
        "lower, upper and max_delta have {lower}, {upper} and {max_delta} values; give one per action element ({lower})"
    )]
    Lengths {
        /// Values in `lower`.
        lower: usize,
        /// Values in `upper`.
        upper: usize,
        /// Values in `max_delta`.
        max_delta: usize,
    },
    /// A bound is infinite or NaN.
    #[error(
        "action limits [{lower}, {upper}] of element {element} are not finite; a skill needs real joint limits before it drives a robot: set action.lower and action.upper in skill.toml or with -p action.lower:=[...]"
    )]
    NotFinite {
        /// The action element.
        element: usize,
        /// Its lower bound.
        lower: f64,
        /// Its upper bound.
        upper: f64,
    },
    /// The lower bound is not below the upper.
    #[error("action.lower[{element}] = {lower} is not below action.upper[{element}] = {upper}")]
    Unordered {
        /// The action element.
        element: usize,
        /// Its lower bound.
        lower: f64,
        /// Its upper bound.
        upper: f64,
    },
    /// A rate limit of zero, below or NaN.
    #[error("action.max_delta[{element}] = {max_delta}; it must be above 0 (inf for no limit)")]
    MaxDelta {
        /// The action element.
        element: usize,
        /// The limit given.
        max_delta: f64,
    },
    /// The safe action (zero) lies outside the limits.
    #[error(
        "the safe action is zero but element {element} must stay in [{lower}, {upper}]; use safe = \"hold\" or limits that include 0"
    )]
    ZeroOutside {
        /// The action element.
        element: usize,
        /// Its lower bound.
        lower: f64,
        /// Its upper bound.
        upper: f64,
    },
}

impl SafetyConfig {
    /// Checks the limits can drive a robot: finite, ordered, and holding the safe action.
    pub fn check(&self) -> Result<(), LimitsError> {
        let n = self.lower.len();
        if self.upper.len() != n || self.max_delta.len() != n {
            return Err(LimitsError::Lengths { lower: n, upper: self.upper.len(), max_delta: self.max_delta.len() });
        }
        for element in 0..n {
            let (lower, upper, max_delta) = (self.lower[element], self.upper[element], self.max_delta[element]);
            if !(lower.is_finite() && upper.is_finite()) {
                return Err(LimitsError::NotFinite { element, lower, upper });
            }
            if lower >= upper {
                return Err(LimitsError::Unordered { element, lower, upper });
            }
            if max_delta.is_nan() || max_delta <= 0.0 {
                return Err(LimitsError::MaxDelta { element, max_delta });
            }
            if self.safe == SafeAction::Zero && !(lower..=upper).contains(&0.0) {
                return Err(LimitsError::ZeroOutside { element, lower, upper });
            }
        }
        Ok(())
    }
}

/// The filter's state between ticks.
pub struct SafetyFilter {
    cfg: SafetyConfig,
    last: Vec<f64>,
    have_last: bool,
    in_safe: bool,
    blend_from: Vec<f64>,
    blend_left: u32,
    counters: Arc<Counters>,
}

impl SafetyFilter {
    /// A filter that starts in the safe state, so the first policy action blends in.
    pub fn new(cfg: SafetyConfig, counters: Arc<Counters>) -> SafetyFilter {
        let n = cfg.lower.len();
        SafetyFilter {
            cfg,
            last: vec![0.0; n],
            have_last: false,
            in_safe: true,
            blend_from: vec![0.0; n],
            blend_left: 0,
            counters,
        }
    }

    /// New limits from this tick on (a parameter set while the node runs). The last action and
    /// a blend's start are clamped into them, so a held action and the next rate-limited step
    /// start inside the new limits: an action outside them is never published. Returns the
    /// limits replaced.
    pub fn reconfigure(&mut self, cfg: SafetyConfig) -> SafetyConfig {
        for i in 0..self.last.len() {
            self.last[i] = self.last[i].clamp(cfg.lower[i], cfg.upper[i]);
            self.blend_from[i] = self.blend_from[i].clamp(cfg.lower[i], cfg.upper[i]);
        }
        self.blend_left = self.blend_left.min(cfg.blend_ticks);
        std::mem::replace(&mut self.cfg, cfg)
    }

    /// Turns the policy's de-normalised action into what is published; returns whether to
    /// publish. Allocates nothing.
    pub fn filter(&mut self, proposal: &[f64], out: &mut [f64]) -> bool {
        if proposal.iter().any(|v| !v.is_finite()) {
            return self.safe(Intervention::NonFinite, out);
        }
        let mut clamped = false;
        for (i, (o, &p)) in out.iter_mut().zip(proposal).enumerate() {
            *o = p.clamp(self.cfg.lower[i], self.cfg.upper[i]);
            clamped |= *o != p;
        }
        if clamped {
            self.counters.bump(Intervention::Clamped);
        }
        if self.in_safe {
            self.in_safe = false;
            if self.have_last {
                self.start_blend();
            }
        }
        if self.blend_left > 0 {
            let done = (self.cfg.blend_ticks - self.blend_left + 1) as f64 / self.cfg.blend_ticks as f64;
            for (o, &from) in out.iter_mut().zip(&self.blend_from) {
                *o = from + done * (*o - from);
            }
            self.blend_left -= 1;
        }
        if self.have_last {
            let mut limited = false;
            for (i, o) in out.iter_mut().enumerate() {
                let d = self.cfg.max_delta[i];
                let step = (*o - self.last[i]).clamp(-d, d);
                limited |= self.last[i] + step != *o;
                *o = self.last[i] + step;
            }
            if limited {
                self.counters.bump(Intervention::RateLimited);
            }
        }
        self.last.copy_from_slice(out);
        self.have_last = true;
        true
    }

    /// The policy predicts an error `ratio` times its held-out one: above the limit, the action
    /// keeps only `uncertainty_slow` of its way from the safe action (zero, or the action held),
    /// so an unsure policy moves slowly rather than confidently wrong; counted. Allocates nothing.
    pub fn temper(&mut self, ratio: f64, proposal: &mut [f64]) {
        let limit = self.cfg.uncertainty_limit;
        if !(limit > 0.0 && ratio > limit) {
            return;
        }
        self.counters.bump(Intervention::Uncertain);
        let keep = self.cfg.uncertainty_slow;
        match self.cfg.safe {
            SafeAction::Zero => proposal.iter_mut().for_each(|p| *p *= keep),
            SafeAction::Hold if self.have_last => {
                for (p, &held) in proposal.iter_mut().zip(&self.last) {
                    *p = held + keep * (*p - held);
                }
            }
            SafeAction::Hold => {}
        }
    }

    /// No trustworthy action this tick: writes the safe action; returns whether to publish
    /// (`hold` before any action has been published has nothing to hold, so nothing is sent).
    /// The safe action takes effect at once, without the rate limit.
    pub fn safe(&mut self, why: Intervention, out: &mut [f64]) -> bool {
        self.counters.bump(why);
        self.in_safe = true;
        self.blend_left = 0;
        match self.cfg.safe {
            SafeAction::Zero => {
                out.fill(0.0);
                self.last.fill(0.0);
                self.have_last = true;
                true
            }
            SafeAction::Hold if self.have_last => {
                out.copy_from_slice(&self.last);
                true
            }
            SafeAction::Hold => false,
        }
    }

    /// The policy is silenced (a person demonstrates): nothing is published. Afterwards a
    /// velocity-like (`zero`) output blends in from zero; a `hold` output starts afresh from
    /// the policy, since the robot is no longer where the last held action put it.
    pub fn mute(&mut self) {
        self.in_safe = true;
        self.blend_left = 0;
        match self.cfg.safe {
            SafeAction::Zero => {
                self.last.fill(0.0);
                self.have_last = true;
            }
            SafeAction::Hold => self.have_last = false,
        }
    }

    /// After a skill swap: the new policy blends in from the last published action.
    pub fn restart_blend(&mut self) {
        if self.have_last && !self.in_safe {
            self.start_blend();
        }
    }

    fn start_blend(&mut self) {
        self.blend_from.copy_from_slice(&self.last);
        self.blend_left = self.cfg.blend_ticks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(safe: SafeAction, blend_ticks: u32) -> (SafetyFilter, Arc<Counters>) {
        let c = Arc::new(Counters::default());
        let cfg = SafetyConfig {
            lower: vec![-1.0, -2.0],
            upper: vec![1.0, 2.0],
            max_delta: vec![0.5, f64::INFINITY],
            safe,
            blend_ticks,
            uncertainty_limit: 0.0,
            uncertainty_slow: 0.25,
        };
        cfg.check().unwrap();
        (SafetyFilter::new(cfg, c.clone()), c)
    }

    #[test]
    fn clamps_rate_limits_and_counts() {
        let (mut f, c) = filter(SafeAction::Zero, 0);
        let mut out = [0.0; 2];
        assert!(f.filter(&[5.0, -5.0], &mut out));
        assert_eq!(out, [1.0, -2.0]);
        assert_eq!(c.get(Intervention::Clamped), 1);
        assert!(f.filter(&[-1.0, 2.0], &mut out));
        assert_eq!(out, [0.5, 2.0], "a change of -2 is limited to -0.5; the second element has no rate limit");
        assert_eq!(c.get(Intervention::RateLimited), 1);
    }

    #[test]
    fn non_finite_and_stale_give_the_safe_action_then_blend_back() {
        let (mut f, c) = filter(SafeAction::Zero, 4);
        let mut out = [0.0; 2];
        assert!(f.filter(&[0.2, 0.4], &mut out));
        assert_eq!(out, [0.2, 0.4], "the first action after start has nothing to blend from");
        assert!(f.filter(&[f64::NAN, 0.0], &mut out));
        assert_eq!(out, [0.0, 0.0]);
        assert!(f.safe(Intervention::Stale, &mut out));
        assert_eq!((c.get(Intervention::NonFinite), c.get(Intervention::Stale)), (1, 1));
        let mut seen = vec![];
        for _ in 0..5 {
            f.filter(&[0.4, 0.8], &mut out);
            seen.push(out);
        }
        assert_eq!(
            seen,
            vec![[0.1, 0.2], [0.2, 0.4], [0.30000000000000004, 0.6000000000000001], [0.4, 0.8], [0.4, 0.8]]
        );
    }

    #[test]
    fn hold_repeats_the_last_action_and_sends_nothing_before_the_first() {
        let (mut f, _) = filter(SafeAction::Hold, 2);
        let mut out = [9.0; 2];
        assert!(!f.safe(Intervention::EStop, &mut out), "nothing to hold yet");
        f.filter(&[0.3, -0.3], &mut out);
        assert!(f.safe(Intervention::EStop, &mut out));
        assert_eq!(out, [0.3, -0.3]);
        f.filter(&[0.7, 0.7], &mut out);
        assert_eq!(out, [0.5, 0.2], "half way from the held action");
    }

    #[test]
    fn after_a_demonstration_zero_blends_from_zero_and_hold_starts_afresh() {
        let (mut f, c) = filter(SafeAction::Zero, 2);
        let mut out = [0.0; 2];
        f.filter(&[0.4, 0.4], &mut out);
        f.mute();
        f.filter(&[0.4, 0.4], &mut out);
        assert_eq!(out, [0.2, 0.2]);
        assert_eq!(c.0.iter().map(|x| x.load(Ordering::Relaxed)).sum::<u64>(), 0, "muting is no intervention");
        let (mut f, _) = filter(SafeAction::Hold, 2);
        f.filter(&[0.4, 0.4], &mut out);
        f.mute();
        f.filter(&[-0.6, 0.9], &mut out);
        assert_eq!(out, [-0.6, 0.9]);
    }

    #[test]
    fn a_swap_blends_from_the_last_action() {
        let (mut f, _) = filter(SafeAction::Zero, 2);
        let mut out = [0.0; 2];
        f.filter(&[0.2, 0.2], &mut out);
        f.restart_blend();
        f.filter(&[0.6, 1.2], &mut out);
        assert_eq!(out, [0.4, 0.7]);
    }

    #[test]
    fn tighter_limits_apply_from_the_next_tick_and_nothing_outside_them_is_sent() {
        let (mut f, _) = filter(SafeAction::Hold, 0);
        let mut out = [0.0; 2];
        f.filter(&[0.9, 1.5], &mut out);
        assert_eq!(out, [0.9, 1.5]);
        let tight = SafetyConfig {
            lower: vec![-0.5, -1.0],
            upper: vec![0.5, 1.0],
            max_delta: vec![0.1, f64::INFINITY],
            safe: SafeAction::Hold,
            blend_ticks: 0,
            uncertainty_limit: 0.0,
            uncertainty_slow: 0.25,
        };
        let old = f.reconfigure(tight.clone());
        assert_eq!(old.upper, vec![1.0, 2.0], "the old limits come back to be freed elsewhere");
        assert!(f.safe(Intervention::Stale, &mut out));
        assert_eq!(out, [0.5, 1.0], "the held action is inside the new limits");
        f.filter(&[0.9, 0.0], &mut out);
        assert_eq!(out, [0.5, 0.0], "clamped, and rate-limited from inside the limits");
        f.filter(&[-0.9, 0.0], &mut out);
        assert_eq!(out, [0.4, 0.0], "max_delta 0.1 from now on");
        assert_eq!(f.reconfigure(old), tight);
    }

    #[test]
    fn an_unsure_policy_is_slowed_toward_the_safe_action_above_the_limit_only() {
        let (mut f, c) = filter(SafeAction::Zero, 0);
        let mut p = [0.8, -1.6];
        f.temper(5.0, &mut p);
        assert_eq!(p, [0.8, -1.6], "no limit set: nothing changes");
        f.cfg.uncertainty_limit = 2.0;
        f.temper(1.9, &mut p);
        assert_eq!(p, [0.8, -1.6], "below the limit");
        f.temper(f64::NAN, &mut p);
        assert_eq!(p, [0.8, -1.6], "an unknown ratio is not a reason");
        f.temper(2.5, &mut p);
        assert_eq!(p, [0.2, -0.4], "a quarter of the way from zero");
        assert_eq!(c.get(Intervention::Uncertain), 1);

        let (mut f, _) = filter(SafeAction::Hold, 0);
        f.cfg.uncertainty_limit = 2.0;
        f.cfg.uncertainty_slow = 0.5;
        let mut out = [0.0; 2];
        f.filter(&[0.4, 1.0], &mut out);
        let mut p = [0.8, 0.0];
        f.temper(3.0, &mut p);
        assert!((p[0] - 0.6).abs() < 1e-12 && p[1] == 0.5, "half way from the held action: {p:?}");
    }

    #[test]
    fn limits_that_cannot_drive_a_robot_are_refused() {
        let cfg = |lower: f64, upper: f64, safe| SafetyConfig {
            lower: vec![lower],
            upper: vec![upper],
            max_delta: vec![1.0],
            safe,
            blend_ticks: 0,
            uncertainty_limit: 0.0,
            uncertainty_slow: 0.25,
        };
        assert!(cfg(f64::NEG_INFINITY, 1.0, SafeAction::Hold).check().unwrap_err().to_string().contains("not finite"));
        assert!(cfg(0.5, 1.0, SafeAction::Zero).check().unwrap_err().to_string().contains("include 0"));
        assert!(cfg(0.5, 1.0, SafeAction::Hold).check().is_ok());
    }
}
