//! CLOCK_BOOTTIME, the clock every boot-stage timestamp uses: it counts from
//! kernel start and includes suspend, so guest-side stage timings do not
//! depend on how slow the host is at starting QEMU.

use std::time::Duration;

/// Time since the kernel started, or zero if the clock cannot be read.
pub fn boottime() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => Duration::new(ts.tv_sec().max(0) as u64, ts.tv_nsec().max(0) as u32),
        Err(_) => Duration::ZERO,
    }
}

/// `12.345678` seconds, the way the kernel prints its own timestamps.
pub fn format_seconds(d: Duration) -> String {
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_printed_with_microseconds() {
        assert_eq!(format_seconds(Duration::from_micros(3_000_042)), "3.000042");
        assert_eq!(format_seconds(Duration::ZERO), "0.000000");
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime();
        let b = boottime();
        assert!(b >= a);
        assert!(a > Duration::ZERO);
    }
}
