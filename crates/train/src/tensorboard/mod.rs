//! TensorBoard event files, as a training run writes them into `<run>/tb/`
//! (`tensorboard --logdir runs/` reads them).
//!
//! An event file is a sequence of TFRecords ([`record`]), each an `Event` protobuf ([`proto`]):
//! first the file version `brain.Event:2`, then one event per step and kind of value, each with
//! its wall time and step: scalars (`simple_value`), PNG images (`Summary.Image`) and text (a
//! string tensor whose metadata names the `text` plugin, as `tf.summary.text` writes it).
//! [`EventWriter`] buffers the records and writes them out on [`EventWriter::flush`]; a crash
//! between flushes loses only what was not flushed, and a record cut short is skipped by
//! TensorBoard's reader (and by [`read_events`]).
//!
//! Resuming: TensorBoard shows every event of every file in a directory, so a step written twice
//! shows twice. [`EventWriter::open`] at step N therefore first cuts the earlier files back to
//! step N (what a crashed run wrote after its last checkpoint is trained again), then writes a
//! new file whose name sorts after theirs, and never writes a tag at a step that is not past
//! the last one written for it.
//!
//! No crate does this today: `tensorboard-rs` (0.5.9) depends on the unmaintained `protobuf` 2
//! line and `image` 0.23. So the writer is written here, on `prost` for the messages and the
//! data crate's masked CRC32C for the framing; `tests/tests/tensorboard.rs` checks its files
//! with TensorBoard's own `EventAccumulator`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

pub mod proto;
pub mod record;

use proto::{Event, Kind, PluginData, Summary, SummaryMetadata, TensorProto, Value, What};

use crate::TrainError;

/// The folder of a run directory that holds its event files.
pub const TB_DIR: &str = "tb";

/// The file version every event file starts with.
pub const FILE_VERSION: &str = "brain.Event:2";

/// How event files are named (`events.out.tfevents.<seconds>.<host>.<pid>.0`); TensorBoard reads
/// the files of a directory in name order.
const PREFIX: &str = "events.out.tfevents.";

/// An open event file: see the [module docs](self).
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// The last step written for each tag, in this file or an earlier one.
    last_step: HashMap<String, i64>,
}

impl EventWriter {
    /// Starts a new event file in `dir` (created when missing) for a run at step `step`: the
    /// events past `step` in the files already there are cut off first ([`cut_after`]), and the
    /// new file's name sorts after theirs. The file version is written and flushed.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the folder or file that cannot be read or written.
    pub fn open(dir: &Path, step: u64) -> Result<Self, TrainError> {
        fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let kept = cut_after(dir, step)?;
        let mut last_step: HashMap<String, i64> = HashMap::new();
        for event in &kept {
            for value in summary_values(event) {
                let last = last_step.entry(value.tag.clone()).or_insert(event.step);
                *last = (*last).max(event.step);
            }
        }
        let newest = event_files(dir)?
            .iter()
            .filter_map(|p| file_seconds(p))
            .max();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let seconds = newest.map_or(now, |n| now.max(n + 1));
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', '.'], "_"))
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!(
            "{PREFIX}{seconds:010}.{host}.{}.0",
            std::process::id()
        ));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
            last_step,
        };
        writer.write_event(0, What::FileVersion(FILE_VERSION.into()))?;
        writer.flush()?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the scalars `values` (tag, value) at `step`, as one event.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), TrainError> {
        let values = values
            .iter()
            .map(|&(tag, v)| scalar_value(tag, v))
            .collect();
        self.write_values(step, values)
    }

    /// Adds the PNG file `png` as the image `tag` at `step`.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming `png` when it cannot be read or is not a PNG file, or naming
    /// the event file.
    pub fn image_file(&mut self, tag: &str, step: u64, png: &Path) -> Result<(), TrainError> {
        let bytes = fs::read(png).map_err(|e| TrainError::io(png, e))?;
        let value = png_value(tag, bytes).ok_or_else(|| {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "not a PNG file");
            TrainError::io(png, e)
        })?;
        self.write_values(step, vec![value])
    }

    /// Adds `text` (markdown) as the text summary `tag` at `step`.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn text(&mut self, tag: &str, step: u64, text: &str) -> Result<(), TrainError> {
        self.write_values(step, vec![text_value(tag, text)])
    }

    /// Writes the buffered records to the file (what a crash then keeps).
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.out.flush().map_err(|e| TrainError::io(&self.path, e))
    }

    /// [`EventWriter::flush`], then to the disk (`fsync`), as a checkpoint is.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the file.
    pub fn sync(&mut self) -> Result<(), TrainError> {
        self.flush()?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| TrainError::io(&self.path, e))
    }

    /// One event of the `values` whose tags have not been written at `step` or later.
    fn write_values(&mut self, step: u64, values: Vec<Value>) -> Result<(), TrainError> {
        let step = step as i64;
        let value: Vec<Value> = values
            .into_iter()
            .filter(|v| self.last_step.get(&v.tag).is_none_or(|&last| step > last))
            .collect();
        if value.is_empty() {
            return Ok(());
        }
        for v in &value {
            self.last_step.insert(v.tag.clone(), step);
        }
        self.write_event(step, What::Summary(Summary { value }))
    }

    fn write_event(&mut self, step: i64, what: What) -> Result<(), TrainError> {
        let wall_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let event = Event {
            wall_time,
            step,
            what: Some(what),
        };
        self.out
            .write_all(&event_record(&event))
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// `event` as the record of an event file: its protobuf in TFRecord framing.
pub fn event_record(event: &Event) -> Vec<u8> {
    record::frame(&event.encode_to_vec())
}

/// The scalar `tag` = `v` (stored as f32, as TensorBoard's `simple_value` is).
pub fn scalar_value(tag: &str, v: f64) -> Value {
    Value {
        tag: tag.into(),
        metadata: None,
        kind: Some(Kind::SimpleValue(v as f32)),
    }
}

/// The image `tag` of the PNG file's bytes `png`; `None` when they are not a PNG file.
pub fn png_value(tag: &str, png: Vec<u8>) -> Option<Value> {
    let (width, height, colorspace) = png_header(&png)?;
    let image = proto::Image {
        height,
        width,
        colorspace,
        encoded_image_string: png,
    };
    Some(Value {
        tag: tag.into(),
        metadata: None,
        kind: Some(Kind::Image(image)),
    })
}

/// The text summary `tag` of `text` (markdown): a scalar string tensor for the `text` plugin,
/// as `tf.summary.text` writes it.
pub fn text_value(tag: &str, text: &str) -> Value {
    let tensor = TensorProto {
        dtype: proto::DT_STRING,
        tensor_shape: Some(proto::TensorShapeProto { dim: Vec::new() }),
        string_val: vec![text.as_bytes().to_vec()],
    };
    Value {
        tag: tag.into(),
        metadata: Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: "text".into(),
                content: Vec::new(),
            }),
        }),
        kind: Some(Kind::Tensor(tensor)),
    }
}

/// The summary values of `event` (none for the file version).
pub fn summary_values(event: &Event) -> &[Value] {
    match &event.what {
        Some(What::Summary(summary)) => &summary.value,
        _ => &[],
    }
}

/// The event files in `dir`, in the order TensorBoard reads them (by name); none when `dir`
/// does not exist.
///
/// # Errors
/// [`TrainError::Io`] when `dir` cannot be listed.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(PREFIX) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The seconds in an event file's name.
fn file_seconds(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?.strip_prefix(PREFIX)?;
    name.split('.').next()?.parse().ok()
}

/// The events of the file `path`, up to a torn or damaged record, and the bytes they take.
fn read_file(path: &Path) -> Result<(Vec<Event>, usize, usize), TrainError> {
    let bytes = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (records, used) = record::unframe(&bytes);
    // A record whose checksums hold but whose protobuf does not decode ends the file as a
    // torn one would: nothing after it can be trusted.
    let events: Vec<Event> = records
        .iter()
        .map_while(|r| Event::decode(*r).ok())
        .collect();
    Ok((events, records.len(), used))
}

/// Every event of the event files in `dir`, file by file in name order, each file up to its
/// first torn or damaged record.
///
/// # Errors
/// [`TrainError::Io`] naming the folder or file that cannot be read.
pub fn read_events(dir: &Path) -> Result<Vec<Event>, TrainError> {
    let mut events = Vec::new();
    for file in event_files(dir)? {
        events.extend(read_file(&file)?.0);
    }
    Ok(events)
}

/// Cuts the event files in `dir` back to step `step`: a file that holds events past it, or a
/// torn record, is rewritten without them (through a temporary file and a rename, so a crash
/// leaves the old or the new one). Returns the events kept. What a resume at `step` does, so
/// that the steps it trains again are not in the files twice.
///
/// # Errors
/// [`TrainError::Io`] naming the folder or file that cannot be read or written.
pub fn cut_after(dir: &Path, step: u64) -> Result<Vec<Event>, TrainError> {
    let step = step as i64;
    let mut kept_all = Vec::new();
    for file in event_files(dir)? {
        let (events, n_records, used) = read_file(&file)?;
        let whole = fs::metadata(&file)
            .map_err(|e| TrainError::io(&file, e))?
            .len();
        let n_events = events.len();
        let kept: Vec<Event> = events.into_iter().filter(|e| e.step <= step).collect();
        if kept.len() < n_events || n_events < n_records || (used as u64) < whole {
            let tmp = dir.join("cut.tmp");
            let bytes: Vec<u8> = kept
                .iter()
                .flat_map(|e| record::frame(&e.encode_to_vec()))
                .collect();
            fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
            fs::rename(&tmp, &file).map_err(|e| TrainError::io(&file, e))?;
        }
        kept_all.extend(kept);
    }
    Ok(kept_all)
}

/// A PNG file's width, height and TensorBoard colorspace (channels), from its `IHDR` chunk.
fn png_header(bytes: &[u8]) -> Option<(i32, i32, i32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 26 || &bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let width = i32::try_from(u32::from_be_bytes(bytes[16..20].try_into().ok()?)).ok()?;
    let height = i32::try_from(u32::from_be_bytes(bytes[20..24].try_into().ok()?)).ok()?;
    let colorspace = match bytes[25] {
        0 => 1,
        4 => 2,
        2 | 3 => 3,
        6 => 4,
        _ => return None,
    };
    Some((width, height, colorspace))
}

#[cfg(test)]
mod tests;
