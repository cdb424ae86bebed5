//! Reading a container's CRI log back, for the management API: the last
//! lines of its current run, then what it writes from then on, across
//! rotations (`<n>.log` renamed to `<n>.log.1` and a new `<n>.log`) and
//! restarts (a new `<n+1>.log`).
//!
//! Files are read through open descriptors: a rotation renames the file
//! under a reader but does not take its content away, so a follower first
//! reads its old file to the end, then moves on.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::crilog::Stream;
use crate::time::parse_rfc3339_unix_ms;

/// How often a follower looks for new lines, rotations and restarts.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// One line of a container's output. Partial entries are joined: `at` is
/// the stamp of the line's first entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLine {
    pub at_unix_ms: u64,
    pub stream: Stream,
    /// Invalid UTF-8 is replaced (U+FFFD).
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error("no logs of container {container} of pod {namespace}/{pod} under {root}")]
    NoContainer { root: PathBuf, namespace: String, pod: String, container: String },
    #[error("no container log directory {dir}")]
    NoLogDir { dir: PathBuf },
    #[error("listing log directory {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading container log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `<root>/<namespace>_<pod>_<uid>/<container>`. With `uid`, that pod
/// instance's; without, that of the instance whose container directory
/// changed last (a new run or a rotation touches it), which is the current
/// one when an edited manifest left older instances' logs behind.
pub fn container_log_dir(
    root: &Path,
    namespace: &str,
    pod: &str,
    uid: Option<&str>,
    container: &str,
) -> Result<PathBuf, LogReadError> {
    let not_found = || LogReadError::NoContainer {
        root: root.to_owned(),
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
    };
    if let Some(uid) = uid {
        let dir = root.join(format!("{namespace}_{pod}_{uid}")).join(container);
        return if dir.is_dir() { Ok(dir) } else { Err(not_found()) };
    }
    let prefix = format!("{namespace}_{pod}_");
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
        Err(source) => return Err(LogReadError::List { dir: root.to_owned(), source }),
    };
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        // Namespaces, names and UIDs hold no '_': the prefix cannot match
        // another pod whose name merely starts the same.
        let is_instance = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .is_some_and(|uid| !uid.is_empty() && !uid.contains('_'));
        if !is_instance {
            continue;
        }
        let dir = entry.path().join(container);
        let Ok(modified) = fs::metadata(&dir).and_then(|m| m.modified()) else {
            continue;
        };
        if newest.as_ref().is_none_or(|(newest, _)| modified > *newest) {
            newest = Some((modified, dir));
        }
    }
    newest.map(|(_, dir)| dir).ok_or_else(not_found)
}

/// The last `tail` lines (`None`: all) of the container's current run's
/// log, oldest first. The current run is the highest `<restartCount>`; an
/// empty directory has no lines.
pub fn read_tail(dir: &Path, tail: Option<usize>) -> Result<Vec<CriLine>, LogReadError> {
    read_tail_with_cursor(dir, tail).map(|(lines, _)| lines)
}

/// [`read_tail`], and where it stopped, for [`follow_from`] to go on from
/// without losing or repeating a line.
pub fn read_tail_with_cursor(dir: &Path, tail: Option<usize>) -> Result<(Vec<CriLine>, LogCursor), LogReadError> {
    if !dir.is_dir() {
        return Err(LogReadError::NoLogDir { dir: dir.to_owned() });
    }
    let run = newest_run(dir)?;
    let mut cursor = LogCursor { run, current: None, joiner: Joiner::default() };
    let Some(run) = run else {
        return Ok((Vec::new(), cursor));
    };
    let mut kept = VecDeque::new();
    let mut keep = |line: CriLine| {
        if tail == Some(0) {
            return;
        }
        if tail.is_some_and(|tail| kept.len() == tail) {
            kept.pop_front();
        }
        kept.push_back(line);
    };
    // Newest first, the current file before the rotated ones are even
    // listed: a rotation meanwhile shows up as the same file twice
    // (skipped), not as the current file missed.
    let current = OpenLog::open(log_path(dir, run, 0))?;
    let current_id = current.as_ref().map(|f| f.id);
    let mut files: Vec<OpenLog> = current.into_iter().collect();
    for generation in rotated_generations(dir, run)? {
        if let Some(file) = OpenLog::open(log_path(dir, run, generation))? {
            if !files.iter().any(|f| f.id == file.id) {
                files.push(file);
            }
        }
    }
    for mut file in files.into_iter().rev() {
        file.read_new(&mut cursor.joiner, &mut keep)?;
        if Some(file.id) == current_id {
            cursor.current = Some(file);
        }
    }
    Ok((kept.into(), cursor))
}

/// Follows the newest log file of `dir` from its end, sending each new
/// full line on `tx`; survives rotation and a container restart (switches
/// to the new `<n>.log`). Ends when `dir` is removed or the receiver is
/// dropped.
pub async fn follow(dir: PathBuf, tx: mpsc::Sender<CriLine>) -> Result<(), LogReadError> {
    let (_, cursor) = read_tail_with_cursor(&dir, Some(0))?;
    follow_from(dir, cursor, tx).await
}

/// [`follow`], from where [`read_tail_with_cursor`] stopped.
pub async fn follow_from(dir: PathBuf, cursor: LogCursor, tx: mpsc::Sender<CriLine>) -> Result<(), LogReadError> {
    follow_every(dir, cursor, tx, FOLLOW_INTERVAL).await
}

async fn follow_every(
    dir: PathBuf,
    mut cursor: LogCursor,
    tx: mpsc::Sender<CriLine>,
    interval: Duration,
) -> Result<(), LogReadError> {
    loop {
        if !dir.is_dir() {
            return Ok(());
        }
        for line in cursor.poll(&dir)? {
            if tx.send(line).await.is_err() {
                return Ok(());
            }
        }
        tokio::select! {
            () = tx.closed() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Where a reader of one container's log stands.
#[derive(Debug)]
pub struct LogCursor {
    /// The restart count being read; `None` until a log appears.
    run: Option<u32>,
    /// The run's current file as opened last; `None` while it is absent.
    current: Option<OpenLog>,
    joiner: Joiner,
}

impl LogCursor {
    /// The lines written since the last look, following a rotation or a
    /// newer run if there is one.
    fn poll(&mut self, dir: &Path) -> Result<Vec<CriLine>, LogReadError> {
        let mut out = Vec::new();
        self.catch_up(dir, &mut out)?;
        let newest = newest_run(dir)?;
        if newest > self.run {
            // The old run's process is gone: its unfinished line is all
            // there will be of it.
            self.joiner.flush(&mut |line| out.push(line));
            self.run = newest;
            self.current = None;
            self.catch_up(dir, &mut out)?;
        }
        Ok(out)
    }

    /// Reads the run's current file to its end. If `<run>.log` is another
    /// file by now (rotated) or has appeared, what the writer put in the
    /// old one before it moved on comes first, then the new one is read.
    fn catch_up(&mut self, dir: &Path, out: &mut Vec<CriLine>) -> Result<(), LogReadError> {
        let mut send = |line| out.push(line);
        if let Some(file) = &mut self.current {
            file.read_new(&mut self.joiner, &mut send)?;
        }
        let Some(run) = self.run else {
            return Ok(());
        };
        let path = log_path(dir, run, 0);
        let current_id = match fs::metadata(&path) {
            Ok(meta) => (meta.dev(), meta.ino()),
            // Between the rename and the new file: next time.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(LogReadError::Read { path, source }),
        };
        if self.current.as_ref().is_some_and(|file| file.id == current_id) {
            return Ok(());
        }
        if let Some(mut old) = self.current.take() {
            old.read_new(&mut self.joiner, &mut send)?;
        }
        if let Some(mut file) = OpenLog::open(path)? {
            file.read_new(&mut self.joiner, &mut send)?;
            self.current = Some(file);
        }
        Ok(())
    }
}

/// One log file, read through its descriptor from where it was left.
#[derive(Debug)]
struct OpenLog {
    path: PathBuf,
    file: File,
    /// (device, inode): tells a renamed file from its successor.
    id: (u64, u64),
    /// The start of an entry whose newline has not been written yet.
    unfinished: Vec<u8>,
}

impl OpenLog {
    /// `None` if there is no such file.
    fn open(path: PathBuf) -> Result<Option<OpenLog>, LogReadError> {
        let opened = File::open(&path).and_then(|file| Ok((file.metadata()?, file)));
        match opened {
            Ok((meta, file)) => Ok(Some(OpenLog { path, file, id: (meta.dev(), meta.ino()), unfinished: Vec::new() })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LogReadError::Read { path, source }),
        }
    }

    /// Reads to the end of the file and hands on each line completed.
    fn read_new(&mut self, joiner: &mut Joiner, send: &mut impl FnMut(CriLine)) -> Result<(), LogReadError> {
        let mut bytes = std::mem::take(&mut self.unfinished);
        self.file.read_to_end(&mut bytes).map_err(|source| LogReadError::Read { path: self.path.clone(), source })?;
        let mut rest = bytes.as_slice();
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            match parse_entry(&rest[..end]) {
                Some(entry) => {
                    if let Some(line) = joiner.push(entry) {
                        send(line);
                    }
                }
                None => tracing::debug!(path = %self.path.display(), "skipping a line that is not a CRI log entry"),
            }
            rest = &rest[end + 1..];
        }
        self.unfinished = rest.to_vec();
        Ok(())
    }
}

struct Entry<'a> {
    at_unix_ms: u64,
    stream: Stream,
    partial: bool,
    message: &'a [u8],
}

/// `<RFC 3339 time> <stdout|stderr> <tags> <message>`; the tags are `F`
/// or `P`, possibly followed by others after a `:`.
fn parse_entry(line: &[u8]) -> Option<Entry<'_>> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let at_unix_ms = parse_rfc3339_unix_ms(std::str::from_utf8(fields.next()?).ok()?)?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match fields.next()?.split(|&b| b == b':').next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    Some(Entry { at_unix_ms, stream, partial, message: fields.next().unwrap_or_default() })
}

/// Joins each stream's `P` entries with the `F` entry that ends the line.
#[derive(Debug, Default)]
struct Joiner {
    /// Per stream (stdout, stderr): the first entry's time and the text so far.
    pending: [Option<(u64, Vec<u8>)>; 2],
}

impl Joiner {
    fn push(&mut self, entry: Entry<'_>) -> Option<CriLine> {
        let slot = &mut self.pending[entry.stream as usize];
        let (at_unix_ms, mut text) = slot.take().unwrap_or((entry.at_unix_ms, Vec::new()));
        text.extend_from_slice(entry.message);
        if entry.partial {
            *slot = Some((at_unix_ms, text));
            return None;
        }
        Some(CriLine { at_unix_ms, stream: entry.stream, text: String::from_utf8_lossy(&text).into_owned() })
    }

    /// Hands on the unfinished lines as they are.
    fn flush(&mut self, send: &mut impl FnMut(CriLine)) {
        for (stream, slot) in [Stream::Stdout, Stream::Stderr].into_iter().zip(&mut self.pending) {
            if let Some((at_unix_ms, text)) = slot.take() {
                send(CriLine { at_unix_ms, stream, text: String::from_utf8_lossy(&text).into_owned() });
            }
        }
    }
}

/// `<dir>/<run>.log` for generation 0, `<dir>/<run>.log.<generation>` after.
fn log_path(dir: &Path, run: u32, generation: u32) -> PathBuf {
    match generation {
        0 => dir.join(format!("{run}.log")),
        g => dir.join(format!("{run}.log.{g}")),
    }
}

/// (run, generation) of a log file's name: `3.log` is (3, 0), `3.log.2` is (3, 2).
fn parse_log_name(name: &str) -> Option<(u32, u32)> {
    let (run, rest) = name.split_once(".log")?;
    let run = run.parse().ok()?;
    match rest {
        "" => Some((run, 0)),
        _ => Some((run, rest.strip_prefix('.')?.parse().ok().filter(|g| *g > 0)?)),
    }
}

fn log_names(dir: &Path) -> Result<Vec<(u32, u32)>, LogReadError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().filter_map(|e| parse_log_name(e.file_name().to_str()?)).collect()),
        // Removed: a follower ends on its next look.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(LogReadError::List { dir: dir.to_owned(), source }),
    }
}

/// The highest restart count with a log file, current or rotated.
fn newest_run(dir: &Path) -> Result<Option<u32>, LogReadError> {
    Ok(log_names(dir)?.into_iter().map(|(run, _)| run).max())
}

/// The rotated generations of `run`, newest (1) first.
fn rotated_generations(dir: &Path, run: u32) -> Result<Vec<u32>, LogReadError> {
    let mut generations: Vec<u32> =
        log_names(dir)?.into_iter().filter(|(r, g)| *r == run && *g > 0).map(|(_, g)| g).collect();
    generations.sort_unstable();
    Ok(generations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crilog::{format_entry, ContainerLog, LogLimits, Tag};
    use std::io::Write;
    use std::time::{SystemTime, UNIX_EPOCH};

    const SECOND: u64 = 1_700_000_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(SECOND * 1000 + ms)
    }

    fn entry(ms: u64, stream: Stream, tag: Tag, text: &str) -> Vec<u8> {
        format_entry(at(ms), stream, tag, text.as_bytes())
    }

    fn write(path: &Path, entries: &[Vec<u8>]) {
        fs::write(path, entries.concat()).unwrap();
    }

    fn append(path: &Path, bytes: &[u8]) {
        fs::OpenOptions::new().append(true).create(true).open(path).unwrap().write_all(bytes).unwrap();
    }

    fn texts(lines: &[CriLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn the_tail_joins_partial_entries_across_a_rotation_and_reads_only_the_newest_run() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("0.log"), &[entry(0, Stream::Stdout, Tag::Full, "an earlier run")]);
        write(&d.join("1.log.2"), &[entry(1, Stream::Stdout, Tag::Full, "one")]);
        write(
            &d.join("1.log.1"),
            &[
                entry(2, Stream::Stdout, Tag::Full, "two"),
                entry(3, Stream::Stdout, Tag::Partial, "thr"),
                entry(4, Stream::Stderr, Tag::Full, "oops"),
            ],
        );
        let mut current = vec![entry(5, Stream::Stdout, Tag::Partial, "e"), entry(6, Stream::Stdout, Tag::Full, "e!")];
        current.push(b"not an entry\n".to_vec());
        current.push(entry(7, Stream::Stdout, Tag::Full, "four"));
        write(&d.join("1.log"), &current);
        // Being written: no newline yet.
        append(&d.join("1.log"), b"2023-11-14T22:13:20Z stdout F fi");

        let all = read_tail(d, None).unwrap();
        assert_eq!(texts(&all), ["one", "two", "oops", "three!", "four"]);
        let three = &all[3];
        assert_eq!(
            (three.at_unix_ms, three.stream),
            (SECOND * 1000 + 3, Stream::Stdout),
            "a line is stamped when it began"
        );
        assert_eq!(all[2].stream, Stream::Stderr);
        assert_eq!(texts(&read_tail(d, Some(2)).unwrap()), ["three!", "four"]);
        assert_eq!(read_tail(d, Some(0)).unwrap(), []);
        assert_eq!(texts(&read_tail(d, Some(50)).unwrap()).len(), 5);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_an_empty_one_has_no_lines() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_tail(&dir.path().join("etcd"), None).unwrap_err();
        assert_eq!(err.to_string(), format!("no container log directory {}/etcd", dir.path().display()));
        assert_eq!(read_tail(dir.path(), None).unwrap(), []);
    }

    async fn next(rx: &mut mpsc::Receiver<CriLine>) -> String {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(line)) => line.text,
            other => panic!("no line within 5 s: {other:?}"),
        }
    }

    fn spawn_follower(
        dir: &Path,
        cursor: LogCursor,
    ) -> (mpsc::Receiver<CriLine>, tokio::task::JoinHandle<Result<(), LogReadError>>) {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(follow_every(dir.to_owned(), cursor, tx, Duration::from_millis(20)));
        (rx, task)
    }

    #[tokio::test]
    async fn a_follower_sees_appended_lines_then_rotations_then_a_new_run() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // 38 bytes an entry: five to a file.
        let limits = LogLimits { max_file_bytes: 200, keep_files: 2, max_line_bytes: 100 };
        let mut log = ContainerLog::open(d.join("0.log"), limits).unwrap();
        log.write(at(0), Stream::Stdout, Tag::Full, b"before 1").unwrap();
        let (_, cursor) = read_tail_with_cursor(d, Some(0)).unwrap();
        let (mut rx, task) = spawn_follower(d, cursor);

        // Twelve lines go through two rotations, some between two looks.
        for i in 0..12 {
            log.write(at(0), Stream::Stdout, Tag::Full, format!("line {i:02}").as_bytes()).unwrap();
            if i % 4 == 0 {
                assert_eq!(next(&mut rx).await, format!("line {i:02}"));
            } else if i % 4 == 3 {
                for j in i - 2..=i {
                    assert_eq!(next(&mut rx).await, format!("line {j:02}"));
                }
            }
        }
        assert!(d.join("0.log.2").exists(), "the test did not rotate twice");

        // The container restarts: its old run's last words, then the new run.
        log.write(at(0), Stream::Stdout, Tag::Partial, b"cut sho").unwrap();
        let mut restarted = ContainerLog::open(d.join("1.log"), limits).unwrap();
        restarted.write(at(0), Stream::Stdout, Tag::Full, b"new run").unwrap();
        assert_eq!(next(&mut rx).await, "cut sho");
        assert_eq!(next(&mut rx).await, "new run");

        drop(rx);
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the follower did not end with its receiver: {ended:?}");
    }

    #[tokio::test]
    async fn following_on_from_the_tail_loses_and_repeats_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let path = d.join("0.log");
        write(&path, &[entry(0, Stream::Stdout, Tag::Full, "old"), entry(1, Stream::Stderr, Tag::Partial, "hal")]);
        let (lines, cursor) = read_tail_with_cursor(d, None).unwrap();
        assert_eq!(texts(&lines), ["old"]);
        append(&path, &entry(2, Stream::Stderr, Tag::Full, "f a line"));
        append(&path, &entry(3, Stream::Stdout, Tag::Full, "new"));
        let (mut rx, task) = spawn_follower(d, cursor);
        assert_eq!(next(&mut rx).await, "half a line");
        assert_eq!(next(&mut rx).await, "new");

        // The pod's logs are removed: the follower ends.
        fs::remove_dir_all(d).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the follower did not end with its directory: {ended:?}");
    }

    #[tokio::test]
    async fn a_follower_waits_for_the_first_log_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let (_, cursor) = read_tail_with_cursor(dir.path(), None).unwrap();
        let task = tokio::spawn(follow_from(dir.path().to_owned(), cursor, tx));
        write(&dir.path().join("0.log"), &[entry(0, Stream::Stdout, Tag::Full, "first")]);
        assert_eq!(next(&mut rx).await, "first");
        task.abort();
    }

    #[test]
    fn the_container_directory_is_the_named_instances_or_the_latest_changed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let set_mtime = |dir: &Path, secs: u64| {
            File::open(dir)
                .unwrap()
                .set_times(fs::FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(secs)))
                .unwrap();
        };
        for (instance, secs) in
            [("kube-system_etcd_aaa", 200), ("kube-system_etcd_bbb", 100), ("kube-system_etcd-x_ccc", 300)]
        {
            fs::create_dir_all(r.join(instance).join("etcd")).unwrap();
            set_mtime(&r.join(instance).join("etcd"), secs);
        }
        assert_eq!(
            container_log_dir(r, "kube-system", "etcd", None, "etcd").unwrap(),
            r.join("kube-system_etcd_aaa/etcd")
        );
        assert_eq!(
            container_log_dir(r, "kube-system", "etcd", Some("bbb"), "etcd").unwrap(),
            r.join("kube-system_etcd_bbb/etcd")
        );
        let err = container_log_dir(r, "kube-system", "etcd", None, "sidecar").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no logs of container sidecar of pod kube-system/etcd under {}", r.display())
        );
        assert!(matches!(
            container_log_dir(r, "kube-system", "etcd", Some("zzz"), "etcd"),
            Err(LogReadError::NoContainer { .. })
        ));
    }
}
