//! Reading /proc for the processes that are left: shutdown waits until
//! none is, and the tests count zombies the same way.

use std::path::Path;

/// The kernel thread flag in /proc/PID/stat's `flags` field.
const PF_KTHREAD: u64 = 0x0020_0000;

/// One process as /proc/PID/stat describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub flags: u64,
}

impl ProcStat {
    /// Parses a stat line. The command name is in parentheses and may itself
    /// contain spaces and parentheses, so fields are counted after the last `)`.
    pub fn parse(line: &str) -> Option<Self> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let pid = line[..open].trim().parse().ok()?;
        let comm = line[open + 1..close].to_owned();
        let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
        Some(ProcStat {
            pid,
            comm,
            state: rest.first()?.chars().next()?,
            ppid: rest.get(1)?.parse().ok()?,
            flags: rest.get(6)?.parse().ok()?,
        })
    }

    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// All processes readable under `proc`.
pub fn all(proc: &Path) -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir(proc) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| ProcStat::parse(&s))
        .collect()
}

/// Userspace processes other than PID 1.
pub fn user_processes(proc: &Path) -> Vec<ProcStat> {
    all(proc).into_iter().filter(|p| p.pid != 1 && !p.is_kernel_thread()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_names_parse() {
        let p = ProcStat::parse("42 (we (ird) name) Z 1 42 42 0 -1 4194560 0 0").unwrap();
        assert_eq!(p.pid, 42);
        assert_eq!(p.comm, "we (ird) name");
        assert_eq!(p.state, 'Z');
        assert_eq!(p.ppid, 1);
        assert!(!p.is_kernel_thread());
        let k = ProcStat::parse("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0").unwrap();
        assert!(k.is_kernel_thread());
    }

    #[test]
    fn this_process_is_found_in_proc() {
        let me = std::process::id() as i32;
        assert!(all(Path::new("/proc")).iter().any(|p| p.pid == me));
    }
}
