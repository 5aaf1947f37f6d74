//! What `skillgraft episodes list` and `show` print: an episode's metadata, topics with message
//! counts and rates, and (given its skill) how many training samples it yields.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::dataset;
use super::episode::{self, ChannelInfo, EpisodeError};
use crate::skill::manifest::Manifest;

/// One episode, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct EpisodeSummary {
    /// File.
    pub path: String,
    /// Id.
    pub id: String,
    /// `complete`, `recovered`, or `unfinished` (a `.part` file).
    pub status: String,
    /// Label.
    pub label: String,
    /// Robot.
    pub robot: String,
    /// Skill it was recorded for.
    pub skill: String,
    /// Start time.
    pub start: String,
    /// Seconds from first to last message.
    pub duration_s: f64,
    /// Channels with counts.
    pub topics: Vec<ChannelInfo>,
    /// Messages in all.
    pub messages: u64,
    /// Messages the recorder dropped.
    pub dropped: String,
    /// Bytes after the last complete record.
    pub trailing_bytes: u64,
    /// Samples for the skill, when it was given or found.
    pub samples: Option<usize>,
    /// Actions dropped for a stale observation.
    pub stale: Option<usize>,
    /// Messages that did not extract.
    pub rejected: Option<usize>,
}

/// Summarises an episode file; with a manifest, also pairs it into samples.
pub fn summarise(path: &Path, skill: Option<&Manifest>) -> Result<EpisodeSummary, dataset::DatasetError> {
    let f = episode::read(path)?;
    let meta = |k: &str| f.metadata.get(k).cloned().unwrap_or_default();
    let status = if !f.complete {
        "unfinished".to_string()
    } else if meta("status") == "recovered" {
        "recovered".to_string()
    } else {
        "complete".to_string()
    };
    let mut s = EpisodeSummary {
        path: path.display().to_string(),
        id: f.id(),
        status,
        label: meta("label"),
        robot: meta("robot"),
        skill: format!("{} {}", meta("skill"), meta("skill_version")).trim().to_string(),
        start: meta("start"),
        duration_s: f.duration_s(),
        messages: f.channels.iter().map(|c| c.count).sum(),
        topics: f.channels.clone(),
        dropped: f.metadata.get("dropped").cloned().unwrap_or_else(|| "unknown".into()),
        trailing_bytes: f.trailing_bytes,
        samples: None,
        stale: None,
        rejected: None,
    };
    if let Some(m) = skill {
        let ep = dataset::load_episode(path, m)?;
        s.samples = Some(ep.samples.len());
        s.stale = Some(ep.stale);
        s.rejected = Some(ep.rejected);
    }
    Ok(s)
}

/// Summaries of every episode in a folder.
pub fn list(dir: &Path) -> Result<Vec<EpisodeSummary>, EpisodeError> {
    let mut out = Vec::new();
    for p in episode::list(dir)? {
        match summarise(&p, None) {
            Ok(s) => out.push(s),
            Err(dataset::DatasetError::File(e)) => return Err(e),
            Err(dataset::DatasetError::Mismatch { .. } | dataset::DatasetError::Skill(_)) => {}
        }
    }
    Ok(out)
}

impl fmt::Display for EpisodeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "episode   {} ({})", self.id, self.status)?;
        writeln!(f, "file      {}", self.path)?;
        writeln!(f, "label     {}", if self.label.is_empty() { "-" } else { &self.label })?;
        writeln!(f, "robot     {}   skill {}", self.robot, self.skill)?;
        writeln!(f, "start     {}   duration {:.2} s", self.start, self.duration_s)?;
        writeln!(f, "messages  {} (dropped by the recorder: {})", self.messages, self.dropped)?;
        if self.trailing_bytes > 0 {
            writeln!(
                f,
                "unfinished: {} bytes after the last complete record (skillgraft episodes recover)",
                self.trailing_bytes
            )?;
        }
        writeln!(f, "  {:<32} {:<36} {:<14} {:>8} {:>9}", "topic", "type", "role", "messages", "rate (Hz)")?;
        for t in &self.topics {
            let rate = if self.duration_s > 0.0 { t.count as f64 / self.duration_s } else { 0.0 };
            writeln!(f, "  {:<32} {:<36} {:<14} {:>8} {:>9.1}", t.topic, t.type_name, t.role, t.count, rate)?;
        }
        if let (Some(n), Some(stale), Some(rejected)) = (self.samples, self.stale, self.rejected) {
            writeln!(
                f,
                "samples   {n} (actions dropped for a stale observation: {stale}; messages rejected: {rejected})"
            )?;
        }
        Ok(())
    }
}

/// Lines of `episodes list`.
pub fn table(rows: &[EpisodeSummary]) -> String {
    let mut out = format!("{:<44} {:<11} {:<20} {:>9} {:>9}\n", "episode", "status", "label", "seconds", "messages");
    for r in rows {
        out.push_str(&format!(
            "{:<44} {:<11} {:<20} {:>9.2} {:>9}\n",
            r.id, r.status, r.label, r.duration_s, r.messages
        ));
    }
    out
}
