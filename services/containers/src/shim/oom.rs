//! Whether a container was OOM-killed: its cgroup's `memory.events`.

use std::fs;
use std::path::Path;

/// Whether `cgroup`'s `memory.events` counts an OOM kill.
pub(super) fn oom_kills_seen(cgroup: &Path) -> bool {
    let path = cgroup.join("memory.events");
    match fs::read_to_string(&path) {
        Ok(events) => parse_oom_kills(&events) > 0,
        Err(error) => {
            // No memory controller in this cgroup: nothing can have been OOM-killed by its limit.
            tracing::debug!(path = %path.display(), %error, "reading memory.events");
            false
        }
    }
}

/// The `oom_kill` count of a `memory.events` file.
pub fn parse_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == "oom_kill")
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_count_is_read_from_memory_events() {
        assert_eq!(parse_oom_kills("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"), 1);
        assert_eq!(parse_oom_kills("low 0\noom 0\noom_kill 0\n"), 0);
        assert_eq!(parse_oom_kills(""), 0);
    }
}
