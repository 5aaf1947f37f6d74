//! Episodes back into training samples for a skill. Each demonstration action is paired with the
//! observation that was current when it arrived, by replaying the episode through the observer
//! the control loop uses (the same extraction, staleness, history and normalisation), with
//! control ticks at the skill's rate. Samples whose observation was stale are dropped and
//! counted. Episode boundaries are kept, so adaptation can hold out whole episodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::episode::{self, EpisodeError, EpisodeFile};
use crate::msg::schema::full_type_name;
use crate::observe::{self, Extractor};
use crate::skill::manifest::Manifest;

/// One training sample, in the policy's units.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the episode's first message.
    pub t: f64,
    /// The normalised policy input.
    pub observation: Vec<f32>,
    /// The demonstrated action as the policy should output it (normalised).
    pub action: Vec<f32>,
    /// The stacked observation in the robot's units.
    pub raw_observation: Vec<f32>,
    /// The demonstrated action in the robot's units.
    pub raw_action: Vec<f32>,
    /// The preprocessed tensor of each camera input (shared by the samples that saw one image).
    pub images: Vec<Arc<[f32]>>,
}

/// One episode's samples and what was dropped.
#[derive(Debug, Clone)]
pub struct Episode {
    /// The file.
    pub path: PathBuf,
    /// Episode id.
    pub id: String,
    /// Label given at `start`.
    pub label: String,
    /// Samples in time order.
    pub samples: Vec<Sample>,
    /// Demonstration actions seen.
    pub actions: usize,
    /// Actions dropped because an observation was stale (or the history still filling).
    pub stale: usize,
    /// Messages that did not extract (undecodable, missing joints, ...).
    pub rejected: usize,
    /// Seconds from first to last message.
    pub duration_s: f64,
}

/// Why an episode cannot give samples for a skill.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error(transparent)]
    File(#[from] EpisodeError),
    /// The episode does not carry what the skill reads or writes.
    #[error("{}: {problem}", path.display())]
    Mismatch {
        /// The episode.
        path: PathBuf,
        /// What is missing, and the fix.
        problem: String,
    },
    /// The skill the episode is paired for does not load.
    #[error(transparent)]
    Skill(#[from] crate::skill::SkillError),
}

/// Which channel of the file feeds which input (or the action), checked against the manifest.
fn roles(file: &EpisodeFile, m: &Manifest) -> Result<Vec<Option<Role>>, DatasetError> {
    let mismatch = |problem: String| DatasetError::Mismatch { path: file.path.clone(), problem };
    let mut out = Vec::new();
    let mut seen_inputs = vec![false; m.observations.len()];
    let mut seen_images = vec![false; m.images.len()];
    let mut seen_action = false;
    for c in &file.channels {
        // A recorded role names the input by position, which holds across remapped topics for
        // the skill it was recorded for; for another skill (a camera skill adapted on episodes
        // a numeric skill recorded) the position means nothing unless the type agrees, and the
        // topic decides.
        let indexed = |prefix: &str, types: &[&String]| {
            c.role
                .strip_prefix(prefix)
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|&i| types.get(i).is_some_and(|t| full_type_name(t) == c.type_name))
        };
        let numeric: Vec<&String> = m.observations.iter().map(|o| &o.msg_type).collect();
        let cameras: Vec<&String> = m.images.iter().map(|o| &o.msg_type).collect();
        let role = if let Some(i) = indexed("observation.", &numeric) {
            Some(Role::Input(i))
        } else if let Some(i) = indexed("image.", &cameras) {
            Some(Role::Image(i))
        } else if c.role == "action" {
            Some(Role::Action)
        } else if let Some(i) = m.observations.iter().position(|o| o.topic == c.topic) {
            Some(Role::Input(i))
        } else if let Some(i) = m.images.iter().position(|o| o.topic == c.topic) {
            Some(Role::Image(i))
        } else if m.action.topic == c.topic {
            Some(Role::Action)
        } else {
            None
        };
        let want = match role {
            Some(Role::Input(i)) => {
                let o = m.observations.get(i).ok_or_else(|| {
                    mismatch(format!(
                        "channel `{}` is observation {i}, but the skill has {} inputs",
                        c.topic,
                        m.observations.len()
                    ))
                })?;
                seen_inputs[i] = true;
                Some(full_type_name(&o.msg_type))
            }
            Some(Role::Image(i)) => {
                let o = m.images.get(i).ok_or_else(|| {
                    mismatch(format!(
                        "channel `{}` is image {i}, but the skill has {} cameras",
                        c.topic,
                        m.images.len()
                    ))
                })?;
                seen_images[i] = true;
                Some(full_type_name(&o.msg_type))
            }
            Some(Role::Action) => {
                seen_action = true;
                Some(full_type_name(&m.action.msg_type))
            }
            None => None,
        };
        if let Some(want) = want
            && want != c.type_name
        {
            return Err(mismatch(format!(
                "channel `{}` carries {}, the skill expects {want}; was it recorded for another skill?",
                c.topic, c.type_name
            )));
        }
        out.push(role);
    }
    if let Some(i) = seen_inputs.iter().position(|s| !s) {
        return Err(mismatch(format!(
            "no channel for observation {i} (`{}`) of skill `{}`",
            m.observations[i].topic, m.name
        )));
    }
    if let Some(i) = seen_images.iter().position(|s| !s) {
        return Err(mismatch(format!(
            "no channel for camera {i} (`{}`) of skill `{}`; record the camera topic with the demonstrations",
            m.images[i].topic, m.name
        )));
    }
    if !seen_action {
        return Err(mismatch(format!("no demonstration action channel for skill `{}`", m.name)));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Input(usize),
    Image(usize),
    Action,
}

/// The manifest an episode pairs with: the skill folder given, or else the one it was recorded
/// with (its `skill_dir` metadata) when that folder exists here; None when neither.
pub fn paired_manifest(file: &Path, skill: Option<&Path>) -> Result<Option<Manifest>, DatasetError> {
    let dir = match skill {
        Some(d) => Some(d.to_path_buf()),
        None => episode::read(file)?
            .metadata
            .get("skill_dir")
            .map(PathBuf::from)
            .filter(|d| d.join(crate::skill::MANIFEST_FILE).is_file()),
    };
    Ok(match dir {
        Some(d) => Some(crate::skill::Skill::load(&d)?.manifest),
        None => None,
    })
}

/// The episode's training samples as CSV in robot units: a header of `t`, the input labels and
/// `action:` labels (a comma in a label becomes `;`), then one row per sample.
pub fn csv(episode: &Episode, m: &Manifest) -> String {
    use std::fmt::Write;
    let mut out = String::from("t");
    let labels = m.input_labels().into_iter().chain(m.action_labels().into_iter().map(|l| format!("action:{l}")));
    for l in labels {
        out.push(',');
        out.push_str(&l.replace(',', ";"));
    }
    out.push('\n');
    for s in &episode.samples {
        let _ = write!(out, "{:.6}", s.t);
        for v in s.raw_observation.iter().chain(&s.raw_action) {
            let _ = write!(out, ",{v}");
        }
        out.push('\n');
    }
    out
}

/// Reads one episode into samples for the skill `m`.
pub fn load_episode(path: &Path, m: &Manifest) -> Result<Episode, DatasetError> {
    pair(episode::read(path)?, m)
}

/// Pairs an episode already read into samples for the skill `m`.
pub fn pair(file: episode::EpisodeFile, m: &Manifest) -> Result<Episode, DatasetError> {
    let path = file.path.as_path();
    let roles = roles(&file, m)?;
    let mut messages: Vec<&episode::Recorded> = file.messages.iter().collect();
    messages.sort_by_key(|r| r.log_time);
    let t0 = messages.first().map(|r| r.log_time).unwrap_or(0);
    let epoch = Instant::now();
    let at = |ns: u64| epoch + Duration::from_nanos(ns.saturating_sub(t0));
    let observe::Observer { mut writers, mut image_writers, mut assembler } =
        observe::observer(&m.observations, &m.images, m.control.history, epoch);
    // One shared copy of each camera tensor for the samples that saw it.
    let mut shared: Vec<(Option<Instant>, Arc<[f32]>)> = m.images.iter().map(|_| (None, Arc::from(&[][..]))).collect();
    let action_fields = Extractor::for_action(&m.action);
    let norm = m.normaliser();
    let period = (1e9 / m.control.rate_hz).max(1.0) as u64;
    let mut next_tick = t0 + period;
    let mut action = vec![0.0f32; action_fields.width];
    let mut action_f64 = vec![0.0f64; action_fields.width];
    let mut ep = Episode {
        path: path.to_path_buf(),
        id: file.id(),
        label: file.metadata.get("label").cloned().unwrap_or_default(),
        samples: Vec::new(),
        actions: 0,
        stale: 0,
        rejected: 0,
        duration_s: file.duration_s(),
    };
    for msg in messages {
        while next_tick <= msg.log_time {
            let _ = assembler.tick(at(next_tick));
            next_tick += period;
        }
        match roles[msg.channel] {
            Some(Role::Input(i)) if writers[i].on_message(&msg.data, at(msg.log_time)).is_err() => {
                ep.rejected += 1;
            }
            Some(Role::Input(_)) => {}
            Some(Role::Image(i)) if image_writers[i].on_message(&msg.data, at(msg.log_time)).is_err() => {
                ep.rejected += 1;
            }
            Some(Role::Image(_)) => {}
            Some(Role::Action) => {
                ep.actions += 1;
                if action_fields.extract_cdr(&msg.data, &mut action).is_err() {
                    ep.rejected += 1;
                    continue;
                }
                match assembler.peek(at(msg.log_time)) {
                    Ok(raw) => {
                        let mut observation = vec![0.0f32; raw.len()];
                        norm.input(raw, &mut observation);
                        for (d, &a) in action_f64.iter_mut().zip(&action) {
                            *d = a as f64;
                        }
                        let mut target = vec![0.0f32; action.len()];
                        norm.action_to_policy(&action_f64, &mut target);
                        let raw_observation = raw.to_vec();
                        for (i, (arrived, tensor)) in shared.iter_mut().enumerate() {
                            if *arrived != assembler.image_arrived(i) {
                                *arrived = assembler.image_arrived(i);
                                *tensor = Arc::from(assembler.image(i));
                            }
                        }
                        ep.samples.push(Sample {
                            t: (msg.log_time - t0) as f64 * 1e-9,
                            observation,
                            action: target,
                            raw_observation,
                            raw_action: action.clone(),
                            images: shared.iter().map(|(_, t)| t.clone()).collect(),
                        });
                    }
                    Err(_) => ep.stale += 1,
                }
            }
            None => {}
        }
    }
    Ok(ep)
}

/// Reads several episodes (files, or folders of `.mcap` files) for the skill `m`.
pub fn load(paths: &[PathBuf], m: &Manifest) -> Result<Vec<Episode>, DatasetError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(episode::list(p)?.into_iter().filter(|f| f.extension().is_some_and(|e| e == "mcap")));
        } else {
            files.push(p.clone());
        }
    }
    files.iter().map(|f| load_episode(f, m)).collect()
}
