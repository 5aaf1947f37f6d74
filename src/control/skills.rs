//! The skills a node runs: the active one, one waiting to be swapped in between two ticks, and
//! the ones before it, kept loaded so that a rollback is immediate. The control thread only
//! try-locks the slot and moves boxes; whatever allocates or frees a skill happens here, on the
//! caller's thread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::uncertainty::Posterior;
use crate::adapt::continual::Continual;
use crate::model::plan::ControlPlan;
use crate::record::Tap;
use crate::skill::Skill;
use crate::skill::manifest::{Manifest, Normaliser};

/// Why a skill cannot be swapped in or rolled back to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    /// The skill reads or writes other topics or fields, or needs other limits or another rate.
    #[error("cannot swap in `{0}`: {1}")]
    Incompatible(String, String),
    /// Nothing ran before the current skill.
    #[error("no earlier skill to roll back to: this node has run only {0} since it started")]
    NothingEarlier(String),
}

/// Earlier skills kept loaded for rollback.
pub const KEPT: usize = 4;

/// What names a skill the node runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkillInfo {
    /// Skill name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `sha256:...` of its manifest and model.
    pub digest: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Digest of the skill it was adapted from.
    pub parent: Option<String>,
    /// For an adapted skill, the numbers its gate accepted it on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

/// What an adapted skill's gate compared on held-out demonstrations, as its manifest's
/// provenance keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gate {
    /// The source skill's error.
    pub heldout_source_mse: f64,
    /// The adapted skill's error.
    pub heldout_adapted_mse: f64,
    /// The share of the source's error the adaptation removed.
    pub heldout_improvement: f64,
}

impl Gate {
    fn of(skill: &Skill) -> Option<Gate> {
        let d = &skill.manifest.provenance.details;
        let get = |k: &str| d.get(k).and_then(|v| v.as_float());
        Some(Gate {
            heldout_source_mse: get("heldout_source_mse")?,
            heldout_adapted_mse: get("heldout_adapted_mse")?,
            heldout_improvement: get("heldout_improvement")?,
        })
    }
}

impl SkillInfo {
    /// The skill's identity.
    pub fn of(skill: &Skill) -> SkillInfo {
        SkillInfo {
            name: skill.manifest.name.clone(),
            version: skill.manifest.version.to_string(),
            digest: skill.digest.clone(),
            dir: skill.dir.clone(),
            parent: skill.manifest.provenance.parent.clone(),
            gate: Gate::of(skill),
        }
    }

    /// `name version`, as diagnostics show it.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// The skill the control thread runs: its plan, and the numbers around it.
pub(crate) struct ActiveSkill {
    pub(crate) plan: ControlPlan,
    pub(crate) norm: Normaliser,
    /// The posterior over its last layer, when it was adapted by `bayes`.
    pub(crate) posterior: Option<Posterior>,
    info: SkillInfo,
}

impl ActiveSkill {
    pub(crate) fn new(skill: Skill) -> Box<ActiveSkill> {
        let info = SkillInfo::of(&skill);
        let norm = skill.manifest.normaliser();
        let (plan, posterior) = match doubt(&skill, &norm) {
            Ok(Some((plan, posterior))) => (plan, Some(posterior)),
            Ok(None) => (skill.model.control, None),
            Err(e) => {
                tracing::warn!("{} runs without its uncertainty: {e}", info.label());
                (skill.model.control, None)
            }
        };
        Box::new(ActiveSkill { norm, plan, posterior, info })
    }
}

/// The posterior of a bayes-adapted skill and a control plan that hands it the last layer's
/// input; None for a skill without statistics. A skill whose statistics cannot be used still
/// runs, without them: its head is what it is either way.
fn doubt(skill: &Skill, norm: &Normaliser) -> Result<Option<(ControlPlan, Posterior)>, String> {
    let Some(solved) = Continual::posterior(skill).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let plan = skill.model.probed_control().map_err(|e| e.to_string())?;
    let scale: Vec<f64> = (0..norm.action_width()).map(|i| norm.action_scale(i)).collect();
    let posterior = Posterior::new(&solved, &scale);
    if posterior.width() != plan.probe().len() || posterior.actions() != scale.len() {
        return Err(format!(
            "its statistics are for a last layer of {}→{}, the model's is {}→{}",
            posterior.width(),
            posterior.actions(),
            plan.probe().len(),
            scale.len()
        ));
    }
    Ok(Some((plan, posterior)))
}

/// What the control thread shares: the skill to swap in, and the one it replaced (with whether
/// to keep that one for rollback), left for this side to file away or free.
#[derive(Default)]
pub(crate) struct SwapSlot {
    pub(crate) pending: Option<Box<ActiveSkill>>,
    pub(crate) keep_replaced: bool,
    pub(crate) retired: Option<(Box<ActiveSkill>, bool)>,
}

struct State {
    // Boxed as the control thread holds them, so filing one away or bringing it back moves a
    // pointer, never the plan.
    #[allow(clippy::vec_box)]
    history: Vec<Box<ActiveSkill>>,
    /// The skill that runs once `pending` is in.
    current: SkillInfo,
    /// The skill that runs until `pending` is in.
    before_pending: Option<SkillInfo>,
    /// Digests of every skill this node has run.
    lineage: Vec<String>,
}

/// Swaps and rollbacks, and which skill runs.
pub struct Skills {
    pub(crate) slot: Arc<Mutex<SwapSlot>>,
    state: Mutex<State>,
    contract: Manifest,
    label: Arc<Mutex<String>>,
    tap: Arc<Tap>,
    policy: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Skills {
    pub(crate) fn new(first: &Skill, label: Arc<Mutex<String>>, tap: Arc<Tap>, policy: bool) -> Skills {
        let current = SkillInfo::of(first);
        Skills {
            slot: Arc::new(Mutex::new(SwapSlot::default())),
            state: Mutex::new(State {
                history: Vec::with_capacity(KEPT + 1),
                lineage: vec![current.digest.clone()],
                current,
                before_pending: None,
            }),
            contract: first.manifest.clone(),
            label,
            tap,
            policy,
        }
    }

    /// The skill that runs (or will, from the next tick).
    pub fn current(&self) -> SkillInfo {
        lock(&self.state).current.clone()
    }

    /// Digests of every skill this node has run, first to last.
    pub fn lineage(&self) -> Vec<String> {
        lock(&self.state).lineage.clone()
    }

    /// Skills a rollback can return to, most recent first.
    pub fn earlier(&self) -> Vec<SkillInfo> {
        let mut st = lock(&self.state);
        let mut slot = lock(&self.slot);
        Self::tidy(&mut slot, &mut st);
        // A new skill not yet swapped in: the one it replaces still runs, and comes first.
        let running = st.before_pending.clone().filter(|_| slot.pending.is_some() && slot.keep_replaced);
        running.into_iter().chain(st.history.iter().rev().map(|a| a.info.clone())).collect()
    }

    /// Files the skill the control thread replaced: kept for rollback, or freed here.
    fn tidy(slot: &mut SwapSlot, st: &mut State) {
        if slot.pending.is_none() {
            st.before_pending = None;
        }
        if let Some((old, keep)) = slot.retired.take()
            && keep
        {
            st.history.push(old);
            if st.history.len() > KEPT {
                st.history.remove(0);
            }
        }
    }

    fn announce(&self, info: &SkillInfo) {
        *lock(&self.label) = info.label();
        let mut m = BTreeMap::new();
        m.insert("skill".to_string(), info.name.clone());
        m.insert("skill_version".to_string(), info.version.clone());
        m.insert("skill_digest".to_string(), info.digest.clone());
        m.insert("skill_dir".to_string(), info.dir.display().to_string());
        self.tap.set_metadata(m);
    }

    /// Hands a skill to the control thread, which swaps it in between two ticks and blends to
    /// it; the one it replaces is kept for rollback. It must read and write the same topics and
    /// fields as the running skill.
    pub fn swap(&self, skill: Skill) -> Result<SkillInfo, SwapError> {
        self.compatible(&skill.manifest)?;
        let next = ActiveSkill::new(skill);
        let info = next.info.clone();
        let mut st = lock(&self.state);
        let mut slot = lock(&self.slot);
        Self::tidy(&mut slot, &mut st);
        match slot.pending.take() {
            None => {
                st.before_pending = Some(st.current.clone());
                slot.keep_replaced = true;
            }
            // A rollback still waiting: the skill it returns to counts as the running one, and
            // the one it leaves is still dropped.
            Some(back) if !slot.keep_replaced => st.history.push(back),
            // A new skill still waiting never ran: nothing to keep of it.
            Some(_) => {}
        }
        slot.pending = Some(next);
        drop(slot);
        st.current = info.clone();
        if !st.lineage.contains(&info.digest) {
            st.lineage.push(info.digest.clone());
        }
        drop(st);
        self.announce(&info);
        Ok(info)
    }

    /// Whether a skill with manifest `b` could be swapped in: it must read and write the same
    /// topics and fields, with the same limits and rate, as the running skill, and this node
    /// must run a policy.
    pub fn compatible(&self, b: &Manifest) -> Result<(), SwapError> {
        let a = &self.contract;
        let name = format!("{} {}", b.name, b.version);
        if !self.policy {
            return Err(SwapError::Incompatible(name, "this node runs no policy (`skillgraft record`)".into()));
        }
        let same_inputs = a.observations.len() == b.observations.len()
            && a.observations.iter().zip(&b.observations).all(|(x, y)| {
                (&x.topic, &x.msg_type, &x.fields, &x.joints) == (&y.topic, &y.msg_type, &y.fields, &y.joints)
                    && x.max_age_ms == y.max_age_ms
            });
        if !same_inputs || a.control.history != b.control.history {
            return Err(SwapError::Incompatible(name, "its observation inputs differ from the running skill's".into()));
        }
        // The node preprocesses images on its subscriptions for the skill it started with.
        if a.images != b.images {
            return Err(SwapError::Incompatible(
                name,
                "its camera inputs or their preprocessing differ from the running skill's".into(),
            ));
        }
        if (&a.action.topic, &a.action.msg_type, &a.action.fields, &a.action.joints)
            != (&b.action.topic, &b.action.msg_type, &b.action.fields, &b.action.joints)
        {
            return Err(SwapError::Incompatible(name, "its action output differs from the running skill's".into()));
        }
        // The safety filter and the tick period were set up for the running skill's manifest:
        // a skill that asks for other limits or another rate needs a node started with it.
        if (&a.action.lower, &a.action.upper, &a.action.max_delta, &a.action.safe, a.control.rate_hz)
            != (&b.action.lower, &b.action.upper, &b.action.max_delta, &b.action.safe, b.control.rate_hz)
        {
            return Err(SwapError::Incompatible(
                name,
                "its action limits, safe action or control rate differ from the running skill's; restart the node with it".into(),
            ));
        }
        Ok(())
    }

    /// Returns to the skill before the current one (blending to it); a skill not yet swapped in
    /// is dropped instead. Returns the skill that runs now.
    pub fn rollback(&self) -> Result<SkillInfo, SwapError> {
        let mut st = lock(&self.state);
        let mut slot = lock(&self.slot);
        Self::tidy(&mut slot, &mut st);
        let info = if slot.pending.is_some() && slot.keep_replaced {
            // The new skill never ran: dropping it returns to the one running.
            slot.pending = None;
            st.before_pending.take().expect("a pending skill records the one before it")
        } else {
            let Some(prev) = st.history.pop() else {
                return Err(SwapError::NothingEarlier(st.current.label()));
            };
            let info = prev.info.clone();
            if slot.pending.is_none() {
                st.before_pending = Some(st.current.clone());
            }
            // A rollback still waiting is passed over: this one goes a step further back.
            slot.pending = Some(prev);
            slot.keep_replaced = false;
            info
        };
        drop(slot);
        st.current = info.clone();
        drop(st);
        self.announce(&info);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::export;
    use crate::record::{Recorder, RecorderConfig};
    use crate::ros::transport::{RawPublisher, TransportError};

    struct Nowhere;

    impl RawPublisher for Nowhere {
        fn publish(&mut self, _: &[u8]) -> Result<(), TransportError> {
            Ok(())
        }
    }

    fn example() -> Skill {
        Skill::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6")).unwrap()
    }

    /// The example skill at another version, with its head scaled: same I/O, another digest.
    fn version(dir: &std::path::Path, minor: u64) -> Skill {
        let s = example();
        let params: Vec<_> = s
            .model
            .head
            .params
            .iter()
            .map(|p| crate::model::head::LayerParams {
                weight: p.weight.map(|v| v * minor as f32),
                bias: p.bias.clone(),
            })
            .collect();
        let proto = export::with_head_params(&s.model.file, &s.model.head, &params, &[]).unwrap();
        let mut m = s.manifest.clone();
        m.version = semver::Version::new(0, minor, 0);
        crate::skill::write_skill(&dir.join(format!("v{minor}")), &m, &export::encode(&proto)).unwrap()
    }

    /// What the control thread does at a tick.
    fn tick(skills: &Skills, active: &mut Box<ActiveSkill>) {
        let mut slot = skills.slot.lock().unwrap();
        if let Some(next) = slot.pending.take() {
            let keep = slot.keep_replaced;
            slot.retired = Some((std::mem::replace(active, next), keep));
        }
    }

    fn versions(infos: &[SkillInfo]) -> Vec<&str> {
        infos.iter().map(|i| i.version.as_str()).collect()
    }

    #[test]
    fn swaps_and_rollbacks_keep_the_history_straight_even_between_two_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RecorderConfig {
            dir: dir.path().join("episodes"),
            channels: Vec::new(),
            chunk_period: std::time::Duration::from_secs(1),
            queue: 16,
            compression: Default::default(),
            metadata: BTreeMap::new(),
            observation_labels: Vec::new(),
        };
        let recorder = Recorder::start(cfg, Box::new(Nowhere)).unwrap();
        let a = version(dir.path(), 1);
        let skills = Skills::new(&a, Arc::new(Mutex::new(String::new())), recorder.tap.clone(), true);
        let mut active = ActiveSkill::new(a);
        let v = |minor| version(&dir.path().join(format!("{minor}-{}", rand_tag())), minor);

        skills.swap(v(2)).unwrap();
        assert_eq!(versions(&skills.earlier()), ["0.1.0"], "the running skill comes first before the tick");
        tick(&skills, &mut active);
        assert_eq!((active.info.version.as_str(), versions(&skills.earlier())), ("0.2.0", vec!["0.1.0"]));
        assert_eq!(skills.rollback().unwrap().version, "0.1.0");
        tick(&skills, &mut active);
        assert_eq!(active.info.version, "0.1.0");
        assert!(skills.earlier().is_empty(), "the skill rolled back from is dropped");
        assert!(skills.rollback().unwrap_err().to_string().contains("no earlier skill"));

        // A swap replaced before it ran leaves no trace.
        skills.swap(v(2)).unwrap();
        skills.swap(v(3)).unwrap();
        tick(&skills, &mut active);
        assert_eq!((active.info.version.as_str(), versions(&skills.earlier())), ("0.3.0", vec!["0.1.0"]));
        // A rollback dropped before it ran: the new skill never ran, the old one still runs.
        skills.swap(v(4)).unwrap();
        assert_eq!(skills.rollback().unwrap().version, "0.3.0");
        tick(&skills, &mut active);
        assert_eq!((active.info.version.as_str(), versions(&skills.earlier())), ("0.3.0", vec!["0.1.0"]));
        // A swap right after a rollback: the rollback's skill is what the swap replaces.
        assert_eq!(skills.rollback().unwrap().version, "0.1.0");
        skills.swap(v(5)).unwrap();
        tick(&skills, &mut active);
        assert_eq!((active.info.version.as_str(), versions(&skills.earlier())), ("0.5.0", vec!["0.1.0"]));
        assert_eq!(skills.current().version, "0.5.0");
        assert_eq!(skills.lineage().len(), 5);
        recorder.stop();
    }

    #[test]
    fn a_bayes_skill_runs_with_its_posterior_and_without_it_when_its_statistics_do_not_fit() {
        use crate::adapt::continual::{Continual, EpisodeStats, Key, STATS_FILE};
        use nalgebra::{DMatrix, DVector};
        let dir = tempfile::tempdir().unwrap();
        let skill = version(dir.path(), 1);
        let stats_file = skill.dir.join(STATS_FILE);
        let key = Key::of(&skill);
        let (d, a) = (key.inputs, key.outputs);
        let statistics = |key: Key| {
            let mut c = Continual::new(key, DMatrix::zeros(a, d), DVector::zeros(a));
            for e in 0..2u64 {
                let h = DMatrix::from_row_slice(30, d, &crate::rng::seeded(e, 30 * d)).map(f64::from);
                let y = DMatrix::from_row_slice(30, a, &crate::rng::seeded(e + 9, 30 * a)).map(f64::from);
                c.add(EpisodeStats::of(&format!("e{e}"), &h, &y));
            }
            c
        };
        statistics(key.clone()).save(&stats_file).unwrap();
        let reload = || ActiveSkill::new(Skill::load(&skill.dir).unwrap());
        let mut active = reload();
        assert_eq!(active.plan.probe().len(), d);
        let p = active.posterior.as_mut().expect("its statistics fit: a posterior");
        assert!(p.ratio(&vec![0.0; d]) >= 1.0);

        statistics(Key { frozen: "another source".into(), ..key }).save(&stats_file).unwrap();
        let active = reload();
        assert!(active.posterior.is_none() && active.plan.probe().is_empty(), "another skill's statistics");
        std::fs::write(&stats_file, b"SGSTATS1 damaged").unwrap();
        assert!(reload().posterior.is_none(), "damaged statistics: the skill runs without them");
    }

    fn rand_tag() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}
