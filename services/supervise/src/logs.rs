//! A service's output: appended to `<dir>/<service>.log` with size-bounded
//! rotation, and kept in an in-memory ring of recent lines that the
//! management API can read and follow.

use serde::Serialize;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use crate::status::unix_ms;
use kelson_base::Clock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `/var/log/kelson` on the node.
    pub dir: PathBuf,
    /// A log file is rotated before it would grow past this.
    pub max_file_bytes: u64,
    /// Rotated files kept (`<service>.log.1` is the newest); on disk a
    /// service uses at most `(keep_files + 1) * max_file_bytes`.
    pub keep_files: usize,
    /// Lines kept in memory per service.
    pub ring_lines: usize,
}

impl Default for LogSettings {
    /// 1 MiB files, 3 rotated ones, 1000 lines in memory.
    fn default() -> Self {
        LogSettings { dir: PathBuf::from("/var/log/kelson"), max_file_bytes: 1 << 20, keep_files: 3, ring_lines: 1000 }
    }
}

/// One line of output, without its newline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Counts lines of this service since the supervisor started, so a
    /// reader can tell a gap (a lagging subscriber) from a quiet service.
    pub seq: u64,
    pub at_unix_ms: u64,
    pub text: String,
}

/// The backlog (as much of the ring as is kept) and the lines after it,
/// taken together so none is missed or seen twice.
#[derive(Debug)]
pub struct LogSubscription {
    pub backlog: Vec<LogLine>,
    pub live: broadcast::Receiver<LogLine>,
}

/// Lines longer than this are cut into pieces, so one runaway line cannot
/// hold unbounded memory.
const MAX_LINE: usize = 16 * 1024;

pub struct LogSink {
    service: String,
    file: Mutex<Option<RotatingFile>>,
    ring: Mutex<Ring>,
    live: broadcast::Sender<LogLine>,
    clock: Arc<dyn Clock>,
}

struct Ring {
    lines: VecDeque<LogLine>,
    capacity: usize,
    next_seq: u64,
}

impl LogSink {
    /// A sink for `service`. A log file that cannot be opened is reported
    /// once and the output still reaches the ring.
    pub fn new(service: &str, settings: &LogSettings, clock: Arc<dyn Clock>) -> Self {
        let file = match RotatingFile::open(&settings.dir, service, settings.max_file_bytes, settings.keep_files) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(service, error = %e, "no log file; output is kept in memory only");
                None
            }
        };
        let (live, _) = broadcast::channel(256);
        LogSink {
            service: service.to_owned(),
            file: Mutex::new(file),
            ring: Mutex::new(Ring { lines: VecDeque::new(), capacity: settings.ring_lines.max(1), next_seq: 0 }),
            live,
            clock,
        }
    }

    pub fn subscribe(&self) -> LogSubscription {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        LogSubscription { backlog: ring.lines.iter().cloned().collect(), live: self.live.subscribe() }
    }

    /// The sequence number the next line will get: taken before a start,
    /// it marks where that run's output begins.
    pub fn next_seq(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).next_seq
    }

    /// The last non-blank line numbered `seq` or later that the ring still
    /// holds, trimmed: what a program that failed said last.
    pub fn last_line_since(&self, seq: u64) -> Option<String> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.lines
            .iter()
            .rev()
            .take_while(|l| l.seq >= seq)
            .map(|l| l.text.trim())
            .find(|t| !t.is_empty())
            .map(str::to_owned)
    }

    /// Records one line (given with its newline, if it had one).
    pub fn push_line(&self, raw: &[u8]) {
        {
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = file.as_mut() {
                if let Err(e) = f.write_line(raw) {
                    tracing::warn!(service = %self.service, error = %e, "writing the log file failed; output is kept in memory only");
                    *file = None;
                }
            }
        }
        let text = String::from_utf8_lossy(raw.strip_suffix(b"\n").unwrap_or(raw)).into_owned();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let line = LogLine { seq: ring.next_seq, at_unix_ms: unix_ms(self.clock.wall()), text };
        ring.next_seq += 1;
        if ring.lines.len() == ring.capacity {
            ring.lines.pop_front();
        }
        ring.lines.push_back(line.clone());
        // Sent under the ring lock so a subscriber never sees a line in
        // both its backlog and its live stream. No subscribers is fine.
        let _ = self.live.send(line);
    }

    /// Reads `pipe` until end-of-file, splitting it into lines.
    pub async fn pump(self: Arc<Self>, pipe: OwnedFd) {
        let mut reader = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(service = %self.service, error = %e, "cannot read the service's output");
                return;
            }
        };
        let mut pending = Vec::new();
        let mut chunk = vec![0u8; 8192];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    pending.extend_from_slice(&chunk[..n]);
                    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        self.push_line(&line);
                    }
                    while pending.len() >= MAX_LINE {
                        let mut piece: Vec<u8> = pending.drain(..MAX_LINE).collect();
                        piece.push(b'\n');
                        self.push_line(&piece);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(service = %self.service, error = %e, "reading the service's output failed");
                    break;
                }
            }
        }
        if !pending.is_empty() {
            pending.push(b'\n');
            self.push_line(&pending);
        }
    }
}

/// `<service>.log` plus `<service>.log.1` .. `.N`, newest first.
struct RotatingFile {
    dir: PathBuf,
    service: String,
    file: File,
    size: u64,
    max: u64,
    keep: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("opening log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing log file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rotating log file {path}")]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RotatingFile {
    fn open(dir: &Path, service: &str, max: u64, keep: usize) -> Result<Self, LogFileError> {
        let path = dir.join(format!("{service}.log"));
        let open = || -> io::Result<(File, u64)> {
            fs::create_dir_all(dir)?;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        };
        let (file, size) = open().map_err(|source| LogFileError::Open { path, source })?;
        Ok(RotatingFile { dir: dir.to_owned(), service: service.to_owned(), file, size, max: max.max(1), keep })
    }

    fn path(&self, generation: usize) -> PathBuf {
        match generation {
            0 => self.dir.join(format!("{}.log", self.service)),
            n => self.dir.join(format!("{}.log.{n}", self.service)),
        }
    }

    /// Whole lines go into one file when they fit in one; a line longer
    /// than a file is split across files.
    fn write_line(&mut self, mut data: &[u8]) -> Result<(), LogFileError> {
        if self.size > 0 && self.size + data.len() as u64 > self.max && data.len() as u64 <= self.max {
            self.rotate()?;
        }
        while !data.is_empty() {
            if self.size >= self.max {
                self.rotate()?;
            }
            let room = (self.max - self.size).min(data.len() as u64) as usize;
            self.file.write_all(&data[..room]).map_err(|source| LogFileError::Write { path: self.path(0), source })?;
            self.size += room as u64;
            data = &data[room..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogFileError> {
        let current = self.path(0);
        let rotate = || -> io::Result<File> {
            if self.keep == 0 {
                return OpenOptions::new().write(true).truncate(true).open(&current);
            }
            for generation in (1..self.keep).rev() {
                let from = self.path(generation);
                if from.exists() {
                    fs::rename(&from, self.path(generation + 1))?;
                }
            }
            fs::rename(&current, self.path(1))?;
            OpenOptions::new().create(true).append(true).open(&current)
        };
        self.file = rotate().map_err(|source| LogFileError::Rotate { path: current.clone(), source })?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_base::FakeClock;

    fn settings(dir: &Path, max: u64, keep: usize, ring: usize) -> LogSettings {
        LogSettings { dir: dir.to_owned(), max_file_bytes: max, keep_files: keep, ring_lines: ring }
    }

    #[test]
    fn the_last_line_of_a_run_skips_blank_lines_and_earlier_runs() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::new("svc", &settings(dir.path(), 1 << 20, 1, 10), Arc::new(FakeClock::new()));
        sink.push_line(b"earlier run\n");
        let run = sink.next_seq();
        assert_eq!(sink.last_line_since(run), None);
        sink.push_line(b"unpacking\n");
        sink.push_line(b"ctr: failed to dial\n");
        sink.push_line(b"  \n");
        assert_eq!(sink.last_line_since(run).as_deref(), Some("ctr: failed to dial"));
        let next = sink.next_seq();
        sink.push_line(b"\n");
        assert_eq!(sink.last_line_since(next), None);
    }

    #[test]
    fn rotation_keeps_n_files_each_within_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::new("svc", &settings(dir.path(), 100, 2, 10), Arc::new(FakeClock::new()));
        for i in 0..50 {
            sink.push_line(format!("line {i:04} of output\n").as_bytes()); // 20 bytes
        }
        let mut names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["svc.log", "svc.log.1", "svc.log.2"]);
        for name in &names {
            let len = fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(len <= 100, "{name} is {len} bytes");
        }
        // Whole lines per file: the newest file ends with the last line and
        // the rotated ones hold the lines just before, in order.
        let current = fs::read_to_string(dir.path().join("svc.log")).unwrap();
        assert!(current.ends_with("line 0049 of output\n"), "{current}");
        let previous = fs::read_to_string(dir.path().join("svc.log.1")).unwrap();
        assert_eq!(previous.lines().count(), 5);
        assert!(previous.lines().all(|l| l.starts_with("line ")), "{previous}");
    }

    #[test]
    fn a_line_longer_than_a_file_is_split_and_still_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::new("svc", &settings(dir.path(), 10, 1, 10), Arc::new(FakeClock::new()));
        sink.push_line(&[b'x'; 25]);
        for name in ["svc.log", "svc.log.1"] {
            assert!(fs::metadata(dir.path().join(name)).unwrap().len() <= 10);
        }
        assert!(!dir.path().join("svc.log.2").exists());
    }

    #[test]
    fn the_ring_keeps_the_newest_lines_and_subscribers_get_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::new("svc", &settings(dir.path(), 1 << 20, 1, 3), Arc::new(FakeClock::new()));
        for i in 0..5 {
            sink.push_line(format!("{i}\n").as_bytes());
        }
        let mut sub = sink.subscribe();
        let backlog: Vec<_> = sub.backlog.iter().map(|l| (l.seq, l.text.as_str())).collect();
        assert_eq!(backlog, [(2, "2"), (3, "3"), (4, "4")]);
        sink.push_line(b"5\n");
        let next = sub.live.try_recv().unwrap();
        assert_eq!((next.seq, next.text.as_str()), (5, "5"));
        assert_eq!(next.at_unix_ms, 1_700_000_000_000);
    }

    #[tokio::test]
    async fn the_pump_splits_output_into_lines_and_flushes_the_last_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(LogSink::new("svc", &settings(dir.path(), 1 << 20, 1, 10), Arc::new(FakeClock::new())));
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut writer = File::from(write);
        writer.write_all(b"one\ntwo\nthr").unwrap();
        writer.write_all(b"ee\nfour").unwrap();
        drop(writer);
        sink.clone().pump(read).await;
        let texts: Vec<_> = sink.subscribe().backlog.into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["one", "two", "three", "four"]);
        assert_eq!(fs::read_to_string(dir.path().join("svc.log")).unwrap(), "one\ntwo\nthree\nfour\n");
    }
}
