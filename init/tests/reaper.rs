#![allow(clippy::unwrap_used)]
//! The reaper calls waitpid(-1), which would steal other tests' children,
//! so it is tested in a binary of its own, in one test function.

use kelson_init::reaper::{Exit, Reaped, Reaper};
use std::io;
use std::process::Command;
use std::time::{Duration, Instant};

fn reap_until(reaper: &Reaper, pred: impl Fn(&Reaped) -> bool) -> Reaped {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut total = Reaped::default();
    while Instant::now() < deadline {
        let r = reaper.reap();
        total.owned += r.owned;
        total.orphans += r.orphans;
        if pred(&total) {
            return total;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    total
}

#[test]
fn exits_reach_their_owners_and_unowned_children_are_reaped() {
    let reaper = Reaper::new();

    let mut ok = reaper.spawn(&mut Command::new("true")).unwrap();
    let mut failed = reaper.spawn(Command::new("sh").args(["-c", "exit 3"])).unwrap();
    let mut killed = reaper.spawn(Command::new("sh").args(["-c", "kill -9 $$"])).unwrap();
    reap_until(&reaper, |r| r.owned == 3);
    assert_eq!(ok.exit.try_recv().unwrap(), Exit::Code(0));
    assert_eq!(failed.exit.try_recv().unwrap(), Exit::Code(3));
    assert_eq!(killed.exit.try_recv().unwrap(), Exit::Signal(9));
    assert!(reaper.live_children().is_empty());

    // A child spawned behind the reaper's back stands in for an orphan:
    // nobody registered it, and it is reaped all the same.
    let stray = Command::new("true").spawn().unwrap();
    let r = reap_until(&reaper, |r| r.orphans == 1);
    assert_eq!(r.orphans, 1);
    drop(stray);

    let err = reaper.spawn(&mut Command::new("/nonexistent/kelson-binary")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}
