//! A persistent, append-only on-disk queue feeding the log forwarder (spec 13.4-5).
//!
//! Layout of its directory (mode 0700):
//! * `segments/<first index, 20 digits>.seg`: append-only segment files, rolled at
//!   `segment_bytes`; each entry is one frame
//!   `"RQ1\0" | len u32le | index u64le | meta0 u64le | meta1 u64le | check [8] | payload`
//!   where `check` = first 8 bytes of SHA-256(index ‖ meta ‖ payload);
//! * `cursor`: the index of the first entry not yet delivered, replaced atomically
//!   (temporary file, fsync, rename, fsync of the directory).
//!
//! Guarantees: [`PersistentQueue::enqueue`] returns after the frames are fsynced, so an entry it
//! accepted survives a crash or power loss; [`PersistentQueue::commit`] returns after the cursor
//! is durable, so a delivered entry is not delivered again after a restart. A crash in the middle
//! of an append leaves a torn frame at the end of the last segment, which opening truncates (the
//! caller never saw that append succeed). A bad frame anywhere else is corruption and opening
//! fails rather than skip entries. `meta` is two numbers the producer uses to resume where it
//! stopped (the audit pump stores the last record seq and checkpoint number it enqueued).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::hash::Hash;

const MAGIC: &[u8; 4] = b"RQ1\0";
const HEADER: usize = 40;
/// Largest payload accepted (a syslog message is far smaller).
pub const MAX_PAYLOAD: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("queue segment {path} is corrupt at byte {offset}")]
    Corrupt { path: PathBuf, offset: u64 },
    #[error("queue is full ({bytes} bytes pending, limit {limit})")]
    Full { bytes: u64, limit: u64 },
    #[error("queue entry of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("queue cursor {cursor} is outside the stored entries {first}..={next}")]
    BadCursor { cursor: u64, first: u64, next: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub meta: [u64; 2],
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    pub segment_bytes: u64,
    /// Undelivered bytes above which `enqueue` refuses (the producer keeps its source and
    /// retries later, so nothing is lost, only delayed).
    pub max_bytes: u64,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            segment_bytes: 8 << 20,
            max_bytes: 1 << 30,
        }
    }
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    len: u64,
    /// Entries in the segment.
    count: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    opts: QueueOptions,
    segments: Vec<Segment>,
    /// Index the next enqueued entry gets.
    next: u64,
    /// First undelivered index.
    cursor: u64,
    last_meta: [u64; 2],
    writer: Option<File>,
}

/// Cloneable handle; producers and the forwarder share one queue.
#[derive(Debug, Clone)]
pub struct PersistentQueue {
    shared: Arc<(Mutex<Inner>, Condvar)>,
}

fn check(index: u64, meta: [u64; 2], payload: &[u8]) -> [u8; 8] {
    let h = Hash::sha256(&[
        &index.to_le_bytes(),
        &meta[0].to_le_bytes(),
        &meta[1].to_le_bytes(),
        payload,
    ]);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.0[..8]);
    out
}

fn encode(index: u64, meta: [u64; 2], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&index.to_le_bytes());
    f.extend_from_slice(&meta[0].to_le_bytes());
    f.extend_from_slice(&meta[1].to_le_bytes());
    f.extend_from_slice(&check(index, meta, payload));
    f.extend_from_slice(payload);
    f
}

enum Frame {
    Entry(Entry, u64),
    /// Failing its checks. `to_eof`: nothing valid can follow it (incomplete, reaching the end
    /// of the file, or only zeros after it), which is what an interrupted append leaves.
    Bad {
        to_eof: bool,
    },
    End,
}

fn bad(data: &[u8], at: usize, frame_end: Option<usize>) -> Frame {
    let to_eof =
        data.len() - at < HEADER || frame_end.is_some_and(|e| e >= data.len()) || data[at..].iter().all(|b| *b == 0);
    Frame::Bad { to_eof }
}

fn read_frame(data: &[u8], at: usize) -> Frame {
    if at == data.len() {
        return Frame::End;
    }
    if data.len() - at < HEADER || &data[at..at + 4] != MAGIC {
        return bad(data, at, None);
    }
    let u64_at = |o: usize| u64::from_le_bytes(data[at + o..at + o + 8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
    let index = u64_at(8);
    let meta = [u64_at(16), u64_at(24)];
    if len > MAX_PAYLOAD {
        return bad(data, at, None);
    }
    if data.len() - at - HEADER < len {
        return bad(data, at, Some(at + HEADER + len));
    }
    let payload = &data[at + HEADER..at + HEADER + len];
    if data[at + 32..at + 40] != check(index, meta, payload) {
        return bad(data, at, Some(at + HEADER + len));
    }
    Frame::Entry(
        Entry {
            index,
            meta,
            payload: payload.to_vec(),
        },
        (HEADER + len) as u64,
    )
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl PersistentQueue {
    pub fn open(dir: &Path, opts: QueueOptions) -> Result<Self, QueueError> {
        let seg_dir = dir.join("segments");
        rampart_common::fsutil::ensure_private_dir(&seg_dir).map_err(io_err(&seg_dir))?;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&seg_dir)
            .map_err(io_err(&seg_dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let first = name.strip_suffix(".seg")?.parse::<u64>().ok()?;
                Some((first, e.path()))
            })
            .collect();
        names.sort();
        let mut segments = Vec::new();
        let mut next = 1;
        let mut last_meta = [0, 0];
        let n = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let data = fs::read(&path).map_err(io_err(&path))?;
            let (mut at, mut count) = (0usize, 0u64);
            loop {
                match read_frame(&data, at) {
                    Frame::Entry(e, size) => {
                        if e.index != first + count || (count == 0 && !segments.is_empty() && e.index != next) {
                            return Err(QueueError::Corrupt {
                                path,
                                offset: at as u64,
                            });
                        }
                        last_meta = e.meta;
                        count += 1;
                        at += size as usize;
                    }
                    Frame::End => break,
                    Frame::Bad { to_eof: true } if i + 1 == n => {
                        // A torn append: it never returned success, so dropping it loses nothing.
                        tracing::warn!(segment = %path.display(), offset = at, "truncating a torn queue append");
                        let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                        f.set_len(at as u64).map_err(io_err(&path))?;
                        f.sync_all().map_err(io_err(&path))?;
                        break;
                    }
                    Frame::Bad { .. } => {
                        return Err(QueueError::Corrupt {
                            path,
                            offset: at as u64,
                        });
                    }
                }
            }
            if count > 0 || i + 1 == n {
                next = first + count;
            }
            segments.push(Segment {
                first,
                path,
                len: at as u64,
                count,
            });
        }
        let first_stored = segments.first().map_or(next, |s| s.first);
        let cursor_path = dir.join("cursor");
        let cursor = match fs::read_to_string(&cursor_path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| QueueError::Corrupt {
                path: cursor_path.clone(),
                offset: 0,
            })?,
            // No cursor yet: deliver everything stored (possibly again, never lost).
            Err(e) if e.kind() == io::ErrorKind::NotFound => first_stored,
            Err(e) => return Err(io_err(&cursor_path)(e)),
        };
        if cursor < first_stored || cursor > next {
            return Err(QueueError::BadCursor {
                cursor,
                first: first_stored,
                next,
            });
        }
        let q = PersistentQueue {
            shared: Arc::new((
                Mutex::new(Inner {
                    dir: dir.to_path_buf(),
                    opts,
                    segments,
                    next,
                    cursor,
                    last_meta,
                    writer: None,
                }),
                Condvar::new(),
            )),
        };
        Ok(q)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.0.lock().expect("queue lock")
    }

    /// Appends entries durably (one fsync for the batch) and wakes the forwarder. Returns the
    /// index of the last entry.
    pub fn enqueue(&self, items: &[([u64; 2], &[u8])]) -> Result<u64, QueueError> {
        let mut q = self.lock();
        if let Some((_, p)) = items.iter().find(|(_, p)| p.len() > MAX_PAYLOAD) {
            return Err(QueueError::TooLarge(p.len()));
        }
        let pending = q.pending_bytes();
        let adding: u64 = items.iter().map(|(_, p)| (HEADER + p.len()) as u64).sum();
        if pending + adding > q.opts.max_bytes {
            return Err(QueueError::Full {
                bytes: pending,
                limit: q.opts.max_bytes,
            });
        }
        for (meta, payload) in items {
            q.append_one(*meta, payload)?;
        }
        let path = q.segments.last().map(|s| s.path.clone()).unwrap_or_default();
        if let Some(w) = q.writer.as_mut() {
            w.sync_data().map_err(io_err(&path))?;
        }
        let last = q.next - 1;
        drop(q);
        self.shared.1.notify_all();
        Ok(last)
    }

    /// Up to `max_n` entries (and about `max_bytes`) from the cursor on, without consuming them.
    pub fn peek(&self, max_n: usize, max_bytes: usize) -> Result<Vec<Entry>, QueueError> {
        let q = self.lock();
        q.read_from(q.cursor, max_n, max_bytes)
    }

    /// Marks every entry below `next` as delivered, durably; drops segments no longer needed.
    pub fn commit(&self, next: u64) -> Result<(), QueueError> {
        let mut q = self.lock();
        if next < q.cursor || next > q.next {
            return Err(QueueError::BadCursor {
                cursor: next,
                first: q.cursor,
                next: q.next,
            });
        }
        let path = q.dir.join("cursor");
        rampart_common::fsutil::write_atomic(&path, next.to_string().as_bytes(), 0o600).map_err(io_err(&path))?;
        q.cursor = next;
        // A segment whose every entry is delivered goes, except the one being written.
        while q.segments.len() > 1 && q.segments[1].first <= next {
            let s = q.segments.remove(0);
            fs::remove_file(&s.path).map_err(io_err(&s.path))?;
        }
        Ok(())
    }

    /// Entries waiting for delivery.
    pub fn pending(&self) -> u64 {
        let q = self.lock();
        q.next - q.cursor
    }

    pub fn cursor(&self) -> u64 {
        self.lock().cursor
    }

    /// `meta` of the newest entry ever enqueued (zeros for a new queue).
    pub fn last_meta(&self) -> [u64; 2] {
        self.lock().last_meta
    }

    /// Blocks until something is pending or `timeout` passes; returns whether something is.
    pub fn wait_pending(&self, timeout: Duration) -> bool {
        let q = self.lock();
        let (q, _) = self
            .shared
            .1
            .wait_timeout_while(q, timeout, |q| q.next == q.cursor)
            .expect("queue lock");
        q.next > q.cursor
    }

    /// Wakes waiters (used to stop the forwarder promptly).
    pub fn notify(&self) {
        self.shared.1.notify_all();
    }
}

impl Inner {
    fn pending_bytes(&self) -> u64 {
        // Whole segments from the one holding the cursor: an upper bound that is cheap.
        let start = self.segments.iter().rposition(|s| s.first <= self.cursor).unwrap_or(0);
        self.segments[start..].iter().map(|s| s.len).sum()
    }

    fn append_one(&mut self, meta: [u64; 2], payload: &[u8]) -> Result<(), QueueError> {
        let roll = self
            .segments
            .last()
            .is_none_or(|s| s.len >= self.opts.segment_bytes && s.count > 0);
        if roll {
            let path = self.dir.join("segments").join(format!("{:020}.seg", self.next));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            // The previous segment's frames were synced by the enqueue that wrote them.
            sync_dir(&self.dir.join("segments"))?;
            self.segments.push(Segment {
                first: self.next,
                path,
                len: 0,
                count: 0,
            });
            self.writer = Some(f);
        }
        if self.writer.is_none() {
            let path = self.segments.last().expect("a segment").path.clone();
            self.writer = Some(OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?);
        }
        let frame = encode(self.next, meta, payload);
        let seg = self.segments.last_mut().expect("a segment");
        self.writer
            .as_mut()
            .expect("opened above")
            .write_all(&frame)
            .map_err(io_err(&seg.path))?;
        seg.len += frame.len() as u64;
        seg.count += 1;
        self.next += 1;
        self.last_meta = meta;
        Ok(())
    }

    fn read_from(&self, from: u64, max_n: usize, max_bytes: usize) -> Result<Vec<Entry>, QueueError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start = self.segments.iter().rposition(|s| s.first <= from).unwrap_or(0);
        for seg in &self.segments[start..] {
            if seg.count == 0 {
                continue;
            }
            let mut f = File::open(&seg.path).map_err(io_err(&seg.path))?;
            let mut data = Vec::with_capacity(seg.len as usize);
            (&mut f)
                .take(seg.len)
                .read_to_end(&mut data)
                .map_err(io_err(&seg.path))?;
            let mut at = 0usize;
            loop {
                match read_frame(&data, at) {
                    Frame::Entry(e, size) => {
                        at += size as usize;
                        if e.index < from {
                            continue;
                        }
                        if out.len() >= max_n || (!out.is_empty() && bytes + e.payload.len() > max_bytes) {
                            return Ok(out);
                        }
                        bytes += e.payload.len();
                        out.push(e);
                    }
                    Frame::End => break,
                    Frame::Bad { .. } => {
                        return Err(QueueError::Corrupt {
                            path: seg.path.clone(),
                            offset: at as u64,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(q: &PersistentQueue) -> Vec<String> {
        q.peek(usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.payload).unwrap())
            .collect()
    }

    #[test]
    fn spec_13_4_5_queue_survives_reopen_and_cursor_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let opts = QueueOptions {
            segment_bytes: 200,
            max_bytes: 1 << 20,
        };
        let q = PersistentQueue::open(dir.path(), opts).unwrap();
        for i in 1..=20u64 {
            let p = format!("message {i}");
            assert_eq!(q.enqueue(&[([i, 0], p.as_bytes())]).unwrap(), i);
        }
        assert!(
            fs::read_dir(dir.path().join("segments")).unwrap().count() > 3,
            "segments roll"
        );
        let batch = q.peek(5, usize::MAX).unwrap();
        assert_eq!(batch.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        q.commit(6).unwrap();
        drop(q);

        let q = PersistentQueue::open(dir.path(), opts).unwrap();
        assert_eq!(q.cursor(), 6);
        assert_eq!(q.pending(), 15);
        assert_eq!(q.last_meta(), [20, 0]);
        assert_eq!(payloads(&q)[0], "message 6");
        q.commit(21).unwrap();
        assert_eq!(q.pending(), 0);
        assert_eq!(
            fs::read_dir(dir.path().join("segments")).unwrap().count(),
            1,
            "delivered segments removed"
        );
        assert_eq!(q.enqueue(&[([21, 0], b"after")]).unwrap(), 21);
        drop(q);
        let q = PersistentQueue::open(dir.path(), opts).unwrap();
        assert_eq!(payloads(&q), vec!["after"]);
        assert_eq!(
            rampart_common::fsutil::mode_of(&dir.path().join("segments")).unwrap(),
            0o700
        );
    }

    #[test]
    fn spec_13_4_5_torn_tail_is_truncated_and_middle_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
        q.enqueue(&[([1, 0], b"one"), ([2, 0], b"two")]).unwrap();
        drop(q);
        let seg = fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        // A crash half-way through a third append.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&encode(3, [3, 0], b"three")[..20]).unwrap();
        drop(f);
        let q = PersistentQueue::open(dir.path(), QueueOptions::default()).unwrap();
        assert_eq!(payloads(&q), vec!["one", "two"]);
        assert_eq!(q.enqueue(&[([3, 0], b"three")]).unwrap(), 3);
        drop(q);
        // Flip a payload byte of the first entry: corruption, not a torn tail.
        let mut data = fs::read(&seg).unwrap();
        data[HEADER] ^= 0xff;
        fs::write(&seg, &data).unwrap();
        assert!(matches!(
            PersistentQueue::open(dir.path(), QueueOptions::default()),
            Err(QueueError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn spec_13_4_5_full_queue_refuses_without_losing_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let opts = QueueOptions {
            segment_bytes: 1 << 20,
            max_bytes: 200,
        };
        let q = PersistentQueue::open(dir.path(), opts).unwrap();
        q.enqueue(&[([1, 0], &[b'x'; 100])]).unwrap();
        assert!(matches!(
            q.enqueue(&[([2, 0], &[b'y'; 100])]),
            Err(QueueError::Full { .. })
        ));
        assert_eq!(q.pending(), 1);
        assert!(q.wait_pending(Duration::from_millis(1)));
    }
}
