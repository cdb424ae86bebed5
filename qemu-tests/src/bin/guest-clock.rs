//! Test-only guest program: prints CLOCK_BOOTTIME in nanoseconds, the clock
//! kelson-init stamps its log with, so a shell script in the guest can time
//! itself on the same scale (busybox `date` has no sub-second format).

fn main() {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => println!("{}", t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128),
        Err(e) => {
            eprintln!("guest-clock: CLOCK_BOOTTIME: {e}");
            std::process::exit(1);
        }
    }
}
