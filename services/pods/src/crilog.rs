//! Container output in the CRI log format the kubelet and `kubectl logs`
//! read: one entry per line,
//!
//! ```text
//! 2016-10-06T00:17:09.669794202Z stdout F the line
//! 2016-10-06T00:17:09.669794202Z stderr P the first 16 KiB of a longer line
//! ```
//!
//! in `<root>/<namespace>_<name>_<uid>/<container>/<restartCount>.log`
//! (`/var/log/kelson/pods/…` on the node), rotated by size to `.log.1` …
//! `.log.N`. Not the kubelet's `/var/log/pods`: the kubelet deletes the
//! log directories there of pods it does not know, and PID 1's static pods
//! are not the kubelet's (a QEMU run found kube-apiserver's directory gone
//! once the kubelet had started, its file still being written unlinked).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;

use crate::spec::PodSpec;
use crate::time::rfc3339_nanos;
use crate::Clock;

/// Where the static pods' container logs go on the node.
pub const LOG_ROOT: &str = "/var/log/kelson/pods";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `F`: the entry ends a line. `P`: the line goes on in the next entry of
/// the same stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Full,
    Partial,
}

/// `<root>/<namespace>_<name>_<uid>`: one directory per pod instance, so an
/// edited manifest (a new UID) starts new logs beside the old ones.
pub fn pod_log_dir(root: &Path, pod: &PodSpec) -> PathBuf {
    root.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
}

/// `<pod log dir>/<container>/<restart_count>.log`.
pub fn container_log_path(root: &Path, pod: &PodSpec, container: &str, restart_count: u32) -> PathBuf {
    pod_log_dir(root, pod).join(container).join(format!("{restart_count}.log"))
}

/// One log entry with its newline. The message is written as it came,
/// without its newline; invalid UTF-8 passes through untouched, as
/// runtimes write it.
pub fn format_entry(at: std::time::SystemTime, stream: Stream, tag: Tag, message: &[u8]) -> Vec<u8> {
    let tag = match tag {
        Tag::Full => "F",
        Tag::Partial => "P",
    };
    let mut entry = format!("{} {} {tag} ", rfc3339_nanos(at), stream.as_str()).into_bytes();
    entry.extend_from_slice(message);
    entry.push(b'\n');
    entry
}

/// Cuts one stream's bytes into entries: each line is one `F` entry, and
/// a line longer than `max_line` bytes becomes `P` entries of `max_line`
/// bytes followed by an `F` entry with the rest.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter { pending: Vec::new(), max_line: max_line.max(1) }
    }

    /// The entries `chunk` completes; what is left waits for more.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<(Tag, Vec<u8>)> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            // A newline right after max_line bytes still ends a full line.
            let window = self.pending.len().min(self.max_line + 1);
            if let Some(end) = self.pending[..window].iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                out.push((Tag::Full, line));
            } else if self.pending.len() > self.max_line {
                out.push((Tag::Partial, self.pending.drain(..self.max_line).collect()));
            } else {
                return out;
            }
        }
    }

    /// At end of file: a last line without a newline is still a full line.
    pub fn finish(&mut self) -> Option<(Tag, Vec<u8>)> {
        (!self.pending.is_empty()).then(|| (Tag::Full, std::mem::take(&mut self.pending)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A file is rotated before an entry would take it past this.
    pub max_file_bytes: u64,
    /// Rotated files kept; with the current one a container's log takes at
    /// most `(keep_files + 1) * max_file_bytes` (plus one entry).
    pub keep_files: usize,
    /// Lines longer than this are split into `P` entries.
    pub max_line_bytes: usize,
}

impl Default for LogLimits {
    /// The kubelet's defaults (10 MiB, 5 files in all) and containerd's
    /// 16 KiB line limit.
    fn default() -> Self {
        LogLimits { max_file_bytes: 10 << 20, keep_files: 4, max_line_bytes: 16 << 10 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("opening container log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing container log {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rotating container log {path} to {to}")]
    Rotate {
        path: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the container's {stream} for {path}")]
    Read {
        path: PathBuf,
        stream: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One container run's log file, shared by its stdout and stderr pumps.
#[derive(Debug)]
pub struct ContainerLog {
    path: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
}

impl ContainerLog {
    /// Opens (appending) or creates `path` and its directories.
    pub fn open(path: PathBuf, limits: LogLimits) -> Result<Self, LogError> {
        let opened = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| append(&path))
            .and_then(|file| Ok((file.metadata()?.len(), file)));
        match opened {
            Ok((size, file)) => Ok(ContainerLog { path, file, size, limits }),
            Err(source) => Err(LogError::Open { path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry, rotating first if it would not fit.
    pub fn write(
        &mut self,
        at: std::time::SystemTime,
        stream: Stream,
        tag: Tag,
        message: &[u8],
    ) -> Result<(), LogError> {
        let entry = format_entry(at, stream, tag, message);
        if self.size > 0 && self.size + entry.len() as u64 > self.limits.max_file_bytes {
            self.rotate()?;
        }
        self.file.write_all(&entry).map_err(|source| LogError::Write { path: self.path.clone(), source })?;
        self.size += entry.len() as u64;
        Ok(())
    }

    /// `<n>.log.<i>` for i ≥ 1; 1 is the newest rotated file.
    fn rotated(&self, generation: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{generation}"));
        PathBuf::from(name)
    }

    /// Shifts every kept file one generation older (the oldest falls off)
    /// and starts an empty current file.
    fn rotate(&mut self) -> Result<(), LogError> {
        let keep = self.limits.keep_files;
        let rename = |from: PathBuf, to: PathBuf| match fs::rename(&from, &to) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LogError::Rotate { path: from, to, source: e }),
            _ => Ok(()),
        };
        if keep > 0 {
            for older in (1..keep).rev() {
                rename(self.rotated(older), self.rotated(older + 1))?;
            }
            rename(self.path.clone(), self.rotated(1))?;
        } else {
            fs::remove_file(&self.path)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(|source| LogError::Rotate {
                    path: self.path.clone(),
                    to: PathBuf::from("/dev/null"),
                    source,
                })?;
        }
        self.file = append(&self.path).map_err(|source| LogError::Open { path: self.path.clone(), source })?;
        self.size = 0;
        Ok(())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reads one of a container's output pipes to its end and logs it. The
/// pipe is always drained, even when the log cannot be written (a full
/// disk must not block the container on a full pipe); the first write
/// error is returned at the end.
pub async fn pump(
    log: Arc<Mutex<ContainerLog>>,
    stream: Stream,
    pipe: OwnedFd,
    clock: Arc<dyn Clock>,
) -> Result<(), LogError> {
    let (path, max_line) = {
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        (log.path.clone(), log.limits.max_line_bytes)
    };
    let read_error = |source| LogError::Read { path: path.clone(), stream: stream.as_str(), source };
    let mut reader = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe).map_err(read_error)?;
    let mut splitter = LineSplitter::new(max_line);
    let mut first_error = None;
    let mut write = |entries: Vec<(Tag, Vec<u8>)>| {
        let at = clock.wall();
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        for (tag, message) in entries {
            if let Err(e) = log.write(at, stream, tag, &message) {
                if first_error.is_none() {
                    tracing::warn!(error = %kelson_base::error_chain(&e), "container output is being dropped");
                    first_error = Some(e);
                }
            }
        }
    };
    let mut chunk = vec![0u8; 32 << 10];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => write(splitter.push(&chunk[..n])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                write(splitter.finish().into_iter().collect());
                return Err(read_error(e));
            }
        }
    }
    write(splitter.finish().into_iter().collect());
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(nanos: u32) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::new(1_700_000_000, nanos)
    }

    #[test]
    fn an_entry_is_timestamp_stream_tag_and_message() {
        assert_eq!(
            format_entry(at(500_000_000), Stream::Stdout, Tag::Full, b"hello world"),
            b"2023-11-14T22:13:20.5Z stdout F hello world\n"
        );
        assert_eq!(format_entry(at(0), Stream::Stderr, Tag::Partial, b""), b"2023-11-14T22:13:20Z stderr P \n");
    }

    fn texts(entries: Vec<(Tag, Vec<u8>)>) -> Vec<(Tag, String)> {
        entries.into_iter().map(|(t, m)| (t, String::from_utf8(m).unwrap())).collect()
    }

    #[test]
    fn lines_split_across_chunks_are_joined_and_the_last_one_is_flushed_at_the_end() {
        let mut s = LineSplitter::new(100);
        assert_eq!(texts(s.push(b"one\ntw")), [(Tag::Full, "one".to_owned())]);
        assert_eq!(texts(s.push(b"o\n\nthree")), [(Tag::Full, "two".to_owned()), (Tag::Full, String::new())]);
        assert_eq!(s.finish().map(|(t, m)| (t, String::from_utf8(m).unwrap())), Some((Tag::Full, "three".to_owned())));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn long_lines_become_partial_entries_of_the_maximum_length() {
        let mut s = LineSplitter::new(4);
        assert_eq!(
            texts(s.push(b"abcdefghij\nabcd\nxyz")),
            [
                (Tag::Partial, "abcd".to_owned()),
                (Tag::Partial, "efgh".to_owned()),
                (Tag::Full, "ij".to_owned()),
                (Tag::Full, "abcd".to_owned()),
            ]
        );
        assert_eq!(
            texts(s.push(b"12")),
            [(Tag::Partial, "xyz1".to_owned())],
            "a partial is cut as soon as it is known to be long"
        );
        assert_eq!(texts(s.push(b"\n")), [(Tag::Full, "2".to_owned())]);
    }

    #[test]
    fn rotation_keeps_n_files_each_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd/0.log");
        let limits = LogLimits { max_file_bytes: 200, keep_files: 2, max_line_bytes: 100 };
        let mut log = ContainerLog::open(path.clone(), limits).unwrap();
        for i in 0..40 {
            // 38 bytes an entry: five fit in 200.
            log.write(at(0), Stream::Stdout, Tag::Full, format!("line {i:02}").as_bytes()).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path().join("etcd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["0.log", "0.log.1", "0.log.2"]);
        for name in &names {
            let len = fs::metadata(dir.path().join("etcd").join(name)).unwrap().len();
            assert!(len <= 200, "{name}: {len}");
        }
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("stdout F line 39\n"), "{current}");
        let previous = fs::read_to_string(dir.path().join("etcd/0.log.1")).unwrap();
        assert_eq!(previous.lines().count(), 5);
        assert!(
            previous.ends_with("stdout F line 34\n"),
            "the newest rotated file holds the lines just before: {previous}"
        );
    }

    #[test]
    fn with_no_files_kept_rotation_starts_the_file_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log =
            ContainerLog::open(path.clone(), LogLimits { max_file_bytes: 50, keep_files: 0, max_line_bytes: 10 })
                .unwrap();
        log.write(at(0), Stream::Stdout, Tag::Full, b"first").unwrap();
        log.write(at(0), Stream::Stdout, Tag::Full, b"second").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "2023-11-14T22:13:20Z stdout F second\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn reopening_appends_and_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let limits = LogLimits { max_file_bytes: 60, keep_files: 1, max_line_bytes: 10 };
        ContainerLog::open(path.clone(), limits).unwrap().write(at(0), Stream::Stdout, Tag::Full, b"before").unwrap();
        let mut log = ContainerLog::open(path.clone(), limits).unwrap();
        log.write(at(0), Stream::Stdout, Tag::Full, b"after").unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("0.log.1")).unwrap(), "2023-11-14T22:13:20Z stdout F before\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "2023-11-14T22:13:20Z stdout F after\n");
    }

    #[test]
    fn a_log_that_cannot_be_opened_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("etcd"), "not a directory").unwrap();
        let err = ContainerLog::open(dir.path().join("etcd/0.log"), LogLimits::default()).unwrap_err();
        assert_eq!(err.to_string(), format!("opening container log {}/etcd/0.log", dir.path().display()));
    }
}
