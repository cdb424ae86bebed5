//! The kernel's log as the API serves it, read from /dev/kmsg: each read
//! returns one record, `PRI,SEQ,USEC,FLAGS;TEXT` followed by continuation
//! lines. PID 1 writes its own lines there too (facility `user`, text
//! `kelson: …`, see [`crate::log`]), so the same reader serves both the
//! kernel's log and PID 1's own.

use kelson_api::types::LogLine;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Which records a reader keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Every record: what `dmesg` shows.
    All,
    /// PID 1's own lines, without their `kelson: ` prefix.
    Init,
}

/// Facility `user` (1): records written to /dev/kmsg by a process (PID 1)
/// rather than by the kernel (facility 0).
const FACILITY_USER: u32 = 1;
const INIT_PREFIX: &str = "kelson: ";
/// A record is at most this long (the kernel's CONSOLE_EXT_LOG_MAX is 8 KiB).
const RECORD_MAX: usize = 8192;

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub facility: u32,
    pub level: u32,
    /// Microseconds since boot on the kernel's log clock.
    pub usec: u64,
    pub text: String,
}

/// Parses one record as read from /dev/kmsg; `None` if it is not one.
pub fn parse(raw: &[u8]) -> Option<Record> {
    let raw = String::from_utf8_lossy(raw);
    let first = raw.lines().next()?;
    let (header, text) = first.split_once(';')?;
    let mut fields = header.split(',');
    let priority: u32 = fields.next()?.parse().ok()?;
    let _seq = fields.next()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    Some(Record { facility: priority >> 3, level: priority & 7, usec, text: unescape(text) })
}

/// The kernel escapes non-printable bytes as `\xNN`; tabs and such are
/// shown as they were.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\\x") {
        out.push_str(&rest[..at]);
        let hex = rest.get(at + 2..at + 4).and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) if b.is_ascii() => {
                out.push(b as char);
                rest = &rest[at + 4..];
            }
            _ => {
                out.push_str("\\x");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl Record {
    /// The record as a log line for `filter`, or `None` if it does not
    /// belong there. `boot_unix_ms` is when the kernel's clock read zero.
    pub fn to_line(&self, filter: Filter, boot_unix_ms: u64) -> Option<LogLine> {
        let text = match filter {
            Filter::All => self.text.clone(),
            Filter::Init if self.facility == FACILITY_USER => self.text.strip_prefix(INIT_PREFIX)?.to_owned(),
            Filter::Init => return None,
        };
        Some(LogLine { at_unix_ms: boot_unix_ms + self.usec / 1000, text, skipped: None })
    }
}

/// The Unix time at which CLOCK_BOOTTIME (close enough to the kernel's
/// log clock) read zero.
fn boot_unix_ms() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    now.saturating_sub(crate::clock::boottime()).as_millis() as u64
}

fn open(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

/// Reads one record; `Ok(None)` when there is none left for now. Records
/// the kernel overwrote before we read them (EPIPE) are skipped over.
fn read_record(file: &mut File, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match file.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The records now in the kernel's buffer that pass `filter`, the last
/// `tail` of them (all when `None`), and the open device positioned after
/// them, for following.
pub fn backlog(path: &Path, filter: Filter, tail: Option<usize>) -> io::Result<(Vec<LogLine>, File)> {
    let mut file = open(path)?;
    let boot = boot_unix_ms();
    let mut buf = vec![0u8; RECORD_MAX];
    let mut lines = std::collections::VecDeque::new();
    while let Some(n) = read_record(&mut file, &mut buf)? {
        if let Some(line) = parse(&buf[..n]).and_then(|r| r.to_line(filter, boot)) {
            lines.push_back(line);
            if tail.is_some_and(|t| lines.len() > t) {
                lines.pop_front();
            }
        }
    }
    Ok((lines.into(), file))
}

/// Sends each new record that passes `filter` until the receiver goes away.
pub async fn follow(file: File, filter: Filter, tx: mpsc::Sender<LogLine>) -> io::Result<()> {
    // SAFETY: a `File` owns its descriptor, so it stays open and names the
    // same open file until the `AsyncFd`, which owns the `File`, is dropped.
    let mut fd = unsafe { AsyncFd::register(file) }?;
    let boot = boot_unix_ms();
    let mut buf = vec![0u8; RECORD_MAX];
    loop {
        let mut ready = tokio::select! {
            ready = fd.readable_mut() => ready?,
            () = tx.closed() => return Ok(()),
        };
        while let Some(n) = read_record(ready.get_inner_mut(), &mut buf)? {
            if let Some(line) = parse(&buf[..n]).and_then(|r| r.to_line(filter, boot)) {
                if tx.send(line).await.is_err() {
                    return Ok(());
                }
            }
        }
        ready.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_says_its_facility_level_time_and_text() {
        let r = parse(b"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n").unwrap();
        assert_eq!(
            r,
            Record { facility: 0, level: 6, usec: 5_140_900, text: "NET: Registered protocol family 10".into() }
        );
        assert!(parse(b"not a record").is_none());
    }

    #[test]
    fn escaped_bytes_are_restored() {
        let r = parse(b"14,1,2,-;kelson: a\\x09tab and \\xzz left\n").unwrap();
        assert_eq!(r.text, "kelson: a\ttab and \\xzz left");
    }

    #[test]
    fn pid1s_lines_are_its_user_facility_records_without_the_prefix() {
        let kernel = parse(b"6,1,2000,-;kelson: the kernel would not say this\n").unwrap();
        let init = parse(b"14,2,3000,-;kelson: stage done stage=mounts\n").unwrap();
        let other = parse(b"14,3,4000,-;someone else\n").unwrap();
        assert_eq!(init.to_line(Filter::Init, 1_000).unwrap().text, "stage done stage=mounts");
        assert_eq!(init.to_line(Filter::Init, 1_000).unwrap().at_unix_ms, 1_003);
        assert!(kernel.to_line(Filter::Init, 0).is_none());
        assert!(other.to_line(Filter::Init, 0).is_none());
        assert_eq!(kernel.to_line(Filter::All, 0).unwrap().text, "kelson: the kernel would not say this");
    }
}
