//! Episode files: MCAP that rosbag2, Foxglove and the Python MCAP readers open (one channel per
//! topic with its `ros2msg` schema, `cdr` messages, log time = arrival). An episode is written as
//! `<id>.mcap.part`, a chunk at a time with an fsync after each, and renamed to `<id>.mcap` when
//! it ends; a `.part` left by a crash can be recovered up to its last complete chunk. Chunks are
//! compressed (zstd unless chosen otherwise, [`Compression`]); files with uncompressed chunks, the
//! episodes written before compression, read the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcap::records::{MessageHeader, Metadata, Record, op};
use mcap::{WriteOptions, Writer};

use crate::file::FileError;
use crate::msg::defs;
use crate::skill::manifest::Manifest;

/// Suffix of an episode being written (or left by a crash).
pub const PART_SUFFIX: &str = ".mcap.part";
/// Name of the metadata record that describes an episode.
pub const METADATA_NAME: &str = "skillgraft.episode";

/// What went wrong with an episode file.
#[derive(Debug, thiserror::Error)]
pub enum EpisodeError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// The MCAP writer or reader failed.
    #[error("{}: {message}", path.display())]
    Mcap {
        /// The file.
        path: PathBuf,
        /// The error.
        message: String,
    },
}

/// How the chunks of new episodes are compressed. zstd by default: on the recording bench
/// (`skillgraft bench record --compression-only`, README) it halves a stream with camera images
/// for a few percent of one core; lz4 costs less CPU for a larger file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Chunks stored as written.
    None,
    /// LZ4 frames: the least CPU.
    Lz4,
    /// Zstandard at its default level (3): the smallest files.
    #[default]
    Zstd,
}

/// A compression name that is not one of [`Compression`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a chunk compression; give \"zstd\" (the default), \"lz4\" or \"none\"")]
pub struct UnknownCompression(pub String);

impl Compression {
    /// Every choice, in the order the bench reports them.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd];

    /// The name in parameters and on the command line, as MCAP writes it (`none` for "").
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    fn mcap(self) -> Option<mcap::Compression> {
        match self {
            Compression::None => None,
            Compression::Lz4 => Some(mcap::Compression::Lz4),
            Compression::Zstd => Some(mcap::Compression::Zstd),
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Compression, UnknownCompression> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "lz4" => Ok(Compression::Lz4),
            "none" | "" => Ok(Compression::None),
            other => Err(UnknownCompression(other.to_string())),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn mc(path: &Path) -> impl FnOnce(mcap::McapError) -> EpisodeError + '_ {
    move |e| {
        // The MCAP error hides the OS error (such as a full disk) in its source.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        EpisodeError::Mcap { path: path.to_path_buf(), message }
    }
}

/// A topic an episode records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Resolved topic name.
    pub topic: String,
    /// ROS type, `pkg/msg/Name`.
    pub type_name: String,
    /// What the topic is for the skill: `observation.<i>` or `action`.
    pub role: String,
}

impl ChannelSpec {
    /// The channels an episode of the skill `m` records: each observation input on its topic in
    /// `observation_topics` (`observation.<i>`), its cameras on `image_topics` (`image.<i>`), and
    /// the demonstrated actions on `action_topic`.
    pub fn for_skill(
        m: &Manifest,
        observation_topics: &[String],
        image_topics: &[String],
        action_topic: &str,
    ) -> Vec<ChannelSpec> {
        let mut channels: Vec<ChannelSpec> = observation_topics
            .iter()
            .zip(&m.observations)
            .enumerate()
            .map(|(i, (topic, o))| ChannelSpec {
                topic: topic.clone(),
                type_name: crate::msg::schema::full_type_name(&o.msg_type),
                role: format!("observation.{i}"),
            })
            .collect();
        channels.extend(image_topics.iter().zip(&m.images).enumerate().map(|(i, (topic, o))| ChannelSpec {
            topic: topic.clone(),
            type_name: crate::msg::schema::full_type_name(&o.msg_type),
            role: format!("image.{i}"),
        }));
        channels.push(ChannelSpec {
            topic: action_topic.to_string(),
            type_name: crate::msg::schema::full_type_name(&m.action.msg_type),
            role: "action".into(),
        });
        channels
    }
}

/// Types whose first field is a std_msgs/Header, so the publish time can be read from the stamp.
fn has_header(type_name: &str) -> bool {
    matches!(
        type_name,
        "sensor_msgs/msg/JointState"
            | "sensor_msgs/msg/Imu"
            | "trajectory_msgs/msg/JointTrajectory"
            | "sensor_msgs/msg/Image"
            | "sensor_msgs/msg/CompressedImage"
    )
}

/// The header stamp of a CDR message that starts with a std_msgs/Header, in ns (0 when unset).
fn header_stamp_ns(cdr: &[u8]) -> u64 {
    if cdr.len() < 12 {
        return 0;
    }
    let le = cdr[1] == 1;
    let word = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    let (sec, nsec) = (word(&cdr[4..8]) as i32, word(&cdr[8..12]));
    if sec <= 0 { 0 } else { sec as u64 * 1_000_000_000 + nsec as u64 }
}

/// Writes one episode.
pub struct EpisodeWriter {
    writer: Option<Writer<BufWriter<File>>>,
    sync: File,
    channels: Vec<(u16, bool)>,
    sequence: u32,
    /// Messages written per channel.
    pub counts: Vec<u64>,
    part: PathBuf,
    done: PathBuf,
    chunk_period: Duration,
    last_chunk: Instant,
}

impl EpisodeWriter {
    /// Creates `<dir>/<id>.mcap.part` with a channel per topic and the start metadata, and makes
    /// that first chunk durable. Chunks are compressed with `compression`.
    pub fn create(
        dir: &Path,
        id: &str,
        channels: &[ChannelSpec],
        metadata: &BTreeMap<String, String>,
        chunk_period: Duration,
        compression: Compression,
    ) -> Result<EpisodeWriter, EpisodeError> {
        std::fs::create_dir_all(dir).map_err(FileError::at("create the episodes folder", dir))?;
        let part = dir.join(format!("{id}{PART_SUFFIX}"));
        let done = dir.join(format!("{id}.mcap"));
        let file = File::create(&part).map_err(FileError::at("create the episode file", &part))?;
        let sync = file.try_clone().map_err(FileError::at("open the episode file for syncing", &part))?;
        // Compression runs on the writing (recorder) thread: zstd's worker threads would hide
        // its cost from the recorder's CPU figure and start a pool per episode on a small board.
        let options = WriteOptions::new()
            .compression(compression.mcap())
            .compression_threads(0)
            .chunk_size(None)
            .library(format!("skillgraft {}", env!("CARGO_PKG_VERSION")))
            .profile("ros2");
        let mut writer = options.create(BufWriter::new(file)).map_err(mc(&part))?;
        let mut ids = Vec::new();
        for c in channels {
            let def = defs::definition(&c.type_name).unwrap_or_default();
            let schema = writer.add_schema(&c.type_name, "ros2msg", def.as_bytes()).map_err(mc(&part))?;
            let mut meta = BTreeMap::new();
            meta.insert("skillgraft.role".to_string(), c.role.clone());
            let channel = writer.add_channel(schema, &c.topic, "cdr", &meta).map_err(mc(&part))?;
            ids.push((channel, has_header(&c.type_name)));
        }
        writer
            .write_metadata(&Metadata { name: METADATA_NAME.into(), metadata: metadata.clone() })
            .map_err(mc(&part))?;
        let mut w = EpisodeWriter {
            writer: Some(writer),
            sync,
            counts: vec![0; ids.len()],
            channels: ids,
            sequence: 0,
            part,
            done,
            chunk_period,
            last_chunk: Instant::now(),
        };
        w.flush()?;
        Ok(w)
    }

    /// The `.part` file being written.
    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Appends one message of channel `ch` that arrived at `log_time_ns` (ns since the epoch);
    /// ends the chunk (and syncs it) when the chunk period has passed.
    pub fn write(&mut self, ch: usize, log_time_ns: u64, cdr: &[u8]) -> Result<(), EpisodeError> {
        let (channel_id, header) = self.channels[ch];
        let stamp = if header { header_stamp_ns(cdr) } else { 0 };
        self.sequence = self.sequence.wrapping_add(1);
        let h = MessageHeader {
            channel_id,
            sequence: self.sequence,
            log_time: log_time_ns,
            publish_time: if stamp > 0 { stamp } else { log_time_ns },
        };
        let part = &self.part;
        self.writer.as_mut().expect("open until finished").write_to_known_channel(&h, cdr).map_err(mc(part))?;
        self.counts[ch] += 1;
        self.flush_if_due()
    }

    /// Ends the chunk and syncs when the chunk period has passed since the last one.
    pub fn flush_if_due(&mut self) -> Result<(), EpisodeError> {
        if self.last_chunk.elapsed() >= self.chunk_period { self.flush() } else { Ok(()) }
    }

    /// Ends the current chunk and syncs the file, so a crash keeps everything written so far.
    pub fn flush(&mut self) -> Result<(), EpisodeError> {
        let part = &self.part;
        self.writer.as_mut().expect("open until finished").flush().map_err(mc(part))?;
        self.sync.sync_data().map_err(FileError::at("sync", part))?;
        self.last_chunk = Instant::now();
        Ok(())
    }

    /// Writes the final metadata and the summary, syncs, and renames the file to `<id>.mcap`.
    pub fn finish(mut self, metadata: &BTreeMap<String, String>) -> Result<PathBuf, EpisodeError> {
        let part = self.part.clone();
        let mut writer = self.writer.take().expect("open until finished");
        writer
            .write_metadata(&Metadata { name: METADATA_NAME.into(), metadata: metadata.clone() })
            .map_err(mc(&part))?;
        writer.finish().map_err(mc(&part))?;
        let mut inner = writer.into_inner();
        inner.flush().map_err(FileError::at("write", &part))?;
        self.sync.sync_all().map_err(FileError::at("sync", &part))?;
        std::fs::rename(&part, &self.done).map_err(FileError::at("rename the finished episode", &part))?;
        if let Some(dir) = self.done.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(FileError::at("sync the episodes folder", dir))?;
        }
        Ok(self.done.clone())
    }

    /// Drops the episode: its file is removed.
    pub fn discard(mut self) -> Result<(), EpisodeError> {
        drop(self.writer.take());
        Ok(std::fs::remove_file(&self.part).map_err(FileError::at("remove the discarded episode", &self.part))?)
    }
}

/// One channel of a file that was read.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChannelInfo {
    /// Topic.
    pub topic: String,
    /// ROS type.
    pub type_name: String,
    /// `observation.<i>` or `action`.
    pub role: String,
    /// Messages.
    pub count: u64,
    /// Bytes of those messages (CDR, before chunk compression).
    pub bytes: u64,
}

/// The chunks of a file that was read: how they were compressed and what that saved.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ChunkStats {
    /// Complete chunks.
    pub count: u64,
    /// Compressions seen (`none`, `lz4`, `zstd`), in name order.
    pub compression: BTreeSet<String>,
    /// Bytes of the chunks' records as stored.
    pub stored_bytes: u64,
    /// The same records uncompressed.
    pub uncompressed_bytes: u64,
}

/// A message read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Index into the channels.
    pub channel: usize,
    /// Arrival, ns since the epoch.
    pub log_time: u64,
    /// Header stamp (or arrival), ns since the epoch.
    pub publish_time: u64,
    /// The CDR message.
    pub data: Vec<u8>,
}

/// An episode file read back.
#[derive(Debug, Clone)]
pub struct EpisodeFile {
    /// The file.
    pub path: PathBuf,
    /// Whether it ended properly (`.mcap`) or is an unfinished `.part`.
    pub complete: bool,
    /// The last `skillgraft.episode` metadata record.
    pub metadata: BTreeMap<String, String>,
    /// Channels, in the file's order.
    pub channels: Vec<ChannelInfo>,
    /// Messages in file order.
    pub messages: Vec<Recorded>,
    /// Bytes after the last complete record (a `.part` cut short).
    pub trailing_bytes: u64,
    /// Size of the file.
    pub file_bytes: u64,
    /// Its complete chunks.
    pub chunks: ChunkStats,
}

impl EpisodeFile {
    /// The episode id: the file name without `.mcap` or `.mcap.part`.
    pub fn id(&self) -> String {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.trim_end_matches(PART_SUFFIX).trim_end_matches(".mcap").to_string()
    }

    /// Seconds from the first to the last message.
    pub fn duration_s(&self) -> f64 {
        let (lo, hi) = self.messages.iter().fold((u64::MAX, 0), |(lo, hi), m| (lo.min(m.log_time), hi.max(m.log_time)));
        if hi > lo { (hi - lo) as f64 * 1e-9 } else { 0.0 }
    }
}

/// Largest record an episode may hold (a chunk, compressed or not, or a message): a bound on
/// what a damaged or hostile file can make the reader allocate.
pub const MAX_RECORD: u64 = 256 << 20;

/// The records of one chunk, decompressed a record at a time under [`MAX_RECORD`].
fn chunk_records(chunk: &[u8]) -> Result<Vec<Record<'static>>, String> {
    use mcap::sans_io::{LinearReadEvent, LinearReader, LinearReaderOptions};
    let options = LinearReaderOptions::default()
        .with_skip_start_magic(true)
        .with_skip_end_magic(true)
        .with_record_length_limit(MAX_RECORD as usize);
    let mut reader = LinearReader::new_with_options(options);
    let mut rest = chunk;
    let mut out = Vec::new();
    while let Some(event) = reader.next_event() {
        match event.map_err(|e| e.to_string())? {
            LinearReadEvent::ReadRequest(need) => {
                let n = need.min(rest.len());
                reader.insert(n).copy_from_slice(&rest[..n]);
                reader.notify_read(n);
                rest = &rest[n..];
            }
            LinearReadEvent::Record { data, opcode } => {
                out.push(mcap::parse_record(opcode, data).map_err(|e| e.to_string())?.into_owned())
            }
        }
    }
    Ok(out)
}

/// Reads an episode: every complete record, in order. A `.part` file (or any file cut short) is
/// read up to its last complete record and the rest counted in `trailing_bytes`.
pub fn read(path: &Path) -> Result<EpisodeFile, EpisodeError> {
    let bytes = std::fs::read(path).map_err(FileError::at("read the episode", path))?;
    let bad = |message: String| EpisodeError::Mcap { path: path.to_path_buf(), message };
    if bytes.len() < mcap::MAGIC.len() || bytes[..mcap::MAGIC.len()] != *mcap::MAGIC {
        return Err(bad("not an MCAP file (no magic bytes at the start)".into()));
    }
    let mut schemas: BTreeMap<u16, String> = BTreeMap::new();
    let mut channel_ids: BTreeMap<u16, usize> = BTreeMap::new();
    let mut file = EpisodeFile {
        path: path.to_path_buf(),
        complete: false,
        metadata: BTreeMap::new(),
        channels: Vec::new(),
        messages: Vec::new(),
        trailing_bytes: 0,
        file_bytes: bytes.len() as u64,
        chunks: ChunkStats::default(),
    };
    let mut at = mcap::MAGIC.len();
    let mut on_record = |record: Record<'_>, file: &mut EpisodeFile| -> Result<(), EpisodeError> {
        match record {
            Record::Schema { header, .. } => {
                schemas.insert(header.id, header.name);
            }
            Record::Channel(c) => {
                if let std::collections::btree_map::Entry::Vacant(slot) = channel_ids.entry(c.id) {
                    slot.insert(file.channels.len());
                    file.channels.push(ChannelInfo {
                        topic: c.topic,
                        type_name: schemas.get(&c.schema_id).cloned().unwrap_or_default(),
                        role: c.metadata.get("skillgraft.role").cloned().unwrap_or_default(),
                        count: 0,
                        bytes: 0,
                    });
                }
            }
            Record::Message { header, data } => {
                let Some(&ch) = channel_ids.get(&header.channel_id) else {
                    return Err(bad(format!("message on unknown channel {}", header.channel_id)));
                };
                file.channels[ch].count += 1;
                file.channels[ch].bytes += data.len() as u64;
                file.messages.push(Recorded {
                    channel: ch,
                    log_time: header.log_time,
                    publish_time: header.publish_time,
                    data: data.into_owned(),
                });
            }
            Record::Metadata(m) if m.name == METADATA_NAME => file.metadata = m.metadata,
            _ => {}
        }
        Ok(())
    };
    loop {
        if at + 9 > bytes.len() {
            break;
        }
        let opcode = bytes[at];
        let len = u64::from_le_bytes(bytes[at + 1..at + 9].try_into().expect("8 bytes"));
        // A length over the limit is a chunk the writer had not finished (its length is written
        // last) or damage: the file is read up to there, like one cut short.
        if len > MAX_RECORD {
            break;
        }
        let len = len as usize;
        let Some(body) = bytes.get(at + 9..(at + 9).saturating_add(len)) else {
            break;
        };
        let record = match mcap::parse_record(opcode, body) {
            Ok(r) => r,
            Err(_) => break,
        };
        if opcode == op::FOOTER {
            at += 9 + len;
            file.complete = bytes.len() >= at + mcap::MAGIC.len() && bytes[at..at + mcap::MAGIC.len()] == *mcap::MAGIC;
            if file.complete {
                at += mcap::MAGIC.len();
            }
            break;
        }
        if let Record::Chunk { header, .. } = &record {
            if header.uncompressed_size > MAX_RECORD {
                break;
            }
            let inner = match chunk_records(&bytes[at..at + 9 + len]) {
                Ok(r) => r,
                Err(_) => break,
            };
            let compression = if header.compression.is_empty() { "none" } else { header.compression.as_str() };
            file.chunks.count += 1;
            file.chunks.compression.insert(compression.to_string());
            file.chunks.stored_bytes += header.compressed_size;
            file.chunks.uncompressed_bytes += header.uncompressed_size;
            for r in inner {
                on_record(r, &mut file)?;
            }
        } else {
            on_record(record, &mut file)?;
        }
        at += 9 + len;
    }
    file.trailing_bytes = (bytes.len() - at) as u64;
    Ok(file)
}

/// What a recovery kept and dropped.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recovery {
    /// The `.part` file.
    pub from: PathBuf,
    /// The recovered `.mcap` file.
    pub to: PathBuf,
    /// Messages kept.
    pub messages: usize,
    /// Bytes of the unfinished last chunk that were dropped.
    pub dropped_bytes: u64,
}

/// Rewrites a `.part` file as `<id>.mcap` from its complete chunks, compressed as they were,
/// then removes the `.part`.
pub fn recover(part: &Path) -> Result<Recovery, EpisodeError> {
    let file = read(part)?;
    let dir = part.parent().unwrap_or(Path::new("."));
    let to = dir.join(format!("{}.mcap", file.id()));
    let specs: Vec<ChannelSpec> = file
        .channels
        .iter()
        .map(|c| ChannelSpec { topic: c.topic.clone(), type_name: c.type_name.clone(), role: c.role.clone() })
        .collect();
    let tmp_id = format!("{}.recovering", file.id());
    let mut meta = file.metadata.clone();
    let compression = match file.chunks.compression.iter().next() {
        Some(name) if file.chunks.compression.len() == 1 => name.parse().unwrap_or_default(),
        _ => Compression::default(),
    };
    let mut w = EpisodeWriter::create(dir, &tmp_id, &specs, &meta, Duration::MAX, compression)?;
    for m in &file.messages {
        let (channel_id, _) = w.channels[m.channel];
        w.sequence = w.sequence.wrapping_add(1);
        let h = MessageHeader { channel_id, sequence: w.sequence, log_time: m.log_time, publish_time: m.publish_time };
        let p = w.part.clone();
        w.writer.as_mut().expect("open").write_to_known_channel(&h, &m.data).map_err(mc(&p))?;
    }
    meta.insert("status".into(), "recovered".into());
    meta.insert("recovered_messages".into(), file.messages.len().to_string());
    meta.insert("recovered_dropped_bytes".into(), file.trailing_bytes.to_string());
    let written = w.finish(&meta)?;
    std::fs::rename(&written, &to).map_err(FileError::at("rename the recovered episode", &written))?;
    std::fs::remove_file(part).map_err(FileError::at("remove the recovered .part file", part))?;
    Ok(Recovery { from: part.to_path_buf(), to, messages: file.messages.len(), dropped_bytes: file.trailing_bytes })
}

/// Episode files in a folder (`.mcap` and `.mcap.part`), sorted by name.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, EpisodeError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(FileError::at("list the episodes folder", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.ends_with(".mcap") || n.ends_with(PART_SUFFIX)
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// A record claiming more than the limit ends what is read, as a cut does: nothing is
    /// allocated for it, and the rest is counted as trailing bytes.
    #[test]
    fn records_over_the_limit_end_the_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.mcap");
        let mut bytes = mcap::MAGIC.to_vec();
        bytes.push(mcap::records::op::MESSAGE);
        bytes.extend((1u64 << 40).to_le_bytes());
        bytes.extend([0u8; 64]);
        std::fs::write(&path, &bytes).unwrap();
        let file = super::read(&path).unwrap();
        assert!(file.messages.is_empty() && !file.complete);
        assert_eq!(file.trailing_bytes, 9 + 64);
    }

    #[test]
    fn mcap_errors_carry_the_os_error() {
        let e = mcap::McapError::Io(std::io::Error::from_raw_os_error(28));
        let err = super::mc(std::path::Path::new("ep.mcap.part"))(e).to_string();
        assert!(err.contains("No space left on device"), "{err}");
    }
}
