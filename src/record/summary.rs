//! What `skillgraft episodes list` and `show` print: an episode's metadata, topics with message
//! counts, rates and sizes (for camera topics the resolutions and encodings seen, never pixels),
//! what chunk compression saved, and (given its skill) how many training samples it yields.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::dataset;
use super::episode::{self, ChannelInfo, ChunkStats, EpisodeError, EpisodeFile};
use crate::msg::{CompressedImage, CompressedImageView, Image, ImageView, RosMessage, cdr};
use crate::skill::manifest::Manifest;

/// One topic of an episode.
#[derive(Debug, Clone, Serialize)]
pub struct TopicSummary {
    /// Topic, type, role, messages and their bytes.
    #[serde(flatten)]
    pub channel: ChannelInfo,
    /// Messages per second over the episode.
    pub rate_hz: f64,
    /// For image topics: what the images were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageStats>,
}

/// What the messages of a camera topic held, read from their headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImageStats {
    /// Messages per resolution, `<width>x<height>`.
    pub resolutions: BTreeMap<String, u64>,
    /// Messages per pixel encoding (sensor_msgs/Image) or format (CompressedImage).
    pub encodings: BTreeMap<String, u64>,
    /// Messages that did not decode as their type, or whose size could not be read.
    pub undecodable: u64,
}

impl ImageStats {
    /// The image statistics of channel `ch` of `f`, when it is an image topic.
    fn of(f: &EpisodeFile, ch: usize) -> Option<ImageStats> {
        let kind = f.channels[ch].type_name.as_str();
        if kind != Image::TYPE && kind != CompressedImage::TYPE {
            return None;
        }
        let mut s = ImageStats::default();
        for m in f.messages.iter().filter(|m| m.channel == ch) {
            let seen = if kind == Image::TYPE {
                cdr::decode_borrowed::<ImageView>(&m.data, Image::TYPE).ok().map(|v| (v.width, v.height, v.encoding))
            } else {
                cdr::decode_borrowed::<CompressedImageView>(&m.data, CompressedImage::TYPE).ok().and_then(|v| {
                    let reader = image::io::Reader::new(std::io::Cursor::new(v.data)).with_guessed_format().ok()?;
                    reader.into_dimensions().ok().map(|(w, h)| (w, h, v.format))
                })
            };
            match seen {
                Some((w, h, encoding)) => {
                    *s.resolutions.entry(format!("{w}x{h}")).or_default() += 1;
                    *s.encodings.entry(encoding).or_default() += 1;
                }
                None => s.undecodable += 1,
            }
        }
        Some(s)
    }
}

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
    /// Topics with counts, rates, sizes and what their images were.
    pub topics: Vec<TopicSummary>,
    /// Messages in all.
    pub messages: u64,
    /// Messages the recorder dropped.
    pub dropped: String,
    /// Bytes after the last complete record.
    pub trailing_bytes: u64,
    /// Size of the file.
    pub file_bytes: u64,
    /// The chunks: compression, bytes stored and uncompressed.
    pub chunks: ChunkStats,
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
    let duration_s = f.duration_s();
    let topics = f
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| TopicSummary {
            channel: c.clone(),
            rate_hz: if duration_s > 0.0 { c.count as f64 / duration_s } else { 0.0 },
            images: ImageStats::of(&f, i),
        })
        .collect();
    let mut s = EpisodeSummary {
        path: path.display().to_string(),
        id: f.id(),
        status,
        label: meta("label"),
        robot: meta("robot"),
        skill: format!("{} {}", meta("skill"), meta("skill_version")).trim().to_string(),
        start: meta("start"),
        duration_s,
        messages: f.channels.iter().map(|c| c.count).sum(),
        topics,
        dropped: f.metadata.get("dropped").cloned().unwrap_or_else(|| "unknown".into()),
        trailing_bytes: f.trailing_bytes,
        file_bytes: f.file_bytes,
        chunks: f.chunks.clone(),
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
        let c = &self.chunks;
        let compression: Vec<&str> = c.compression.iter().map(String::as_str).collect();
        let ratio = if c.stored_bytes > 0 { c.uncompressed_bytes as f64 / c.stored_bytes as f64 } else { 1.0 };
        writeln!(
            f,
            "storage   {} on disk; {} chunk(s), {}: {} stored of {} (ratio {ratio:.2})",
            size(self.file_bytes),
            c.count,
            if compression.is_empty() { "-".to_string() } else { compression.join(", ") },
            size(c.stored_bytes),
            size(c.uncompressed_bytes),
        )?;
        writeln!(
            f,
            "  {:<32} {:<36} {:<14} {:>8} {:>9} {:>10}",
            "topic", "type", "role", "messages", "rate (Hz)", "data"
        )?;
        for t in &self.topics {
            let ch = &t.channel;
            writeln!(
                f,
                "  {:<32} {:<36} {:<14} {:>8} {:>9.1} {:>10}",
                ch.topic,
                ch.type_name,
                ch.role,
                ch.count,
                t.rate_hz,
                size(ch.bytes)
            )?;
            if let Some(i) = &t.images {
                let each = |m: &BTreeMap<String, u64>| {
                    m.iter().map(|(k, n)| format!("{k} ({n})")).collect::<Vec<_>>().join(", ")
                };
                write!(f, "    images: {}; encodings: {}", each(&i.resolutions), each(&i.encodings))?;
                if i.undecodable > 0 {
                    write!(f, "; undecodable: {}", i.undecodable)?;
                }
                writeln!(f)?;
            }
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

/// A byte count for people: B, KiB or MiB.
fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 10 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0)),
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
